"""Boundary unlearning (Chen et al., CVPR 2023): move the decision boundary instead of the data."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Context, register


def fgsm_nearest_wrong_labels(model: nn.Module, store, idx: torch.Tensor, eps: float,
                              batch_size: int = 256) -> torch.Tensor:
    """Boundary Shrink's neighbour search: one FGSM step x' = x + ε·sign(∇_x CE(f(x), y)) on the original
    model (ε in [0, 1] pixel units, scaled by the per-channel std into the normalised space); the label is
    the prediction on x' — with the true class masked out, so it is always a *wrong* class."""
    was = model.training
    model.eval()
    out = []
    for s in range(0, len(idx), batch_size):
        b = idx[s:s + batch_size]
        x = store.batch(b).requires_grad_(True)
        y = store.labels[b]
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
        x_adv = (x + eps * 255 / store.std * g.sign()).detach()
        with torch.no_grad():
            logits = model(x_adv)
            logits[torch.arange(len(y)), y] = float("-inf")
            out.append(logits.argmax(1))
    model.train(was)
    model.zero_grad(set_to_none=True)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=store.device)


@register("boundary_shrink", "Boundary Shrink", "boundary",
          summary="relabel forget samples to their nearest wrong class (FGSM) and fine-tune on them")
def boundary_shrink(ctx: Context) -> dict:
    """Boundary Shrink: ỹ(x) = nearest wrong class of x found by FGSM on the original model; minimise
    CE(θ; {(x, ỹ(x)) : x ∈ D_f}). The forget class's region shrinks into its neighbours'."""
    labels = ctx.data.train.labels.clone()
    labels[ctx.split.forget] = fgsm_nearest_wrong_labels(ctx.original, ctx.data.train, ctx.split.forget, ctx.hp["eps"])
    moved = torch.bincount(labels[ctx.split.forget].cpu(), minlength=ctx.num_classes).tolist()
    h = ctx.fit(ctx.split.forget, epochs=ctx.hp["epochs"], lr=ctx.hp["lr"], labels=labels, desc="Boundary Shrink")
    return {"history": h.as_dict(), "neighbour_label_counts": moved}


@register("boundary_expand", "Boundary Expand", "boundary",
          summary="add a shadow class, train the forget set into it, then prune it")
def boundary_expand(ctx: Context) -> dict:
    """Boundary Expand: widen the head to K+1 outputs (the extra one a shadow class), minimise
    CE(θ; {(x, K) : x ∈ D_f}), then drop the shadow output, so that forget samples fall to whichever real
    class is next."""
    head = ctx.model.head
    if not isinstance(head, nn.Linear):
        raise ValueError("boundary_expand needs a linear head")
    K = head.out_features
    wide = nn.Linear(head.in_features, K + 1, bias=head.bias is not None).to(head.weight.device)
    gen = torch.Generator().manual_seed(ctx.cfg.seed)
    bound = 1 / head.in_features ** 0.5  # nn.Linear's default range, drawn from the run's seed
    with torch.no_grad():
        wide.weight[:K] = head.weight
        wide.weight[K] = ((torch.rand(head.in_features, generator=gen) * 2 - 1) * bound).to(wide.weight)
        if head.bias is not None:
            wide.bias[:K] = head.bias
            wide.bias[K] = 0.0
    wide.weight.requires_grad_(head.weight.requires_grad)
    if wide.bias is not None:
        wide.bias.requires_grad_(head.bias.requires_grad)
    ctx.model.head = wide
    labels = ctx.data.train.labels.clone()
    labels[ctx.split.forget] = K

    def evaluate_pruned(model):  # what the model will be once the shadow output is dropped
        with torch.no_grad():
            head.weight.copy_(wide.weight[:K])
            if head.bias is not None:
                head.bias.copy_(wide.bias[:K])
        model.head = head
        try:
            return ctx.evaluate(model)
        finally:
            model.head = wide

    try:
        h = ctx.fit(ctx.split.forget, epochs=ctx.hp["epochs"], lr=ctx.hp["lr"], labels=labels, desc="Boundary Expand",
                    evaluate=evaluate_pruned if ctx.evaluate is not None else None)
    finally:
        with torch.no_grad():
            head.weight.copy_(wide.weight[:K])
            if head.bias is not None:
                head.bias.copy_(wide.bias[:K])
        ctx.model.head = head
    return {"history": h.as_dict()}
