"""Benchmark: one smoke sweep of independent notebook runs, sequential vs Dask LocalCluster.

The sweep is notebook 30 (paper B's bias-free MLP, profile smoke) over ``--wd`` weight decays ×
``--seeds`` seeds (default 4 × 2 = 8 independent runs). Each executor starts from an empty results
cache and its own output folder, so both do all the work; the Dask time includes starting the
LocalCluster (``--workers`` one-thread worker processes, default one per core). Prints both wall
times, the ratio, and whether both executors recorded the same numbers.

Run:  python benchmarks/sweep_bench.py  [--wd 0,1e-4,1e-3,5e-3 --seeds 2 --workers 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from nbutils import dag, sweep


def run(executor: str, root: Path, grid: dict, seeds: int, workers: int | None) -> tuple[float, list[dict]]:
    os.environ["NBUTILS_RESULTS"] = str(root / "results")
    os.environ["NBUTILS_FIGURES_DIR"] = str(root / "figures")
    spec = sweep.Spec(name="bench", notebooks=["30"], grid=dict(grid), seeds=seeds)
    t0 = time.perf_counter()
    out = sweep.run_sweep(spec, profile="smoke", executor=executor, workers=workers, output_dir=root / "sweeps",
                          progress=False)
    return time.perf_counter() - t0, out["results"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wd", default="0,1e-4,1e-3,5e-3", help="weight decays (comma-separated)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: one per core)")
    args = ap.parse_args(argv)
    os.environ.setdefault("NBUTILS_PROGRESS", "0")
    grid = {"reg_weight_decay": sweep.parse_values(args.wd)}
    n = len(grid["reg_weight_decay"]) * args.seeds
    workers = args.workers or os.cpu_count() or 1
    print(f"{n} independent smoke runs of notebook 30 on {os.cpu_count()} cores; Dask LocalCluster with {workers} "
          f"one-thread workers (each kernel {max(1, (os.cpu_count() or 1) // workers)} thread(s))", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t_seq, r_seq = run("sequential", Path(tmp) / "seq", grid, args.seeds, None)
        t_dask, r_dask = run("dask", Path(tmp) / "dask", grid, args.seeds, workers)
    ok = all(r["status"] == "ok" for r in r_seq + r_dask)
    same = [r["records"] for r in r_seq] == [r["records"] for r in r_dask]
    busy_seq = sum(r["seconds"] for r in r_seq)
    busy_dask = sum(r["seconds"] for r in r_dask)
    print(f"sequential:        {t_seq:7.1f} s wall ({busy_seq:.1f} s in runs, {busy_seq / n:.1f} s per run)")
    print(f"dask LocalCluster: {t_dask:7.1f} s wall, cluster start included ({busy_dask:.1f} s in runs, "
          f"{busy_dask / n:.1f} s per run)")
    print(f"speed-up sequential / dask: {t_seq / t_dask:.2f}x; all runs ok: {ok}; same recorded numbers: {same}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
