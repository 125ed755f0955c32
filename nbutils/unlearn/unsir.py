"""UNSIR (Tarun et al., IEEE TNNLS 2023): error-maximising noise impairs the forget classes, then the
retain data repairs the rest."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from .. import train
from .base import Context, register


def error_maximising_noise(model, cls: int, shape, n: int, steps: int, lr: float, reg: float,
                           gen: torch.Generator, device) -> torch.Tensor:
    """Noise N (in the model's normalised input space) that maximises the loss of class ``cls``:
    minimise −CE(f(N), cls) + reg·mean‖N‖² with Adam, the model frozen and in eval mode."""
    was = model.training
    model.eval()
    noise = torch.randn((n, *shape), generator=gen).to(device).requires_grad_(True)
    opt = torch.optim.Adam([noise], lr=lr)
    target = torch.full((n,), cls, device=device)
    for _ in range(steps):
        loss = -F.cross_entropy(model(noise), target) + reg * noise.pow(2).flatten(1).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.train(was)
    model.zero_grad(set_to_none=True)
    return noise.detach()


class NoiseMixSampler(train.Sampler):
    """Retain-subset batches, each concatenated with a chunk of labelled noise (cycled): the impair view."""

    def __init__(self, store, idx, batch_size, noise: torch.Tensor, noise_labels: torch.Tensor, noise_per_batch: int):
        self.base = train.IndexSampler(store, idx, batch_size)
        self.noise, self.noise_labels, self.k = noise, noise_labels, noise_per_batch
        self.steps_per_epoch = self.base.steps_per_epoch

    def __call__(self, gen: torch.Generator) -> Iterator[tuple]:
        order = torch.randperm(len(self.noise), generator=gen).to(self.noise.device)
        pos = 0
        for x, y in self.base(gen):
            take = order[torch.arange(pos, pos + self.k, device=order.device) % len(order)]
            pos += self.k
            yield torch.cat([x, self.noise[take]]), torch.cat([y, self.noise_labels[take]])


def retain_subset(labels: torch.Tensor, retain: torch.Tensor, per_class: int, gen: torch.Generator) -> torch.Tensor:
    """At most ``per_class`` retain images of each class (UNSIR uses a small retain subset)."""
    y = labels[retain].cpu()
    keep = []
    for c in y.unique():
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return retain[torch.sort(torch.cat(keep)).values.to(retain.device)]


@register("unsir", "UNSIR", "noise",
          summary="learn noise that maximises the forget classes' loss, train on it (impair), then repair")
def unsir(ctx: Context) -> dict:
    """UNSIR: (1) per forget class c, error-maximising noise N_c; (2) impair: CE on N_c (label c) mixed with a
    retain subset; (3) repair: CE on the retain subset alone."""
    hp = ctx.hp
    if not ctx.split.forget_classes:
        raise ValueError("UNSIR learns noise per forget class: it needs scenario='class'")
    gen = torch.Generator().manual_seed(ctx.cfg.seed)
    shape = ctx.data.train.shape
    noises, labels = [], []
    for c in ctx.split.forget_classes:
        noises.append(error_maximising_noise(ctx.model, c, shape, hp["noise_samples"], hp["noise_steps"],
                                             hp["noise_lr"], hp["noise_reg"], gen, ctx.device))
        labels.append(torch.full((hp["noise_samples"],), c, device=ctx.device))
    noise, noise_labels = torch.cat(noises), torch.cat(labels)
    sub = retain_subset(ctx.data.train.labels, ctx.split.retain, hp["retain_per_class"], gen)
    impair = NoiseMixSampler(ctx.data.train, sub, hp["batch_size"], noise, noise_labels, hp["noise_per_batch"])
    h1 = ctx.fit(impair, epochs=hp["impair_epochs"], lr=hp["lr"], desc="UNSIR impair")
    h2 = ctx.fit(sub, epochs=hp["repair_epochs"], lr=hp["repair_lr"], desc="UNSIR repair")
    return {"history": {"epochs": h1.epochs + h2.epochs, "impair_epochs": len(h1.epochs)},
            "retain_subset": int(len(sub)), "noise_samples": int(len(noise))}
