"""Training-free class forgetting by projection (Kodge, Saha & Roy, TMLR 2024, "Deep Unlearning")."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Context, register
from .unsir import retain_subset


def _patches(module: nn.Module, inp: torch.Tensor, per_image: int, gen: torch.Generator) -> torch.Tensor:
    """The vectors a layer's weight multiplies: (samples, d). Conv inputs are unfolded into k×k patches
    (C_in·k·k dims, the same order as ``weight.view(C_out, -1)``) and ``per_image`` positions are sampled."""
    if isinstance(module, nn.Linear):
        return inp.reshape(-1, inp.shape[-1])
    cols = F.unfold(inp, module.kernel_size, module.dilation, module.padding, module.stride)  # (B, d, L)
    B, d, L = cols.shape
    if L > per_image:
        pick = torch.randint(0, L, (B, per_image), generator=gen).to(cols.device)
        cols = torch.gather(cols, 2, pick[:, None, :].expand(B, d, per_image))
    return cols.permute(0, 2, 1).reshape(-1, d)


@torch.no_grad()
def input_gram(model: nn.Module, store, idx: torch.Tensor, names: list[str], per_image: int, seed: int,
               batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Σ a aᵀ (float64) of the inputs ``a`` of each named Conv2d/Linear layer over ``store[idx]``."""
    modules = dict(model.named_modules())
    grams: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(seed)
    handles = []
    for n in names:
        def hook(m, inputs, _out, n=n):
            a = _patches(m, inputs[0].float(), per_image, gen).double()
            g = a.T @ a
            grams[n] = g if n not in grams else grams[n] + g
        handles.append(modules[n].register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for s in range(0, len(idx), batch_size):
            model(store.batch(idx[s:s + batch_size]))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return grams


def _eigh(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric eigendecomposition that survives dead units: torch's syevd was seen to fail to converge on
    Gram matrices whose rows are mostly exact zeros (dead ReLU channels); LAPACK through numpy handles them."""
    scale = g.diagonal().max().clamp_min(1e-300)
    try:
        evals, U = torch.linalg.eigh(g / scale)
    except RuntimeError:  # torch.linalg.LinAlgError
        e, u = np.linalg.eigh((g / scale).cpu().numpy())
        evals, U = torch.from_numpy(e).to(g), torch.from_numpy(u).to(g)
    return evals * scale, U


def scaled_projector(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """M = U diag(α r / ((α − 1) r + 1)) Uᵀ with r_i = σ_i² / Σσ² the normalised variance of each singular
    direction of the activations (eigen-decomposition of their Gram matrix): Kodge et al.'s scaled
    importance, which goes to the plain projector UUᵀ as α → ∞."""
    evals, U = _eigh(gram)
    r = evals.clamp_min(0) / evals.clamp_min(0).sum().clamp_min(1e-300)
    imp = alpha * r / ((alpha - 1) * r + 1)
    return (U * imp) @ U.T


@register("svd", "SVD projection", "projection", gradient_free=True,
          summary="training-free: project every layer's weights away from forget-specific input directions")
def svd_unlearn(ctx: Context) -> dict:
    """For every Conv2d/Linear layer with input activations A_r (retain) and A_f (forget): M_r, M_f the
    scaled projectors of their principal subspaces (importance α_r, α_f); P = I − M_f + M_f M_r removes the
    forget-only directions; W ← W Pᵀ. No gradient step is taken."""
    hp = ctx.hp
    gen = torch.Generator().manual_seed(ctx.cfg.seed)
    names = [n for n, m in ctx.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if ctx.classifier_only:
        names = [n for n in names if n.startswith("head")]
    r_idx = retain_subset(ctx.data.train.labels, ctx.split.retain, hp["samples_per_class"], gen)
    f_idx = retain_subset(ctx.data.train.labels, ctx.split.forget, hp["samples_per_class"], gen)
    modules = dict(ctx.model.named_modules())
    budget = 2 ** 30  # bytes of Gram matrices held at once
    groups, cur, size = [], [], 0
    for n in names:
        w = modules[n].weight
        d = w[0].numel()
        if cur and size + 2 * d * d * 8 > budget:
            groups.append(cur)
            cur, size = [], 0
        cur.append(n)
        size += 2 * d * d * 8
    groups.append(cur)
    for group in groups:  # activations always come from the original model, whatever was projected already
        g_r = input_gram(ctx.original, ctx.data.train, r_idx, group, hp["patches_per_image"], ctx.cfg.seed)
        g_f = input_gram(ctx.original, ctx.data.train, f_idx, group, hp["patches_per_image"], ctx.cfg.seed + 1)
        for n in group:
            M_r = scaled_projector(g_r[n], hp["alpha_r"])
            M_f = scaled_projector(g_f[n], hp["alpha_f"])
            P = torch.eye(len(M_r), dtype=M_r.dtype, device=M_r.device) - M_f + M_f @ M_r
            w = modules[n].weight
            with torch.no_grad():
                w.copy_((w.view(w.shape[0], -1).double() @ P.T).view_as(w).to(w.dtype))
    return {"layers": len(names), "retain_samples": int(len(r_idx)), "forget_samples": int(len(f_idx))}
