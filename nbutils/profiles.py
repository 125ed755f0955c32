"""Profiles: the smoke / quick / paper parameter sets, and their validation.

A profile is data, not a code path: every notebook is identical across profiles, and only the
numbers below change. ``resolve(profile, **overrides)`` merges a profile with a notebook's
parameters, checks every value *before any compute*, derives what follows from them (number of
classes, image size, torch device, snapshot epochs) and returns an immutable :class:`Config`.

Bad input gets a message naming the parameter, the value and what is allowed::

    >>> resolve("quick", epoch=3)
    ValueError: unknown parameter 'epoch' (did you mean 'epochs'?) ...
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .data import DATASET_INFO, REGRESSION_INFO
from .models import ARCHS, NORMS

# ----------------------------------------------------------------------------------------------
# Schema: name -> (type(s), check, meaning). The check returns an error string or None.
# ----------------------------------------------------------------------------------------------


def _pos(v):
    return None if v > 0 else "must be > 0"


def _nonneg(v):
    return None if v >= 0 else "must be >= 0"


def _frac(v):
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _at_least(k):
    def check(v):
        return None if v >= k else f"must be >= {k}"
    return check


def _nonempty_list(ok, what):
    """A check that ``v`` is a non-empty list whose every item satisfies ``ok``; else 'must be ...{what}'."""
    def check(v):
        return None if v and all(ok(x) for x in v) else f"must be a non-empty list of {what}"
    return check


def _choice(*allowed):
    def check(v):
        return None if v in allowed else f"must be one of {list(allowed)}"
    return check


SCHEMA: dict[str, tuple[tuple[type, ...], Callable[[Any], str | None], str]] = {
    # data
    "dataset": ((str,), _choice(*DATASET_INFO), "dataset name"),
    "n_train": ((int,), _nonneg, "training-pool size (stratified subset; 0 = all)"),
    "n_test": ((int,), _nonneg, "test-pool size (stratified subset; 0 = all)"),
    "val_fraction": ((float,), _frac, "fraction of the training pool held out for early stopping"),
    "augment": ((bool,), lambda v: None, "random crop (pad 4) + horizontal flip during training"),
    # forgetting scenario
    "scenario": ((str,), _choice("class", "random"), "class-wise or random-sample forgetting"),
    "forget_classes": ((list,), lambda v: None if v and all(isinstance(c, int) for c in v)
                       else "must be a non-empty list of class indices", "classes to forget (scenario='class')"),
    "forget_fraction": ((float,), lambda v: None if 0 < v < 1 else "must be in (0, 1)",
                        "fraction of the training set to forget (scenario='random')"),
    # model
    "arch": ((str,), _choice(*ARCHS), "network architecture (CIFAR stem)"),
    "width": ((int,), _pos, "channels of the first ResNet stage (64 = the paper's ResNet)"),
    # original training (paper A's recipe)
    "epochs": ((int,), _pos, "training epochs of the original model"),
    "retrain_epochs": ((int,), _pos, "training epochs of the retrained oracle (paper A: 200 vs 300)"),
    "batch_size": ((int,), _pos, "mini-batch size"),
    "lr": ((float,), _pos, "peak learning rate (after warm-up)"),
    "min_lr": ((float,), _nonneg, "final learning rate of the cosine schedule"),
    "momentum": ((float,), _frac, "SGD momentum (Nesterov)"),
    "weight_decay": ((float,), _nonneg, "weight decay"),
    "warmup_epochs": ((int,), _nonneg, "linear warm-up epochs"),
    "patience": ((int,), _pos, "early stopping: epochs without validation improvement"),
    "n_snapshots": ((int,), _nonneg, "log-spaced training snapshots kept for the NC-over-training figure"),
    "eval_batch_size": ((int,), _pos, "batch size of feature extraction"),
    # looking inside (notebooks 22-24)
    "tsne_per_class": ((int,), _pos, "test images per class in each t-SNE panel"),
    "relearn_steps": ((int,), _pos, "optimiser steps of the relearning fine-tune (learning rate: lr)"),
    "relearn_forget": ((int,), _nonneg, "forget-set images in every relearning batch (0 = retain only)"),
    # deep neural regression collapse (paper B, notebooks 3x)
    "reg_dataset": ((str,), _choice(*(k for k, v in REGRESSION_INFO.items() if v[0] == "vector")),
                    "regression set of the MLP runs (generated 'synthetic', or a paper set on this machine)"),
    "reg_samples": ((int,), _at_least(10), "samples of a generated set (80/20 split)"),
    "reg_input_dim": ((int,), _pos, "input dimension d of the synthetic set"),
    "reg_target_dim": ((int,), _pos, "target dimension n of the synthetic set"),
    "reg_rank": ((int,), _pos, "rank r of the synthetic targets (intrinsic dimension, <= reg_target_dim)"),
    "reg_noise": ((float,), _nonneg, "target noise of the synthetic set, relative to the signal's std"),
    "reg_depth": ((int,), _pos, "linear layers of the bias-free MLP (paper: 8)"),
    "reg_width": ((int,), _pos, "width of the MLP (paper: 512)"),
    "reg_norm": ((str,), _choice(*NORMS), "normalisation before each ReLU of the MLP"),
    "reg_epochs": ((int,), _pos, "training epochs of a regression model (step decay x0.1 at 1/3 and 2/3)"),
    "reg_lr": ((float,), _pos, "SGD learning rate of the regression models (momentum: momentum)"),
    "reg_batch_size": ((int,), _pos, "mini-batch size of the regression models"),
    "reg_weight_decay": ((float,), _nonneg, "weight decay of the regression models"),
    "reg_checkpoints": ((int,), _pos, "log-spaced epochs at which every layer's NRC is measured"),
    "reg_wd_grid": ((list,), _nonempty_list(lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0,
                                            "numbers >= 0"), "weight decays of the ablation (notebook 32)"),
    "reg_seeds": ((int,), _pos, "seeds per weight decay in the ablation"),
    "reg_rank_grid": ((list,), _nonempty_list(lambda x: isinstance(x, int) and x > 0, "positive integers"), "target ranks of the intrinsic-dimension run"),
    "reg_rank_target_dim": ((int,), _pos, "target dimension n of the intrinsic-dimension run"),
    "sprites_samples": ((int,), _at_least(10), "images of the procedural sprites set"),
    "sprites_size": ((int,), _at_least(8), "side of the sprites images in pixels"),
    "sprites_targets": ((list,), _nonempty_list(lambda t: t in ("x", "y", "scale", "rotation"), "'x', 'y', 'scale', 'rotation'"),
                        "factors the ResNet regresses"),
    "conv_width": ((int,), _pos, "first-stage channels of the regression ResNet-18"),
    "conv_epochs": ((int,), _pos, "training epochs of the regression ResNet"),
    "conv_lr": ((float,), _pos, "learning rate of the regression ResNet"),
    "conv_weight_decay": ((float,), _nonneg, "weight decay of the regression ResNet"),
    # run
    "seed": ((int,), _nonneg, "random seed"),
    "device": ((str,), lambda v: _check_device(v), "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    "precision": ((str,), _choice("auto", "fp32", "bf16"), "'auto' = bf16 autocast on CUDA, fp32 on CPU"),
}

_BASE = dict(
    n_train=0, n_test=0, val_fraction=0.1, augment=False,
    scenario="class", forget_classes=[0], forget_fraction=0.1,
    arch="resnet18", momentum=0.9, weight_decay=5e-4, min_lr=1e-5,
    seed=0, device="auto", precision="auto", eval_batch_size=1000,
    tsne_per_class=50, relearn_steps=20, relearn_forget=10,
    # paper B: the generated low-rank set, the bias-free MLP, the authors' step schedule
    reg_dataset="synthetic", reg_input_dim=20, reg_target_dim=4, reg_rank=3, reg_noise=0.01, reg_norm="none",
    reg_rank_target_dim=8, sprites_targets=["x", "y", "scale"],
)

PROFILES: dict[str, dict[str, Any]] = {
    # every notebook runs: the test suite's profile (whole pipeline within minutes on 2 cores)
    "smoke": {**_BASE, "dataset": "digits", "width": 4, "epochs": 3, "retrain_epochs": 3, "batch_size": 64, "lr": 0.05,
              "warmup_epochs": 1, "patience": 50, "n_snapshots": 3, "eval_batch_size": 512,
              "tsne_per_class": 10, "relearn_steps": 4, "relearn_forget": 4,
              "reg_samples": 400, "reg_depth": 4, "reg_width": 32, "reg_epochs": 20, "reg_lr": 0.05,
              "reg_batch_size": 64, "reg_weight_decay": 5e-3, "reg_checkpoints": 3, "reg_wd_grid": [0.0, 5e-3],
              "reg_seeds": 2, "reg_rank_grid": [1, 2], "sprites_samples": 160, "sprites_size": 16,
              "conv_width": 2, "conv_epochs": 2, "conv_lr": 0.05, "conv_weight_decay": 5e-4},
    # readers and courses: real data (Fashion-MNIST), reduced width, the phenomena visible on a laptop
    "quick": {**_BASE, "dataset": "fashion_mnist", "n_train": 12000, "n_test": 5000, "width": 8,
              "epochs": 24, "retrain_epochs": 16, "batch_size": 128, "lr": 0.05, "warmup_epochs": 2, "patience": 25,
              "n_snapshots": 12,
              "reg_samples": 5000, "reg_depth": 6, "reg_width": 128, "reg_epochs": 200, "reg_lr": 0.05,
              "reg_batch_size": 256, "reg_weight_decay": 5e-3, "reg_checkpoints": 12, "reg_wd_grid": [0.0, 1e-3, 5e-3],
              "reg_seeds": 3, "reg_rank_grid": [1, 2, 4, 6], "sprites_samples": 3000, "sprites_size": 32,
              "conv_width": 8, "conv_epochs": 30, "conv_lr": 0.05, "conv_weight_decay": 5e-4},
    # full reproduction (GPU): paper A's CIFAR-10 ResNet-18 recipe
    "paper": {**_BASE, "dataset": "cifar10", "width": 64, "epochs": 300, "retrain_epochs": 200, "batch_size": 128, "lr": 0.01,
              "warmup_epochs": 5, "patience": 50, "augment": True, "n_snapshots": 12,
              "tsne_per_class": 100, "relearn_steps": 100,
              # paper B: the authors' MLP recipe (8 x 512, SGD 0.1, wd 5e-4, batch 512, 1000 epochs)
              "reg_samples": 50000, "reg_depth": 8, "reg_width": 512, "reg_epochs": 1000, "reg_lr": 0.1,
              "reg_batch_size": 512, "reg_weight_decay": 5e-4, "reg_checkpoints": 16,
              "reg_wd_grid": [0.0, 5e-5, 5e-4, 5e-3, 1e-2], "reg_seeds": 3, "reg_rank_grid": [1, 2, 4, 6],
              "sprites_samples": 20000, "sprites_size": 64, "conv_width": 64, "conv_epochs": 100, "conv_lr": 0.05,
              "conv_weight_decay": 5e-4},
}
DEFAULT_PROFILE = "quick"


def _check_device(v: str) -> str | None:
    if v in ("auto", "cpu"):
        return None
    if v == "mps":
        ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        return None if ok else "MPS is not available on this machine"
    if v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit()):
        if not torch.cuda.is_available():
            return "CUDA is not available on this machine (use 'auto' or 'cpu')"
        if ":" in v and int(v[5:]) >= torch.cuda.device_count():
            return f"only {torch.cuda.device_count()} CUDA device(s) here"
        return None
    return "must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


class ConfigError(ValueError):
    """A parameter failed validation; the message names it, its value and what is allowed."""


@dataclass(frozen=True)
class Config:
    """Validated, immutable parameters of one run, plus derived values.

    Attribute access (``cfg.epochs``); ``as_dict()`` gives the plain parameters (JSON-able),
    ``derived`` what was computed from them.
    """
    profile: str
    params: tuple  # sorted (name, value) pairs; lists stored as tuples
    derived: tuple

    def __getattr__(self, name: str) -> Any:
        for src in (self.params, self.derived):
            for k, v in src:
                if k == name:
                    return list(v) if isinstance(v, tuple) else v
        raise AttributeError(f"Config has no parameter {name!r}")

    def as_dict(self) -> dict[str, Any]:
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.params}
        d["profile"] = self.profile
        return d

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device_resolved)

    @property
    def autocast(self) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and self.torch_device.type == "cuda")

    def subset(self, *names: str) -> dict[str, Any]:
        """The named parameters as a dict (what an artifact's hash is built from)."""
        d = self.as_dict()
        return {n: d[n] for n in names}

    def replace(self, **overrides) -> "Config":
        params = {**self.as_dict(), **overrides}
        params.pop("profile")
        return resolve(self.profile, **params)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return f"Config(profile={self.profile!r}, {body})"


_CURRENT: Config | None = None


def current() -> Config | None:
    """The Config most recently returned by :func:`resolve` in this process (used by ``savefig``)."""
    return _CURRENT


def snapshot_epochs(epochs: int, n: int) -> list[int]:
    """At most ``n`` log-spaced epochs in [0, epochs] (0 = initialisation), both ends included."""
    if n <= 0:
        return []
    if n == 1 or epochs == 0:
        return [epochs]
    pts = [0, epochs]
    for m in range(n, 4 * n + 4):  # densify the geometric grid until it yields n distinct epochs
        grid = sorted({int(round(v)) - 1 for v in np.geomspace(1, epochs + 1, m)})
        if len(grid) >= n:
            break
        pts = grid
    else:
        grid = pts
    return grid if len(grid) <= n else sorted(set(grid[: n - 1]) | {epochs})


def resolve(profile: str = DEFAULT_PROFILE, **overrides: Any) -> Config:
    """Merge ``profile`` with ``overrides`` (``None`` = keep the profile's value) and validate.

    Raises :class:`ConfigError` (a ``ValueError``) naming the parameter, the value and what is
    allowed, for: an unknown profile, an unknown or misspelled parameter, a wrong type, an
    out-of-range value (e.g. negative epochs), a forget class not in the dataset, an unknown device.
    """
    global _CURRENT
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; allowed: {list(PROFILES)}")
    params = dict(PROFILES[profile])
    for name, value in overrides.items():
        if name == "profile":
            if value != profile:
                raise ConfigError(f"profile given twice: {profile!r} and {value!r}")
            continue
        if name not in SCHEMA:
            close = difflib.get_close_matches(name, SCHEMA, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown parameter {name!r}{hint}; allowed: {sorted(SCHEMA)}")
        if value is None:  # a notebook parameter left at None keeps the profile's value
            continue
        params[name] = value
    for name, value in params.items():
        types, check, meaning = SCHEMA[name]
        if isinstance(value, tuple):
            value = params[name] = list(value)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value = params[name] = float(value)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            allowed = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"parameter {name}={value!r} has type {type(value).__name__}; expected {allowed} ({meaning})")
        err = check(value)
        if err:
            raise ConfigError(f"parameter {name}={value!r} {err} ({meaning})")
    num_classes, in_channels, image_size = DATASET_INFO[params["dataset"]]
    if params["scenario"] == "class":
        bad = [c for c in params["forget_classes"] if not 0 <= c < num_classes]
        if bad:
            raise ConfigError(f"parameter forget_classes={params['forget_classes']!r}: class(es) {bad} not in "
                              f"dataset {params['dataset']!r} (classes 0..{num_classes - 1})")
        if len(set(params["forget_classes"])) >= num_classes:
            raise ConfigError(f"parameter forget_classes={params['forget_classes']!r} would forget every class")
    if params["warmup_epochs"] > min(params["epochs"], params["retrain_epochs"]):
        raise ConfigError(f"parameter warmup_epochs={params['warmup_epochs']} exceeds epochs={params['epochs']} "
                          f"or retrain_epochs={params['retrain_epochs']}")
    if params["reg_rank"] > params["reg_target_dim"]:
        raise ConfigError(f"parameter reg_rank={params['reg_rank']} exceeds reg_target_dim={params['reg_target_dim']}")
    if max(params["reg_rank_grid"]) > params["reg_rank_target_dim"]:
        raise ConfigError(f"parameter reg_rank_grid={params['reg_rank_grid']} has a rank above "
                          f"reg_rank_target_dim={params['reg_rank_target_dim']}")
    dev = params["device"]
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    derived = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                   device_resolved=dev,
                   snapshot_epochs=tuple(snapshot_epochs(params["epochs"], params["n_snapshots"])))
    frozen = lambda d: tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))  # noqa: E731
    cfg = Config(profile, frozen(params), frozen(derived))
    _CURRENT = cfg
    return cfg
