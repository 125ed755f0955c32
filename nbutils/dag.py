"""The pipeline as a DAG of papermill runs, executed in this process or on Dask distributed.

A *run* is one execution of one notebook with one set of parameters (:class:`Run`). Notebooks say
what they need in their metadata::

    {"metadata": {"nbutils": {"needs": ["01"]}}}

(2-digit prefixes or full names of earlier notebooks; ``[]`` for none). A notebook without that key
needs every earlier notebook, the old run-in-order behaviour. :func:`plan` turns a selection of
notebooks, a grid of parameter values and seeds into runs with their dependencies; :func:`execute`
runs them:

* ``executor="sequential"`` (default): one after another in this process, in plan order;
* ``executor="dask"``: each run is a task on Dask distributed: a ``LocalCluster`` of one-thread
  worker processes sized to the machine, or the cluster at ``scheduler="tcp://host:8786"``. Only runs
  whose needs have finished are submitted; a worker that dies has its task rescheduled on another
  worker by the Dask scheduler (up to ``distributed.scheduler.allowed-failures`` times).

A run that fails stops only its dependants (they are ``skipped``, with the failed run named); the
others go on. With ``keep_going=True`` dependants run anyway. A run that has a ``record`` file (sweep
runs) and finds it from an earlier successful run with the same key (notebook source + parameters) is
``cached`` and does no work.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from nbutils.artifacts import config_hash, load_json, save_json

#: Output MIME type of :func:`nbutils.sweep.record`; read back from executed notebooks.
RECORD_MIME = "application/vnd.nbutils.record+json"

#: Environment variables passed from the client to every run's kernel when set here.
PASSED_ENV = ("NBUTILS_RESULTS", "NBUTILS_PROGRESS", "NBUTILS_DATA")

STATUSES = ("ok", "cached", "failed", "skipped")


@dataclass(frozen=True)
class Run:
    """One papermill execution: ``notebook`` with ``params`` → ``output``.

    ``needs``: ids of runs that must succeed first. ``record``: JSON file written after the run (status,
    key, the notebook's recorded rows); with it the run is cacheable. ``figures_dir``: where the run's
    figures go (``NBUTILS_FIGURES_DIR``), None for the default ``figures/``.
    """

    id: str
    notebook: str
    params: dict
    output: str
    cwd: str
    needs: tuple = ()
    record: str | None = None
    figures_dir: str | None = None
    key: str = ""
    kernel_name: str = "python3"
    env: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.notebook).stem


# ----------------------------------------------------------------------------- needs


def declared_needs(path: str | Path) -> list[str] | None:
    """The ``metadata.nbutils.needs`` list of a notebook, or None when it declares nothing."""
    meta = json.loads(Path(path).read_text()).get("metadata", {}).get("nbutils", {})
    needs = meta.get("needs")
    if needs is None:
        return None
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise ValueError(f"{Path(path).name}: metadata nbutils.needs must be a list of notebook names, got {needs!r}")
    return needs


def needs_graph(all_notebooks: Sequence[Path]) -> dict[str, list[str]]:
    """``{stem: [stems it needs directly]}`` for every notebook, names resolved and checked.

    A need must name an *earlier* notebook (so the graph has no cycle and name order is a valid
    order); an unknown or later name raises ValueError.
    """
    stems = [Path(p).stem for p in all_notebooks]
    graph: dict[str, list[str]] = {}
    for i, p in enumerate(all_notebooks):
        stem = stems[i]
        declared = declared_needs(p)
        if declared is None:
            graph[stem] = stems[:i]
            continue
        resolved = []
        for entry in declared:
            key = entry[:-6] if entry.endswith(".ipynb") else entry
            hits = [s for s in stems if (s[:2] == key if re.fullmatch(r"\d{2}", key) else s == key)]
            if not hits:
                raise ValueError(f"{stem} needs {entry!r}, which is no notebook here ({', '.join(stems)})")
            for h in hits:
                if stems.index(h) >= i:
                    raise ValueError(f"{stem} needs {h}, which does not come before it: needs must name earlier notebooks")
                if h not in resolved:
                    resolved.append(h)
        graph[stem] = resolved
    return graph


def effective_needs(graph: dict[str, list[str]], stem: str, selected: set[str]) -> list[str]:
    """The selected notebooks ``stem`` depends on, looking through notebooks that are not selected."""
    out: list[str] = []
    for n in graph.get(stem, []):
        for m in [n] if n in selected else effective_needs(graph, n, selected):
            if m not in out:
                out.append(m)
    return out


# ----------------------------------------------------------------------------- planning


def source_hash(path: str | Path) -> str:
    """Hash of a notebook's code (code cells' sources; not markdown, outputs or metadata): what decides its
    results, so editing the prose does not invalidate a sweep's finished runs."""
    nb = json.loads(Path(path).read_text())
    blob = json.dumps(["".join(c.get("source", "")) for c in nb.get("cells", []) if c.get("cell_type") == "code"])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _slug(value: Any) -> str:
    s = re.sub(r"[^A-Za-z0-9.+-]+", "-", json.dumps(value, sort_keys=True) if not isinstance(value, str) else value)
    return s.strip("-") or "x"


def run_slug(axes: dict[str, Any]) -> str:
    """File-name-safe name of one grid point: ``seed-1_reg_weight_decay-0.001``."""
    if not axes:
        return "default"
    s = "_".join(f"{k}-{_slug(v)}" for k, v in axes.items())
    return s if len(s) <= 100 else s[:80] + "-" + config_hash(axes, 10)


def run_label(stem: str, axes: dict[str, Any]) -> str:
    return stem if not axes else f"{stem}[{', '.join(f'{k}={v!r}' for k, v in axes.items())}]"


def plan(
    notebooks: Sequence[Path],
    all_notebooks: Sequence[Path],
    profile: str,
    params: dict[str, Any],
    declared: dict[Path, set[str]],
    grid: dict[str, list] | None = None,
    output_dir: str | Path = "build/executed",
    cacheable: bool = False,
    kernel_name: str = "python3",
    universal: Iterable[str] = ("seed",),
) -> list[Run]:
    """The runs of ``notebooks`` (a selection of ``all_notebooks``, in order) over ``grid``.

    Every notebook is expanded over the grid parameters it declares (``seed`` counts as declared by
    all): ``01_train_original`` in a sweep over ``forget_classes`` × 3 seeds has 3 runs, a method
    notebook 3 × |forget_classes|. A run needs the runs of each needed notebook that agree with it on
    the grid parameters both declare (all runs of that notebook when it has axes this one lacks). ``cacheable`` (sweeps): each run keeps its executed notebook, a record
    file and its figures under ``output_dir/<notebook>/<grid point>``; otherwise (the pipeline)
    ``output_dir/<notebook>.ipynb`` and the figures go to ``figures/``.
    """
    grid = dict(grid or {})
    universal = set(universal)
    graph = needs_graph(all_notebooks)
    selected = {p.stem for p in notebooks}
    output_dir = Path(output_dir)
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    runs_of: dict[str, list[tuple[dict, str]]] = {}  # notebook -> [(grid point as JSON, run id)]
    runs: list[Run] = []
    for nb in notebooks:
        stem = nb.stem
        axes = [g for g in grid if g in declared[nb] or g in universal]
        fixed = {k: v for k, v in params.items() if k in declared[nb] or k in universal}
        src = source_hash(nb)
        for values in itertools.product(*(grid[a] for a in axes)):
            point = dict(zip(axes, values))
            p = {"profile": profile, **fixed, **point}
            mine = {a: json.dumps(v, sort_keys=True) for a, v in point.items()}
            # the runs of each needed notebook that agree on the axes both have (all of them on the others)
            needs = [rid for m in effective_needs(graph, stem, selected) for pt, rid in runs_of[m]
                     if all(mine[a] == v for a, v in pt.items() if a in mine)]
            rid = run_label(stem, point)
            runs_of.setdefault(stem, []).append((mine, rid))
            key = config_hash({"source": src, "params": p, "kernel": kernel_name})
            if cacheable:
                base = output_dir / stem / run_slug(point)
                output, record, figs = f"{base}.ipynb", f"{base}.json", f"{base}.figures"
            else:
                output, record, figs = str(output_dir / nb.name), None, None
            runs.append(Run(id=rid, notebook=str(nb), params=p, output=output, cwd=str(nb.parent), needs=tuple(needs),
                            record=record, figures_dir=figs, key=key, kernel_name=kernel_name, env=env))
    return runs


# ----------------------------------------------------------------------------- one run

_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """Set environment variables for the kernel started inside the block (restored after).

    The kernel inherits this process's environment; the lock keeps two runs in one process from
    mixing theirs (Dask workers here have one thread each).
    """
    with _ENV_LOCK:
        old = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def read_records(path: str | Path) -> dict[str, Any]:
    """The rows recorded by :func:`nbutils.sweep.record` in an executed notebook: ``{name: payload}``."""
    nb = json.loads(Path(path).read_text())
    out: dict[str, Any] = {}
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []) or []:
            data = o.get("data") or {}
            if RECORD_MIME in data:
                payload = data[RECORD_MIME]
                if isinstance(payload, str):
                    payload = json.loads(payload)
                out[payload["name"]] = payload
    return out


def _result(run: Run, status: str, seconds: float | None = None, error: dict | None = None,
            records: dict | None = None, cause: str | None = None) -> dict[str, Any]:
    out = Path(run.output)
    return {"id": run.id, "name": run.id, "notebook": run.name, "params": run.params, "status": status,
            "seconds": seconds, "output": out if status in ("ok", "failed", "cached") and out.exists() else None,
            "error": error, "records": records or {}, "cause": cause, "key": run.key}


def run_one(run: Run, threads: int | None = None) -> dict[str, Any]:
    """Execute one run with papermill (the Dask task, and the sequential executor's step).

    Never raises for a failing notebook: the result has ``status="failed"`` and ``error`` =
    ``{"cell": In [n] of the executed copy, "ename", "evalue"}``. ``threads`` sets OMP/MKL/OpenBLAS
    threads of the kernel.
    """
    import papermill

    Path(run.output).parent.mkdir(parents=True, exist_ok=True)
    env = {**run.env, "NBUTILS_NOTEBOOK": run.name}
    if run.figures_dir:
        env["NBUTILS_FIGURES_DIR"] = run.figures_dir
    if threads:
        env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    t0 = time.perf_counter()
    error = None
    with _environ(env):
        try:
            papermill.execute_notebook(run.notebook, run.output, parameters=run.params, kernel_name=run.kernel_name,
                                       cwd=run.cwd, progress_bar=False, log_output=False)
        except papermill.PapermillExecutionError as exc:
            error = {"cell": exc.exec_count, "ename": exc.ename, "evalue": exc.evalue}
        except Exception as exc:  # kernel died, bad notebook file, missing kernel, ...
            error = {"cell": None, "ename": type(exc).__name__, "evalue": str(exc)}
    seconds = time.perf_counter() - t0
    records = {}
    if Path(run.output).exists():
        try:
            records = read_records(run.output)
        except (ValueError, KeyError, OSError) as exc:
            error = error or {"cell": None, "ename": type(exc).__name__, "evalue": f"unreadable record: {exc}"}
    res = _result(run, "ok" if error is None else "failed", seconds, error, records)
    if run.record:
        save_json(run.record, {**res, "output": run.output})
    return res


def cached_result(run: Run) -> dict[str, Any] | None:
    """The stored result of an earlier successful run with the same key, else None."""
    if not run.record or not Path(run.record).exists() or not Path(run.output).exists():
        return None
    try:
        stored = load_json(run.record)
    except (ValueError, OSError):
        return None
    if stored.get("status") != "ok" or stored.get("key") != run.key:
        return None
    return _result(run, "cached", stored.get("seconds"), None, stored.get("records"))


# ----------------------------------------------------------------------------- executors


class SequentialExecutor:
    """Runs one at a time in this process, in submission order."""

    name = "sequential"

    def __init__(self, threads: int | None = None):
        self.threads = threads
        self.queue: list[Run] = []
        self.order: dict[str, int] = {}  # plan position: the earliest ready run goes first
        self.on_start: Callable[[Run], None] | None = None

    def submit(self, run: Run) -> None:
        self.queue.append(run)

    def in_flight(self) -> int:
        return len(self.queue)

    def running(self) -> int:
        return min(1, len(self.queue))

    def wait(self, tick: Callable[[], None] | None = None) -> list[tuple[Run, dict]]:
        run = min(self.queue, key=lambda r: self.order.get(r.id, 0))
        self.queue.remove(run)
        if self.on_start is not None:
            self.on_start(run)
        return [(run, run_one(run, self.threads))]

    def close(self) -> None:
        pass


class DaskExecutor:
    """Each run a task on Dask distributed; ``wait`` returns whatever finished (polling every 0.2 s)."""

    name = "dask"

    def __init__(self, client, threads: int | None = None, retries: int = 2, owns: Sequence[Any] = ()):
        self.client, self.threads, self.retries, self._owns = client, threads, retries, list(owns)
        self.futures: dict[Any, Run] = {}
        self._token = uuid.uuid4().hex[:8]
        self._running, self._checked = 0, 0.0

    def submit(self, run: Run) -> None:
        fut = self.client.submit(run_one, run, self.threads, key=f"nbutils-{self._token}-{run.id}", pure=False,
                                 retries=self.retries)
        self.futures[fut] = run

    def in_flight(self) -> int:
        return len(self.futures)

    def running(self) -> int:
        now = time.monotonic()
        if now - self._checked > 1.0:
            self._checked = now
            try:
                keys = {f.key for f in self.futures}
                self._running = sum(k in keys for ks in self.client.processing().values() for k in ks)
            except Exception:  # scheduler busy or gone: keep the last count
                pass
        return min(self._running, len(self.futures))

    def wait(self, tick: Callable[[], None] | None = None) -> list[tuple[Run, dict]]:
        while True:
            done = [f for f in self.futures if f.done()]
            if done:
                break
            if tick is not None:
                tick()
            time.sleep(0.2)
        out = []
        self._checked = 0.0  # ask the scheduler again next time
        for f in done:
            run = self.futures.pop(f)
            try:
                res = f.result()
            except Exception as exc:  # KilledWorker after too many worker deaths, a lost scheduler, ...
                res = _result(run, "failed", None, {"cell": None, "ename": type(exc).__name__, "evalue": str(exc)})
            out.append((run, res))
        return out

    def close(self) -> None:
        for obj in [self.client] + self._owns:
            with contextlib.suppress(Exception):
                obj.close()


def dask_executor(scheduler: str | None = None, workers: int | None = None, retries: int = 2,
                  threads: int | None = None) -> DaskExecutor:
    """A :class:`DaskExecutor` on the cluster at ``scheduler``, or on a new ``LocalCluster``.

    The local cluster has ``workers`` one-thread worker processes (default: one per CPU core) and each
    run's kernel gets ``threads`` threads (default ``cores // workers``); no dashboard. On a cluster of
    your own the kernels get ``threads`` if given, else the workers' environment decides.
    """
    import logging

    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler, timeout="30s")
        return DaskExecutor(client, threads=threads, retries=retries)
    cores = os.cpu_count() or 1
    n = workers or cores
    if n < 1:
        raise ValueError(f"workers must be >= 1, got {n}")
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    return DaskExecutor(client, threads=threads or max(1, cores // n), retries=retries, owns=[cluster])


# ----------------------------------------------------------------------------- progress


class Progress:
    """One display for the whole DAG: a bar with done / cached / running / queued / failed / skipped
    counts (when progress bars are on) and a line per finished run (when ``lines``)."""

    def __init__(self, total: int, lines: bool, bar: bool, desc: str = "runs"):
        self.total, self.lines, self.k = total, lines, 0
        self.bar, self._last = None, ""
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)

    def _print(self, msg: str) -> None:
        if not self.lines:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def started(self, run: Run) -> None:
        if self.bar is None:
            self._print(f"[{self.k + 1}/{self.total}] {run.id} ...")

    def finished(self, res: dict) -> None:
        self.k += 1
        secs = f" ({res['seconds']:.1f} s)" if res["status"] in ("ok", "failed") and res.get("seconds") else ""
        msg = f"[{self.k}/{self.total}] {res['id']}: {res['status']}{secs}"
        if res.get("error"):
            msg += f" - {res['error']['ename']}: {shorten(res['error']['evalue'], 160)}"
        if res.get("cause"):
            msg += f" ({res['cause']})"
        self._print(msg)
        if self.bar is not None:
            self.bar.update(1)

    def counts(self, counts: dict[str, int], running: int, queued: int) -> None:
        text = (f"ok {counts['ok']} · cached {counts['cached']} · running {running} · queued {queued} · "
                f"failed {counts['failed']} · skipped {counts['skipped']}")
        if self.bar is not None and text != self._last:
            self._last = text
            self.bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def shorten(text: Any, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def failure_lines(res: dict, label: str = "executed copy") -> list[str]:
    """``FAILED <run>: cell In [n]: Error: message`` and where its executed notebook is."""
    err = res.get("error") or {}
    where = f"cell In [{err['cell']}]" if err.get("cell") is not None else "outside a cell"
    lines = [f"FAILED {res['name']}: {where}: {err.get('ename')}: {shorten(err.get('evalue'))}"]
    if res.get("output"):
        lines.append(f"  {label}: {res['output']}")
    return lines


# ----------------------------------------------------------------------------- the loop


def execute(
    runs: Sequence[Run],
    executor: str | Any = "sequential",
    scheduler: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    keep_going: bool = False,
    force: bool = False,
    progress: bool = True,
    bar: bool | None = None,
) -> list[dict[str, Any]]:
    """Run the DAG; return one result per run, in ``runs`` order.

    A result: ``{"id", "notebook", "params", "status": ok|cached|failed|skipped, "seconds", "output"
    (executed copy or None), "error" ({"cell", "ename", "evalue"} or None), "records", "cause" (why
    skipped)}``. ``executor``: ``"sequential"``, ``"dask"`` or an executor object (``submit``,
    ``wait(tick)``, ``in_flight``, ``running``, ``close``). ``force``: ignore cached results.
    ``threads``: OMP/MKL/OpenBLAS threads of every kernel (default: all cores sequentially, cores /
    workers on a LocalCluster). Results are bit-identical across executors at equal ``threads``, not
    across thread counts (a convolution's sums are split differently).
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    ids = [r.id for r in runs]
    if len(set(ids)) != len(ids):
        raise ValueError("run ids must be unique")
    known = set(ids)
    for r in runs:
        missing = [n for n in r.needs if n not in known]
        if missing:
            raise ValueError(f"{r.id} needs {missing}, which are not in this plan")
    if bar is None:
        from nbutils.train import progress_enabled

        bar = progress and progress_enabled()
    if executor == "sequential":
        ex = SequentialExecutor(threads=threads)
    elif executor == "dask":
        ex = dask_executor(scheduler=scheduler, workers=workers, threads=threads)
    elif isinstance(executor, str):
        raise ValueError(f"unknown executor {executor!r}; allowed: sequential, dask")
    else:
        ex = executor
    display = Progress(len(runs), lines=progress, bar=bar)
    if isinstance(ex, SequentialExecutor):
        ex.order = {r.id: i for i, r in enumerate(runs)}
        ex.on_start = display.started
    results: dict[str, dict] = {}
    counts = dict.fromkeys(STATUSES, 0)
    pending = list(runs)

    def tick() -> None:
        running = ex.running()
        display.counts(counts, running, ex.in_flight() - running)

    def done(res: dict) -> None:
        results[res["id"]] = res
        counts[res["status"]] += 1
        display.finished(res)

    try:
        while True:
            changed = True
            while changed:  # settle everything decidable without running: skipped, cached, ready to submit
                changed = False
                still = []
                for r in pending:
                    if not all(n in results for n in r.needs):
                        still.append(r)
                        continue
                    bad = [n for n in r.needs if results[n]["status"] in ("failed", "skipped")]
                    if bad and not keep_going:
                        done(_result(r, "skipped", cause=f"needs {bad[0]}, which {results[bad[0]]['status']}"))
                        changed = True
                    elif (hit := None if force else cached_result(r)) is not None:
                        done(hit)
                        changed = True
                    else:
                        ex.submit(r)
                pending = still
            if not ex.in_flight():
                if pending:  # cannot happen with needs from plan(): they point backwards
                    raise RuntimeError(f"runs waiting on needs that never finish: {[r.id for r in pending]}")
                break
            tick()
            for _run, res in ex.wait(tick=tick):
                done(res)
            tick()
    finally:
        display.close()
        if executor in ("sequential", "dask"):
            ex.close()
    return [results[i] for i in ids]


__all__ = ["RECORD_MIME", "Run", "declared_needs", "needs_graph", "effective_needs", "source_hash", "run_slug",
           "plan", "read_records", "run_one", "cached_result", "SequentialExecutor", "DaskExecutor", "dask_executor",
           "Progress", "execute", "shorten", "failure_lines"]
