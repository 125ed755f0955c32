"""Looking inside unlearned models (paper A, notebooks 22–24).

Paper A's point: an unlearned model can reach ~0 % forget accuracy *at the output* while its
penultimate features still separate the forgotten class. This module measures that, for one model,
with one eval-mode pass per split over every probed layer (hooks, pooled features):

* :func:`evaluate_representations`: the three "heads" of paper A (full model / linear probe / NCC) ×
  (retain / forget) test accuracy, the feature–classifier misalignment of every class
  ``1 − cos(μ_c − μ_G, w_c)``, NC1–NC4 of the training features, layer-wise ridge probes and NCC on
  the stem and every residual block, and (optionally) a t-SNE of test features.
* :func:`relearn`: fine-tune a model for a few steps (retain data only, or with a handful of forget
  images in every batch) and record how fast forget accuracy comes back.
* :func:`during_unlearning`: run a method and measure output / probe / NCC forget accuracy every
  ``every`` optimiser steps (forget accuracy vs iteration).
* :class:`HeadTrajectory`: under classifier-only unlearning (frozen features) record the cosine of the
  forget-class weight ``w_k`` with its class mean: paper A's theory says ``w_k → −(1 − γ) μ_k``.

Features of the training set are those of ``split.train`` (retain + forget classes; the validation
images are held out), as the paper's probe protocol requires.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from .. import artifacts, models, train
from ..metrics import nc, probe
from ..metrics.probe import _split_report  # retain / forget / all test accuracy of predictions

#: bump when a change here changes what a cached evaluation would be
INSIDE_VERSION = 1


def block_layers(model: nn.Module) -> list[str]:
    """Module names of the stem and of every residual block of a :class:`~nbutils.models.ResNetEncoder`
    (``encoder.stem, encoder.layer1.0, …``): paper A's layer-wise probe points. The output of the last
    block, average-pooled, is the penultimate feature."""
    enc = model.encoder
    names = ["encoder.stem"]
    for s in ("layer1", "layer2", "layer3", "layer4"):
        names += [f"encoder.{s}.{j}" for j in range(len(getattr(enc, s)))]
    return names


def head_weight(model: nn.Module) -> torch.Tensor:
    """The K×D classifier matrix of ``model.head`` (a Linear layer, or a head with a ``weight``
    attribute such as the CMF head)."""
    W = getattr(model.head, "weight", None)
    if W is None:
        raise ValueError(f"the head {type(model.head).__name__} has no 'weight' to align with")
    return W.detach().float().cpu()


def _stratified(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in torch.unique(y):
        ix = torch.nonzero(y == c).flatten()
        out.append(ix[torch.randperm(len(ix), generator=g)[:per_class]])
    return torch.sort(torch.cat(out)).values


def tsne_embedding(features: torch.Tensor, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA initialisation, fixed seed) of standardised features."""
    from sklearn.manifold import TSNE

    X = features.double()
    X = ((X - X.mean(0)) / X.std(0).clamp_min(1e-12)).numpy()
    perp = min(perplexity, max(5.0, (len(X) - 1) / 3))
    return TSNE(2, init="pca", random_state=seed, perplexity=perp).fit_transform(X)


def evaluate_representations(model: nn.Module, data, split, *, layers: Sequence[str] | None = None,
                             layerwise: bool = True, logistic: bool = True, tsne_per_class: int = 0,
                             seed: int = 0, batch_size: int = 1000, autocast: bool = False,
                             cache: str | Path | None = None) -> dict:
    """Output, linear-probe and NCC retain/forget test accuracy of ``model`` and what lies behind them.

    One pass over ``split.train`` (retain + forget classes) and one over ``split.test`` read the logits
    and the pooled output of every layer in ``layers`` (default :func:`block_layers`; the last one is
    the penultimate feature). Returns a dict:

    * ``output``, ``probe`` (L-BFGS logistic probe, the headline number; :func:`~nbutils.metrics.probe.
      probe_accuracy`), ``ridge`` (closed-form ridge path), ``ncc`` (nearest class mean): each
      ``{"retain_test", "forget_test", ...}`` on the penultimate features;
    * ``misalignment``: per class ``1 − cos(μ_c − μ_G, w_c)`` (paper A's feature–classifier
      misalignment; 0 = aligned, 2 = opposite), from the training features and the head weights;
    * ``nc``: NC1, NC2, NC3, NC4 of the training features (:func:`~nbutils.metrics.nc.nc_metrics`);
    * ``layers``: ``{layer: {"dim", "ridge": {...}, "ncc": {...}}}`` if ``layerwise``;
    * ``tsne``: ``{"xy", "labels"}`` of ``tsne_per_class`` test images per class, if > 0;
    * ``seconds``: ``extract``, ``probe`` (logistic + ridge on the penultimate layer), ``total``.

    ``cache``: a JSON file that holds the result once computed (the notebooks keep one per model and
    forget set next to the model's weights).
    """
    if cache is not None and Path(cache).exists():
        rec = artifacts.load_json(cache)
        if rec.get("version") == INSIDE_VERSION and rec.get("tsne_per_class", 0) >= tsne_per_class:
            return rec
    if len(split.train) == 0 or len(split.test) == 0:
        raise ValueError("evaluate_representations needs non-empty train and test views")
    K, fc = data.num_classes, list(split.forget_classes)
    layers = list(layers or block_layers(model))
    pen = layers[-1]
    t0 = time.perf_counter()
    ftr = models.extract(model, data.train, split.train, layers=layers, batch_size=batch_size, autocast=autocast)
    fte = models.extract(model, data.test, split.test, layers=layers, batch_size=batch_size, autocast=autocast)
    t_extract = time.perf_counter() - t0
    ytr, yte = ftr["labels"], fte["labels"]
    out = {"version": INSIDE_VERSION, "penultimate": pen, "forget_classes": fc, "tsne_per_class": tsne_per_class,
           "output": _split_report(fte["logits"].argmax(1), yte, tuple(fc))}
    t1 = time.perf_counter()
    out["ridge"] = probe.probe_accuracy(ftr[pen], ytr, fte[pen], yte, fc, K, method="ridge", seed=seed)
    if logistic:
        out["probe"] = probe.probe_accuracy(ftr[pen], ytr, fte[pen], yte, fc, K, method="logistic", seed=seed)
    t_probe = time.perf_counter() - t1
    out["ncc"] = probe.ncc_accuracy(ftr[pen], ytr, fte[pen], yte, fc, K)
    W = head_weight(model) if hasattr(model.head, "weight") else None
    if W is not None and W.shape == (K, ftr[pen].shape[1]):
        out["misalignment"] = [float(v) for v in nc.nc3(ftr[pen], ytr, W, K)["per_class_misalignment"]]
        out["nc"] = nc.nc_metrics(ftr[pen], ytr, W=W, logits=ftr["logits"], num_classes=K)
    else:  # e.g. Boundary Expand's pruned head: NC without the head-dependent metrics
        out["nc"] = nc.nc_metrics(ftr[pen], ytr, num_classes=K)
    if layerwise:
        out["layers"] = {}
        for name in layers:
            r = probe.probe_accuracy(ftr[name], ytr, fte[name], yte, fc, K, method="ridge", seed=seed)
            n = probe.ncc_accuracy(ftr[name], ytr, fte[name], yte, fc, K)
            out["layers"][name] = {"dim": int(ftr[name].shape[1]),
                                   "ridge": {k: r[k] for k in ("retain_test", "forget_test", "hparam")},
                                   "ncc": {k: n[k] for k in ("retain_test", "forget_test")}}
    if tsne_per_class > 0:
        sel = _stratified(yte, tsne_per_class, seed)
        out["tsne"] = {"xy": tsne_embedding(fte[pen][sel], seed=seed).tolist(), "labels": yte[sel].tolist()}
    out["seconds"] = {"extract": t_extract, "probe": t_probe, "total": time.perf_counter() - t0}
    if cache is not None:
        artifacts.save_json(cache, out)
    return out


# ----------------------------------------------------------------------------------------------
# relearning
# ----------------------------------------------------------------------------------------------
class _FewShotSampler(train.Sampler):
    """``steps`` batches: ``batch_size − len(few)`` random retain images plus *all* of ``few`` (a handful
    of forget images with their true labels) in every batch; ``few`` empty = retain only."""

    def __init__(self, store, retain: torch.Tensor, few: torch.Tensor, batch_size: int, steps: int):
        if len(few) >= batch_size:
            raise ValueError(f"n_forget={len(few)} must be smaller than the batch size {batch_size}")
        self.store, self.retain, self.few = store, retain.to(store.device), few.to(store.device)
        self.nr, self.steps_per_epoch = batch_size - len(few), steps

    def __call__(self, gen: torch.Generator):
        for _ in range(self.steps_per_epoch):
            b = self.retain[torch.randint(0, len(self.retain), (self.nr,), generator=gen).to(self.retain.device)]
            b = torch.cat([b, self.few])
            yield self.store.batch(b), self.store.labels[b]


def relearn(model: nn.Module, cfg, data, split, *, steps: int = 20, lr: float = 0.01, n_forget: int = 0,
            eval_every: int = 2, n_retain_eval: int = 1000, seed: int = 0, progress: bool | None = False) -> list[dict]:
    """Relearning: fine-tune a copy of ``model`` (SGD, the profile's momentum and weight decay, BatchNorm
    in train mode) for ``steps`` steps on retain data, with ``n_forget`` forget images (true labels,
    drawn once with ``seed``) in every batch, and return ``[{"step", "forget_test"}]`` every
    ``eval_every`` steps and at the last step (step 0 = the model as given); the first and last records
    also hold ``retain_test``, measured on a fixed random subset of ``n_retain_eval`` retain test images.

    A model that *hid* the forget class (features intact, head turned away) regains it in a few steps,
    even from retain data alone; a model that never learned it (retrained) needs the forget images and
    more steps.
    """
    if steps < 1 or eval_every < 1 or n_forget < 0:
        raise ValueError(f"need steps >= 1, eval_every >= 1, n_forget >= 0; got {steps}, {eval_every}, {n_forget}")
    if n_forget > len(split.forget):
        raise ValueError(f"n_forget={n_forget} exceeds the forget set ({len(split.forget)} images)")
    g = torch.Generator().manual_seed(seed)
    few = split.forget[torch.randperm(len(split.forget), generator=g)[:n_forget].to(split.forget.device)]
    ret_eval = split.test_retain[torch.randperm(len(split.test_retain), generator=g)[:n_retain_eval]
                                 .to(split.test_retain.device)]
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(True)
    curve = []

    def on_step(step, mod):
        if step % eval_every == 0 or step == steps:
            rec = {"step": step, "forget_test": train.accuracy(mod, data.test, split.test_forget, autocast=cfg.autocast)}
            if step in (0, steps):  # retain accuracy only where the tables read it (saves time)
                rec["retain_test"] = train.accuracy(mod, data.test, ret_eval, autocast=cfg.autocast)
            curve.append(rec)

    sampler = _FewShotSampler(data.train, split.retain, few, cfg.batch_size, steps)
    train.fit(m, data.train, sampler, epochs=1, lr=lr, batch_size=cfg.batch_size, momentum=cfg.momentum,
              weight_decay=cfg.weight_decay, seed=seed, on_step=on_step, autocast=cfg.autocast,
              progress=progress, desc="relearn", restore_best=False)
    return curve


# ----------------------------------------------------------------------------------------------
# curves during unlearning
# ----------------------------------------------------------------------------------------------
class ForgetCurve:
    """``on_step`` callback: at the steps in ``at`` (and after the last step, through :meth:`finish`)
    measure retain / forget test accuracy of the output, of a logistic probe and of NCC on the
    penultimate features. ``records = [{"step", "output", "probe", "ncc"}]``.

    To keep a curve affordable, the probe is fitted on ``probe_train_per_class`` training images per
    class (forget classes included) and all accuracies use ``test_per_class`` test images per class
    (stratified, fixed by ``seed``); the tables of notebook 22 use all images.
    """

    def __init__(self, cfg, data, split, at: Sequence[int], probe_train_per_class: int = 300,
                 test_per_class: int = 200, seed: int = 0):
        self.cfg, self.data, self.split, self.at, self.seed = cfg, data, split, set(int(a) for a in at), seed
        self.tr = split.train[_stratified(data.train.labels[split.train].cpu(), probe_train_per_class, seed)
                              .to(split.train.device)]
        self.te = split.test[_stratified(data.test.labels[split.test].cpu(), test_per_class, seed)
                             .to(split.test.device)]
        self.records: list[dict] = []
        self.last = 0

    def measure(self, step: int, model: nn.Module) -> None:
        K, fc, keep = self.data.num_classes, list(self.split.forget_classes), ("retain_test", "forget_test")
        ftr = models.extract(model, self.data.train, self.tr, autocast=self.cfg.autocast)
        fte = models.extract(model, self.data.test, self.te, autocast=self.cfg.autocast)
        pr = probe.probe_accuracy(ftr["encoder"], ftr["labels"], fte["encoder"], fte["labels"], fc, K,
                                  method="logistic", seed=self.seed)
        nn_ = probe.ncc_accuracy(ftr["encoder"], ftr["labels"], fte["encoder"], fte["labels"], fc, K)
        self.records.append({"step": step, "output": _split_report(fte["logits"].argmax(1), fte["labels"], tuple(fc)),
                             "probe": {k: pr[k] for k in keep}, "ncc": {k: nn_[k] for k in keep}})

    def __call__(self, step: int, model: nn.Module) -> None:
        self.last = step
        if step in self.at:
            self.measure(step, model)

    def finish(self, model: nn.Module) -> None:
        if not self.records or self.records[-1]["step"] != self.last:
            self.measure(self.last, model)


def during_unlearning(method: str, cfg, data, split, original: nn.Module, *,
                      at: Sequence[int] = (0, 4, 8, 16, 32, 64, 128), probe_train_per_class: int = 300,
                      test_per_class: int = 200, seed: int = 0, **unlearn_kwargs):
    """Run ``method`` (:func:`nbutils.unlearn.unlearn`, cached with its curve) and measure output / probe /
    NCC forget accuracy at the optimiser steps ``at`` and after the last step (:class:`ForgetCurve`).
    Returns ``(records, result)``."""
    from . import unlearn

    settings = {"at": sorted(set(int(a) for a in at)), "probe_train_per_class": probe_train_per_class,
                "test_per_class": test_per_class, "seed": seed, "version": INSIDE_VERSION}
    curve = ForgetCurve(cfg, data, split, settings["at"], probe_train_per_class, test_per_class, seed)
    res = unlearn(method, cfg, data, split, original, on_step=curve, track=False,
                  record=f"curve-{artifacts.config_hash(settings)}.json", **unlearn_kwargs)
    return res.records, res


# ----------------------------------------------------------------------------------------------
# classifier-only: the trajectory of the forget-class weight
# ----------------------------------------------------------------------------------------------
class HeadTrajectory:
    """``on_step`` callback for classifier-only unlearning: records, after every step, the cosine of
    each forget-class weight ``w_k`` with its centred class mean ``μ_k − μ_G`` and with the raw mean
    ``μ_k`` (features are frozen, so the means are computed once), and ``‖w_k‖``.

    Paper A's theory (under neural collapse, features fixed): the unlearned forget-class weight tends to
    ``w_k ≈ −(1 − γ) μ_k``, i.e. the cosine goes from near +1 (aligned, the original model) to negative.
    """

    def __init__(self, class_means: torch.Tensor, global_mean: torch.Tensor, forget_classes: Sequence[int],
                 every: int = 1):
        self.mu = class_means.double()
        self.mu_g = global_mean.double()
        self.forget_classes, self.every = list(forget_classes), every
        self.records: list[dict] = []
        self.last = -1

    @classmethod
    def from_features(cls, H: torch.Tensor, y: torch.Tensor, num_classes: int, forget_classes, every: int = 1):
        means, _ = nc.class_means(H.double(), y, num_classes)
        means = torch.as_tensor(means)
        return cls(means, means.mean(0), forget_classes, every)

    def __call__(self, step: int, model: nn.Module) -> None:
        self.last = step
        if step % self.every == 0:
            self.measure(step, model)

    def finish(self, model: nn.Module) -> None:
        if not self.records or self.records[-1]["step"] != self.last:
            self.measure(self.last, model)

    def measure(self, step: int, model: nn.Module) -> None:
        W = head_weight(model).double()
        rec = {"step": step}
        for k in self.forget_classes:
            w, m = W[k], self.mu[k]
            nw = float(torch.linalg.vector_norm(w))
            cos = lambda a, b: float(a @ b / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))) if nw > 0 else float("nan")  # noqa: E731
            rec[f"cos_centred_{k}"] = cos(w, m - self.mu_g)
            rec[f"cos_raw_{k}"] = cos(w, m)
            rec[f"norm_{k}"] = nw
        self.records.append(rec)
