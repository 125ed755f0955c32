"""Benchmark: deep-NRC metrics of every layer of an MLP from one streamed forward pass.

A bias-free MLP (``depth`` Linear layers, width ``width``, ReLU, input dim 14, output n)
is run over N random inputs in batches; forward pre-hooks feed each Linear layer's input
features and the batch targets to a :class:`nbutils.metrics.nrc.FeatureStats`, so H is
never stored. After the pass, ``FeatureStats.metrics`` gives NRC1-NRC4 (+ stable ranks) of
every layer. Reported separately: the plain forward pass, the statistics accumulation
(inside the hooks) and the metric evaluation, per layer and in total; the memory that the
Gram-matrix CKA of the authors' code (two N x N float64 matrices) would need; and a check
that feature-space CKA equals Gram CKA on a subset.

Run:  python benchmarks/nrc_bench.py  [--N 100000 --width 512 --depth 8 --n 4 --batch 10000]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from nbutils.metrics.nrc import FeatureStats, cka, cka_gram, nrc_layers
from nbutils.models import RegressionMLP

D_IN = 14


def build_mlp(width: int = 512, depth: int = 8, n: int = 4, seed: int = 0) -> nn.Module:
    """The paper's bias-free MLP (:class:`nbutils.models.RegressionMLP`: D_IN -> width -> ... -> n), seeded."""
    torch.manual_seed(seed)
    return RegressionMLP(D_IN, n, depth=depth, width=width).eval()


def make_data(N: int, n: int, seed: int = 0):
    """Random float32 inputs ``X`` (N x 14) and anisotropic targets ``Y`` (N x n)."""
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(N, D_IN, generator=g)
    scales = torch.logspace(0, -1, n)  # target std from 1 down to 0.1
    Y = torch.randn(N, n, generator=g) * scales + 0.5
    return X, Y


def _linears(model: nn.Module) -> list[nn.Module]:
    return [m for _, m in nrc_layers(model)]


def bench_nrc(N: int = 100_000, width: int = 512, depth: int = 8, n: int = 4,
              batch: int = 10_000, seed: int = 0, check_samples: int = 2_000, precision: str = "mixed") -> dict:
    """Time streamed deep-NRC metrics for all layers; returns a dict of timings and results."""
    model = build_mlp(width, depth, n, seed)
    X, Y = make_data(N, n, seed)
    lins = _linears(model)

    # 1) plain forward pass (and the model's own MSE, per target entry like nn.MSELoss)
    sse = 0.0
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, N, batch):
            out = model(X[lo:lo + batch])
            sse += float((out.double() - Y[lo:lo + batch].double()).square().sum())
    t_forward = time.perf_counter() - t0
    model_mse = sse / (N * n)

    # 2) forward pass with hooks feeding FeatureStats (accumulation timed inside the hooks)
    stats = [FeatureStats(precision) for _ in lins]
    t_acc = [0.0] * len(lins)
    current_y: list[torch.Tensor] = []

    def make_hook(i: int):
        def hook(module, inputs):
            t = time.perf_counter()
            stats[i].update(inputs[0], current_y[0])
            t_acc[i] += time.perf_counter() - t
        return hook

    handles = [lin.register_forward_pre_hook(make_hook(i)) for i, lin in enumerate(lins)]
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            for lo in range(0, N, batch):
                current_y[:] = [Y[lo:lo + batch]]
                model(X[lo:lo + batch])
    finally:
        for h in handles:
            h.remove()
    t_forward_hooked = time.perf_counter() - t0

    # 3) metrics per layer from the accumulated statistics
    t_met, results = [], []
    for i, lin in enumerate(lins):
        t = time.perf_counter()
        r = stats[i].metrics(lin.weight, n=min(n, stats[i].D), model_mse=model_mse)
        t_met.append(time.perf_counter() - t)
        results.append(r)

    # 4) feature-space CKA vs Gram CKA on a subset (features captured explicitly here)
    m = min(check_samples, N)
    feats: list[torch.Tensor] = []
    handles = [lin.register_forward_pre_hook(lambda mod, inp: feats.append(inp[0].clone())) for lin in lins]
    try:
        with torch.no_grad():
            model(X[:m])
    finally:
        for h in handles:
            h.remove()
    t0 = time.perf_counter()
    cka_feat = [cka(f, Y[:m]) for f in feats]
    t_cka_feat = time.perf_counter() - t0
    t0 = time.perf_counter()
    cka_g = [cka_gram(f, Y[:m]) for f in feats]
    t_cka_gram = time.perf_counter() - t0
    max_diff = max(abs(a - b) for a, b in zip(cka_feat, cka_g))

    return {
        "N": N, "width": width, "depth": depth, "n": n, "batch": batch, "seed": seed,
        "torch_threads": torch.get_num_threads(), "model_mse": model_mse,
        "t_forward": t_forward, "t_forward_hooked": t_forward_hooked,
        "t_accumulate": t_acc, "t_metrics": t_met,
        "t_total_metrics": sum(t_acc) + sum(t_met),
        "dims": [lin.in_features for lin in lins], "results": results,
        "gram_gib": 2 * N * N * 8 / 2**30, "feature_stats_mib": sum(
            (d * d + d * n + n * n + d + n) * 8 for d in (lin.in_features for lin in lins)) / 2**20,
        "check_samples": m, "cka_feature": cka_feat, "cka_gram": cka_g, "cka_max_abs_diff": max_diff,
        "t_cka_feature": t_cka_feat, "t_cka_gram": t_cka_gram,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--N", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=("mixed", "float64"), default="mixed",
                    help="FeatureStats accumulation: float32 SYRK blocks summed in float64 (default) or all float64")
    a = ap.parse_args()
    r = bench_nrc(a.N, a.width, a.depth, a.n, a.batch, a.seed, precision=a.precision)
    print(f"N={r['N']} width={r['width']} depth={r['depth']} n={r['n']} batch={r['batch']} "
          f"seed={r['seed']} torch threads={r['torch_threads']} (float32 forward, {a.precision} statistics)")
    print(f"forward pass alone            : {r['t_forward']:8.2f} s   (model MSE = {r['model_mse']:.4g})")
    print(f"forward pass with stat hooks  : {r['t_forward_hooked']:8.2f} s")
    print(f"all metrics, all layers       : {r['t_total_metrics']:8.2f} s   "
          f"(accumulation {sum(r['t_accumulate']):.2f} s + evaluation {sum(r['t_metrics']):.2f} s; target < 10 s: "
          f"{'met' if r['t_total_metrics'] < 10 else 'NOT met'})")
    print(f"statistics memory (all layers): {r['feature_stats_mib']:8.1f} MiB; "
          f"Gram-matrix CKA at this N would need 2*N^2*8 B = {r['gram_gib']:.1f} GiB per layer")
    print("layer   D   accum_s  metric_s  total_s    nrc1      nrc2    nrc3    nrc4_ratio  feat_srank  w_srank")
    for i, (d, ta, tm, res) in enumerate(zip(r["dims"], r["t_accumulate"], r["t_metrics"], r["results"])):
        print(f"{i:5d} {d:4d} {ta:8.3f} {tm:9.3f} {ta + tm:8.3f}  {res['nrc1']:.3e}  {res['nrc2']:.4f}  "
              f"{res['nrc3']:.4f}  {res['nrc4_ratio']:10.4f}  {res['feature_stable_rank']:10.3f}  "
              f"{res['weight_stable_rank']:7.3f}")
    print(f"CKA check on {r['check_samples']} samples: max |feature-space - Gram| = {r['cka_max_abs_diff']:.2e} "
          f"(feature-space {r['t_cka_feature']:.2f} s, Gram {r['t_cka_gram']:.2f} s for all layers)")
    print("  per-layer CKA:", " ".join(f"{v:.6f}" for v in r["cka_feature"]))
    # the path the notebooks use: nbutils.metrics.nrc.layer_nrc on the paper's bias-free MLP (forward included)
    from nbutils.data_regression import TensorStore
    from nbutils.metrics.nrc import layer_nrc

    X, Y = make_data(a.N, a.n, a.seed)
    mlp = build_mlp(a.width, a.depth, a.n, a.seed)
    t0 = time.perf_counter()
    out = layer_nrc(mlp, TensorStore(X, Y), torch.arange(a.N), batch_size=a.batch, precision=a.precision)
    t = time.perf_counter() - t0
    print(f"layer_nrc end to end (forward + {len(out['layers'])} layers + last-layer NRC and gamma scan): {t:.2f} s")


if __name__ == "__main__":
    main()
