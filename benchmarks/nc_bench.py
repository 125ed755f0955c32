"""Benchmark: NC1 via thin SVD of M (O(N D K)) vs the D x D pseudo-inverse reference (O(N D^2 + D^3)).

Run:  python benchmarks/nc_bench.py  [--N 50000 --D 512 --K 10 --seed 0]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_of  # noqa: E402

from nbutils.metrics.nc import nc1, nc1_pinv_reference, nc_metrics




def make_data(N: int = 50000, D: int = 512, K: int = 10, seed: int = 0, noise: float = 0.3):
    """Collapsed-ish float32 features: random class means (entries ~N(0,1)) plus within-class noise,
    balanced labels, and a classifier W = noisy copy of the centred means with logits H W^T."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(K, D, generator=g, dtype=torch.float64)
    y = torch.arange(N) % K
    H = (mu[y] + noise * torch.randn(N, D, generator=g, dtype=torch.float64)).to(torch.float32)
    W = ((mu - mu.mean(0)) + 0.1 * torch.randn(K, D, generator=g, dtype=torch.float64)).to(torch.float32)
    logits = H @ W.T
    return H, y, W, logits


def bench_nc(N: int = 50000, D: int = 512, K: int = 10, seed: int = 0) -> dict:
    """Time nc1 (SVD path) vs nc1_pinv_reference and the full nc_metrics call (best of 3 each)."""
    H, y, W, logits = make_data(N, D, K, seed)
    t_fast, v_fast = best_of(lambda: nc1(H, y, K))
    t_ref, v_ref = best_of(lambda: nc1_pinv_reference(H, y, K))
    t_all, metrics = best_of(lambda: nc_metrics(H, y, W=W, logits=logits, num_classes=K))
    rel = abs(v_fast - v_ref) / abs(v_ref) if v_ref != 0 else abs(v_fast - v_ref)
    return {
        "N": N, "D": D, "K": K, "seed": seed, "torch_threads": torch.get_num_threads(),
        "nc1_fast_s": t_fast, "nc1_pinv_s": t_ref, "speedup": t_ref / t_fast,
        "nc1_fast": v_fast, "nc1_pinv": v_ref, "max_rel_diff": rel,
        "nc_metrics_s": t_all, "metrics": metrics,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--N", type=int, default=50000)
    ap.add_argument("--D", type=int, default=512)
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    r = bench_nc(a.N, a.D, a.K, a.seed)
    print(f"N={r['N']} D={r['D']} K={r['K']} seed={r['seed']} torch threads={r['torch_threads']} "
          f"(float32 input, best of 3, time.perf_counter)")
    print(f"nc1 (thin SVD of M)          : {r['nc1_fast_s'] * 1e3:9.1f} ms   NC1 = {r['nc1_fast']:.12g}")
    print(f"nc1_pinv_reference (D x D)   : {r['nc1_pinv_s'] * 1e3:9.1f} ms   NC1 = {r['nc1_pinv']:.12g}")
    print(f"speed-up (reference / fast)  : {r['speedup']:9.2f} x")
    print(f"max relative difference      : {r['max_rel_diff']:.3e}")
    print(f"nc_metrics (W + logits)      : {r['nc_metrics_s'] * 1e3:9.1f} ms")
    for k, v in r["metrics"].items():
        print(f"    {k:22s} {v}")


if __name__ == "__main__":
    main()
