"""Run the numbered notebooks in order through papermill (``python -m nbutils run``).

Notebooks are ``notebooks/NN_slug.ipynb``; each has a cell tagged ``parameters`` declaring at least
``profile = "quick"``. :func:`run_pipeline` checks everything it can before running anything (the
profile exists, every ``-p name=value`` is declared by a selected notebook), then executes the
notebooks one after another, keeps each executed copy under ``build/executed/``, records the run in
``figures/manifest.json`` and prints a summary table.
"""
from __future__ import annotations

import ast
import datetime as _dt
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from nbutils import manifest
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


def _validate(profile: str, params: dict[str, Any], notebooks: list[Path]) -> dict[Path, set[str]]:
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
) -> list[dict[str, Any]]:
    """Execute the selected notebooks in order; return one result dict per notebook.

    Each result: ``{"name", "seconds", "status": "ok"|"failed"|"skipped", "output", "error"}`` where
    ``error`` is None or ``{"cell": execution count, "ename", "evalue"}`` (the execution count is the
    ``In [n]`` of the executed copy, which counts papermill's injected-parameters cell).
    Raises ValueError before running anything if ``profile`` or a parameter is unknown.
    """
    import papermill

    params = dict(params or {})
    notebooks_dir = Path(notebooks_dir)
    output_dir = Path(output_dir)
    notebooks = select(discover(notebooks_dir), only)
    if not notebooks:
        raise ValueError(f"no notebooks matching {NOTEBOOK_GLOB} in {notebooks_dir}")
    declared = _validate(profile, params, notebooks)
    output_dir.mkdir(parents=True, exist_ok=True)

    started = _dt.datetime.now(_dt.timezone.utc)
    results: list[dict[str, Any]] = []
    failed = False
    for i, nb in enumerate(notebooks, 1):
        name = nb.stem
        if failed and stop_on_error:
            results.append({"name": name, "seconds": None, "status": "skipped", "output": None, "error": None})
            continue
        nb_params = {"profile": profile}
        nb_params.update({k: v for k, v in params.items() if k in declared[nb] or k in UNIVERSAL_PARAMS})
        output = output_dir / nb.name
        if progress:
            print(f"[{i}/{len(notebooks)}] {name} ...", flush=True)
        previous = os.environ.get("NBUTILS_NOTEBOOK")
        os.environ["NBUTILS_NOTEBOOK"] = name
        t0 = time.perf_counter()
        error = None
        try:
            papermill.execute_notebook(
                str(nb),
                str(output),
                parameters=nb_params,
                kernel_name=kernel_name,
                cwd=str(notebooks_dir),
                progress_bar=False,
                log_output=False,
            )
        except papermill.PapermillExecutionError as exc:
            error = {"cell": exc.exec_count, "ename": exc.ename, "evalue": exc.evalue}
        except Exception as exc:  # kernel died, bad notebook file, missing kernel, ...
            error = {"cell": None, "ename": type(exc).__name__, "evalue": str(exc)}
        finally:
            seconds = time.perf_counter() - t0
            if previous is None:
                os.environ.pop("NBUTILS_NOTEBOOK", None)
            else:
                os.environ["NBUTILS_NOTEBOOK"] = previous
        status = "ok" if error is None else "failed"
        failed = failed or error is not None
        results.append(
            {
                "name": name,
                "seconds": seconds,
                "status": status,
                "output": output if output.exists() else None,
                "error": error,
            }
        )
        if progress:
            msg = f"[{i}/{len(notebooks)}] {name}: {status} ({seconds:.1f} s)"
            if error:
                msg += f" - {error['ename']}: {error['evalue']}"
            print(msg, flush=True)

    manifest.record_run(
        profile,
        params,
        [{k: r[k] for k in ("name", "seconds", "status", "error")} for r in results],
        started=started,
    )
    print(format_summary(results), flush=True)
    return results


def _short(text: Any, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def format_summary(results: Sequence[dict[str, Any]]) -> str:
    """The results of :func:`run_pipeline` as a plain-text table, with details of each failure."""
    width = max([len("notebook")] + [len(r["name"]) for r in results])
    lines = [f"{'notebook':<{width}}  {'status':<7}  {'seconds':>8}", f"{'-' * width}  {'-' * 7}  {'-' * 8}"]
    total = 0.0
    for r in results:
        secs = "-" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        total += r.get("seconds") or 0.0
        lines.append(f"{r['name']:<{width}}  {r['status']:<7}  {secs:>8}")
    counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "failed", "skipped")}
    lines.append(f"{'-' * width}  {'-' * 7}  {'-' * 8}")
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines.append(f"{'total':<{width}}  {'':<7}  {total:>8.1f}   ({summary})")
    for r in results:
        if r["status"] != "failed":
            continue
        err = r.get("error") or {}
        cell = err.get("cell")
        where = f"cell In [{cell}]" if cell is not None else "outside a cell"
        lines.append("")
        lines.append(f"FAILED {r['name']}: {where}: {err.get('ename')}: {_short(err.get('evalue'))}")
        if r.get("output"):
            lines.append(f"  executed copy: {r['output']}")
    return "\n".join(lines)


__all__ = [
    "NOTEBOOKS_DIR",
    "OUTPUT_DIR",
    "UNIVERSAL_PARAMS",
    "discover",
    "select",
    "parse_params",
    "declared_parameters",
    "run_pipeline",
    "format_summary",
]
