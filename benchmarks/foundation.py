"""Foundation benchmarks, printed from one run (``make bench``):

(a) training images/second of the device-resident ImageStore versus a torchvision-style DataLoader
    with per-image transforms, on the same model (the quick profile's width-8 ResNet-18) and the same
    Fashion-MNIST images; both with and without crop + flip augmentation, plus the data path alone;
(b) NC-metric time at N = 50,000, D = 512, K = 10 versus the straightforward D x D pseudo-inverse
    (see ``benchmarks/nc_bench.py``), with their ratio and the largest relative difference.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nc_bench import bench_nc  # noqa: E402

from nbutils import data, models, profiles  # noqa: E402


class PerImageDataset(torch.utils.data.Dataset):
    """What a torchvision dataset does: one PIL image at a time through a transform pipeline."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, augment: bool):
        from PIL import Image
        from torchvision import transforms as T

        self.images = [Image.fromarray(im[0]) for im in images]
        self.labels = labels
        aug = [T.RandomCrop(28, padding=4), T.RandomHorizontalFlip()] if augment else []
        self.tf = T.Compose(aug + [T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.tf(self.images[i]), int(self.labels[i])


def _step(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bench_loader(n: int = 4096, batch_size: int = 128, width: int = 8, augment: bool = False) -> dict:
    xtr, ytr, _, _ = data.load_fashion_mnist(download=True)
    idx = data.stratified_subset(ytr, n, seed=0)
    x, y = xtr[idx], ytr[idx]
    mean, std = [float(x.mean() / 255)], [float(x.std() / 255)]
    store = data.ImageStore(x, y, mean, std, "cpu")
    loader = torch.utils.data.DataLoader(PerImageDataset(x, y, mean, std, augment), batch_size=batch_size,
                                         shuffle=True, num_workers=0)
    g = torch.Generator().manual_seed(0)

    def store_batches():
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            b = perm[s:s + batch_size]
            yield store.batch(b, augment=augment, generator=g), store.labels[b]

    out = {}
    for name, batches in (("store", store_batches), ("dataloader", lambda: iter(loader))):
        t0 = time.perf_counter()
        for _ in batches():
            pass
        out[f"{name}_data_only"] = n / (time.perf_counter() - t0)
        torch.manual_seed(0)
        model = models.build_model("resnet18", 10, width, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        it = batches()
        _step(model, opt, *next(it))  # warm-up batch, not timed
        t0, seen = time.perf_counter(), 0
        for xb, yb in it:
            _step(model, opt, xb, yb)
            seen += len(yb)
        out[f"{name}_train"] = seen / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096, help="training images per timed epoch")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("(a) training throughput, width-8 ResNet-18, Fashion-MNIST, batch 128 (images/second)")
    for augment in (False, True):
        r = bench_loader(args.n, augment=augment)
        tag = "crop+flip" if augment else "no augmentation"
        print(f"  {tag:>16s}: store {r['store_train']:8.0f}   DataLoader {r['dataloader_train']:8.0f}   "
              f"ratio {r['store_train'] / r['dataloader_train']:5.2f}x   | data path alone: store "
              f"{r['store_data_only']:9.0f}  DataLoader {r['dataloader_data_only']:7.0f}  ratio "
              f"{r['store_data_only'] / r['dataloader_data_only']:6.1f}x")
    print("\n(b) NC metrics, N=50,000, D=512, K=10")
    b = bench_nc()
    print(f"  nc1 via K x D SVD: {1e3 * b['nc1_fast_s']:8.1f} ms   D x D pinv reference: {1e3 * b['nc1_pinv_s']:8.1f} ms   "
          f"ratio {b['speedup']:5.1f}x   max relative difference {b['max_rel_diff']:.1e}")
    print(f"  all NC metrics (nc_metrics, NC1-NC4 + CDNV): {1e3 * b['nc_metrics_s']:8.1f} ms")


if __name__ == "__main__":
    main()
