"""Output-level metrics of an unlearned model: the network's own predictions (paper A's "full model" head)."""
from __future__ import annotations

import torch

from ..train import accuracy


def output_metrics(model, data, split, batch_size: int = 1000, autocast: bool = False) -> dict[str, float]:
    """Accuracies of ``argmax f(x)``.

    Paper A reports **test** accuracy on the forget classes (``forget_test``) and on the other classes
    (``retain_test``). For random-sample forgetting the SalUn names are added: UA = 1 − accuracy on the
    forget set (unlearning accuracy), RA = accuracy on the retain set, TA = test accuracy.
    """
    acc = lambda st, ix: accuracy(model, st, ix, batch_size, autocast)  # noqa: E731
    out = {"retain_test": acc(data.test, split.test_retain), "forget_test": acc(data.test, split.test_forget),
           "retain_train": acc(data.train, split.retain), "forget_train": acc(data.train, split.forget)}
    if split.scenario == "random":
        out.update(UA=1 - out["forget_train"], RA=out["retain_train"], TA=acc(data.test, split.test))
    return out


@torch.no_grad()
def per_class_accuracy(model, store, idx, num_classes: int, batch_size: int = 1000) -> list[float]:
    """Test accuracy of each class (NaN for a class absent from ``idx``)."""
    was = model.training
    model.eval()
    correct = torch.zeros(num_classes)
    total = torch.zeros(num_classes)
    for x, y in store.iter_batches(idx, batch_size):
        pred = model(x).argmax(1)
        total += torch.bincount(y.cpu(), minlength=num_classes).float()
        correct += torch.bincount(y[pred == y].cpu(), minlength=num_classes).float()
    model.train(was)
    return (correct / total).tolist()
