"""Course assignments: student and instructor versions of the master notebooks, built with otter-grader.

The masters live in ``notebooks/assignments/`` in Otter Assign's format (otter-grader's documented
notebook format, chosen over a home-made converter and over nbgrader, which needs a course database and
a Jupyter server extension): a raw ``# ASSIGNMENT CONFIG`` cell, and per exercise raw cells
``# BEGIN QUESTION`` / ``# BEGIN SOLUTION`` / ``# END SOLUTION`` / ``# BEGIN TESTS`` / ``# END TESTS`` /
``# END QUESTION`` around the prompt, the solution cell (``# BEGIN SOLUTION`` / ``# END SOLUTION`` or
``# SOLUTION`` lines inside it) and the test cells. The markers are plain text: they survive output
stripping, diffs and papermill, and a master runs top to bottom as an ordinary notebook.

:func:`build` runs ``otter assign`` for every master and writes ``build/assignments/<name>/``:

* ``student/<name>.ipynb``: solutions replaced by ``...``, outputs cleared, a ``grader.check("q")`` cell after
  every exercise (its tests, in ``student/tests/``, compare the student's function with the reference
  implementation in ``nbutils`` on fresh random inputs);
* ``autograder/<name>.ipynb``: the instructor version with the solutions, and otter's autograder zip
  (for ``otter grade`` or Gradescope).

:func:`check` executes a notebook and returns each question's verdict (used by the tests and to time the
student notebooks).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

from .artifacts import REPO_ROOT

MASTERS_DIR = REPO_ROOT / "notebooks" / "assignments"
BUILD_DIR = REPO_ROOT / "build" / "assignments"


def masters(directory: str | Path = MASTERS_DIR) -> list[Path]:
    """The master notebooks ``A<k>_*.ipynb``, in order."""
    return sorted(Path(directory).glob("A*_*.ipynb"))


def select(paths: Sequence[Path], only: Iterable[str] | None) -> list[Path]:
    """Keep the masters named in ``only`` (``"A1"`` or the full stem); an unknown name raises ValueError."""
    if not only:
        return list(paths)
    only = [o.strip() for o in (only.split(",") if isinstance(only, str) else only) if o.strip()]
    out = [p for p in paths if any(p.stem == o or p.stem.split("_")[0] == o for o in only)]
    unknown = [o for o in only if not any(p.stem == o or p.stem.split("_")[0] == o for p in paths)]
    if unknown:
        raise ValueError(f"unknown assignment(s) {unknown}; known: {[p.stem for p in paths]}")
    return out


def questions(master: str | Path) -> list[str]:
    """The question names of a master notebook, in order."""
    import nbformat
    import yaml

    nb = nbformat.read(master, as_version=4)
    names = []
    for c in nb.cells:
        if c.cell_type == "raw" and c.source.lstrip().startswith("# BEGIN QUESTION"):
            names.append(yaml.safe_load(c.source.split("\n", 1)[1])["name"])
    return names


def build(output: str | Path = BUILD_DIR, only: Iterable[str] | None = None, run_tests: bool = True,
          directory: str | Path = MASTERS_DIR, progress: bool = True) -> dict[str, dict]:
    """Run ``otter assign`` on every selected master; returns ``{name: {"student", "instructor", "questions",
    "seconds"}}``. ``run_tests``: otter runs the tests against the solutions while building (a failing solution
    is reported). Existing output of an assignment is replaced."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    done = {}
    for path in select(masters(directory), only):
        dest = output / path.stem
        if dest.exists():
            shutil.rmtree(dest)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "otter", "assign", str(path), str(dest)] + ([] if run_tests else ["--no-run-tests"])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=path.parent)
        if proc.returncode != 0:
            raise RuntimeError(f"otter assign failed for {path.name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        done[path.stem] = {"student": str(dest / "student" / path.name), "instructor": str(dest / "autograder" / path.name),
                           "questions": questions(path), "seconds": round(time.perf_counter() - t0, 1)}
        if progress:
            print(f"{path.stem}: {len(done[path.stem]['questions'])} exercises -> {dest} ({done[path.stem]['seconds']} s)")
    (output / "index.json").write_text(json.dumps(done, indent=1))
    return done


def check(notebook: str | Path, parameters: dict | None = None, timeout: int = 600) -> dict:
    """Execute ``notebook`` (in its own folder, so otter finds ``tests/``) after injecting ``parameters`` and
    return ``{"results": {question: passed}, "seconds": wall time}``. Errors in answer cells do not stop the run
    (a blank ``...`` answer is a normal state of a student notebook)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = Path(notebook)
    nb = nbformat.read(notebook, as_version=4)
    if parameters:
        nb.cells.insert(1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items())))
    qs = [c.source.split('"')[1] for c in nb.cells if c.cell_type == "code" and c.source.startswith("grader.check(")]
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json as _json\nprint('OTTER_RESULTS', _json.dumps({q: bool(grader.check(q).passed_all) for q in %r}))" % qs))
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()
    seconds = time.perf_counter() - t0
    for out in nb.cells[-1].get("outputs", []):
        text = out.get("text", "")
        if "OTTER_RESULTS" in text:
            return {"results": json.loads(text.split("OTTER_RESULTS", 1)[1]), "seconds": seconds}
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    raise RuntimeError(f"{notebook}: the check cell did not run; first error: "
                       f"{errors[0].get('ename') + ': ' + errors[0].get('evalue') if errors else 'none'}")
