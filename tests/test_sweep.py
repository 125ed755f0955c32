"""The pipeline DAG, sweeps, executors and mean ± std tables (nbutils.dag, nbutils.sweep).

Tiny notebooks (no torch) for the DAG logic; real smoke runs of notebook 30 for the Dask-vs-sequential
comparison; a worker killed mid-sweep for Dask's rescheduling.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from nbutils import cli, dag, pipeline, sweep
from nbutils.artifacts import REPO_ROOT

# ----------------------------------------------------------------------------- helpers


def _nb(path: Path, params: str, *cells: str, needs: list[str] | None = None) -> Path:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    if needs is not None:
        nb.metadata["nbutils"] = {"needs": needs}
    p = new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p] + [new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def toy(tmp_path):
    """01_base (a, delay; fails when a == 99), 02_dep (a, b; needs 01), 03_free (needs nothing)."""
    d = tmp_path / "notebooks"
    d.mkdir()
    _nb(d / "01_base.ipynb", 'profile = "quick"\nseed = 0\na = 1\ndelay = 0.0',
        "import time\ntime.sleep(delay)",
        "if a == 99:\n    raise ValueError('a = 99 is the broken setting')",
        "from nbutils.sweep import record\nrecord('base', {'x': 10 * a + seed, 'y': a / 2})", needs=[])
    _nb(d / "02_dep.ipynb", 'profile = "quick"\nseed = 0\na = 1\nb = "u"',
        "from nbutils.sweep import record\nrecord('dep', [{'k': i, 'v': a * i + seed, 'b': b} for i in range(2)], key=['k'])",
        needs=["01"])
    _nb(d / "03_free.ipynb", 'profile = "quick"\nseed = 0',
        "import os\nfrom nbutils.sweep import record\nrecord('free', {'z': seed, 'omp': int(os.environ.get('OMP_NUM_THREADS', 0))})",
        needs=[])
    return d


def _plan(toy, grid, params=None, out=None, cacheable=True):
    nbs = pipeline.discover(toy)
    declared = {nb: set(pipeline.declared_parameters(nb)) for nb in nbs}
    return dag.plan(nbs, nbs, "smoke", params or {}, declared, grid=grid, output_dir=out or toy.parent / "out",
                    cacheable=cacheable)


# ----------------------------------------------------------------------------- planning


def test_plan_expands_each_notebook_over_its_own_axes(toy):
    runs = _plan(toy, {"a": [1, 2], "b": ["u", "w"], "seed": [0, 1]})
    by = {r.id: r for r in runs}
    assert sum(r.name == "01_base" for r in runs) == 4  # a × seed (01 does not declare b)
    assert sum(r.name == "02_dep" for r in runs) == 8
    assert sum(r.name == "03_free" for r in runs) == 2
    dep = by["02_dep[a=2, b='w', seed=1]"]
    assert dep.needs == ("01_base[a=2, seed=1]",)
    assert dep.params == {"profile": "smoke", "a": 2, "b": "w", "seed": 1}
    assert by["03_free[seed=0]"].needs == ()
    # every run has its own executed notebook, record and figures folder; keys differ
    assert len({r.output for r in runs}) == len({r.record for r in runs}) == len({r.key for r in runs}) == len(runs)
    assert dep.output.endswith("02_dep/a-2_b-w_seed-1.ipynb") and dep.figures_dir.endswith("a-2_b-w_seed-1.figures")
    # an axis only the needed notebook has: wait for all of its runs
    runs = _plan(toy, {"delay": [0.0, 0.5], "seed": [0]})
    dep = next(r for r in runs if r.name == "02_dep")
    assert dep.needs == ("01_base[delay=0.0, seed=0]", "01_base[delay=0.5, seed=0]")


def test_needs_are_resolved_through_unselected_notebooks(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    _nb(d / "01_a.ipynb", "seed = 0", needs=[])
    _nb(d / "02_b.ipynb", "seed = 0", needs=["01"])
    _nb(d / "03_c.ipynb", "seed = 0", needs=["02_b"])
    _nb(d / "04_d.ipynb", "seed = 0")  # no metadata: needs every earlier notebook
    nbs = pipeline.discover(d)
    graph = dag.needs_graph(nbs)
    assert graph == {"01_a": [], "02_b": ["01_a"], "03_c": ["02_b"], "04_d": ["01_a", "02_b", "03_c"]}
    assert dag.effective_needs(graph, "03_c", {"01_a", "03_c"}) == ["01_a"]
    _nb(d / "05_e.ipynb", "seed = 0", needs=["06"])
    _nb(d / "06_f.ipynb", "seed = 0", needs=[])
    with pytest.raises(ValueError, match="does not come before"):
        dag.needs_graph(pipeline.discover(d))
    _nb(d / "05_e.ipynb", "seed = 0", needs=["77_nothing"])
    with pytest.raises(ValueError, match="no notebook here"):
        dag.needs_graph(pipeline.discover(d))


def test_every_numbered_notebook_declares_its_needs():
    nbs = pipeline.discover()
    graph = dag.needs_graph(nbs)  # raises on unknown / later names
    for nb in nbs:
        assert dag.declared_needs(nb) is not None, f"{nb.name} has no metadata nbutils.needs"
    assert "14_random_labels" in graph["21_methods_output"] and "01_train_original" not in graph["21_methods_output"]
    assert graph["30_deep_nrc_mlp"] == [] and graph["10_retrain"] == ["01_train_original"]


@pytest.mark.parametrize("raw, values", [
    ("0,1e-3", [0, 0.001]), ("0..3", [0, 1, 2, 3]), ("[0],[1,2]", [[0], [1, 2]]), ("rl,salun", ["rl", "salun"]),
    ("'a,b'", ["a,b"]), ("True", [True]), ("-1..1", [-1, 0, 1]),
])
def test_parse_values(raw, values):
    assert sweep.parse_values(raw) == values


def test_parse_grid_and_seeds_errors():
    assert sweep.parse_grid(["method=rl,salun", "forget=0..2"]) == {"method": ["rl", "salun"], "forget": [0, 1, 2]}
    for bad in (["method"], ["1x=2"], ["m=1", "m=2"], ["m="], ["m=3..1"]):
        with pytest.raises(ValueError):
            sweep.parse_grid(bad)
    assert sweep.seed_values(3) == [0, 1, 2] and sweep.seed_values([4, 7]) == [4, 7] and sweep.seed_values(None) is None
    for bad in (0, True, [1.5], "3"):
        with pytest.raises(ValueError):
            sweep.seed_values(bad)


# ----------------------------------------------------------------------------- aggregation


def _res(params, records, status="ok"):
    return {"id": json.dumps(params), "params": params, "status": status, "records": records}


def test_aggregate_mean_std_and_counts():
    rec = lambda v: {"t": {"name": "t", "key": ["layer"], "rows": [{"layer": 1, "m": v, "s": "x"}, {"layer": 2, "m": 2 * v}]}}
    results = [_res({"wd": 0.0, "seed": s}, rec(v)) for s, v in [(0, 1.0), (1, 3.0)]]
    results += [_res({"wd": 0.1, "seed": 0}, rec(5.0)), _res({"wd": 0.1, "seed": 1}, rec(7.0), status="failed")]
    groups = dict(sweep.aggregate(results, "t", ["wd", "layer"], ["m"]))
    assert groups[("0", "1")]["m"] == [1.0, 3.0] and groups[("0", "2")]["m"] == [2.0, 6.0]
    assert groups[("0.1", "1")]["m"] == [5.0]  # the failed run does not count
    from nbutils.nrc_report import mean_std

    m, s = mean_std([1.0, 3.0])
    assert m == 2.0 and math.isclose(s, math.sqrt(2))
    assert sweep.format_cell([1.0, 3.0], scale=100, digits=1) == "200.0 ± 141.4 (2)"
    assert sweep.format_cell([5.0]) == "5.000 (1)" and sweep.format_cell([]) == "–"
    md, tex, nrows = sweep.build_table(results, sweep.Table("x", "t", ["wd", "layer"], {"m": "M"}, digits=2))
    assert nrows == 4 and "| wd | layer | M |" in md and "| 0 | 1 | 2.00 ± 1.41 (2) |" in md
    assert r"2.00 $\pm$ 1.41 (2)" in tex and r"\toprule" in tex
    md, _, _ = sweep.build_table(results, sweep.Table("x", "t", ["wd", "layer"], {"m": "M"}, scale={"m": 10}, digits=0))
    assert "| 0 | 1 | 20 ± 14 (2) |" in md
    [t] = sweep.default_tables(results, {"wd": [0.0, 0.1], "seed": [0, 1]}, ["seed"], "demo")
    assert (t.name, t.rows, list(t.columns)) == ("sweep_demo_t", ["wd", "layer"], ["m"])
    with pytest.raises(ValueError, match="neither a field"):
        sweep.aggregate(results, "t", ["nothing"], ["m"])


def test_record_keeps_scalars_and_checks_key(capsys):
    # outside a kernel IPython's display prints the bundle: the payload keeps labels, numbers and None only
    sweep.record("ok_name", [{"model": "RL", "acc": 0.5, "hp": {"lr": 1}, "nan": float("nan"), "no": None}],
                 key=["model"])
    out = capsys.readouterr().out
    assert "'name': 'ok_name', 'key': ['model'], 'rows': [{'model': 'RL', 'acc': 0.5, 'no': None}]" in out
    with pytest.raises(ValueError, match="key field"):
        sweep.record("t", [{"acc": 1}], key=["model"])
    with pytest.raises(ValueError, match="identifier"):
        sweep.record("bad name", [])


# ----------------------------------------------------------------------------- spec files


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "sweeps").glob("*.toml")), ids=lambda p: p.stem)
def test_sweep_files_plan_for_every_profile(path):
    spec = sweep.load_spec(path)
    assert spec.tables and spec.notebooks
    nbs = pipeline.select(pipeline.discover(), spec.notebooks)
    for profile in ("smoke", "quick", "paper"):
        runs, grid, average, out = sweep.plan_sweep(spec, profile, output_dir="/nonexistent")
        assert "seed" in grid and average[0] == "seed" and out == Path("/nonexistent") / path.stem / profile
        assert len(runs) > len(nbs)
        ids = {r.id for r in runs}
        assert all(n in ids for r in runs for n in r.needs)
        for t in spec.tables:  # each table reads a record that a notebook of the sweep writes
            assert any(f"record(\"{t.record}\"" in nb.read_text().replace('\\"', '"') for nb in nbs), t.record


def test_load_spec_errors(tmp_path):
    p = tmp_path / "s.toml"
    for text, msg in [("notebooks = []", "non-empty"), ("notebooks = ['30']\nbogus = 1", "unknown key"),
                      ("notebooks = ['30']\n[[tables]]\nname = 'x'", "needs name, record"), ("notebooks = [", "TOML"),
                      ("notebooks = ['30']\n[[tables]]\nname = 'x'\nrecord = 'r'\nrows = []\ncolumns = ['a']\n"
                       "scale = { b = 100 }", "unknown column")]:
        p.write_text(text)
        with pytest.raises(ValueError, match=msg):
            sweep.load_spec(p)
    with pytest.raises(ValueError, match="no sweep file"):
        sweep.load_spec(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="no parameter"):
        sweep.resolve_grid({"x": "profile:not_a_key"}, "smoke")


# ----------------------------------------------------------------------------- running (tiny notebooks)


def test_failed_run_stops_only_its_dependants_and_is_reported(toy, tmp_path, capsys):
    spec = sweep.Spec(name="fail", notebooks=["01", "02", "03"], grid={"a": [1, 99]}, seeds=1)
    out = sweep.run_sweep(spec, profile="smoke", output_dir=tmp_path / "sw", notebooks_dir=toy, progress=False)
    st = {r["id"]: r["status"] for r in out["results"]}
    assert st == {"01_base[a=1, seed=0]": "ok", "01_base[a=99, seed=0]": "failed", "02_dep[a=1, seed=0]": "ok",
                  "02_dep[a=99, seed=0]": "skipped", "03_free[seed=0]": "ok"}
    failed = next(r for r in out["results"] if r["status"] == "failed")
    # In [1] parameters, In [2] injected parameters, In [3] sleep, In [4] raise
    assert failed["error"] == {"cell": 4, "ename": "ValueError", "evalue": "a = 99 is the broken setting"}
    nb_path = tmp_path / "sw" / "fail" / "smoke" / "01_base" / "a-99_seed-0.ipynb"
    assert failed["output"] == nb_path and "broken setting" in nb_path.read_text()
    skipped = next(r for r in out["results"] if r["status"] == "skipped")
    assert skipped["cause"] == "needs 01_base[a=99, seed=0], which failed" and skipped["output"] is None
    assert "FAILED 01_base[a=99, seed=0]: cell In [4]: ValueError" in out["summary"]
    assert f"executed notebook: {nb_path}" in out["summary"]
    # tables from the runs that finished, in figures/
    md = Path(out["tables"][0]).read_text()
    assert "| a | x | y |" in md and "| 1 | 10.000 (1) | 0.500 (1) |" in md and "| 99 |" not in md


def test_rerunning_a_finished_sweep_does_no_work(toy, tmp_path, monkeypatch):
    spec = lambda: sweep.Spec(name="again", notebooks=["01", "02"], grid={"a": [1, 2]}, seeds=2)
    first = sweep.run_sweep(spec(), output_dir=tmp_path / "sw", notebooks_dir=toy, progress=False)
    assert {r["status"] for r in first["results"]} == {"ok"}
    tables = {p: Path(p).read_text() for p in first["tables"]}

    import papermill

    def refuse(*a, **k):
        raise AssertionError("papermill ran although every run was cached")

    monkeypatch.setattr(papermill, "execute_notebook", refuse)
    t0 = time.perf_counter()
    second = sweep.run_sweep(spec(), output_dir=tmp_path / "sw", notebooks_dir=toy, progress=False)
    assert [r["status"] for r in second["results"]] == ["cached"] * 8
    assert time.perf_counter() - t0 < 10
    assert {p: Path(p).read_text() for p in second["tables"]} == tables
    assert [r["records"] for r in second["results"]] == [r["records"] for r in first["results"]]
    # a changed notebook runs again (its code is part of the key); its needs stay cached, and so does a
    # notebook whose prose alone changed
    monkeypatch.undo()
    base = nbformat.read(toy / "01_base.ipynb", 4)
    base.cells.append(nbformat.v4.new_markdown_cell("## What to notice\nonly prose changed"))
    nbformat.write(base, toy / "01_base.ipynb")
    nb = nbformat.read(toy / "02_dep.ipynb", 4)
    nb.cells[1].source = nb.cells[1].source.replace("a * i", "a * i + 100")
    nbformat.write(nb, toy / "02_dep.ipynb")
    third = sweep.run_sweep(spec(), output_dir=tmp_path / "sw", notebooks_dir=toy, progress=False)
    assert [r["status"] for r in third["results"]] == ["cached"] * 4 + ["ok"] * 4


def test_cli_sweep(toy, tmp_path, capsys):
    args = ["sweep", "--notebooks", str(toy), "--only", "01,03", "--grid", "a=1,2", "--seeds", "2", "--name", "cli",
            "--output", str(tmp_path / "sw"), "-q"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "01_base" in out and "table:" in out
    md = (tmp_path / "figures" / "sweep_cli_base.md").read_text()
    assert "| 1 | 10.500 ± 0.707 (2) | 0.500 ± 0.000 (2) |" in md  # x = 10a + seed over seeds 0, 1
    assert (tmp_path / "figures" / "sweep_cli_base.tex").exists()
    assert cli.main(args[:-1]) == 0  # again, with a line per run: nothing runs
    lines = capsys.readouterr().out
    assert "[1/6] 01_base[a=1, seed=0]: cached" in lines and "[6/6] 03_free[seed=1]: cached" in lines
    assert cli.main(["sweep", "--notebooks", str(toy), "--only", "01", "--output", str(tmp_path / "sw")]) == 2
    assert "nothing to sweep" in capsys.readouterr().err
    assert cli.main(["sweep", "--notebooks", str(toy), "--grid", "nope=1,2", "--output", str(tmp_path / "sw")]) == 2
    assert "'nope'" in capsys.readouterr().err
    assert cli.main(["sweep", "--notebooks", str(toy), "--only", "01", "--grid", "a=99", "--name", "broken",
                     "--output", str(tmp_path / "sw"), "-q"]) == 1  # a failed run: exit 1


def test_pipeline_failure_skips_only_dependants(toy, tmp_path):
    results = pipeline.run_pipeline("smoke", params={"a": 99}, notebooks_dir=toy, output_dir=tmp_path / "ex",
                                    progress=False)
    assert [(r["name"], r["status"]) for r in results] == [("01_base", "failed"), ("02_dep", "skipped"),
                                                           ("03_free", "ok")]
    assert "skipped (a notebook they need failed): 02_dep (needs 01_base, which failed)" in pipeline.format_summary(results)


def _record_claims(worker: int) -> None:
    from nbutils import claims

    for j in range(5):
        claims.record("A1", held=True, criterion="c", measured={}, summary="s", notebook="nb", variant=f"_w{worker}_{j}")


def test_concurrent_claims_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_claims, args=(w,)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    entries = json.loads((tmp_path / "figures" / "claims.json").read_text())
    assert {k for k in entries} == {f"A1_w{w}_{j}" for w in range(4) for j in range(5)}


# ----------------------------------------------------------------------------- Dask


@pytest.fixture(scope="module")
def cluster():
    import logging

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as lc, Client(lc) as client:
        yield client


def _numbers(results):
    return {r["id"]: r["records"] for r in results}


@pytest.mark.timeout(600)
def test_dask_sweep_equals_sequential(cluster, tmp_path, monkeypatch):
    """Notebook 30 (smoke) over 2 weight decays × 2 seeds, plus notebook 01 (a ResNet) per seed; each executor
    from an empty results cache, both with one thread per kernel: the same numbers and the same weights."""
    import hashlib

    spec = lambda: sweep.Spec(name="wd", notebooks=["01", "30"], grid={"reg_weight_decay": [0.0, 5e-3]}, seeds=2,
                              tables=sweep.load_spec(REPO_ROOT / "sweeps" / "B_weight_decay.toml").tables)
    outs = {}
    for name, executor in [("seq", "sequential"), ("dask", dag.DaskExecutor(cluster, threads=1))]:
        monkeypatch.setenv("NBUTILS_RESULTS", str(tmp_path / name / "results"))
        monkeypatch.setenv("NBUTILS_FIGURES_DIR", str(tmp_path / name / "figures"))
        outs[name] = sweep.run_sweep(spec(), profile="smoke", executor=executor, threads=1,
                                     output_dir=tmp_path / name / "sw", progress=False)
        assert [r["status"] for r in outs[name]["results"]] == ["ok"] * 6
    seq, dsk = _numbers(outs["seq"]["results"]), _numbers(outs["dask"]["results"])
    assert seq == dsk and len(seq["30_deep_nrc_mlp[reg_weight_decay=0.005, seed=1]"]["layers"]["rows"]) == 4
    for t in ("B_sweep_weight_decay_layers", "B_sweep_weight_decay_fit"):
        a = (tmp_path / "seq" / "figures" / f"{t}.md").read_text()
        assert a == (tmp_path / "dask" / "figures" / f"{t}.md").read_text() and "(2) |" in a
    weights = {name: {p.relative_to(tmp_path / name): hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in (tmp_path / name / "results").rglob("model.pt")} for name in outs}
    assert sorted(p.parts[1].split("-")[0] for p in weights["seq"]) == ["original"] * 2 + ["regressor"] * 4
    assert weights["seq"] == weights["dask"]  # bit-identical weights, ResNet included


@pytest.mark.timeout(600)
def test_killing_a_worker_mid_sweep_still_completes(cluster, toy, tmp_path):
    import psutil

    spec = sweep.Spec(name="kill", notebooks=["01"], grid={"a": [1, 2, 3, 4]}, params={"delay": 6.0})
    pids = cluster.run(lambda: __import__("os").getpid())
    killed = []

    def kill_a_busy_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            busy = [w for w, ks in cluster.processing().items() if ks]
            if busy:
                time.sleep(2.0)  # the notebook's kernel is up and sleeping
                proc = psutil.Process(pids[busy[0]])
                for child in proc.children(recursive=True):  # the machine dies: the worker and its kernel
                    child.kill()
                proc.kill()
                killed.append(pids[busy[0]])
            time.sleep(0.2)

    t = threading.Thread(target=kill_a_busy_worker)
    t.start()
    out = sweep.run_sweep(spec, executor=dag.DaskExecutor(cluster, threads=1), output_dir=tmp_path / "sw",
                          notebooks_dir=toy, progress=False)
    t.join()
    assert killed, "no worker was busy"
    assert [r["status"] for r in out["results"]] == ["ok"] * 4
    assert [r["records"]["base"]["rows"][0]["x"] for r in out["results"]] == [10, 20, 30, 40]
    cluster.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
    assert killed[0] not in cluster.run(lambda: __import__("os").getpid()).values()


def test_pipeline_on_dask_runs_the_same_dag(cluster, toy, tmp_path):
    results = pipeline.run_pipeline("smoke", params={"a": 99}, notebooks_dir=toy, output_dir=tmp_path / "ex",
                                    progress=False, executor=dag.DaskExecutor(cluster, threads=1))
    assert [(r["name"], r["status"]) for r in results] == [("01_base", "failed"), ("02_dep", "skipped"),
                                                           ("03_free", "ok")]
    assert results[0]["error"]["cell"] == 4 and (tmp_path / "ex" / "01_base.ipynb").exists()
    assert results[2]["records"]["free"]["rows"] == [{"z": 0, "omp": 1}]  # the kernel got the executor's threads
