"""Regression data for paper B (deep neural regression collapse): generated sets and the paper's sets.

Every set becomes a :class:`RegressionSet`: inputs and targets on the device as float32 tensors
(images as uint8, normalised per batch), an 80/20 train/test split, inputs and targets standardised
with the *training* part's mean and standard deviation (the authors' code standardises both; using
the training statistics keeps the test part unseen). ``store.labels`` holds the targets, so the
project's one trainer (:func:`nbutils.train.fit`) trains regressors unchanged.

Generated offline, deterministically (same seed -> same arrays):

``synthetic``  ``Y = g(X) B + noise``: a random teacher ``g: R^d -> R^r`` (one tanh layer of 64 units and
               a linear map to r outputs) and a mixing matrix ``B in R^{r x n}``, so the noiseless target
               covariance has rank exactly r (the intrinsic dimension); ``noise`` is the standard
               deviation of isotropic Gaussian noise relative to the signal's per-target standard deviation.
``sprites``    dSprites-style images: one white shape (square, ellipse or triangle) drawn anti-aliased on a
               black ``size x size`` canvas at a continuous position, scale and rotation; the targets are any
               subset of ``("x", "y", "scale", "rotation")``; rotation theta is drawn in [0, pi/2) and given as
               ``(cos 4 theta, sin 4 theta)``, continuous and a function of the image for all three shapes
               (a square looks the same after a quarter turn).

The paper's sets (on a user's machine; never downloaded by the tests): ``sgemm`` (UCI SGEMM GPU kernel
timings, 14 inputs -> 4 run times), ``swimmer`` / ``reacher`` / ``hopper`` (behaviour cloning: observations ->
actions, from an ``.npz`` with ``observations`` and ``actions`` arrays, e.g. exported from D4RL or
Minari), ``utkface`` (a folder of ``age_gender_race_date.jpg`` faces -> age) and ``carla`` (an ``.npz``
with ``images`` (N, H, W, 3) uint8 and ``targets`` (N, k)). Files are looked up under
``data/regression/``; each file's SHA-256 is compared with :data:`REGRESSION_SHA256` where this project
pins one, and otherwise recorded on first use in ``data/regression/checksums.json`` and checked on
every later load (a changed file is an error, not a silent new result).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .artifacts import atomic_write_bytes

#: name -> (kind, target_dim or None if it depends on the file). "vector" sets train MLPs, "image" sets ResNets.
REGRESSION_INFO = {
    "synthetic": ("vector", None),
    "sprites": ("image", None),
    "sgemm": ("vector", 4),
    "swimmer": ("vector", 2),
    "reacher": ("vector", 2),
    "hopper": ("vector", 3),
    "utkface": ("image", 1),
    "carla": ("image", None),
}
SPRITE_FACTORS = ("x", "y", "scale", "rotation")
SPRITE_SHAPES = ("square", "ellipse", "triangle")

#: SHA-256 of paper-set files this project pins (file name -> digest). Unpinned files are recorded on first use.
REGRESSION_SHA256: dict[str, str] = {}

#: where a user puts (or downloads) the paper's regression files
PAPER_FILES = {
    "sgemm": ("sgemm_product.csv", "https://archive.ics.uci.edu/dataset/440/sgemm+gpu+kernel+performance "
                                   "(sgemm_product_dataset.zip; the .zip or the extracted .csv)"),
    "swimmer": ("swimmer.npz", "D4RL / Minari Swimmer expert data exported as observations + actions arrays"),
    "reacher": ("reacher.npz", "D4RL / Minari Reacher expert data exported as observations + actions arrays"),
    "hopper": ("hopper.npz", "D4RL / Minari Hopper expert data exported as observations + actions arrays"),
    "utkface": ("UTKFace", "https://susanqq.github.io/UTKFace/ (the aligned & cropped faces folder)"),
    "carla": ("carla.npz", "the CARLA driving set of the authors' code, as images (N,H,W,3) uint8 + targets (N,k)"),
}


class RegressionDataUnavailable(RuntimeError):
    """A paper regression set is not on this machine; the message says where to put it."""


# ----------------------------------------------------------------------------------------------
# Stores and the split
# ----------------------------------------------------------------------------------------------

class TensorStore:
    """Inputs and float targets of one pool on the device, with the interface of ``ImageStore``
    (``batch``, ``iter_batches``, ``labels``, ``device``) so that :func:`nbutils.train.fit` and the
    metric passes use it unchanged. uint8 images are normalised per batch with ``mean``/``std``."""

    def __init__(self, x: torch.Tensor, targets: torch.Tensor, device: str | torch.device = "cpu",
                 mean: float = 0.0, std: float = 1.0):
        if x.shape[0] != targets.shape[0]:
            raise ValueError(f"inputs have {x.shape[0]} rows but targets {targets.shape[0]}")
        if targets.ndim != 2:
            raise ValueError(f"targets must be (N, n), got shape {tuple(targets.shape)}")
        self.device = torch.device(device)
        self.x = x.to(self.device).contiguous()
        self.labels = targets.to(self.device, torch.float32).contiguous()
        self.mean, self.std = float(mean), float(std)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def batch(self, idx: torch.Tensor, augment: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        if augment:
            raise ValueError("regression sets have no augmentation")
        x = self.x[idx]
        return (x.float() - self.mean * 255) / (self.std * 255) if x.dtype == torch.uint8 else x

    def iter_batches(self, idx: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for s in range(0, len(idx), batch_size):
            b = idx[s:s + batch_size]
            yield self.batch(b), self.labels[b]


@dataclass
class RegressionSet:
    """A standardised regression set: ``store`` holds all samples, ``train`` / ``test`` are index views."""
    name: str
    store: TensorStore
    train: torch.Tensor
    test: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def target_dim(self) -> int:
        return self.store.labels.shape[1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.store.shape

    @property
    def is_image(self) -> bool:
        return self.store.x.ndim == 4

    def targets(self, which: str = "train") -> torch.Tensor:
        return self.store.labels[getattr(self, which)]


def split_standardise(name: str, X: np.ndarray, Y: np.ndarray, seed: int = 0, test_fraction: float = 0.2,
                      device: str | torch.device = "cpu", info: dict | None = None) -> RegressionSet:
    """Shuffle, split ``test_fraction`` off, standardise with the training part's statistics.

    Vector inputs are standardised per column; uint8 images keep their bytes and are normalised per
    batch with the training images' global mean and std. Targets are standardised per column
    (a constant column stays centred, with std taken as 1)."""
    X, Y = np.asarray(X), np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if X.shape[0] != Y.shape[0] or X.shape[0] < 5:
        raise ValueError(f"need matching inputs and targets with at least 5 samples, got {X.shape} and {Y.shape}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    N = X.shape[0]
    perm = np.random.default_rng(seed).permutation(N)
    n_test = max(1, int(round(test_fraction * N)))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])

    def stats(A):
        mu, sd = A[train].mean(axis=0), A[train].std(axis=0)
        return mu, np.where(sd > 0, sd, 1.0)

    y_mu, y_sd = stats(Y)
    Yt = torch.from_numpy(((Y - y_mu) / y_sd).astype(np.float32))
    if X.dtype == np.uint8:
        mean = float(X[train].mean()) / 255
        std = float(X[train].std()) / 255 or 1.0
        store = TensorStore(torch.from_numpy(X), Yt, device, mean, std)
    else:
        X = X.astype(np.float64)
        x_mu, x_sd = stats(X)
        store = TensorStore(torch.from_numpy(((X - x_mu) / x_sd).astype(np.float32)), Yt, device)
    info = {**(info or {}), "n_samples": N, "n_train": len(train), "n_test": len(test),
            "target_mean": y_mu.tolist(), "target_std": y_sd.tolist()}
    return RegressionSet(name, store, torch.from_numpy(train).to(store.device),
                         torch.from_numpy(test).to(store.device), info)


# ----------------------------------------------------------------------------------------------
# Generated sets
# ----------------------------------------------------------------------------------------------

def make_synthetic(n_samples: int = 5000, input_dim: int = 20, target_dim: int = 8, rank: int = 2,
                   noise: float = 0.01, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Low-rank targets ``Y = g(X) B + noise`` (see the module docstring); returns ``(X, Y, info)``.

    ``X ~ N(0, I_d)``; ``g(x) = tanh(x A / sqrt(d)) C`` with ``A`` (d x 64) and ``C`` (64 x r) Gaussian,
    its outputs whitened over the sample; ``B = Q_1 diag(1 .. 0.5) Q_2^T`` (r x n, random orthogonal
    factors), so the signal ``S = g(X) B`` has rank r with covariance eigenvalues from 1 down to 0.25
    (no direction so weak that weight decay would simply drop it). Noise of standard deviation
    ``noise * std(S)`` per target is added. ``info`` has the rank, the signal's singular values and
    the noiseless target's stable rank."""
    for v, nm, lo in ((n_samples, "n_samples", 5), (input_dim, "input_dim", 1), (target_dim, "target_dim", 1),
                      (rank, "rank", 1)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{nm} must be an integer >= {lo}, got {v!r}")
    if rank > target_dim:
        raise ValueError(f"rank must be <= target_dim, got rank={rank} > target_dim={target_dim}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, input_dim))
    A = rng.standard_normal((input_dim, 64))
    C = rng.standard_normal((64, rank)) / 8.0
    Z = np.tanh(X @ A / math.sqrt(input_dim)) @ C
    Z = Z - Z.mean(axis=0)
    ez, Uz = np.linalg.eigh(Z.T @ Z / n_samples)
    Z = Z @ Uz / np.sqrt(np.maximum(ez, 1e-12))  # whitened teacher outputs: identity covariance, rank r
    Q1 = np.linalg.qr(rng.standard_normal((rank, rank)))[0]
    Q2 = np.linalg.qr(rng.standard_normal((target_dim, rank)))[0]
    B = Q1 @ np.diag(np.linspace(1.0, 0.5, rank)) @ Q2.T  # singular values 1 .. 0.5: no vanishing direction
    S = Z @ B
    Y = S + noise * S.std(axis=0, keepdims=True) * rng.standard_normal(S.shape)
    sv = np.linalg.svd(S - S.mean(axis=0), compute_uv=False)
    ev = sv ** 2
    info = {"rank": rank, "noise": noise, "signal_singular_values": sv[: min(10, len(sv))].tolist(),
            "signal_stable_rank": float((ev ** 2).sum() / ev[0] ** 2)}
    return X.astype(np.float32), Y.astype(np.float32), info


def _shape_mask(shape: str, size: int, cx: float, cy: float, scale: float, theta: float, ss: int = 4) -> np.ndarray:
    """Anti-aliased (``ss`` x ``ss`` supersampled) coverage in [0, 1] of one shape on a size x size canvas.

    ``cx, cy`` in pixels, ``scale`` the half-size in pixels, ``theta`` the rotation in radians."""
    g = (np.arange(size * ss) + 0.5) / ss
    xx, yy = np.meshgrid(g, g)
    c, s = math.cos(theta), math.sin(theta)
    u = (c * (xx - cx) + s * (yy - cy)) / scale  # shape frame: the shape fills [-1, 1]^2
    v = (-s * (xx - cx) + c * (yy - cy)) / scale
    if shape == "square":
        m = (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    elif shape == "ellipse":
        m = (u / 1.0) ** 2 + (v / 0.55) ** 2 <= 1.0
    elif shape == "triangle":  # isosceles: apex at u = 1, base at u = -0.8 of half-width 0.9
        m = (u >= -0.8) & (np.abs(v) <= 0.5 * (1.0 - u))
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: {SPRITE_SHAPES}")
    return m.reshape(size, ss, size, ss).mean(axis=(1, 3))


def make_sprites(n_samples: int = 4000, size: int = 32, targets: Sequence[str] = SPRITE_FACTORS,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """dSprites-style procedural images and their continuous factors; returns ``(images, Y, info)``.

    ``images`` is uint8 ``(N, 1, size, size)``; each image shows one shape (uniform over
    :data:`SPRITE_SHAPES`, a nuisance factor) with scale (half-size) uniform in [0.12, 0.22] x size,
    rotation theta uniform in [0, pi/2), and centre uniform in the region that keeps the shape inside
    the canvas. ``Y`` has one column per factor in ``targets`` (``rotation`` gives two: cos and sin of
    4 theta), in the order given; x, y and scale as fractions of the canvas."""
    targets = list(targets)
    bad = [t for t in targets if t not in SPRITE_FACTORS]
    if not targets or bad or len(set(targets)) != len(targets):
        raise ValueError(f"targets must be a non-empty subset of {SPRITE_FACTORS} without repeats, got {targets}")
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    if not isinstance(n_samples, (int, np.integer)) or n_samples < 5:
        raise ValueError(f"n_samples must be an integer >= 5, got {n_samples!r}")
    rng = np.random.default_rng(seed)
    shape_id = rng.integers(0, len(SPRITE_SHAPES), n_samples)
    scale = rng.uniform(0.12, 0.22, n_samples) * size
    theta = rng.uniform(0.0, math.pi / 2, n_samples)
    margin = scale * 1.05 + 1.0
    cx = margin + rng.uniform(0, 1, n_samples) * (size - 2 * margin)
    cy = margin + rng.uniform(0, 1, n_samples) * (size - 2 * margin)
    images = np.empty((n_samples, 1, size, size), dtype=np.uint8)
    for i in range(n_samples):
        m = _shape_mask(SPRITE_SHAPES[shape_id[i]], size, cx[i], cy[i], scale[i], theta[i])
        images[i, 0] = np.round(255 * m).astype(np.uint8)
    cols, names = [], []
    for t in targets:
        if t == "x":
            cols.append(cx / size); names.append("x")
        elif t == "y":
            cols.append(cy / size); names.append("y")
        elif t == "scale":
            cols.append(scale / size); names.append("scale")
        else:
            cols += [np.cos(4 * theta), np.sin(4 * theta)]; names += ["cos 4θ", "sin 4θ"]
    info = {"targets": names, "shapes": np.bincount(shape_id, minlength=3).tolist(), "size": size}
    return images, np.stack(cols, axis=1).astype(np.float32), info


# ----------------------------------------------------------------------------------------------
# The paper's sets (files on a user's machine)
# ----------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(path).as_posix().encode())
                h.update(hashlib.sha256(p.read_bytes()).digest())
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path, root: Path) -> str:
    """Check ``path`` against :data:`REGRESSION_SHA256` or the digest recorded on first use in
    ``root/checksums.json`` (recording it if new). Returns the digest; raises ValueError on a mismatch."""
    digest = _sha256(path)
    book = root / "checksums.json"
    recorded = json.loads(book.read_text()) if book.exists() else {}
    expected = REGRESSION_SHA256.get(path.name) or recorded.get(path.name)
    if expected is None:
        recorded[path.name] = digest
        atomic_write_bytes(book, json.dumps(recorded, indent=1, sort_keys=True).encode())
    elif expected != digest:
        raise ValueError(f"{path}: SHA-256 {digest} does not match the expected {expected} "
                         f"({'pinned' if path.name in REGRESSION_SHA256 else 'recorded in ' + str(book)}); "
                         "the file changed or is corrupt: fetch it again")
    return digest


def _locate(name: str, root: Path) -> Path:
    fname, where = PAPER_FILES[name]
    candidates = [root / fname]
    if name == "sgemm":
        candidates.append(root / "sgemm_product_dataset.zip")
    for c in candidates:
        if c.exists():
            return c
    raise RegressionDataUnavailable(
        f"regression set {name!r} is not on this machine: put {fname!r} under {root} (source: {where}). "
        "The quick profile uses the generated 'synthetic' and 'sprites' sets instead.")


def _read_sgemm(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            member = next((n for n in z.namelist() if n.endswith("sgemm_product.csv")), None)
            if member is None:
                raise ValueError(f"{path} holds no sgemm_product.csv")
            text = z.read(member).decode()
    else:
        text = path.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], np.array(rows[1:], dtype=np.float64)
    runs = [i for i, h in enumerate(header) if h.strip().lower().startswith("run")]
    if body.shape[1] != 18 or len(runs) != 4:
        raise ValueError(f"{path}: expected 14 parameter columns + Run1..Run4, got header {header}")
    feats = [i for i in range(18) if i not in runs]
    return body[:, feats].astype(np.float32), body[:, runs].astype(np.float32)


def _read_npz(path: Path, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in (x_key, y_key) if k not in z.files]
        if missing:
            raise ValueError(f"{path} lacks array(s) {missing}; it has {z.files}")
        return z[x_key], z[y_key]


def _read_utkface(folder: Path, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    imgs, ages = [], []
    for p in files:
        head = p.name.split("_")[0]
        if not head.isdigit():
            continue  # UTKFace has a few files without an age prefix
        with Image.open(p) as im:
            imgs.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)))
        ages.append(float(head))
    if not imgs:
        raise ValueError(f"{folder} holds no age_gender_race_date.jpg files")
    return np.stack(imgs).transpose(0, 3, 1, 2).copy(), np.array(ages, dtype=np.float32)


def load_paper_regression(name: str, root: Path | str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read one of the paper's regression sets from ``root`` (default ``data/regression/``), checksum first."""
    from .data import DATA_DIR

    if name not in PAPER_FILES:
        raise ValueError(f"unknown paper regression set {name!r}; known: {sorted(PAPER_FILES)}")
    root = Path(root) if root is not None else DATA_DIR / "regression"
    path = _locate(name, root)
    digest = verify_checksum(path, root)
    if name == "sgemm":
        X, Y = _read_sgemm(path)
        Y = np.log(Y)  # run times span 13 ms .. 3.4 s: the authors regress the log time
    elif name in ("swimmer", "reacher", "hopper"):
        X, Y = _read_npz(path, "observations", "actions")
    elif name == "utkface":
        X, Y = _read_utkface(path)
    else:
        X, Y = _read_npz(path, "images", "targets")
        if X.dtype != np.uint8 or X.ndim != 4:
            raise ValueError(f"{path}: images must be uint8 (N, H, W, 3), got {X.dtype} {X.shape}")
        X = X.transpose(0, 3, 1, 2).copy()
    return X, Y, {"file": str(path), "sha256": digest}


#: the profile parameters that determine each generated set (with ``seed``): part of a model's cache key
DATA_KEYS = {
    "synthetic": ("reg_samples", "reg_input_dim", "reg_target_dim", "reg_rank", "reg_noise", "seed"),
    "sprites": ("sprites_samples", "sprites_size", "sprites_targets", "seed"),
}


def load_regression(cfg, dataset: str | None = None) -> RegressionSet:
    """The regression set ``dataset`` (default ``cfg.reg_dataset``) with ``cfg``'s generator parameters,
    standardised and split 80/20 (``cfg.seed`` draws the data and the split)."""
    name = cfg.reg_dataset if dataset is None else dataset
    if name not in REGRESSION_INFO:
        raise ValueError(f"unknown regression set {name!r}; known: {sorted(REGRESSION_INFO)}")
    if name == "synthetic":
        X, Y, info = make_synthetic(cfg.reg_samples, cfg.reg_input_dim, cfg.reg_target_dim, cfg.reg_rank,
                                    cfg.reg_noise, seed=cfg.seed)
    elif name == "sprites":
        X, Y, info = make_sprites(cfg.sprites_samples, cfg.sprites_size, cfg.sprites_targets, seed=cfg.seed)
    else:
        X, Y, info = load_paper_regression(name)
    rs = split_standardise(name, X, Y, seed=cfg.seed, device=cfg.torch_device, info=info)
    rs.info["key"] = {"dataset": name, **({k: cfg.as_dict()[k] for k in DATA_KEYS[name]} if name in DATA_KEYS
                                          else {"sha256": info["sha256"], "seed": cfg.seed})}
    return rs
