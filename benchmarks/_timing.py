"""Shared timing helper of the benchmark scripts."""
from __future__ import annotations

import time


def best_of(fn, repeats: int = 3):
    """Return (best wall time in seconds over ``repeats`` runs, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out
