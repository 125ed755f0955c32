"""The one calling convention of every unlearning method, and what they share.

A method is a function ``run(ctx) -> dict`` registered under a name. ``ctx`` (:class:`Context`)
holds a *copy* of the original model, already prepared (its head swapped if asked, the
classifier-only setting applied), the data and the forget/retain views, the method's validated
hyper-parameters, and :meth:`Context.fit`, which calls the project's one trainer with everything a
method does not choose itself (optimiser settings, which parameters move, BatchNorm mode, seed,
per-epoch evaluation). A method only contributes its loss, its data view and its gradient hooks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from .. import train

#: name -> Method; filled by @register in the method modules
METHODS: dict[str, "Method"] = {}


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[["Context"], dict]
    title: str
    family: str
    gradient_free: bool = False
    summary: str = ""


def register(name: str, title: str, family: str, gradient_free: bool = False, summary: str = ""):
    def deco(fn):
        METHODS[name] = Method(name, fn, title, family, gradient_free, summary)
        return fn
    return deco


@dataclass
class Context:
    """Everything a method needs; ``model`` is the (prepared) copy the method changes in place."""
    model: nn.Module
    original: nn.Module
    data: Any
    split: Any
    cfg: Any
    hp: dict
    classifier_only: bool = False
    progress: bool | None = None
    evaluate: Callable[[nn.Module], dict] | None = None
    epoch_start: Callable[[int, nn.Module], None] | None = None
    on_step: Callable[[int, nn.Module], None] | None = None
    steps: int = field(default=0, init=False)

    def _step_hook(self) -> Callable[[int, nn.Module], None] | None:
        """``on_step`` with one step counter across all ``fit`` calls of a method (UNSIR fits twice):
        ``on_step(0, model)`` once before the first step, then ``on_step(k, model)`` after step k."""
        if self.on_step is None:
            return None

        def hook(step: int, model: nn.Module) -> None:
            if step == 0:
                if self.steps == 0:
                    self.on_step(0, model)
                return
            self.steps += 1
            self.on_step(self.steps, model)
        return hook

    @property
    def device(self) -> torch.device:
        return self.data.train.device

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def train_mode(self, model: nn.Module) -> None:
        """Train mode, except under classifier-only, where BatchNorm (the whole encoder) stays in eval."""
        if self.classifier_only:
            model.eval()
        else:
            model.train()

    def fit(self, view, *, epochs: int, lr: float, batch_size: int | None = None, desc: str = "unlearn",
            **kwargs) -> train.History:
        """The one trainer with this method's defaults: SGD (Nesterov, momentum 0.9), the profile's weight
        decay, a constant learning rate, no augmentation, no early stopping, per-epoch evaluation."""
        opts = dict(momentum=self.cfg.momentum, weight_decay=self.hp.get("weight_decay", self.cfg.weight_decay),
                    warmup_epochs=0, min_lr=lr, seed=self.cfg.seed, params=self.trainable(),
                    train_mode=self.train_mode, autocast=self.cfg.autocast, progress=self.progress,
                    evaluate=self.evaluate, epoch_start=self.epoch_start, on_step=self._step_hook(), desc=desc,
                    restore_best=False)
        opts.update(kwargs)
        return train.fit(self.model, self.data.train, view, epochs=epochs, lr=lr,
                         batch_size=batch_size or self.hp.get("batch_size", self.cfg.batch_size), **opts)

    def sampler(self, idx: torch.Tensor, batch_size: int | None = None, **kwargs) -> train.IndexSampler:
        return train.IndexSampler(self.data.train, idx, batch_size or self.hp.get("batch_size", self.cfg.batch_size),
                                  **kwargs)

    def forget_mask(self) -> torch.Tensor:
        """Boolean mask over the training pool: True on the forget set."""
        m = torch.zeros(len(self.data.train), dtype=torch.bool, device=self.device)
        m[self.split.forget] = True
        return m


def kl_div(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of temperature-T softmaxes, times T^2 (Hinton's distillation loss)."""
    return nn.functional.kl_div(torch.log_softmax(student_logits / T, 1), torch.softmax(teacher_logits / T, 1),
                                reduction="batchmean") * T * T


def random_relabeler(num_classes: int, forget_classes, forget_mask: torch.Tensor) -> Callable:
    """Relabel function for :class:`~nbutils.train.IndexSampler` (the RL / SalUn data view).

    Forget samples get a fresh random label every batch: uniform among the *non-forget* classes in
    class-wise forgetting (so a forget class is never a target), or any class but the sample's own in
    random-sample forgetting. Retain samples keep their true labels.
    """
    device = forget_mask.device
    forget = set(int(c) for c in forget_classes)
    allowed = torch.tensor([c for c in range(num_classes) if c not in forget], device=device)
    if len(allowed) == 0:
        raise ValueError("random labels: every class is a forget class")

    def relabel(b: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        is_f = forget_mask[b]
        if forget:
            draw = allowed[torch.randint(0, len(allowed), (len(y),), generator=gen).to(device)]
        else:
            draw = (y + torch.randint(1, num_classes, (len(y),), generator=gen).to(device)) % num_classes
        return torch.where(is_f, draw, y)

    return relabel
