"""Datasets, forget/retain splits and the device-resident image store.

Images live on the compute device as one ``uint8`` tensor; normalisation, random crops and flips are
batched tensor ops, and every view (train / validation / retain / forget / test) is an index tensor.
There is no DataLoader in the training loop: on a 2-core CPU the per-image Python work of a
DataLoader costs more than the small models it feeds (see ``benchmarks/foundation.py``).

Datasets
--------
``digits``         scikit-learn's 8x8 handwritten digits (1,797 images, ships with scikit-learn): smoke tests.
``fashion_mnist``  Fashion-MNIST (60k/10k, 28x28): the Debian package ``dataset-fashion-mnist``
                   (``/usr/share/datasets/fashion-mnist``) or torchvision's download into ``data/``;
                   the decompressed files are checked against SHA-256 sums either way.
``cifar10/100``    torchvision's download into ``data/`` (MD5-verified by torchvision): paper profile.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .artifacts import REPO_ROOT

DATA_DIR = Path(os.environ.get("NBUTILS_DATA", REPO_ROOT / "data"))
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

# SHA-256 of the *decompressed* IDX files: identical whatever compressed them (Debian re-packs the
# upstream .gz files, so their own checksums differ from torchvision's).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

#: name -> (num_classes, channels, image size); checked by ``nbutils.profiles`` before any loading.
DATASET_INFO = {
    "digits": (10, 1, 8),
    "fashion_mnist": (10, 1, 28),
    "cifar10": (10, 3, 32),
    "cifar100": (100, 3, 32),
}


class DataUnavailable(RuntimeError):
    """A dataset is neither installed nor downloadable here; the message says how to get it."""


# ----------------------------------------------------------------------------------------------
# Raw loaders: return uint8 arrays (N, C, H, W) and int64 labels (N,)
# ----------------------------------------------------------------------------------------------

def _read_idx(raw: bytes) -> np.ndarray:
    """Parse an IDX file (the MNIST format): magic, dims (big-endian int32), then uint8 data."""
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError("not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(dims))


def _load_verified_idx(path: Path, expected_sha256: str | None) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if expected_sha256 is not None:
        got = hashlib.sha256(raw).hexdigest()
        if got != expected_sha256:
            raise ValueError(f"checksum mismatch for {path}: sha256 {got}, expected {expected_sha256}; "
                             "delete the file and download it again")
    return _read_idx(raw)


def _find_fashion_mnist_dir(download: bool) -> Path:
    candidates = [FASHION_MNIST_SYSTEM_DIR, DATA_DIR / "FashionMNIST" / "raw"]
    for d in candidates:
        if all((d / f"{stem}.gz").exists() or (d / stem).exists() for stem in FASHION_MNIST_SHA256):
            return d
    if not download:
        raise DataUnavailable(
            "Fashion-MNIST not found. Install it with `sudo apt-get install dataset-fashion-mnist` "
            f"(files in {FASHION_MNIST_SYSTEM_DIR}) or allow the download into {DATA_DIR}.")
    from torchvision.datasets import FashionMNIST

    try:  # torchvision verifies the MD5 of each .gz it downloads
        FashionMNIST(root=str(DATA_DIR), train=True, download=True)
    except Exception as e:  # network errors come in many types
        raise DataUnavailable(f"could not download Fashion-MNIST into {DATA_DIR}: {e}") from e
    return DATA_DIR / "FashionMNIST" / "raw"


def load_fashion_mnist(download: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST as (x_train, y_train, x_test, y_test); images uint8 (N, 1, 28, 28)."""
    d = _find_fashion_mnist_dir(download)

    def get(stem: str) -> np.ndarray:
        p = d / f"{stem}.gz" if (d / f"{stem}.gz").exists() else d / stem
        return _load_verified_idx(p, FASHION_MNIST_SHA256[stem])

    xtr, ytr = get("train-images-idx3-ubyte"), get("train-labels-idx1-ubyte")
    xte, yte = get("t10k-images-idx3-ubyte"), get("t10k-labels-idx1-ubyte")
    return xtr[:, None].copy(), ytr.astype(np.int64), xte[:, None].copy(), yte.astype(np.int64)


def load_digits_images(test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn digits (values 0..16) as uint8 images (N, 1, 8, 8) with a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=0)
    return xtr, ytr, xte, yte


def load_cifar(name: str, download: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10/100 through torchvision (download into ``data/``, MD5-verified by torchvision)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    try:
        tr = cls(root=str(DATA_DIR), train=True, download=download)
        te = cls(root=str(DATA_DIR), train=False, download=download)
    except RuntimeError as e:
        raise DataUnavailable(f"{name} is not in {DATA_DIR} and could not be downloaded: {e}") from e
    to = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # noqa: E731  NHWC -> NCHW
    return to(tr.data), np.asarray(tr.targets, np.int64), to(te.data), np.asarray(te.targets, np.int64)


def class_names(name: str) -> tuple[str, ...]:
    if name == "fashion_mnist":
        return FASHION_MNIST_CLASSES
    if name == "cifar10":
        return CIFAR10_CLASSES
    return tuple(str(i) for i in range(DATASET_INFO[name][0]))


def stratified_subset(y: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of size ``n`` (all indices, sorted, if n is 0/None or >= len)."""
    if not n or n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per = np.full(len(classes), n // len(classes))
    per[: n - per.sum()] += 1
    idx = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, per)]
    return np.sort(np.concatenate(idx))


# ----------------------------------------------------------------------------------------------
# Device-resident store
# ----------------------------------------------------------------------------------------------

class ImageStore:
    """All images of one pool (train or test) as one uint8 tensor on the device.

    ``batch(idx, augment=..., generator=...)`` returns normalised float images for the index tensor
    ``idx``, with optional random crop (zero padding ``pad``) and horizontal flip done for the whole
    batch at once.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                 mean: Sequence[float], std: Sequence[float], device: str | torch.device = "cpu"):
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(self.device)
        c = images.shape[1]
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1) * 255
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1) * 255

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def batch(self, idx: torch.Tensor, augment: bool = False, generator: torch.Generator | None = None,
              pad: int = 4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        x = self.images[idx]
        if augment:
            x = random_crop_flip(x, pad, generator)
        return ((x.to(dtype) - self.mean.to(dtype)) / self.std.to(dtype))

    def iter_batches(self, idx: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Deterministic, unaugmented batches over ``idx`` (for evaluation)."""
        for s in range(0, len(idx), batch_size):
            b = idx[s:s + batch_size]
            yield self.batch(b), self.labels[b]


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop after zero padding + random horizontal flip, for a whole uint8 batch at once.

    The random numbers come from ``generator`` (on the CPU) so a run is reproducible whatever device
    holds the images.
    """
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    rows = off[0][:, None] + torch.arange(h, device=x.device)[None]          # (n, h)
    cols = off[1][:, None] + torch.arange(w, device=x.device)[None]          # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(n, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]     # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


@dataclass
class ImageData:
    """A dataset on the device: train pool, test pool, and its metadata."""
    name: str
    train: ImageStore
    test: ImageStore
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_image_data(cfg) -> ImageData:
    """Load ``cfg.dataset`` onto ``cfg.device``, subsetting to ``cfg.n_train`` / ``cfg.n_test``.

    The subsets are stratified and drawn with a fixed seed (0), independent of the run's seed, so
    every notebook and seed sees the same images.
    """
    name = cfg.dataset
    if name == "digits":
        xtr, ytr, xte, yte = load_digits_images()
    elif name == "fashion_mnist":
        xtr, ytr, xte, yte = load_fashion_mnist()
    elif name in ("cifar10", "cifar100"):
        xtr, ytr, xte, yte = load_cifar(name)
    else:  # profiles.resolve() rejects this earlier; kept for direct callers
        raise ValueError(f"unknown dataset {name!r}; allowed: {sorted(DATASET_INFO)}")
    itr = stratified_subset(ytr, cfg.n_train, seed=0)
    ite = stratified_subset(yte, cfg.n_test, seed=0)
    xtr, ytr, xte, yte = xtr[itr], ytr[itr], xte[ite], yte[ite]
    # per-channel statistics of the training pool, in [0, 1] units
    mean = (xtr.astype(np.float64) / 255).mean(axis=(0, 2, 3))
    std = (xtr.astype(np.float64) / 255).std(axis=(0, 2, 3))
    dev = cfg.torch_device
    return ImageData(name, ImageStore(xtr, ytr, mean, std, dev), ImageStore(xte, yte, mean, std, dev),
                     class_names(name))


# ----------------------------------------------------------------------------------------------
# Splits: train / validation / retain / forget views as index tensors
# ----------------------------------------------------------------------------------------------

@dataclass
class Split:
    """Index views of one experiment.

    ``train``, ``val``, ``retain``, ``forget`` index the training pool (``retain`` and ``forget``
    partition ``train``; ``val`` is held out of all three); ``test``, ``test_retain``, ``test_forget``
    index the test pool. ``forget_classes`` is empty for random-sample forgetting.
    """
    scenario: str
    forget_classes: tuple[int, ...]
    train: torch.Tensor
    val: torch.Tensor
    retain: torch.Tensor
    forget: torch.Tensor
    test: torch.Tensor
    test_retain: torch.Tensor
    test_forget: torch.Tensor
    info: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {k: int(len(getattr(self, k))) for k in
                ("train", "val", "retain", "forget", "test", "test_retain", "test_forget")}


def make_split(data: ImageData, scenario: str = "class", forget_classes: Sequence[int] = (0,),
               forget_fraction: float = 0.1, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """Build the views of one forgetting experiment.

    * ``scenario="class"``: forget set = all training images of ``forget_classes``; test_forget =
      test images of those classes, test_retain = the others (the paper's class-wise setting).
    * ``scenario="random"``: forget set = a random ``forget_fraction`` of the training images
      (the SalUn / l1-sparse setting); the test set is not split (test_forget is empty).

    The validation split (``val_fraction``, stratified) is drawn with ``seed`` before forgetting, so
    the original model, the retrained model and every unlearning method see the same validation set.
    """
    ytr = data.train.labels.cpu().numpy()
    yte = data.test.labels.cpu().numpy()
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(ytr):
        idx = rng.permutation(np.flatnonzero(ytr == c))
        val.append(idx[: int(round(val_fraction * len(idx)))])
    val = np.sort(np.concatenate(val)) if val_fraction > 0 else np.array([], dtype=np.int64)
    train = np.setdiff1d(np.arange(len(ytr)), val)
    if scenario == "class":
        fc = tuple(int(c) for c in forget_classes)
        bad = [c for c in fc if not 0 <= c < data.num_classes]
        if bad:
            raise ValueError(f"forget_classes {bad} not in dataset {data.name!r} (classes 0..{data.num_classes - 1})")
        is_f = np.isin(ytr[train], fc)
        forget, retain = train[is_f], train[~is_f]
        tf = np.isin(yte, fc)
        test_forget, test_retain = np.flatnonzero(tf), np.flatnonzero(~tf)
    elif scenario == "random":
        fc = ()
        k = int(round(forget_fraction * len(train)))
        perm = rng.permutation(train)
        forget, retain = np.sort(perm[:k]), np.sort(perm[k:])
        test_forget, test_retain = np.array([], dtype=np.int64), np.arange(len(yte))
    else:
        raise ValueError(f"scenario must be 'class' or 'random', got {scenario!r}")
    dev = data.train.device
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=dev)  # noqa: E731
    return Split(scenario, fc, t(train), t(val), t(retain), t(forget), t(np.arange(len(yte))),
                 t(test_retain), t(test_forget),
                 info={"forget_fraction": forget_fraction if scenario == "random" else None,
                       "val_fraction": val_fraction, "seed": seed})


# ----------------------------------------------------------------------------------------------
# Regression sets (paper B) live in data_regression; the public names are re-exported here.
# ----------------------------------------------------------------------------------------------
from .data_regression import (  # noqa: E402,F401
    REGRESSION_INFO, RegressionDataUnavailable, RegressionSet, TensorStore, load_paper_regression,
    load_regression, make_sprites, make_synthetic, split_standardise,
)
