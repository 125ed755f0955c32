"""SCRUB (Kurmanji et al., NeurIPS 2023): a student moves away from a frozen teacher on the forget set
and stays close to it (and to the labels) on the retain set."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from .. import train
from .base import Context, kl_div, register


class ScrubSampler(train.Sampler):
    """Each epoch: a pass over the forget set (max-steps, only in the first ``max_epochs`` epochs), then a
    pass over the retain set (min-steps). Batches are ``(x, y, is_max)``."""

    def __init__(self, store, retain, forget, batch_size, forget_batch_size, max_epochs):
        self.r = train.IndexSampler(store, retain, batch_size)
        self.f = train.IndexSampler(store, forget, forget_batch_size)
        self.max_epochs, self.epoch = max_epochs, 0
        self.steps_per_epoch = self.r.steps_per_epoch + (self.f.steps_per_epoch if max_epochs > 0 else 0)

    def __call__(self, gen: torch.Generator) -> Iterator[tuple]:
        self.epoch += 1
        if self.epoch <= self.max_epochs:
            for x, y in self.f(gen):
                yield x, y, torch.ones((), dtype=torch.bool)
        for x, y in self.r(gen):
            yield x, y, torch.zeros((), dtype=torch.bool)


@register("scrub", "SCRUB", "distillation",
          summary="student maximises KL to the teacher on forget data, minimises CE + KL on retain data")
def scrub(ctx: Context) -> dict:
    """SCRUB: max-steps minimise −KL(teacher‖student) on D_f (first ``max_epochs`` epochs); min-steps minimise
    γ·CE(student; D_r) + α·KL(teacher‖student) on D_r; KD temperature T; teacher = the frozen original."""
    hp = ctx.hp
    teacher = ctx.original.eval()
    T, gamma, alpha = hp["temperature"], hp["gamma"], hp["alpha"]

    def loss_fn(model, x, y, is_max):
        logits = model(x)
        with torch.no_grad():
            t = teacher(x)
        if bool(is_max):
            return -kl_div(logits, t, T), None
        return gamma * F.cross_entropy(logits, y) + alpha * kl_div(logits, t, T), logits

    view = ScrubSampler(ctx.data.train, ctx.split.retain, ctx.split.forget, hp["batch_size"],
                        hp["forget_batch_size"], hp["max_epochs"])
    h = ctx.fit(view, epochs=hp["epochs"], lr=hp["lr"], loss_fn=loss_fn, desc="SCRUB")
    return {"history": h.as_dict()}
