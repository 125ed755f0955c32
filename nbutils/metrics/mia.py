"""Membership inference on the forget set: SalUn's "MIA-efficacy" (Fan et al., ICLR 2024; Jia et al. 2023)."""
from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def _confidence(model, store, idx, batch_size: int = 1000) -> np.ndarray:
    """Softmax probability of the true label, per sample."""
    was = model.training
    model.eval()
    out = []
    for x, y in store.iter_batches(idx, batch_size):
        out.append(torch.softmax(model(x).float(), 1).gather(1, y[:, None]).squeeze(1).cpu())
    model.train(was)
    return torch.cat(out).numpy() if out else np.zeros(0)


def _subsample(idx: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    return idx if len(idx) <= n else idx[torch.randperm(len(idx), generator=gen)[:n].to(idx.device)]


def mia_efficacy(model, data, split, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Train an attack on the model's confidence: members = retain training images, non-members = test images
    of the retained classes (all test images for random-sample forgetting); an RBF SVM (C = 3, as SalUn)
    separates them (equal numbers of each). MIA-efficacy = fraction of forget samples the attack calls *non-members* (higher = the
    model treats the forget set like unseen data; a retrained model scores high on class-wise forgetting).

    Each set is subsampled to at most ``n`` images (seeded), so one attack takes about a second.
    """
    from sklearn.svm import SVC

    if len(split.forget) == 0:
        raise ValueError("mia_efficacy: the forget set is empty")
    gen = torch.Generator().manual_seed(seed)
    non_idx = split.test_retain if split.scenario == "class" else split.test
    k = min(n, len(split.retain), len(non_idx))  # balanced shadow sets
    members = _confidence(model, data.train, _subsample(split.retain, k, gen))
    non = _confidence(model, data.test, _subsample(non_idx, k, gen))
    target = _confidence(model, data.train, _subsample(split.forget, n, gen))
    X = np.concatenate([members, non])[:, None]
    y = np.concatenate([np.ones(len(members)), np.zeros(len(non))])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(X, y)
    pred = clf.predict(target[:, None])
    return {"mia_efficacy": float(1 - pred.mean()), "attack_train_acc": float(clf.score(X, y)),
            "n_members": len(members), "n_nonmembers": len(non), "n_forget": len(target)}
