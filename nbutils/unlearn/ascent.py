"""Methods that push the forget loss up: gradient ascent (GA) and NegGrad+."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import train
from .base import Context, register


@register("ga", "Gradient ascent (GA)", "ascent",
          summary="maximise the cross-entropy of the forget set")
def gradient_ascent(ctx: Context) -> dict:
    """GA (Thudi et al.; Graves et al.): θ ← θ + η ∇_θ CE(θ; D_f), i.e. minimise −CE on the forget set."""
    def loss_fn(model, x, y):
        logits = model(x)
        return -F.cross_entropy(logits, y), logits

    h = ctx.fit(ctx.split.forget, epochs=ctx.hp["epochs"], lr=ctx.hp["lr"], loss_fn=loss_fn, desc="GA")
    return {"history": h.as_dict()}


@register("neggrad_plus", "NegGrad+", "ascent",
          summary="per step: ascend on a forget batch (clipped), descend on a retain batch")
def neggrad_plus(ctx: Context) -> dict:
    """NegGrad+ (Kurmanji et al., NeurIPS 2023), as in paper A's code: for every retain batch, backprop
    −β·CE(forget batch), clip the gradient norm to ``clip``, backprop CE(retain batch), then step."""
    clip, beta = ctx.hp["clip"], ctx.hp.get("forget_weight", 1.0)
    params = ctx.trainable()

    def loss_fn(model, xr, yr, xf, yf):
        (-beta * F.cross_entropy(model(xf), yf)).backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        logits = model(xr)
        return F.cross_entropy(logits, yr), logits

    view = train.PairedSampler(ctx.data.train, ctx.split.retain, ctx.split.forget, ctx.hp["batch_size"],
                               ctx.hp.get("forget_batch_size"))
    h = ctx.fit(view, epochs=ctx.hp["epochs"], lr=ctx.hp["lr"], loss_fn=loss_fn, desc="NegGrad+")
    return {"history": h.as_dict()}
