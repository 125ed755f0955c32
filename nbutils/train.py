"""The one training loop, and the cached training of the original (and retrained) model.

``fit`` is used for original training, retraining and every gradient-based unlearning method: a
method plugs in its loss (``loss_fn``), its data view (``idx`` + optional ``labels``), the parameters
it may move (``params``) and optional gradient hooks (``grad_hook``: masks, clipping). The schedule
is paper A's: SGD with Nesterov momentum, linear warm-up, then cosine decay to ``min_lr``, with
early stopping on a validation split.

``train_classifier(cfg, data, split)`` wraps ``fit`` with the artifact cache: the model is stored
under the hash of everything that determines it, checkpoints every epoch (atomic writes) and resumes
from the last checkpoint if a run was interrupted.
"""
from __future__ import annotations

import copy
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import artifacts
from .models import model_from_config

#: bump when a change to the training code changes what a cached model would be
TRAIN_VERSION = 1


def progress_enabled(progress: bool | None = None) -> bool:
    """Progress bars are on unless ``progress=False`` or ``NBUTILS_PROGRESS=0`` (the test suite)."""
    if progress is not None:
        return progress
    return os.environ.get("NBUTILS_PROGRESS", "1") != "0"


def tqdm(*args, **kwargs):
    """tqdm that draws a widget in Jupyter and text elsewhere (``tqdm.auto``)."""
    from tqdm.auto import tqdm as _tqdm

    return _tqdm(*args, **kwargs)


def warmup_cosine(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Learning rate at ``step``: linear warm-up to ``lr`` over ``warmup`` steps, then cosine to ``min_lr``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def step_decay(step: int, total: int, lr: float, milestones: Sequence[float], factor: float = 0.1) -> float:
    """Learning rate at ``step`` of ``total``: ``lr * factor**k``, k = milestones (fractions) already passed."""
    return lr * factor ** sum(step >= m * total for m in milestones)


@torch.no_grad()
def accuracy(model: nn.Module, store, idx: torch.Tensor, batch_size: int = 1000,
             autocast: bool = False) -> float:
    """Top-1 accuracy of ``model`` on ``store[idx]`` in eval mode (NaN for an empty index)."""
    if len(idx) == 0:
        return float("nan")
    was = model.training
    model.eval()
    correct = 0
    for x, y in store.iter_batches(idx, batch_size):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast and x.device.type == "cuda"):
            correct += (model(x).argmax(1) == y).sum().item()
    model.train(was)
    return correct / len(idx)


def ce_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy; returns ``(loss, logits)`` so that ``fit`` can count training accuracy for free."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


@dataclass
class History:
    """Per-epoch records of one ``fit`` call (JSON-able through ``as_dict``)."""
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_acc: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    final: dict = field(default_factory=dict)

    def column(self, key: str) -> list:
        return [e.get(key) for e in self.epochs]

    def as_dict(self) -> dict:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch, "best_val_acc": self.best_val_acc,
                "stopped_early": self.stopped_early, "seconds": self.seconds, "final": self.final}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(d["epochs"], d["best_epoch"], d["best_val_acc"], d["stopped_early"], d["seconds"],
                   d.get("final", {}))


class Sampler:
    """A data view for :func:`fit`: ``sampler(generator)`` yields the batches of one epoch (tuples of
    tensors, the second being the labels that count for the running accuracy)."""

    steps_per_epoch: int = 0

    def __call__(self, gen: torch.Generator) -> Iterator[tuple]:  # pragma: no cover - interface
        raise NotImplementedError


class IndexSampler(Sampler):
    """Shuffled mini-batches ``(x, y)`` of ``store[idx]``; ``labels`` (indexed like the store)
    replace the true labels, e.g. random labels for the forget set."""

    def __init__(self, store, idx: torch.Tensor, batch_size: int, labels: torch.Tensor | None = None,
                 augment: bool = False,
                 relabel: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor] | None = None):
        self.store, self.idx, self.batch_size, self.augment = store, idx.to(store.device), batch_size, augment
        self.labels = store.labels if labels is None else labels.to(store.device)
        self.relabel = relabel  # relabel(batch_indices, labels, generator) -> labels, drawn per batch
        self.steps_per_epoch = math.ceil(len(idx) / batch_size)

    def __call__(self, gen: torch.Generator) -> Iterator[tuple]:
        perm = self.idx[torch.randperm(len(self.idx), generator=gen).to(self.idx.device)]
        for s in range(0, len(perm), self.batch_size):
            b = perm[s:s + self.batch_size]
            y = self.labels[b] if self.relabel is None else self.relabel(b, self.labels[b], gen)
            yield self.store.batch(b, augment=self.augment, generator=gen), y


class PairedSampler(Sampler):
    """One pass over ``retain`` in mini-batches, each paired with a mini-batch of ``forget`` (cycled):
    yields ``(x_retain, y_retain, x_forget, y_forget)`` — the data view of NegGrad+."""

    def __init__(self, store, retain: torch.Tensor, forget: torch.Tensor, batch_size: int,
                 forget_batch_size: int | None = None, augment: bool = False, labels: torch.Tensor | None = None):
        if len(forget) == 0:
            raise ValueError("PairedSampler: the forget index is empty")
        self.retain = IndexSampler(store, retain, batch_size, labels=labels, augment=augment)
        self.forget = IndexSampler(store, forget, forget_batch_size or batch_size, labels=labels, augment=augment)
        self.steps_per_epoch = self.retain.steps_per_epoch

    def __call__(self, gen: torch.Generator) -> Iterator[tuple]:
        fb = self.forget(gen)
        for xr, yr in self.retain(gen):
            try:
                xf, yf = next(fb)
            except StopIteration:
                fb = self.forget(gen)
                xf, yf = next(fb)
            yield xr, yr, xf, yf


def fit(model: nn.Module, store, idx: "torch.Tensor | Sampler", *, epochs: int, lr: float, batch_size: int,
        momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 5e-4,
        warmup_epochs: int = 0, min_lr: float = 0.0,
        val_idx: torch.Tensor | None = None, patience: int | None = None, restore_best: bool = True,
        augment: bool = False, seed: int = 0,
        loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] = ce_loss,
        labels: torch.Tensor | None = None,
        params: Iterable[nn.Parameter] | None = None,
        grad_hook: Callable[[nn.Module], None] | None = None,
        train_mode: Callable[[nn.Module], None] | None = None,
        checkpoint: str | Path | None = None,
        epoch_start: Callable[[int, nn.Module], None] | None = None,
        evaluate: Callable[[nn.Module], dict] | None = None,
        snapshot_epochs: Sequence[int] = (), on_snapshot: Callable[[int, nn.Module], None] | None = None,
        on_step: Callable[[int, nn.Module], None] | None = None,
        autocast: bool = False, channels_last: bool | None = None,
        lr_milestones: Sequence[float] | None = None,
        progress: bool | None = None, desc: str = "train") -> History:
    """Train ``model`` in place on ``store[idx]`` and return its :class:`History`.

    ``idx`` is an index view of ``store`` (shuffled mini-batches ``(x, y)``), or any :class:`Sampler`
    that yields the batches of one epoch as tuples (e.g. :class:`PairedSampler`'s
    ``(x_retain, y_retain, x_forget, y_forget)``); ``loss_fn(model, *batch)`` consumes them.

    * ``labels``: a label tensor indexed like the store (e.g. random labels for the forget set);
      defaults to ``store.labels``.
    * ``loss_fn(model, *batch)``: the objective of one batch (cross-entropy by default); it returns
      the loss, or ``(loss, logits)`` so that the running training accuracy is recorded too. It may
      call ``backward`` itself on parts of the objective (gradients accumulate; NegGrad+ does this).
    * ``params``: what the optimiser moves (default: every parameter with ``requires_grad``).
    * ``grad_hook(model)``: called after ``backward`` and before the step (masks, clipping).
    * ``train_mode(model)``: sets train/eval modes each epoch (default ``model.train()``);
      classifier-only fine-tuning keeps BatchNorm in eval mode through it.
    * ``val_idx`` + ``patience``: early stopping on validation accuracy; with ``restore_best`` the
      best-validation weights are loaded at the end (paper A's recipe).
    * ``epoch_start(epoch, model)``: called before each epoch (e.g. the CMF head recomputes its
      class means); ``evaluate(model) -> dict``: called after each epoch, merged into the history.
    * ``checkpoint``: a file written atomically after every epoch; if it exists when ``fit`` starts,
      training resumes from it (same results as an uninterrupted run).
    * ``channels_last``: NHWC memory format (default: on CUDA only; measured on the CPU it was ~20%
      faster but not deterministic from run to run, and same-seed reproducibility comes first).
    * ``lr_milestones``: instead of warm-up + cosine, a step schedule: ``lr`` multiplied by 0.1 at each
      of these fractions of training (paper B's authors: ``(1/3, 2/3)``).
    * ``snapshot_epochs``: epochs (0 = before training) at which ``on_snapshot(epoch, model)`` is
      called, e.g. to keep weights for the neural-collapse-over-training figure.
    * ``on_step(step, model)``: called after every optimiser step (``step`` counts from 1 across
      epochs) and once with ``step=0`` before the first step of a fresh run: curves *during*
      training (forget accuracy vs iteration, the classifier-only weight trajectory). It must leave
      the model's train/eval mode as it found it (:func:`nbutils.models.extract` does).
    """
    if epochs < 0 or lr <= 0 or batch_size <= 0:
        raise ValueError(f"need epochs >= 0, lr > 0, batch_size > 0; got {epochs}, {lr}, {batch_size}")
    dev = store.device
    sampler = idx if isinstance(idx, Sampler) else IndexSampler(store, idx, batch_size, labels=labels, augment=augment)
    if sampler.steps_per_epoch == 0:
        raise ValueError("fit: the training index is empty")
    if channels_last is None:  # on the CPU, oneDNN's channels-last kernels are not run-to-run deterministic
        channels_last = dev.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                          weight_decay=weight_decay)
    steps_per_epoch = sampler.steps_per_epoch
    total = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    hist = History()
    start_epoch, best_state, bad = 0, None, 0
    snaps = set(snapshot_epochs)

    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        st = artifacts.load_torch(ckpt, map_location=dev)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        hist = History.from_dict(st["history"])
        best_state, bad, start_epoch = st["best_state"], st["bad"], st["epoch"]
    else:
        if 0 in snaps and on_snapshot is not None:
            on_snapshot(0, model)
        if on_step is not None:
            on_step(0, model)

    set_mode = train_mode or (lambda m: m.train())
    show = progress_enabled(progress)
    bar = tqdm(total=epochs, initial=start_epoch, desc=desc, disable=not show, leave=True)
    t_start = time.perf_counter() - hist.seconds
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        if epoch_start is not None:
            epoch_start(epoch, model)
        set_mode(model)
        tot_loss, tot_correct, seen, seen_acc = 0.0, 0, 0, 0
        for batch in sampler(gen):
            if channels_last:
                batch = tuple(t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t for t in batch)
            for g in opt.param_groups:
                g["lr"] = (step_decay(step, total, lr, lr_milestones) if lr_milestones is not None
                           else warmup_cosine(step, total, warmup_epochs * steps_per_epoch, lr, min_lr))
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast and dev.type == "cuda"):
                out = loss_fn(model, *batch)
            loss, logits = out if isinstance(out, tuple) else (out, None)
            loss.backward()
            if grad_hook is not None:
                grad_hook(model)
            opt.step()
            step += 1
            if on_step is not None:
                on_step(step, model)
            n = len(batch[1])
            tot_loss += loss.item() * n
            seen += n
            if logits is not None:
                tot_correct += (logits.argmax(1) == batch[1]).sum().item()
                seen_acc += n
        rec = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "train_loss": tot_loss / seen,
               "train_acc_running": tot_correct / seen_acc if seen_acc else None}
        if val_idx is not None and len(val_idx):
            rec["val_acc"] = accuracy(model, store, val_idx, autocast=autocast)
            if hist.best_val_acc is None or rec["val_acc"] > hist.best_val_acc:
                hist.best_val_acc, hist.best_epoch, bad = rec["val_acc"], epoch, 0
                if restore_best:
                    best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        rec["seconds"] = time.perf_counter() - t0
        if evaluate is not None:
            rec.update(evaluate(model))
        hist.epochs.append(rec)
        hist.seconds = time.perf_counter() - t_start
        if epoch in snaps and on_snapshot is not None:
            on_snapshot(epoch, model)
        stop = patience is not None and val_idx is not None and bad >= patience
        if ckpt is not None:
            artifacts.save_torch(ckpt, {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                                        "history": hist.as_dict(), "best_state": best_state, "bad": bad,
                                        "epoch": epoch})
        bar.set_postfix({k: f"{v:.4f}" for k, v in rec.items() if k in ("train_loss", "val_acc")})
        bar.update(1)
        if stop:
            hist.stopped_early = True
            break
    bar.close()
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return hist


# ----------------------------------------------------------------------------------------------
# Cached training of the original / retrained classifier
# ----------------------------------------------------------------------------------------------

#: parameters that determine a trained classifier (its cache key, with the training index)
TRAIN_KEYS = ("dataset", "n_train", "n_test", "val_fraction", "augment", "arch", "width", "epochs",
              "batch_size", "lr", "min_lr", "momentum", "weight_decay", "warmup_epochs", "patience",
              "seed", "n_snapshots")


@dataclass
class TrainedModel:
    """A trained classifier with its history, cache directory and snapshot epochs."""
    model: nn.Module
    history: History
    path: Path
    snapshots: list[int]
    cached: bool

    def load_snapshot(self, epoch: int, cfg) -> nn.Module:
        m = model_from_config(cfg)
        m.load_state_dict(artifacts.load_torch(self.path / f"snapshot-{epoch:04d}.pt"))
        return m.to(cfg.torch_device).eval()


def train_classifier(cfg, data, split, which: str = "original", progress: bool | None = None,
                     force: bool = False) -> TrainedModel:
    """Train (or load from the cache) the ``original`` model (on ``split.train``, ``cfg.epochs``) or the
    ``retrain`` oracle (on ``split.retain``, ``cfg.retrain_epochs``: paper A retrains CIFAR models for 200
    epochs against up to 300 for the original), with paper A's recipe and ``cfg``'s parameters.

    The cache key is the hash of :data:`TRAIN_KEYS`, the kind of model, the forget set (for
    ``retrain``) and the precision; the directory ``data/results/<which>-<hash>/`` holds
    ``model.pt``, ``history.json``, ``snapshot-EEEE.pt`` files (original only) and, while training
    runs, ``checkpoint.pt`` to resume from.
    """
    if which == "original":
        idx = split.train
        key_extra = {}
    elif which == "retrain":
        idx = split.retain
        key_extra = {"scenario": split.scenario, "forget_classes": list(split.forget_classes),
                     "forget_fraction": split.info.get("forget_fraction"), "retrain_epochs": cfg.retrain_epochs}
    else:
        raise ValueError(f"which must be 'original' or 'retrain', got {which!r}")
    key = {**cfg.subset(*TRAIN_KEYS), **key_extra, "which": which, "autocast": cfg.autocast,
           "version": TRAIN_VERSION}
    path = artifacts.results_dir() / f"{which}-{artifacts.config_hash(key)}"
    done = path / "model.pt"
    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg).to(cfg.torch_device)
    if force and path.exists():
        shutil.rmtree(path)
    if done.exists():
        model.load_state_dict(artifacts.load_torch(done, map_location=cfg.torch_device))
        hist = History.from_dict(artifacts.load_json(path / "history.json"))
        snaps = sorted(int(p.stem.split("-")[1]) for p in path.glob("snapshot-*.pt"))
        return TrainedModel(model.eval(), hist, path, snaps, cached=True)
    path.mkdir(parents=True, exist_ok=True)
    artifacts.save_json(path / "config.json", key)
    snap_epochs = cfg.snapshot_epochs if which == "original" else []

    def save_snapshot(epoch: int, m: nn.Module) -> None:
        artifacts.save_torch(path / f"snapshot-{epoch:04d}.pt", m.state_dict())

    epochs = cfg.epochs if which == "original" else cfg.retrain_epochs
    hist = fit(model, data.train, idx, epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size,
               momentum=cfg.momentum, weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs,
               min_lr=cfg.min_lr, val_idx=split.val, patience=cfg.patience, augment=cfg.augment,
               seed=cfg.seed, checkpoint=path / "checkpoint.pt", snapshot_epochs=snap_epochs,
               on_snapshot=save_snapshot, autocast=cfg.autocast, progress=progress, desc=which)
    hist.final = {"train_acc": accuracy(model, data.train, idx, autocast=cfg.autocast),
                  "val_acc": accuracy(model, data.train, split.val, autocast=cfg.autocast)}
    artifacts.save_json(path / "history.json", hist.as_dict())
    artifacts.save_torch(done, model.state_dict())
    (path / "checkpoint.pt").unlink(missing_ok=True)
    snaps = sorted(int(p.stem.split("-")[1]) for p in path.glob("snapshot-*.pt"))
    return TrainedModel(model.eval(), hist, path, snaps, cached=False)


# ----------------------------------------------------------------------------------------------
# Cached training of a regression model with per-layer NRC at log-spaced epochs (paper B)
# ----------------------------------------------------------------------------------------------

def mse_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per target entry (``nn.MSELoss``), the regression objective of paper B."""
    return F.mse_loss(model(x).float(), y)


@torch.no_grad()
def mse(model: nn.Module, store, idx: torch.Tensor, batch_size: int = 4096) -> float:
    """MSE per target entry of ``model`` on ``store[idx]`` in eval mode."""
    was = model.training
    model.eval()
    sse, count = 0.0, 0
    for x, y in store.iter_batches(idx, batch_size):
        sse += float((model(x).double() - y.double()).square().sum())
        count += y.numel()
    model.train(was)
    return sse / count if count else float("nan")


#: the recipe parameters of each kind of regression model: (depth, width, norm | arch, epochs, lr, wd)
REGRESSOR_KEYS = {
    "mlp": ("reg_depth", "reg_width", "reg_norm", "reg_epochs", "reg_lr", "reg_batch_size", "reg_checkpoints",
            "momentum"),
    "resnet": ("conv_width", "conv_epochs", "conv_lr", "reg_batch_size", "reg_checkpoints", "momentum"),
}
REG_MILESTONES = (1 / 3, 2 / 3)


@dataclass
class TrainedRegressor:
    """A trained regression model, its history and the NRC of every layer at each checkpoint epoch."""
    model: nn.Module
    history: History
    checkpoints: list[dict]  # [{"epoch", "train_mse", "test_mse", **layer_nrc(...)}]
    path: Path
    cached: bool
    weight_decay: float

    def at(self, epoch: int | None = None) -> dict:
        """The checkpoint record of ``epoch`` (default: the last)."""
        if epoch is None:
            return self.checkpoints[-1]
        for c in self.checkpoints:
            if c["epoch"] == epoch:
                return c
        raise KeyError(f"no checkpoint at epoch {epoch}; have {[c['epoch'] for c in self.checkpoints]}")


def train_regressor(cfg, rset, kind: str = "mlp", weight_decay: float | None = None,
                    progress: bool | None = None, force: bool = False) -> TrainedRegressor:
    """Train (or load from the cache) a regression model on ``rset.train`` with MSE, SGD + momentum,
    weight decay and the authors' step schedule (x0.1 at 1/3 and 2/3 of training), measuring
    :func:`nbutils.metrics.nrc.layer_nrc` of every layer on the training set at ``cfg.reg_checkpoints``
    log-spaced epochs (0 = initialisation) and the train/test MSE.

    ``kind``: ``"mlp"`` (the bias-free MLP, ``reg_*`` parameters) or ``"resnet"`` (ResNet-18 on image sets,
    ``conv_*`` parameters). ``weight_decay`` defaults to ``cfg.reg_weight_decay`` / ``cfg.conv_weight_decay``.
    Cached in ``data/results/regressor-<hash>/`` under the hash of the data key, the recipe and the seed.
    """
    from .metrics.nrc import layer_nrc
    from .models import build_regressor
    from .profiles import snapshot_epochs as log_epochs

    if kind not in REGRESSOR_KEYS:
        raise ValueError(f"kind must be one of {sorted(REGRESSOR_KEYS)}, got {kind!r}")
    if kind == "mlp" and rset.is_image:
        raise ValueError(f"{rset.name!r} is an image set: use kind='resnet'")
    if kind == "resnet" and not rset.is_image:
        raise ValueError(f"{rset.name!r} is a vector set: use kind='mlp'")
    wd = float((cfg.reg_weight_decay if kind == "mlp" else cfg.conv_weight_decay) if weight_decay is None
               else weight_decay)
    if wd < 0:
        raise ValueError(f"weight_decay must be >= 0, got {wd}")
    epochs = cfg.reg_epochs if kind == "mlp" else cfg.conv_epochs
    lr = cfg.reg_lr if kind == "mlp" else cfg.conv_lr
    key = {"data": rset.info.get("key", rset.name), **cfg.subset(*REGRESSOR_KEYS[kind]), "kind": kind,
           "weight_decay": wd, "seed": cfg.seed, "version": TRAIN_VERSION}
    path = artifacts.results_dir() / f"regressor-{artifacts.config_hash(key)}"
    torch.manual_seed(cfg.seed)
    model = build_regressor(kind, rset.input_shape, rset.target_dim, depth=cfg.reg_depth, width=(
        cfg.reg_width if kind == "mlp" else cfg.conv_width), norm=cfg.reg_norm).to(cfg.torch_device)
    if force and path.exists():
        shutil.rmtree(path)
    done = path / "model.pt"
    if done.exists():
        model.load_state_dict(artifacts.load_torch(done, map_location=cfg.torch_device))
        hist = History.from_dict(artifacts.load_json(path / "history.json"))
        return TrainedRegressor(model.eval(), hist, artifacts.load_json(path / "nrc.json"), path, True, wd)
    path.mkdir(parents=True, exist_ok=True)
    artifacts.save_json(path / "config.json", key)
    records: list[dict] = []

    def measure(epoch: int, m: nn.Module) -> None:
        rec = layer_nrc(m, rset.store, rset.train, batch_size=cfg.eval_batch_size)
        records.append({"epoch": epoch, "train_mse": rec["model_mse"],
                        "test_mse": mse(m, rset.store, rset.test, cfg.eval_batch_size), **rec})

    hist = fit(model, rset.store, rset.train, epochs=epochs, lr=lr, batch_size=cfg.reg_batch_size,
               momentum=cfg.momentum, nesterov=False, weight_decay=wd, lr_milestones=REG_MILESTONES,
               seed=cfg.seed, loss_fn=mse_loss, snapshot_epochs=log_epochs(epochs, cfg.reg_checkpoints),
               on_snapshot=measure, progress=progress, desc=f"{kind} wd={wd:g}")
    hist.final = {"train_mse": records[-1]["train_mse"], "test_mse": records[-1]["test_mse"]}
    artifacts.save_json(path / "nrc.json", records)
    artifacts.save_json(path / "history.json", hist.as_dict())
    artifacts.save_torch(done, model.state_dict())
    return TrainedRegressor(model.eval(), hist, records, path, False, wd)
