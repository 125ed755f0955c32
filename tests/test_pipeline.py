"""Tests of the notebook pipeline, the figures manifest and figure saving (fast: tiny notebooks)."""
from __future__ import annotations

import importlib
import json
import multiprocessing
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import nbutils
from nbutils import manifest, pipeline
from nbutils.artifacts import REPO_ROOT

# ----------------------------------------------------------------------------- fixtures / helpers


class FakeConfig:
    def __init__(self, profile: str, seed: int, **params):
        self.profile, self.seed, self._params = profile, seed, params

    def as_dict(self):
        return {"profile": self.profile, "seed": self.seed, **self._params}


@pytest.fixture
def profiles(monkeypatch):
    """The real nbutils.profiles when it exists, else a stand-in with the agreed interface."""
    try:
        mod = importlib.import_module("nbutils.profiles")
    except ModuleNotFoundError:
        mod = types.ModuleType("nbutils.profiles")
        mod.PROFILES = {"smoke": {"seed": 0}, "quick": {"seed": 0}, "paper": {"seed": 0}}
        mod.current = lambda: None
        monkeypatch.setitem(sys.modules, "nbutils.profiles", mod)
        monkeypatch.setattr(nbutils, "profiles", mod, raising=False)
    return mod


@pytest.fixture
def figdir(tmp_path, monkeypatch):
    d = tmp_path / "figures"
    monkeypatch.setenv("NBUTILS_FIGURES_DIR", str(d))
    monkeypatch.delenv("NBUTILS_NOTEBOOK", raising=False)
    return d


def _write_nb(path: Path, params_src: str, *cells: str) -> None:
    nb = new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    p = new_code_cell(params_src)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p] + [new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))


WRITE = (
    "import os, pathlib\n"
    "pathlib.Path('out_{stem}.txt').write_text(f'{{{var}}}|{{profile}}|{{os.environ.get(\"NBUTILS_NOTEBOOK\")}}')"
)


@pytest.fixture
def nbdir(tmp_path):
    """01_alpha (x), 02_beta (y, raises in its 3rd cell), 03_gamma (z), plus files that must be ignored."""
    d = tmp_path / "notebooks"
    d.mkdir()
    _write_nb(d / "01_alpha.ipynb", 'profile = "quick"\nx = 1', WRITE.format(stem="01_alpha", var="x"))
    _write_nb(
        d / "02_beta.ipynb",
        'profile = "quick"\ny = 2',
        WRITE.format(stem="02_beta", var="y"),
        "raise RuntimeError('boom in beta')",
        "pathlib.Path('after_raise.txt').write_text('should not exist')",
    )
    _write_nb(d / "03_gamma.ipynb", 'profile = "quick"\nz = 3', WRITE.format(stem="03_gamma", var="z"))
    _write_nb(d / "scratch.ipynb", "x = 1")  # not numbered: ignored
    _write_nb(d / "1_bad.ipynb", "x = 1")  # one digit: ignored
    return d


# ----------------------------------------------------------------------------- selection / parameters


def test_discover_and_select_order(nbdir):
    paths = pipeline.discover(nbdir)
    assert [p.name for p in paths] == ["01_alpha.ipynb", "02_beta.ipynb", "03_gamma.ipynb"]
    # run order is kept whatever the order of --only; prefixes, stems and duplicates all work
    sel = pipeline.select(paths, ["03", "01_alpha", "01", "03_gamma.ipynb"])
    assert [p.stem for p in sel] == ["01_alpha", "03_gamma"]
    assert pipeline.select(paths, None) == paths
    assert pipeline.select(paths, []) == paths
    assert [p.stem for p in pipeline.select(paths, "02,01")] == ["01_alpha", "02_beta"]


@pytest.mark.parametrize("entry", ["07", "01_beta", "alpha", "1"])
def test_select_unknown_entry(nbdir, entry):
    with pytest.raises(ValueError) as exc:
        pipeline.select(pipeline.discover(nbdir), ["01", entry])
    msg = str(exc.value)
    assert repr(entry) in msg
    assert "01_alpha" in msg and "02_beta" in msg and "03_gamma" in msg


def test_parse_params():
    got = pipeline.parse_params(
        ["n=3", "lr=1e-3", "name=abc", "flag=True", "xs=[1, 2]", "s='q'", "expr=a=b", "empty="]
    )
    assert got == {
        "n": 3,
        "lr": 0.001,
        "name": "abc",
        "flag": True,
        "xs": [1, 2],
        "s": "q",
        "expr": "a=b",
        "empty": "",
    }
    assert pipeline.parse_params(None) == {}
    with pytest.raises(ValueError, match="novalue"):
        pipeline.parse_params(["novalue"])
    with pytest.raises(ValueError, match="name=value"):
        pipeline.parse_params(["=3"])


def test_unknown_param_or_profile_fails_before_running(nbdir, tmp_path, figdir, profiles):
    out = tmp_path / "executed"
    # y is declared only by 02_beta, which is not selected
    with pytest.raises(ValueError) as exc:
        pipeline.run_pipeline("smoke", only=["01"], params={"y": 5}, notebooks_dir=nbdir, output_dir=out)
    assert "'y'" in str(exc.value) and "x" in str(exc.value) and "profile" in str(exc.value)
    with pytest.raises(ValueError, match="'nope'"):
        pipeline.run_pipeline("smoke", params={"nope": 1}, notebooks_dir=nbdir, output_dir=out)
    with pytest.raises(ValueError) as exc:
        pipeline.run_pipeline("huge", notebooks_dir=nbdir, output_dir=out)
    assert "'huge'" in str(exc.value) and all(p in str(exc.value) for p in profiles.PROFILES)
    # nothing ran: no executed copies, no outputs, no run recorded
    assert not out.exists()
    assert not list(nbdir.glob("out_*.txt"))
    assert not (figdir / "manifest.json").exists()


# ----------------------------------------------------------------------------- running notebooks


def test_successful_run_injects_parameters(nbdir, tmp_path, figdir, profiles, capsys):
    out = tmp_path / "executed"
    results = pipeline.run_pipeline(
        "smoke", only=["01"], params={"x": 42}, notebooks_dir=nbdir, output_dir=out, progress=False
    )
    assert [(r["name"], r["status"], r["error"]) for r in results] == [("01_alpha", "ok", None)]
    # the notebook ran in the notebooks dir with the injected values and the notebook env var
    assert (nbdir / "out_01_alpha.txt").read_text() == "42|smoke|01_alpha"
    executed = out / "01_alpha.ipynb"
    assert results[0]["output"] == executed and executed.exists()
    assert "injected-parameters" in executed.read_text()
    assert results[0]["seconds"] > 0
    assert "01_alpha" in capsys.readouterr().out  # the summary was printed

    run = json.loads((figdir / "manifest.json").read_text())["run"]
    assert run["profile"] == "smoke" and run["parameters"] == {"x": 42}
    assert [(n["name"], n["status"]) for n in run["notebooks"]] == [("01_alpha", "ok")]
    assert run["notebooks"][0]["seconds"] > 0
    assert run["packages"]["python"] and "papermill" in run["packages"]
    assert run["git_commit"] and run["started"] <= run["finished"]


def test_failing_notebook_is_reported_and_later_ones_skipped(nbdir, tmp_path, figdir, profiles):
    out = tmp_path / "executed"
    results = pipeline.run_pipeline("smoke", params={"y": 7}, notebooks_dir=nbdir, output_dir=out, progress=False)
    by = {r["name"]: r for r in results}
    assert [r["status"] for r in results] == ["ok", "failed", "skipped"]
    err = by["02_beta"]["error"]
    # In [1] parameters, In [2] injected parameters, In [3] write, In [4] raise
    assert err == {"cell": 4, "ename": "RuntimeError", "evalue": "boom in beta"}
    assert (nbdir / "out_02_beta.txt").read_text() == "7|smoke|02_beta"
    assert not (nbdir / "after_raise.txt").exists()
    # executed copy of the failure is kept and shows the traceback; the skipped one never ran
    failed_copy = out / "02_beta.ipynb"
    assert by["02_beta"]["output"] == failed_copy and "boom in beta" in failed_copy.read_text()
    assert by["03_gamma"]["output"] is None and by["03_gamma"]["seconds"] is None
    assert not (out / "03_gamma.ipynb").exists() and not (nbdir / "out_03_gamma.txt").exists()

    summary = pipeline.format_summary(results)
    assert "skipped" in summary and "In [4]" in summary and "RuntimeError: boom in beta" in summary
    assert str(failed_copy) in summary

    run = manifest.load()["run"]
    assert [(n["name"], n["status"]) for n in run["notebooks"]] == [
        ("01_alpha", "ok"),
        ("02_beta", "failed"),
        ("03_gamma", "skipped"),
    ]
    assert run["notebooks"][0]["seconds"] > 0 and run["notebooks"][1]["seconds"] > 0
    assert run["notebooks"][2]["seconds"] is None
    assert run["notebooks"][1]["error"]["ename"] == "RuntimeError"


def test_cli_keep_going_exit_code(nbdir, tmp_path, figdir, profiles, capsys):
    from nbutils import cli

    out = tmp_path / "executed"
    argv = ["run", "--profile", "smoke", "--only", "02,03", "-p", "z=9", "--keep-going",
            "--notebooks", str(nbdir), "--output", str(out), "--quiet"]
    assert cli.main(argv) == 1
    assert (nbdir / "out_03_gamma.txt").read_text() == "9|smoke|03_gamma"  # ran after the failure
    assert [n["status"] for n in manifest.load()["run"]["notebooks"]] == ["failed", "ok"]
    # usage errors are caught before running: exit 2 and a message
    assert cli.main(["run", "--notebooks", str(nbdir), "--output", str(out), "-p", "bogus=1"]) == 2
    assert "'bogus'" in capsys.readouterr().err


def test_cli_help(profiles, capsys):
    from nbutils import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "run" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--profile", "--only", "--param", "--output", "--notebooks", "--keep-going", "example"):
        assert opt in text
    assert all(name in text for name in profiles.PROFILES)
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--profile", "huge"])
    assert exc.value.code == 2
    assert set(cli.COMMANDS) >= {"run"} and all(len(v) == 2 for v in cli.COMMANDS.values())


# ----------------------------------------------------------------------------- figures and manifest


def _figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1, 2], [0, 1, 4], label="y = x^2")
    ax.set_xlabel("x")
    ax.set_title("probe")
    ax.legend()
    return fig


def test_savefig_reproducible_and_recorded(figdir, profiles, monkeypatch):
    import matplotlib as mpl

    from nbutils import plotting

    before = dict(mpl.rcParams)
    monkeypatch.setattr(profiles, "current", lambda: FakeConfig("smoke", 3, width=64))
    monkeypatch.setenv("NBUTILS_NOTEBOOK", "05_probe")
    with mpl.rc_context():
        plotting.use_style()
        plotting.use_style()  # idempotent
        assert mpl.rcParams["savefig.dpi"] == plotting.DPI and mpl.rcParams["font.size"] >= 9
        fig = _figure()
        paths = plotting.savefig(fig, "A_fig2_probe_curves")
        assert [p.name for p in paths] == ["A_fig2_probe_curves.png", "A_fig2_probe_curves.pdf"]
        first = [p.read_bytes() for p in paths]
        assert first[0][:8] == b"\x89PNG\r\n\x1a\n" and first[1][:5] == b"%PDF-"
        assert plotting.savefig(fig, "A_fig2_probe_curves") == paths
        assert [p.read_bytes() for p in paths] == first  # byte-identical on a second save
        plotting.savefig(_figure(), "A_fig2_probe_curves")
        assert [p.read_bytes() for p in paths] == first  # ... and for a rebuilt identical figure
        for bad in ("fig 2", "../escape", "a/b", "x.png", ""):
            with pytest.raises(ValueError, match="invalid figure name"):
                plotting.savefig(fig, bad)
        table = plotting.savetable("| a | b |\n|---|---|\n| 1 | 2 |", "B_table1", "md")
    assert dict(mpl.rcParams) == before  # nothing leaked out of the rc_context
    assert table.read_text().endswith("| 1 | 2 |\n")
    assert not list(figdir.glob("*.tmp")) and not list(figdir.glob(".*tmp"))

    figs = manifest.load()["figures"]
    assert set(figs) == {"A_fig2_probe_curves", "B_table1.md"}
    entry = figs["A_fig2_probe_curves"]
    assert entry["files"] == ["A_fig2_probe_curves.png", "A_fig2_probe_curves.pdf"]
    assert entry["notebook"] == "05_probe" and entry["profile"] == "smoke" and entry["seed"] == 3
    assert entry["parameters"] == {"profile": "smoke", "seed": 3, "width": 64}
    assert entry["git_commit"] and entry["timestamp"].endswith("Z")
    assert figs["B_table1.md"]["files"] == ["B_table1.md"]


def test_importing_plotting_leaves_rcparams_alone():
    code = (
        "import matplotlib as mpl; before = dict(mpl.rcParams); import nbutils.plotting; "
        "assert dict(mpl.rcParams) == before; nbutils.plotting.use_style(); "
        "assert dict(mpl.rcParams) != before"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_manifest_tolerates_corrupt_file(figdir):
    figdir.mkdir(parents=True)
    (figdir / "manifest.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        manifest.record_figure("F", [figdir / "F.png"], notebook="nb")
    data = manifest.load()
    assert list(data["figures"]) == ["F"] and data["figures"]["F"]["notebook"] == "nb"
    assert data["figures"]["F"]["profile"] is None and data["figures"]["F"]["files"] == ["F.png"]
    assert (figdir / "manifest.json.corrupt").read_text() == "{not json"


def test_git_commit(tmp_path):
    assert manifest.git_commit(tmp_path) == "unknown"  # not a repository
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q"], cwd=tmp_path, check=True)
    assert manifest.git_commit(tmp_path) == "unknown"  # no commit yet
    (tmp_path / "f.txt").write_text("a")
    subprocess.run(git + ["add", "f.txt"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "c"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert manifest.git_commit(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("u")
    assert manifest.git_commit(tmp_path) == head  # untracked files don't count
    (tmp_path / "f.txt").write_text("b")
    assert manifest.git_commit(tmp_path) == head + "-dirty"


def test_package_versions():
    v = manifest.package_versions()
    assert v["python"].count(".") == 2 and v["nbutils"].split(".")[0].isdigit()
    assert "papermill" in v and "matplotlib" in v


def _record_many(worker: int, n: int) -> None:
    for j in range(n):
        manifest.record_figure(f"w{worker}_f{j}", [f"w{worker}_f{j}.png"], notebook=f"nb{worker}")


def test_concurrent_record_figure_loses_nothing(figdir, monkeypatch):
    monkeypatch.setattr(manifest, "git_commit", lambda repo=None: "abc")  # keep the 40 updates fast
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(w, 10)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    figs = json.loads((figdir / "manifest.json").read_text())["figures"]
    assert set(figs) == {f"w{w}_f{j}" for w in range(4) for j in range(10)}
    assert all(figs[f"w{w}_f0"]["notebook"] == f"nb{w}" for w in range(4))
