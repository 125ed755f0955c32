"""Methods that fine-tune on (relabelled) training data: Retrain, FT, RL, SalUn, l1-sparse."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import train
from .base import Context, random_relabeler, register


@register("retrain", "Retrain (oracle)", "retrain",
          summary="train from scratch on the retain set with the original recipe: the gold standard")
def retrain(ctx: Context) -> dict:
    """Retraining on D_r. With ``classifier_only`` the (zeroed) head alone is trained on the retain set
    on top of the frozen original features, which is the head-only oracle of paper A's theory."""
    if ctx.classifier_only:
        h = ctx.fit(ctx.split.retain, epochs=ctx.hp["epochs"], lr=ctx.hp["lr"], desc="retrain (head)")
        return {"history": h.as_dict()}
    tm = train.train_classifier(ctx.cfg, ctx.data, ctx.split, which="retrain", progress=ctx.progress)
    ctx.model.load_state_dict(tm.model.state_dict())
    return {"history": tm.history.as_dict(), "cached_retrain": tm.cached, "retrain_seconds": tm.history.seconds}


@register("ft", "Fine-tune (FT)", "finetune",
          summary="continue training on the retain set only; forgetting is catastrophic forgetting")
def finetune(ctx: Context) -> dict:
    """FT: minimise CE(θ; D_r) for a few epochs (Warnecke et al.; the SalUn baseline)."""
    h = ctx.fit(ctx.split.retain, epochs=ctx.hp["epochs"], lr=ctx.hp["lr"], desc="FT")
    return {"history": h.as_dict()}


def _rl_view(ctx: Context, batch_size: int | None = None) -> train.IndexSampler:
    relabel = random_relabeler(ctx.num_classes, ctx.split.forget_classes, ctx.forget_mask())
    return ctx.sampler(ctx.split.train, batch_size, relabel=relabel)


@register("rl", "Random labels (RL)", "finetune",
          summary="train on retain data plus forget data with random non-forget labels")
def random_labels(ctx: Context) -> dict:
    """RL (Golatkar et al.; Hayase et al.): CE on D_r ∪ {(x, ỹ): x ∈ D_f}, ỹ drawn uniformly among the
    non-forget classes, afresh every batch."""
    h = ctx.fit(_rl_view(ctx), epochs=ctx.hp["epochs"], lr=ctx.hp["lr"], desc="RL")
    return {"history": h.as_dict()}


def saliency_mask(model: nn.Module, store, forget_idx: torch.Tensor, params: list[nn.Parameter],
                  sparsity: float = 0.5, batch_size: int = 256) -> dict[nn.Parameter, torch.Tensor]:
    """SalUn's weight saliency (Fan et al. 2024, eq. 5): m = 1[|∇_θ CE(θ; D_f)| ≥ γ], with γ the global
    ``sparsity`` quantile of |∇| over all ``params`` (0.5 keeps the top 50%, exactly: ties at the threshold,
    e.g. the zero gradients of dead units, are broken by ``torch.topk``). Computed once, on the original
    model, in eval mode."""
    was = model.training
    model.eval()
    grads = [torch.zeros_like(p) for p in params]
    for s in range(0, len(forget_idx), batch_size):
        b = forget_idx[s:s + batch_size]
        loss = F.cross_entropy(model(store.batch(b)), store.labels[b], reduction="sum") / len(forget_idx)
        for g, gp in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
            if gp is not None:
                g += gp
    model.train(was)
    flat = torch.cat([g.abs().flatten() for g in grads])
    keep = flat.numel() - int(round(sparsity * flat.numel()))
    # exactly the top ``keep`` entries (a threshold would keep more or fewer when many gradients tie at 0)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.topk(flat, keep, sorted=False).indices] = True
    masks, start = {}, 0
    for p, g in zip(params, grads):
        masks[p] = chosen[start:start + g.numel()].view_as(g)
        start += g.numel()
    return masks


def masked_update_hook(mask: dict[nn.Parameter, torch.Tensor], weight_decay: float):
    """Gradient hook that applies (coupled) weight decay and then the mask, so that masked-out weights get
    exactly zero update (and zero momentum): they stay bit-identical to the original model."""
    def hook(_model):
        for p, m in mask.items():
            if p.grad is None:
                continue
            if weight_decay:
                p.grad.add_(p.detach(), alpha=weight_decay)
            p.grad.mul_(m)
    return hook


@register("salun", "SalUn", "finetune",
          summary="random labels, updating only the 50% of weights most salient for the forget set")
def salun(ctx: Context) -> dict:
    """SalUn (Fan et al., ICLR 2024): RL restricted to salient weights, θ ← θ − η (m ⊙ ∇L_RL); masked-out
    weights stay at θ_0."""
    params = ctx.trainable()
    mask = saliency_mask(ctx.model, ctx.data.train, ctx.split.forget, params, ctx.hp["sparsity"])
    wd = ctx.hp.get("weight_decay", ctx.cfg.weight_decay)
    h = ctx.fit(_rl_view(ctx), epochs=ctx.hp["epochs"], lr=ctx.hp["lr"], desc="SalUn",
                grad_hook=masked_update_hook(mask, wd), weight_decay=0.0)
    kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    return {"history": h.as_dict(), "mask_fraction": kept}


@register("l1_sparse", "ℓ1-sparse", "finetune",
          summary="fine-tune on the retain set with an ℓ1 penalty that decays to zero")
def l1_sparse(ctx: Context) -> dict:
    """ℓ1-sparse MU (Jia et al., NeurIPS 2023): minimise CE(θ; D_r) + α_t ‖θ‖_1 with α_t decaying linearly
    from α to 0 over the run (the ℓ1 subgradient α_t·sign(θ) is added to the gradient)."""
    alpha = ctx.hp["alpha"]
    view = ctx.sampler(ctx.split.retain)
    total = max(1, ctx.hp["epochs"] * view.steps_per_epoch)
    state = {"step": 0}

    def hook(model):
        a = alpha * (1 - state["step"] / total)
        state["step"] += 1
        for p in ctx.trainable():
            if p.grad is not None:
                p.grad.add_(torch.sign(p.detach()), alpha=a)

    h = ctx.fit(view, epochs=ctx.hp["epochs"], lr=ctx.hp["lr"], desc="l1-sparse", grad_hook=hook)
    return {"history": h.as_dict()}
