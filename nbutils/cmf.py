"""The class-mean-feature (CMF) classifier of paper A, and its pre-stage.

Paper A's proposal: replace the trained linear head by the class means of normalised features, so that
the classifier can never drift away from the features (feature–classifier alignment holds by
construction, NC3 = 0 on the training features). With a CMF head, an unlearning method can only make
the forget class vanish by moving the *features*.

Definitions (authors' code ``ycgao1/CMF_Unlearning``; ``f`` the encoder, ``x_i`` the training images
of ``idx`` with their true labels, forget classes included):

* ``z_i = f(x_i) / ‖f(x_i)‖`` (``average="normalized"``, the code) or ``z_i = f(x_i)`` (``"raw"``; the
  paper's Algorithm 1 may average raw features: the ambiguity is a parameter);
* ``m_c = mean_{i: y_i = c} z_i``, ``μ = mean_i z_i`` (the mean of all samples);
* ``w_c = (m_c − μ) / ‖m_c − μ‖`` (unit rows; a class absent from ``idx`` gets ``w_c = 0``);
* ``ẑ(x) = normalize(z(x) − μ)`` with ``z(x)`` normalised or raw as above (the code: normalised),
  ``logits_c(x) = τ ⟨ẑ(x), w_c⟩`` (τ = 1 in the code).

``W`` and ``μ`` are buffers: saved with the model, moved with ``.to()``, never touched by gradients.
They are recomputed in one eval-mode pass over the training set (:meth:`CMFHead.recompute`), in float64,
so the result does not depend on the order of the data beyond float64 rounding.
"""
from __future__ import annotations

import copy
import time
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

#: the choices of the authors' code
DEFAULTS = {"temperature": 1.0, "average": "normalized"}
AVERAGES = ("normalized", "raw")


class CMFHead(nn.Module):
    """Class-mean-feature classifier over ``dim``-dimensional features (see the module docstring).

    ``bind(store, idx)`` tells the head which training images define its class means; the trainer then
    calls :meth:`epoch_start` before every epoch (``W`` and ``μ`` recomputed with the current encoder and
    frozen for the epoch, as paper A's CMF unlearning does) and :func:`nbutils.unlearn.unlearn` calls
    :meth:`finish` after the method (recomputed once more at the end).
    """

    def __init__(self, dim: int, num_classes: int, temperature: float = DEFAULTS["temperature"],
                 average: str = DEFAULTS["average"], batch_size: int = 1000):
        super().__init__()
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {list(AVERAGES)}, got {average!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if dim < 1 or num_classes < 2:
            raise ValueError(f"need dim >= 1 and num_classes >= 2, got {dim}, {num_classes}")
        self.temperature, self.average, self.batch_size = float(temperature), average, batch_size
        self.in_features, self.out_features = dim, num_classes
        self.register_buffer("weight", torch.zeros(num_classes, dim))
        self.register_buffer("mu", torch.zeros(dim))
        self._source = None  # (store, idx): not a module attribute, shared (not copied) by deepcopy

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"temperature={self.temperature}, average={self.average!r}")

    def __deepcopy__(self, memo):
        if self._source is not None:  # share the data, copy the head
            for obj in self._source:
                memo[id(obj)] = obj
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = copy.deepcopy(v, memo)
        return new

    # ------------------------------------------------------------------ the classifier
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = F.normalize(h.float(), dim=1) if self.average == "normalized" else h.float()
        zc = F.normalize(z - self.mu, dim=1)
        return self.temperature * zc @ self.weight.t()

    # ------------------------------------------------------------------ the class means
    def bind(self, store, idx: torch.Tensor) -> "CMFHead":
        """Use ``store[idx]`` (true labels) to define the class means; returns ``self``."""
        if len(idx) == 0:
            raise ValueError("CMFHead.bind: the index is empty")
        self._source = (store, idx)
        return self

    @torch.no_grad()
    def set_from_features(self, H: torch.Tensor, y: torch.Tensor) -> None:
        """Set ``W`` and ``μ`` from features ``H`` (N×D) with labels ``y`` (float64 sums)."""
        if H.ndim != 2 or H.shape[1] != self.in_features or len(H) != len(y):
            raise ValueError(f"need H of shape (N, {self.in_features}) and N labels, got {tuple(H.shape)}, {len(y)}")
        Z = H.double()
        if self.average == "normalized":
            Z = F.normalize(Z, dim=1)
        K = self.out_features
        y = y.to(torch.long).cpu()
        Z = Z.cpu()
        sums = torch.zeros(K, Z.shape[1], dtype=torch.float64).index_add_(0, y, Z)
        counts = torch.bincount(y, minlength=K).to(torch.float64)
        mu = Z.sum(0) / len(Z)
        means = sums / counts.clamp_min(1).unsqueeze(1)
        W = F.normalize(means - mu, dim=1)
        W[counts == 0] = 0.0
        self.weight.copy_(W.to(self.weight))
        self.mu.copy_(mu.to(self.mu))

    @torch.no_grad()
    def recompute(self, model: nn.Module) -> None:
        """One eval-mode pass of ``model.encoder`` over the bound images; sets ``W`` and ``μ``."""
        if self._source is None:
            raise RuntimeError("CMFHead.recompute: call bind(store, idx) first")
        store, idx = self._source
        was = model.training
        model.eval()
        feats, labels = [], []
        try:
            for x, y in store.iter_batches(idx, self.batch_size):
                feats.append(model.encoder(x).double().cpu())
                labels.append(y.cpu())
        finally:
            model.train(was)
        self.set_from_features(torch.cat(feats), torch.cat(labels))

    def epoch_start(self, epoch: int, model: nn.Module) -> None:
        self.recompute(model)

    def finish(self, model: nn.Module) -> None:
        self.recompute(model)


def cmf_head_for(model: nn.Module, num_classes: int, store, idx: torch.Tensor, **kwargs) -> CMFHead:
    """A CMF head for ``model.encoder``'s features, bound to ``store[idx]`` and computed once."""
    dim = model.head.in_features if hasattr(model.head, "in_features") else model.encoder.out_dim
    head = CMFHead(dim, num_classes, **kwargs).to(store.device).bind(store, idx)
    head.recompute(model)
    return head


#: parameters of the CMF pre-stage (paper A's code): fine-tune the CE-trained encoder with the CMF head
PRESTAGE = {"epochs": 1, "lr": 3e-4, "weight_decay": 1e-4}


def prestage(cfg, data, split, original: nn.Module, *, original_key: str | None = None,
             epochs: int | None = None, lr: float | None = None, weight_decay: float | None = None,
             temperature: float = DEFAULTS["temperature"], average: str = DEFAULTS["average"],
             progress: bool | None = None):
    """The CMF pre-stage: the original encoder with a CMF head (bound to ``split.train``, true labels,
    forget classes included), fine-tuned with cross-entropy on the CMF logits for ``epochs`` epochs
    (W and μ recomputed before every epoch and at the end) by the project's trainer: SGD with the
    profile's momentum, the learning rate annealed from ``lr`` by a cosine to 0 over the run. Cached in ``data/results/cmf-<hash>/`` when
    ``original_key`` names the original model. Returns ``(model, info)``; ``info`` holds the settings,
    the seconds and the training history.
    """
    from . import artifacts, train

    hp = {"epochs": PRESTAGE["epochs"] if epochs is None else epochs, "lr": PRESTAGE["lr"] if lr is None else lr,
          "weight_decay": PRESTAGE["weight_decay"] if weight_decay is None else weight_decay,
          "temperature": temperature, "average": average}
    if hp["epochs"] < 0 or not hp["lr"] > 0 or hp["weight_decay"] < 0:
        raise ValueError(f"CMF pre-stage needs epochs >= 0, lr > 0, weight_decay >= 0; got {hp}")
    key = {"original": original_key, "hp": hp, "train_n": int(len(split.train)), "seed": cfg.seed, "version": 1}
    path = artifacts.results_dir() / f"cmf-{artifacts.config_hash(key)}" if original_key else None
    model = copy.deepcopy(original)
    model.head = cmf_head_for(model, data.num_classes, data.train, split.train, temperature=temperature,
                              average=average, batch_size=cfg.eval_batch_size)
    if path is not None and (path / "model.pt").exists():
        model.load_state_dict(artifacts.load_torch(path / "model.pt", map_location=data.train.device))
        return model.eval(), {**artifacts.load_json(path / "info.json"), "path": path, "cached": True}
    t0 = time.perf_counter()
    hist = train.fit(model, data.train, split.train, epochs=hp["epochs"], lr=hp["lr"], batch_size=cfg.batch_size,
                     momentum=cfg.momentum, weight_decay=hp["weight_decay"], seed=cfg.seed, augment=cfg.augment,
                     epoch_start=model.head.epoch_start, autocast=cfg.autocast, progress=progress, desc="CMF pre-stage",
                     restore_best=False) if hp["epochs"] else None
    model.head.finish(model)
    info = {"hp": hp, "seconds": time.perf_counter() - t0, "history": hist.as_dict() if hist else None, "key": key}
    if path is not None:
        artifacts.save_json(path / "info.json", info)
        artifacts.save_torch(path / "model.pt", model.state_dict())
    return model.eval(), {**info, "path": path, "cached": False}


#: paper A's CMF hyper-parameters (CIFAR-10, ResNet-18): RL+CMF, SalUn+CMF lr 2e-3; NegGrad+ +CMF lr 1e-4 with
#: loss -0.5 CE_f + CE_r; SCRUB+CMF 5e-3; UNSIR+CMF 5e-5 (3-4 epochs). Quick: the base methods' quick values.
CMF_HPARAMS: dict[str, dict[str, dict]] = {
    "paper": {"rl": {"lr": 2e-3}, "salun": {"lr": 2e-3}, "neggrad_plus": {"lr": 1e-4, "forget_weight": 0.5},
              "scrub": {"lr": 5e-3}, "unsir": {"lr": 5e-5, "repair_lr": 5e-5}},
    "quick": {"rl": {}, "salun": {}, "neggrad_plus": {"forget_weight": 0.5}, "scrub": {}, "unsir": {}},
    "smoke": {"rl": {}, "salun": {}, "neggrad_plus": {"forget_weight": 0.5}, "scrub": {}, "unsir": {}},
}
CMF_METHODS: Sequence[str] = ("rl", "salun", "neggrad_plus", "scrub", "unsir")
