"""Output-level metrics of an unlearned model: the network's own predictions (paper A's "full model" head)."""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def predictions(model, store, idx: torch.Tensor, batch_size: int = 1000, autocast: bool = False) -> torch.Tensor:
    """``argmax f(x)`` for ``store[idx]`` in eval mode (on the CPU)."""
    was = model.training
    model.eval()
    out = []
    for x, _ in store.iter_batches(idx, batch_size):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast and x.device.type == "cuda"):
            out.append(model(x).argmax(1).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def _acc(correct: torch.Tensor, mask: torch.Tensor) -> float:
    n = int(mask.sum())
    return float(correct[mask].float().mean()) if n else math.nan


def output_metrics(model, data, split, batch_size: int = 1000, autocast: bool = False) -> dict:
    """Accuracies of ``argmax f(x)``, from one pass over the test images and one over the training images.

    Paper A reports **test** accuracy on the forget classes (``forget_test``) and on the other classes
    (``retain_test``); ``retain_train`` / ``forget_train`` are the same on the training views, and
    ``per_class`` the test accuracy of every class. For random-sample forgetting the SalUn names are
    added: UA = 1 − accuracy on the forget set (unlearning accuracy), RA = accuracy on the retain set,
    TA = test accuracy.
    """
    y_te = data.test.labels[split.test].cpu()
    ok_te = predictions(model, data.test, split.test, batch_size, autocast) == y_te
    f_te = torch.zeros(len(data.test), dtype=torch.bool)
    f_te[split.test_forget.cpu()] = True
    f_te = f_te[split.test.cpu()]
    y_tr = data.train.labels[split.train].cpu()
    ok_tr = predictions(model, data.train, split.train, batch_size, autocast) == y_tr
    f_tr = torch.zeros(len(data.train), dtype=torch.bool)
    f_tr[split.forget.cpu()] = True
    f_tr = f_tr[split.train.cpu()]
    out = {"retain_test": _acc(ok_te, ~f_te), "forget_test": _acc(ok_te, f_te),
           "retain_train": _acc(ok_tr, ~f_tr), "forget_train": _acc(ok_tr, f_tr),
           "per_class": [_acc(ok_te, y_te == c) for c in range(data.num_classes)]}
    if split.scenario == "random":
        out.update(UA=1 - out["forget_train"], RA=out["retain_train"], TA=float(ok_te.float().mean()))
    return out


def per_class_accuracy(model, store, idx, num_classes: int, batch_size: int = 1000) -> list[float]:
    """Test accuracy of each class (NaN for a class absent from ``idx``)."""
    y = store.labels[idx].cpu()
    ok = predictions(model, store, idx, batch_size) == y
    return [_acc(ok, y == c) for c in range(num_classes)]
