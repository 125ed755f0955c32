"""Run the numbered notebooks through papermill (``python -m nbutils run``).

Notebooks are ``notebooks/NN_slug.ipynb``; each has a cell tagged ``parameters`` declaring at least
``profile = "quick"`` and says in its metadata which earlier notebooks it needs (:mod:`nbutils.dag`).
:func:`run_pipeline` checks everything it can before running anything (the profile exists, every
``-p name=value`` is declared by a selected notebook), then executes the notebooks as a DAG (in name
order by default, side by side with ``executor="dask"``), keeps each executed copy under
``build/executed/``, records the run in ``figures/manifest.json`` and prints a summary table.
"""
from __future__ import annotations

import ast
import datetime as _dt
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from nbutils import dag, manifest
from nbutils.artifacts import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
OUTPUT_DIR = REPO_ROOT / "build" / "executed"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"

#: Parameters every notebook receives from the pipeline itself.
#: ``profile`` comes from ``--profile``; ``seed`` (``-p seed=N``) goes to every notebook.
UNIVERSAL_PARAMS = ("profile", "seed")

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ----------------------------------------------------------------------------- selection


def discover(notebooks_dir: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` of ``notebooks_dir``, in run (name) order."""
    return sorted(Path(notebooks_dir).glob(NOTEBOOK_GLOB), key=lambda p: p.name)


def select(paths: Sequence[str | Path], only: Iterable[str] | None) -> list[Path]:
    """Keep the notebooks named in ``only`` (2-digit prefixes like ``"01"`` or full stems), in run order.

    ``only`` empty or None keeps everything. An entry matching no notebook raises ValueError.
    """
    paths = [Path(p) for p in paths]
    if isinstance(only, str):
        only = only.split(",")
    if not only:
        return paths
    wanted: set[Path] = set()
    for entry in only:
        key = str(entry).strip()
        if key.endswith(".ipynb"):
            key = key[: -len(".ipynb")]
        if re.fullmatch(r"\d{2}", key):
            hits = [p for p in paths if p.stem[:2] == key]
        else:
            hits = [p for p in paths if p.stem == key]
        if not key or not hits:
            available = ", ".join(p.stem for p in paths) or "(no notebooks found)"
            raise ValueError(
                f"unknown notebook {entry!r}: give a 2-digit prefix (e.g. '01') or a full name; "
                f"available: {available}"
            )
        wanted.update(hits)
    return [p for p in paths if p in wanted]


def parse_params(items: Iterable[str] | None) -> dict[str, Any]:
    """``["n=3", "lr=1e-3", "name=abc"]`` → ``{"n": 3, "lr": 0.001, "name": "abc"}``.

    Values are Python literals (``ast.literal_eval``) where they parse as one, else the raw string.
    """
    params: dict[str, Any] = {}
    for item in items or ():
        name, sep, raw = str(item).partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"malformed parameter {item!r}: expected name=value")
        if not _NAME_RE.match(name):
            raise ValueError(f"malformed parameter {item!r}: expected name=value where name is a Python identifier")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = raw
        params[name] = value
    return params


def declared_parameters(path: str | Path) -> dict[str, Any]:
    """Parameters declared in the ``parameters``-tagged cell of a notebook (papermill's inference)."""
    import papermill

    return papermill.inspect_notebook(str(path))


# ----------------------------------------------------------------------------- running


def _profiles() -> dict[str, Any]:
    from nbutils import profiles

    return profiles.PROFILES


def validate(profile: str, params: dict[str, Any], notebooks: list[Path]) -> dict[Path, set[str]]:
    """Check ``profile`` and that every parameter is declared by a selected notebook (or universal);
    return each notebook's declared parameter names. Raises ValueError naming what is allowed."""
    allowed = list(_profiles())
    if profile not in allowed:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(allowed)}")
    if "profile" in params:
        raise ValueError("'profile' cannot be given as -p profile=...; use --profile")
    declared = {nb: set(declared_parameters(nb)) for nb in notebooks}
    known = set().union(*declared.values()) if declared else set()
    for name in params:
        if name in UNIVERSAL_PARAMS or name in known:
            continue
        listing = ", ".join(sorted(known)) or "(none)"
        raise ValueError(
            f"parameter {name!r} is not declared by any selected notebook "
            f"({', '.join(p.stem for p in notebooks) or 'none selected'}); declared parameters: {listing}"
        )
    return declared


def run_pipeline(
    profile: str = "quick",
    only: Iterable[str] | None = None,
    params: dict[str, Any] | None = None,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    output_dir: str | Path = OUTPUT_DIR,
    kernel_name: str = "python3",
    stop_on_error: bool = True,
    progress: bool = True,
    executor: str = "sequential",
    scheduler: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Execute the selected notebooks as a DAG (:mod:`nbutils.dag`); return one result dict per notebook.

    Each result: ``{"name", "seconds", "status": "ok"|"failed"|"skipped", "output", "error", "cause"}``
    where ``error`` is None or ``{"cell": execution count, "ename", "evalue"}`` (the execution count is
    the ``In [n]`` of the executed copy, which counts papermill's injected-parameters cell) and
    ``cause`` says which failed notebook a skipped one needed. A failure skips only the notebooks that
    need it (``stop_on_error=False``: not even those). ``executor="dask"`` runs independent notebooks
    side by side (``scheduler``: address of a running cluster; else a LocalCluster of ``workers``);
    ``threads``: threads of each notebook's kernel (see :func:`nbutils.dag.execute`).
    Raises ValueError before running anything if ``profile`` or a parameter is unknown.
    """
    params = dict(params or {})
    notebooks_dir = Path(notebooks_dir)
    output_dir = Path(output_dir)
    everything = discover(notebooks_dir)
    notebooks = select(everything, only)
    if not notebooks:
        raise ValueError(f"no notebooks matching {NOTEBOOK_GLOB} in {notebooks_dir}")
    declared = validate(profile, params, notebooks)
    output_dir.mkdir(parents=True, exist_ok=True)
    runs = dag.plan(notebooks, everything, profile, params, declared, output_dir=output_dir, kernel_name=kernel_name,
                    universal=UNIVERSAL_PARAMS)
    started = _dt.datetime.now(_dt.timezone.utc)
    results = dag.execute(runs, executor=executor, scheduler=scheduler, workers=workers, threads=threads,
                          keep_going=not stop_on_error, progress=progress)
    manifest.record_run(
        profile,
        params,
        [{k: r[k] for k in ("name", "seconds", "status", "error")} for r in results],
        started=started,
    )
    print(format_summary(results), flush=True)
    return results


def format_summary(results: Sequence[dict[str, Any]]) -> str:
    """The results of :func:`run_pipeline` as a plain-text table, with details of each failure."""
    width = max([len("notebook")] + [len(r["name"]) for r in results])
    lines = [f"{'notebook':<{width}}  {'status':<7}  {'seconds':>8}", f"{'-' * width}  {'-' * 7}  {'-' * 8}"]
    total = 0.0
    for r in results:
        secs = "-" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        total += r.get("seconds") or 0.0
        lines.append(f"{r['name']:<{width}}  {r['status']:<7}  {secs:>8}")
    counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "cached", "failed", "skipped")}
    lines.append(f"{'-' * width}  {'-' * 7}  {'-' * 8}")
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines.append(f"{'total':<{width}}  {'':<7}  {total:>8.1f}   ({summary})")
    for r in results:
        if r["status"] == "failed":
            lines += [""] + dag.failure_lines(r)
    skipped = [r for r in results if r["status"] == "skipped"]
    if skipped:
        lines.append("")
        lines.append("skipped (a notebook they need failed): "
                     + "; ".join(f"{r['name']} ({r['cause']})" if r.get("cause") else r["name"] for r in skipped))
    return "\n".join(lines)


__all__ = [
    "NOTEBOOKS_DIR",
    "OUTPUT_DIR",
    "UNIVERSAL_PARAMS",
    "discover",
    "select",
    "parse_params",
    "declared_parameters",
    "validate",
    "run_pipeline",
    "format_summary",
]
