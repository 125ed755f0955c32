"""Sweeps: the pipeline DAG over a grid of notebook parameters and seeds, and mean ± std tables.

``python -m nbutils sweep sweeps/B_weight_decay.toml --executor dask`` or, ad hoc,
``python -m nbutils sweep --only 30 --grid reg_weight_decay=0,5e-3 --seeds 3``.

* **Notebook side**: :func:`record` publishes rows of numbers as an output of the executed notebook
  (MIME type :data:`nbutils.dag.RECORD_MIME`); nothing else is needed for a notebook to be swept.
* **Grid**: ``name=v1,v2`` (Python literals; ``0..9`` is the inclusive integer range; lists as
  ``forget_classes=[0],[1,2]``); ``--seeds N`` adds ``seed = 0 … N-1``. Every notebook is expanded over
  the grid parameters it declares (:func:`nbutils.dag.plan`).
* **Spec files** (``sweeps/*.toml``, one per paper table): notebooks, grid, seeds, fixed parameters and
  the tables to build; a grid value ``"profile:reg_wd_grid"`` takes the list from the profile.
* **Runs** keep their executed notebook, their figures and a record file under
  ``build/sweeps/<sweep>/<profile>/<notebook>/<grid point>.*``; a finished run is not run again.
* **Tables**: mean ± sample std over the averaged axes (seeds, and e.g. forget sets), the number of
  runs behind each cell in parentheses, markdown + LaTeX into ``figures/`` via
  :func:`nbutils.plotting.savetable`.
"""
from __future__ import annotations

import ast
import datetime as _dt
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from nbutils import dag
from nbutils.nrc_report import mean_std
from nbutils.artifacts import REPO_ROOT, config_hash, save_json

SWEEPS_DIR = REPO_ROOT / "sweeps"
OUTPUT_DIR = REPO_ROOT / "build" / "sweeps"

_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ----------------------------------------------------------------------------- notebook side


def _scalar(v: Any) -> Any:
    try:
        import numpy as np

        if isinstance(v, np.generic):
            v = v.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v if v is None or isinstance(v, (bool, int, float, str)) else None


def record(name: str, rows: Sequence[dict] | dict, key: Sequence[str] = ()) -> None:
    """Publish ``rows`` (dicts of numbers and labels) for sweep tables.

    ``key``: the fields that name a row (e.g. ``["model"]``, ``["layer"]``); the other numeric fields
    are averaged across runs. Values that are not plain numbers or strings (lists, dicts, NaN) are
    dropped. The payload is displayed with MIME type :data:`nbutils.dag.RECORD_MIME` (and a one-line
    text form), so it lives in the executed notebook, where :func:`nbutils.dag.read_records` finds it.
    """
    if not _NAME.match(name or ""):
        raise ValueError(f"record name must be an identifier, got {name!r}")
    if isinstance(rows, dict):
        rows = [rows]
    clean = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"record {name!r}: row {i} is a {type(row).__name__}, not a dict")
        missing = [k for k in key if k not in row]
        if missing:
            raise ValueError(f"record {name!r}: row {i} lacks the key field(s) {missing}")
        clean.append({str(k): s for k, v in row.items() if (s := _scalar(v)) is not None or v is None})
    payload = {"name": name, "key": list(key), "rows": clean}
    try:
        from IPython.display import display

        display({dag.RECORD_MIME: payload, "text/plain": f"[sweep record {name!r}: {len(clean)} rows]"}, raw=True)
    except ImportError:  # pragma: no cover
        print(f"[sweep record {name!r}: {len(clean)} rows]")


# ----------------------------------------------------------------------------- grid and spec


def parse_values(raw: str) -> list:
    """``"0,1e-3"`` → ``[0, 0.001]``; ``"0..3"`` → ``[0, 1, 2, 3]``; ``"[0],[1,2]"`` → ``[[0], [1, 2]]``;
    ``"rl,salun"`` → ``["rl", "salun"]``."""
    raw = raw.strip()
    m = _RANGE.match(raw)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if hi < lo:
            raise ValueError(f"empty range {raw!r}")
        return list(range(lo, hi + 1))
    try:
        value = ast.literal_eval(f"[{raw}]")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = [s.strip() for s in raw.split(",")]
    if not value or any(v == "" for v in value):
        raise ValueError(f"no values in {raw!r}")
    return value


def parse_grid(items: Iterable[str] | None) -> dict[str, list]:
    """``["method=rl,salun", "forget=0..9"]`` → ``{"method": ["rl", "salun"], "forget": [0, …, 9]}``."""
    grid: dict[str, list] = {}
    for item in items or ():
        name, sep, raw = str(item).partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise ValueError(f"malformed grid {item!r}: expected name=v1,v2,... (or name=a..b)")
        if name in grid:
            raise ValueError(f"grid parameter {name!r} given twice")
        grid[name] = parse_values(raw)
    return grid


def seed_values(seeds: int | Sequence[int] | None) -> list[int] | None:
    if seeds is None:
        return None
    if isinstance(seeds, bool) or not isinstance(seeds, (int, list, tuple)):
        raise ValueError(f"seeds must be a count or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        return list(range(seeds))
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be integers, got {seeds!r}")
    return list(seeds)


@dataclass
class Table:
    """One aggregated table: rows named by ``rows`` (grid parameters and/or the record's key fields),
    one column per entry of ``columns`` (record field → header), cells mean ± std (n). ``scale``: a
    factor for every column or ``{field: factor}`` (e.g. 100 for fractions shown as percent)."""

    name: str
    record: str
    rows: list[str]
    columns: dict[str, str]
    scale: float | dict = 1.0
    digits: int = 3
    caption: str = ""


@dataclass
class Spec:
    name: str
    notebooks: list[str]
    grid: dict[str, Any] = field(default_factory=dict)
    seeds: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    average: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    description: str = ""
    path: str | None = None


_SPEC_KEYS = {"description", "notebooks", "grid", "seeds", "params", "average", "tables"}
_TABLE_KEYS = {"name", "record", "rows", "columns", "scale", "digits", "caption"}


def load_spec(path: str | Path) -> Spec:
    """Read and check a sweep file (TOML; see ``sweeps/README.md``)."""
    path = Path(path)
    if not path.exists():
        known = ", ".join(p.name for p in sorted(SWEEPS_DIR.glob("*.toml"))) or "none"
        raise ValueError(f"no sweep file {path} (sweeps in {SWEEPS_DIR}: {known})")
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    unknown = set(d) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"{path.name}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
    if not isinstance(d.get("notebooks"), list) or not d["notebooks"]:
        raise ValueError(f"{path.name}: 'notebooks' must be a non-empty list of notebook prefixes or names")
    tables = []
    for i, t in enumerate(d.get("tables", [])):
        bad = set(t) - _TABLE_KEYS
        if bad or not {"name", "record", "rows", "columns"} <= set(t):
            raise ValueError(f"{path.name}: table {i} needs name, record, rows, columns (allowed keys: "
                             f"{sorted(_TABLE_KEYS)}; unknown: {sorted(bad)})")
        cols = t["columns"]
        if isinstance(cols, list):
            cols = {c: c for c in cols}
        scale = t.get("scale", 1.0)
        scale = {str(k): float(v) for k, v in scale.items()} if isinstance(scale, dict) else float(scale)
        if isinstance(scale, dict) and set(scale) - set(cols):
            raise ValueError(f"{path.name}: table {t['name']!r}: scale names unknown column(s) {sorted(set(scale) - set(cols))}")
        tables.append(Table(name=t["name"], record=t["record"], rows=list(t["rows"]), columns=dict(cols),
                            scale=scale, digits=int(t.get("digits", 3)),
                            caption=t.get("caption", "")))
    return Spec(name=path.stem, notebooks=[str(n) for n in d["notebooks"]], grid=dict(d.get("grid", {})),
                seeds=d.get("seeds"), params=dict(d.get("params", {})), average=list(d.get("average", [])),
                tables=tables, description=d.get("description", ""), path=str(path))


def resolve_grid(grid: dict[str, Any], profile: str) -> dict[str, list]:
    """Grid values as lists; ``"profile:<key>"`` becomes that profile's list (e.g. ``reg_wd_grid``)."""
    from nbutils import profiles

    out = {}
    for name, values in grid.items():
        if isinstance(values, str) and values.startswith("profile:"):
            key = values.split(":", 1)[1]
            try:
                values = getattr(profiles.resolve(profile), key)
            except AttributeError as exc:
                raise ValueError(f"grid {name}: profile {profile!r} has no parameter {key!r}") from exc
        if isinstance(values, str):
            values = parse_values(values)
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid {name}: expected a non-empty list of values, got {values!r}")
        out[name] = values
    return out


# ----------------------------------------------------------------------------- aggregation


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "{" + ", ".join(map(str, v)) + "}"
    return str(v)


def aggregate(results: Sequence[dict], record_name: str, rows: Sequence[str],
              columns: Sequence[str]) -> list[tuple[tuple, dict[str, list[float]]]]:
    """Group the recorded rows of every finished run by ``rows`` (fields of the record row, else the
    run's parameters) and collect each column's values: ``[(row key, {column: [values]})]`` in order
    of first appearance."""
    groups: dict[tuple, dict[str, list[float]]] = {}
    for res in results:
        if res["status"] not in ("ok", "cached"):
            continue
        payload = (res.get("records") or {}).get(record_name)
        if payload is None:
            continue
        for row in payload["rows"]:
            key = []
            for f in rows:
                if f in row:
                    key.append(row[f])
                elif f in res["params"]:
                    key.append(res["params"][f])
                else:
                    raise ValueError(f"table rows: {f!r} is neither a field of record {record_name!r} "
                                     f"({sorted(row)}) nor a parameter of run {res['id']}")
            cells = groups.setdefault(tuple(_show(k) for k in key), {c: [] for c in columns})
            for c in columns:
                v = _num(row.get(c))
                if v is not None:
                    cells[c].append(v)
    return list(groups.items())


def format_cell(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """``0.512 ± 0.013 (3)``; ``–`` when no run has the value; no ± for a single run."""
    n = len(values)
    if n == 0:
        return "–"
    m, s = mean_std([scale * v for v in values])
    if n == 1:
        return f"{m:.{digits}f} (1)"
    return f"{m:.{digits}f} ± {s:.{digits}f} ({n})"


def build_table(results: Sequence[dict], table: Table) -> tuple[str, str, int]:
    """``(markdown, latex, number of rows)`` of one aggregated table."""
    from nbutils.nrc_report import tables

    groups = aggregate(results, table.record, table.rows, list(table.columns))
    header = list(table.rows) + list(table.columns.values())
    scale = table.scale if isinstance(table.scale, dict) else dict.fromkeys(table.columns, table.scale)
    body = [list(key) + [format_cell(cells[c], scale.get(c, 1.0), table.digits) for c in table.columns]
            for key, cells in groups]
    md, tex = tables(header, body)
    return md, tex, len(body)


def default_tables(results: Sequence[dict], grid: dict[str, list], average: Sequence[str], name: str) -> list[Table]:
    """One table per record name seen: rows = the grid parameters (not averaged over) of the runs that
    wrote it + the record's key, columns = every numeric field."""
    seen: dict[str, dict] = {}
    numeric: dict[str, list[str]] = {}
    axes: dict[str, list[str]] = {}
    for res in results:
        for rname, payload in (res.get("records") or {}).items():
            seen.setdefault(rname, payload)
            cols = numeric.setdefault(rname, [])
            for row in payload["rows"]:
                for k, v in row.items():
                    if k not in payload["key"] and _num(v) is not None and k not in cols:
                        cols.append(k)
            kept = axes.setdefault(rname, [])
            kept += [g for g in grid if g not in average and g in res["params"] and g not in kept]
    return [Table(name=f"sweep_{name}_{r}", record=r, rows=[g for g in grid if g in axes[r]]
                  + [k for k in p["key"] if k not in axes[r]], columns={c: c for c in numeric[r]})
            for r, p in seen.items()]


# ----------------------------------------------------------------------------- running


def sweep_name(notebooks: Sequence[str], grid: dict, params: dict) -> str:
    return "cli-" + config_hash({"notebooks": list(notebooks), "grid": grid, "params": params}, 8)


def plan_sweep(spec: Spec, profile: str, output_dir: str | Path = OUTPUT_DIR, notebooks_dir: str | Path | None = None,
               kernel_name: str = "python3") -> tuple[list[dag.Run], dict[str, list], list[str], Path]:
    """The runs of a sweep, its resolved grid (seeds included), the axes its tables average over and its
    output folder; checks profile, notebooks, every grid and fixed parameter (ValueError) first."""
    from nbutils import pipeline

    notebooks_dir = Path(notebooks_dir or pipeline.NOTEBOOKS_DIR)
    everything = pipeline.discover(notebooks_dir)
    notebooks = pipeline.select(everything, spec.notebooks)
    grid = resolve_grid(spec.grid, profile)
    seeds = seed_values(spec.seeds)
    if seeds is not None:
        if "seed" in grid:
            raise ValueError("give seeds either as --seeds / 'seeds' or as a grid over 'seed', not both")
        grid["seed"] = seeds
    if "profile" in grid:
        raise ValueError("'profile' cannot be a grid parameter: run one sweep per profile")
    overlap = set(grid) & set(spec.params)
    if overlap:
        raise ValueError(f"parameter(s) {sorted(overlap)} given both as fixed and as a grid")
    declared = pipeline.validate(profile, {**spec.params, **grid}, notebooks)
    average = list(dict.fromkeys(["seed", *spec.average]))
    for a in spec.average:
        if a not in grid:
            raise ValueError(f"average over {a!r}: not a grid parameter ({', '.join(grid) or 'none'})")
    out = Path(output_dir) / spec.name / profile
    runs = dag.plan(notebooks, everything, profile, spec.params, declared, grid=grid, output_dir=out, cacheable=True,
                    kernel_name=kernel_name, universal=pipeline.UNIVERSAL_PARAMS)
    return runs, grid, average, out


def run_sweep(
    spec: Spec,
    profile: str = "smoke",
    executor: str | Any = "sequential",
    scheduler: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    output_dir: str | Path = OUTPUT_DIR,
    notebooks_dir: str | Path | None = None,
    force: bool = False,
    keep_going: bool = False,
    progress: bool = True,
    kernel_name: str = "python3",
    write_tables: bool = True,
) -> dict[str, Any]:
    """Plan, run and aggregate one sweep; return ``{"results", "tables", "summary", "output_dir"}``.

    Checks everything it can (profile, notebooks, every grid and fixed parameter declared by a selected
    notebook) before running anything; raises ValueError then.
    """
    runs, grid, average, out = plan_sweep(spec, profile, output_dir, notebooks_dir, kernel_name)
    started = _dt.datetime.now(_dt.timezone.utc)
    results = dag.execute(runs, executor=executor, scheduler=scheduler, workers=workers, threads=threads,
                          keep_going=keep_going, force=force, progress=progress)
    written = []
    if write_tables:
        written = write_sweep_tables(results, spec, grid, average, profile)
    summary = format_sweep_summary(results, written)
    save_json(out / "sweep.json", {"spec": spec.__dict__ | {"tables": [t.__dict__ for t in spec.tables]},
                                   "profile": profile, "grid": grid, "started": started.isoformat(),
                                   "results": [{k: v for k, v in r.items() if k != "records"} for r in results],
                                   "tables": [str(p) for p in written]})
    print(summary, flush=True)
    return {"results": results, "tables": written, "summary": summary, "output_dir": out}


def write_sweep_tables(results: Sequence[dict], spec: Spec, grid: dict[str, list], average: Sequence[str],
                       profile: str) -> list[Path]:
    """Write every table of ``spec`` (or the default ones) as ``figures/<name>.md`` and ``.tex``."""
    from nbutils.nrc_report import tex_escape
    from nbutils.plotting import savetable

    tabs = spec.tables or default_tables(results, grid, average, spec.name)
    done = sum(r["status"] in ("ok", "cached") for r in results)
    over = ", ".join(f"{a} ∈ {{{', '.join(_show(v) for v in grid[a])}}}" for a in average if a in grid)
    paths = []
    for t in tabs:
        md, tex, nrows = build_table(results, t)
        if nrows == 0:
            continue
        cap = (f"{t.caption + ' ' if t.caption else ''}Mean ± sample std over {over or 'one run'}; in parentheses the "
               f"number of runs behind each cell. Sweep {spec.name}, profile {profile}, {done} of {len(results)} runs "
               f"finished.")
        paths.append(savetable(md + "\n" + cap + "\n", t.name, "md"))
        tex_doc = ("\\begin{table}\n\\centering\n" + tex + f"\\caption{{{tex_escape(cap)}}}\n"
                   f"\\label{{tab:{t.name}}}\n\\end{{table}}\n")
        paths.append(savetable(tex_doc, t.name, "tex"))
    return paths


def format_sweep_summary(results: Sequence[dict], tables: Sequence[Path] = ()) -> str:
    """Counts per notebook and status, total run time, every failed run with its cell and executed
    notebook, the skipped runs' causes, and the tables written."""
    per: dict[str, dict[str, Any]] = {}
    for r in results:
        d = per.setdefault(r["notebook"], {**dict.fromkeys(dag.STATUSES, 0), "seconds": 0.0})
        d[r["status"]] += 1
        if r["status"] in ("ok", "failed"):
            d["seconds"] += r.get("seconds") or 0.0
    w = max([8] + [len(n) for n in per])
    lines = [f"{'notebook':<{w}}  {'runs':>4}  {'ok':>4}  {'cached':>6}  {'failed':>6}  {'skipped':>7}  {'seconds':>8}"]
    lines.append("-" * len(lines[0]))
    tot = {**dict.fromkeys(dag.STATUSES, 0), "seconds": 0.0}
    for n, d in per.items():
        runs = sum(d[s] for s in dag.STATUSES)
        lines.append(f"{n:<{w}}  {runs:>4}  {d['ok']:>4}  {d['cached']:>6}  {d['failed']:>6}  {d['skipped']:>7}  "
                     f"{d['seconds']:>8.1f}")
        for k in tot:
            tot[k] += d[k]
    lines.append("-" * len(lines[0]))
    lines.append(f"{'total':<{w}}  {len(results):>4}  {tot['ok']:>4}  {tot['cached']:>6}  {tot['failed']:>6}  "
                 f"{tot['skipped']:>7}  {tot['seconds']:>8.1f}")
    for r in results:
        if r["status"] == "failed":
            lines += dag.failure_lines(r, label="executed notebook")
    skipped = [r for r in results if r["status"] == "skipped"]
    if skipped:
        lines.append(f"skipped {len(skipped)} run(s) whose needs failed: "
                     + "; ".join(f"{r['id']} ({r['cause']})" for r in skipped[:20])
                     + (" ..." if len(skipped) > 20 else ""))
    for p in tables:
        lines.append(f"table: {p}")
    return "\n".join(lines)


__all__ = ["SWEEPS_DIR", "OUTPUT_DIR", "record", "parse_values", "parse_grid", "seed_values", "Table", "Spec",
           "load_spec", "resolve_grid", "plan_sweep", "aggregate", "format_cell", "build_table", "default_tables",
           "sweep_name", "run_sweep", "write_sweep_tables", "format_sweep_summary"]
