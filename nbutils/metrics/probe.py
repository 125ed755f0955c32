"""Linear probes (and a nearest-class-mean classifier) on frozen features.

Reference: "An Illusion of Unlearning?" (Gao et al., AISTATS 2026). Unlearned models reach ~0 %
accuracy on the forget classes *at the output*, yet a linear probe trained on the frozen
penultimate features of the **whole training set, forget classes included**, recovers them.
Their protocol: ``Linear(D, K)`` trained with cross-entropy by SGD (lr 0.01, momentum 0.9, no
weight decay, batch 128, <= 20 epochs) on 90 % of the training features, the weights of the best
validation epoch (10 % held out) kept, then accuracy reported on the test images of the retain
classes and of the forget classes. :func:`sgd_probe` is that protocol; :func:`ridge_path` and
:func:`logistic_probe` are deterministic, faster probes with the same inputs and outputs.

Conventions (used by every function in this module)
---------------------------------------------------
* Features ``X`` are ``(N, D)``, labels ``y`` are ``(N,)`` integers in ``[0, K)``,
  ``K = num_classes``. Inputs may be torch tensors (any device / dtype) or numpy arrays;
  statistics and solves are computed in float64 torch on the CPU (the SGD probe runs in float32,
  as the authors' ``nn.Linear`` does).
* A fitted probe is linear in the features it was given: ``scores = X @ W + b`` with
  ``W`` ``(D, K)`` and ``b`` ``(K,)`` (float64 torch tensors); ``predict`` = ``argmax`` of the
  scores (ties to the smallest class index). ``predict`` returns torch for torch input, else numpy.
* Validation split (:func:`probe_accuracy`): stratified, per class ``n_val = round(f * n_c)``
  capped at ``n_c - 1`` so every class keeps a training sample, drawn with
  ``numpy.random.default_rng(seed)``. The probe is fitted on the rest only (no refit on
  train + validation, as in the authors' best-validation protocol).
* Reported accuracies: ``retain_test`` on test samples whose label is not a forget class,
  ``forget_test`` on those whose label is; NaN where that subset is empty (e.g. no forget classes).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .nc import class_means as _class_means
from .nc import ncc_predict as _ncc_predict

__all__ = [
    "standardize",
    "LinearProbe",
    "RidgeProbe",
    "LogisticProbe",
    "SGDProbe",
    "ridge_direct",
    "ridge_path",
    "logistic_probe",
    "sgd_probe",
    "probe_accuracy",
    "ncc_accuracy",
    "layerwise_probe",
    "DEFAULT_ALPHAS",
    "LOGISTIC_L2_GRID",
    "METHODS",
]

_F64 = torch.float64
DEFAULT_ALPHAS = np.logspace(-4, 3, 15)
LOGISTIC_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)
METHODS = ("ridge", "logistic", "sgd")


# --------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------
def _f64(x: Any, name: str) -> torch.Tensor:
    """A detached float64 CPU torch tensor from a tensor / array-like (inputs are never modified)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_complex():
            raise ValueError(f"{name} must be real, got dtype {t.dtype}")
        return t.to(device="cpu", dtype=_F64)
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real numeric array, got {type(x).__name__}") from exc
    return torch.tensor(a, dtype=_F64)


def _features(X: Any, name: str, D: Optional[int] = None, allow_empty: bool = False) -> torch.Tensor:
    t = _f64(X, name)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} must have at least one feature column, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); need at least one sample")
    if D is not None and t.shape[1] != D:
        raise ValueError(f"{name} has D={t.shape[1]} feature columns but the training features have D={D}")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def _labels(y: Any, name: str, n: int, K: int, xname: str) -> torch.Tensor:
    yt = y.detach().cpu() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if yt.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(yt.shape)}")
    if yt.shape[0] != n:
        raise ValueError(f"{name} has {yt.shape[0]} labels but {xname} has N={n} rows")
    if yt.dtype == torch.bool or yt.is_complex():
        raise ValueError(f"{name} must hold integer labels, got dtype {yt.dtype}")
    if yt.is_floating_point() and yt.numel():
        if not bool(torch.isfinite(yt).all()) or not bool((yt == yt.round()).all()):
            raise ValueError(f"{name} must hold integer labels, got non-integral float values")
    yt = yt.to(torch.int64)
    if yt.numel():
        lo, hi = int(yt.min()), int(yt.max())
        if lo < 0 or hi >= K:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} contains label {bad} outside [0, num_classes={K})")
    return yt


def _forget_classes(forget_classes: Any, K: int) -> tuple[int, ...]:
    if forget_classes is None:
        return ()
    if isinstance(forget_classes, (int, np.integer)) and not isinstance(forget_classes, bool):
        forget_classes = (forget_classes,)
    try:
        fc = tuple(forget_classes)
    except TypeError as exc:
        raise ValueError(f"forget_classes must be a sequence of class indices, got {forget_classes!r}") from exc
    out = []
    for c in fc:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < K:
            raise ValueError(f"forget_classes={list(fc)!r}: {c!r} is not a class index in [0, num_classes={K})")
        out.append(int(c))
    return tuple(sorted(set(out)))


def _like(x: torch.Tensor, ref: Any):
    return x if isinstance(ref, torch.Tensor) else x.numpy()


# --------------------------------------------------------------------------------------
# standardization
# --------------------------------------------------------------------------------------
def standardize(train_X: Any, *others: Any):
    """z-score with the training statistics: ``z = (x - m) / s``.

    ``m`` and ``s`` are the per-column mean and (population, ``ddof=0``) standard deviation of
    ``train_X``, computed in float64 (two passes: mean, then the spread of the deviations).
    Columns with ``s == 0`` (constant features, e.g. dead ReLUs) get ``s = 1``, so they map to 0.

    Returns ``(Zs, (m, s))`` where ``Zs`` is a tuple ``(z(train_X), z(others[0]), ...)``:
    float64, torch for torch input, numpy otherwise (per array). ``m`` and ``s`` are ``(D,)``
    float64, torch if ``train_X`` is torch, else numpy::

        (Ztr, Zte), (m, s) = standardize(X_train, X_test)
    """
    Xt = _features(train_X, "train_X")
    D = Xt.shape[1]
    m, s = _moments(Xt)
    outs = [_like((Xt - m) / s, train_X)]
    for i, o in enumerate(others):
        Ot = _features(o, f"others[{i}]", D=D, allow_empty=True)
        outs.append(_like((Ot - m) / s, o))
    return tuple(outs), (_like(m, train_X), _like(s, train_X))


def _moments(Xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = Xt.mean(dim=0)
    s = (Xt - m).square().mean(dim=0).sqrt()
    s = torch.where(s > 0, s, torch.ones_like(s))
    return m, s


# --------------------------------------------------------------------------------------
# probe objects
# --------------------------------------------------------------------------------------
@dataclass
class LinearProbe:
    """``scores = X @ W + b``; ``W`` is ``(D, K)``, ``b`` is ``(K,)`` (float64 torch)."""
    W: torch.Tensor
    b: torch.Tensor

    def decision_function(self, X: Any):
        """Scores ``X @ W + b`` (``(N, K)`` float64; torch for torch input, else numpy)."""
        Xt = _features(X, "X", D=self.W.shape[0], allow_empty=True)
        return _like(Xt @ self.W + self.b, X)

    def predict(self, X: Any):
        """``argmax_c (X @ W + b)_c`` as ``(N,)`` int64 (ties to the smallest class index)."""
        Xt = _features(X, "X", D=self.W.shape[0], allow_empty=True)
        return _like(_argmax(Xt @ self.W + self.b), X)

    def accuracy(self, X: Any, y: Any) -> float:
        """Fraction of rows with ``predict(X) == y`` (NaN for an empty ``X``)."""
        Xt = _features(X, "X", D=self.W.shape[0], allow_empty=True)
        yt = _labels(y, "y", Xt.shape[0], self.W.shape[1], "X")
        return _acc(_argmax(Xt @ self.W + self.b), yt)


@dataclass
class RidgeProbe(LinearProbe):
    """One-vs-all ridge classifier chosen on a validation set (see :func:`ridge_path`).

    ``alpha``: the chosen penalty; ``alphas`` / ``val_acc``: the grid and the validation accuracy
    of each of its values (numpy). ``coefs`` ``(A, D, K)`` and ``intercepts`` ``(A, K)``: the whole
    path, kept only with ``keep_path=True``.
    """
    alpha: float = float("nan")
    alphas: np.ndarray = field(default_factory=lambda: np.empty(0))
    val_acc: np.ndarray = field(default_factory=lambda: np.empty(0))
    coefs: Optional[torch.Tensor] = None
    intercepts: Optional[torch.Tensor] = None


@dataclass
class LogisticProbe(LinearProbe):
    """Multinomial logistic regression (see :func:`logistic_probe`). ``W``, ``b`` act on the raw
    (unstandardized) features. ``val_acc`` maps each tried ``l2`` to its validation accuracy
    (empty without validation data); ``n_iter``: L-BFGS iterations of the chosen fit."""
    l2: float = float("nan")
    val_acc: dict = field(default_factory=dict)
    n_iter: int = 0
    loss: float = float("nan")


@dataclass
class SGDProbe(LinearProbe):
    """``nn.Linear`` trained by mini-batch SGD (see :func:`sgd_probe`). ``best_epoch`` (1-based;
    the last epoch without validation data) and ``val_acc`` per epoch."""
    best_epoch: int = 0
    val_acc: list = field(default_factory=list)


def _argmax(S: torch.Tensor) -> torch.Tensor:
    return S.argmax(dim=1) if S.shape[0] else torch.empty(0, dtype=torch.int64)


def _acc(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).to(_F64).mean()) if y.numel() else float("nan")


def _onehot(y: torch.Tensor, K: int) -> torch.Tensor:
    Y = torch.zeros(y.shape[0], K, dtype=_F64)
    Y[torch.arange(y.shape[0]), y] = 1.0
    return Y


# --------------------------------------------------------------------------------------
# ridge
# --------------------------------------------------------------------------------------
def _check_alpha(alpha: Any, name: str = "alpha") -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a positive number, got {alpha!r}") from exc
    if not (a > 0 and math.isfinite(a)):
        raise ValueError(f"{name} must be a positive finite number, got {alpha!r}")
    return a


def ridge_direct(X: Any, Y: Any, alpha: float, num_classes: Optional[int] = None):
    """Ridge regression by a direct linear solve (the reference for :func:`ridge_path`).

    Minimises ``(1/N) ||(X - 1 m^T) W - (Y - 1 Ybar^T)||_F^2 + alpha ||W||_F^2`` with ``m``, ``Ybar``
    the column means (an unpenalised intercept, by centring):

        W = (Xc^T Xc / N + alpha I)^{-1} Xc^T Yc / N,   b = Ybar - m^T W,

    solved with ``torch.linalg.solve`` in float64. ``Y`` is an ``(N, K)`` target matrix, or
    ``(N,)`` integer labels that are one-hot encoded (``K = num_classes`` or ``max(y) + 1``).
    Returns ``(W (D, K), b (K,))`` as float64 torch tensors.
    """
    Xt = _features(X, "X")
    a = _check_alpha(alpha)
    Yt = _targets(Y, Xt.shape[0], num_classes)
    m, ybar = Xt.mean(dim=0), Yt.mean(dim=0)
    Xc = Xt - m
    N, D = Xt.shape
    G = Xc.T @ Xc / N
    G = 0.5 * (G + G.T)
    W = torch.linalg.solve(G + a * torch.eye(D, dtype=_F64), Xc.T @ (Yt - ybar) / N)
    return W, ybar - m @ W


def _targets(Y: Any, n: int, num_classes: Optional[int]) -> torch.Tensor:
    raw = Y.detach().cpu() if isinstance(Y, torch.Tensor) else torch.as_tensor(np.asarray(Y))
    if raw.ndim == 2:
        Yt = _f64(raw, "Y")
        if Yt.shape[0] != n:
            raise ValueError(f"Y has {Yt.shape[0]} rows but X has N={n} rows")
        if not bool(torch.isfinite(Yt).all()):
            raise ValueError("Y contains NaN or infinite values")
        return Yt
    if raw.ndim != 1:
        raise ValueError(f"Y must be (N, K) targets or (N,) labels, got shape {tuple(raw.shape)}")
    K = _num_classes(num_classes) if num_classes is not None else max(2, int(raw.max()) + 1 if raw.numel() else 2)
    return _onehot(_labels(raw, "Y", n, K, "X"), K)


def ridge_path(X_train: Any, y_train: Any, X_val: Any, y_val: Any, num_classes: int,
               alphas: Sequence[float] = DEFAULT_ALPHAS, keep_path: bool = False) -> RidgeProbe:
    """One-vs-all ridge classifier for every ``alpha`` from ONE eigendecomposition; best on validation.

    Targets are the one-hot rows ``Y = e_{y_i}`` with an unpenalised intercept (centring), i.e.
    for each alpha (objective and formula as in :func:`ridge_direct`)::

        G = Xc^T Xc / N = V diag(lam) V^T   (float64 eigh, once),   C = Xc^T Y / N
        W(alpha) = V diag(1 / (lam + alpha)) V^T C,   b(alpha) = Ybar - m^T W(alpha)

    (``Xc^T 1 = 0``, so centring ``Y`` does not change ``W``.) With ``+-1`` targets
    ``2Y - 1`` the coefficients are ``2W`` and ``2b - 1``: same argmax, same classifier, so the
    choice of target coding does not matter. Prediction: ``argmax_c (x W + b)_c``.

    ``alpha`` is per sample (``sklearn.linear_model.Ridge``'s alpha is ``N * alpha``) and the
    default grid ``logspace(-4, 3, 15)`` assumes standardized features (:func:`standardize`;
    then ``G`` is the correlation matrix, eigenvalues summing to D), as :func:`probe_accuracy`
    passes them. The alpha with the best validation accuracy is kept; ties go to the larger alpha.
    Cost: O(N D^2 + D^3) once, then O(N_val D K) per alpha.
    """
    Xt = _features(X_train, "X_train")
    N, D = Xt.shape
    K = _num_classes(num_classes)
    yt = _labels(y_train, "y_train", N, K, "X_train")
    Xv = _features(X_val, "X_val", D=D)
    yv = _labels(y_val, "y_val", Xv.shape[0], K, "X_val")
    al = np.asarray(alphas, dtype=np.float64).ravel()
    if al.size == 0:
        raise ValueError("alphas must contain at least one value")
    for a in al:
        _check_alpha(a, "alphas")

    m = Xt.mean(dim=0)
    Xc = Xt - m
    Y = _onehot(yt, K)
    ybar = Y.mean(dim=0)
    G = Xc.T @ Xc / N
    lam, V = torch.linalg.eigh(0.5 * (G + G.T))
    lam = lam.clamp_min(0.0)  # round-off can leave tiny negative eigenvalues
    Q = V.T @ (Xc.T @ Y / N)  # (D, K), C in the eigenbasis
    Pv = (Xv - m) @ V  # (N_val, D) validation features in the eigenbasis
    accs = np.empty(al.size)
    coefs = torch.empty(al.size, D, K, dtype=_F64) if keep_path else None
    for i, a in enumerate(al):
        Qa = Q / (lam + a).unsqueeze(1)
        accs[i] = _acc(_argmax(Pv @ Qa + ybar), yv)
        if keep_path:
            coefs[i] = V @ Qa
    best = int(np.flatnonzero(accs == accs.max())[-1])  # ties -> the largest alpha
    W = V @ (Q / (lam + al[best]).unsqueeze(1))
    intercepts = (ybar - m @ coefs) if keep_path else None
    return RidgeProbe(W=W, b=ybar - m @ W, alpha=float(al[best]), alphas=al, val_acc=accs,
                      coefs=coefs, intercepts=intercepts)


# --------------------------------------------------------------------------------------
# logistic regression (L-BFGS)
# --------------------------------------------------------------------------------------
def logistic_probe(X_train: Any, y_train: Any, num_classes: int, X_val: Any = None, y_val: Any = None,
                   l2: float = 1e-4, max_iter: int = 100, l2_grid: Sequence[float] = LOGISTIC_L2_GRID,
                   tol: float = 1e-5, dtype: torch.dtype = torch.float64) -> LogisticProbe:
    """Multinomial logistic regression by full-batch L-BFGS on standardized features.

    Minimises ``(1/N) sum_i -log softmax(z_i W + b)_{y_i} + (l2 / 2) ||W||_F^2`` (bias not
    penalised) over ``z = (x - m) / s`` (:func:`standardize`), with
    ``torch.optim.LBFGS(line_search_fn="strong_wolfe", history_size=10, max_iter=max_iter)``
    from ``W = 0, b = 0`` (a convex problem: the result is deterministic). Gradients are the
    closed form ``Z^T (P - Y) / N + l2 W`` and ``1^T (P - Y) / N`` (no autograd graph), ``P``
    the softmax probabilities and ``Y`` the one-hot labels. A fit stops after ``max_iter``
    iterations or once ``max |gradient| <= tol`` (default 1e-5: the loss is then within ~1e-5
    of its minimum, far below what changes an accuracy; 1e-7 costs 2-3x the iterations).

    With validation data, ``l2`` is chosen from ``l2_grid`` (default {1e-5, 1e-4, 1e-3, 1e-2}) by
    validation accuracy (ties to the larger ``l2``); the fits run from the largest ``l2`` down,
    each warm-started from the previous solution, so the whole grid costs little more than one
    fit. Without validation data the given ``l2`` is used. The returned ``W``, ``b`` act on the
    raw features: ``W_raw = W / s[:, None]``, ``b_raw = b - (m / s) @ W``.
    """
    Xt = _features(X_train, "X_train")
    N, D = Xt.shape
    K = _num_classes(num_classes)
    yt = _labels(y_train, "y_train", N, K, "X_train")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if (X_val is None) != (y_val is None):
        raise ValueError("give both X_val and y_val, or neither")
    m, s = _moments(Xt)
    Z = ((Xt - m) / s).to(dtype)
    Zt = Z.T.contiguous()
    Y = _onehot(yt, K).to(dtype)
    if X_val is not None:
        Xv = _features(X_val, "X_val", D=D)
        yv = _labels(y_val, "y_val", Xv.shape[0], K, "X_val")
        Zv = ((Xv - m) / s).to(dtype)
        grid = sorted({_check_l2(v, "l2_grid") for v in l2_grid}, reverse=True)
        if not grid:
            raise ValueError("l2_grid must contain at least one value")
    else:
        grid = [_check_l2(l2, "l2")]
    W = torch.zeros(D, K, dtype=dtype)
    b = torch.zeros(K, dtype=dtype)
    best = None
    val_acc = {}
    for lam in grid:
        W, b, n_iter, loss = _lbfgs_fit(Z, Zt, Y, lam, max_iter, tol, W.clone(), b.clone())
        if X_val is not None:
            acc = _acc(_argmax(Zv @ W + b), yv)
            val_acc[lam] = acc
            if best is None or acc > best[0]:
                best = (acc, lam, W, b, n_iter, loss)
        else:
            best = (float("nan"), lam, W, b, n_iter, loss)
    _, lam, W, b, n_iter, loss = best
    W64, b64 = W.to(_F64), b.to(_F64)
    W_raw = W64 / s.unsqueeze(1)
    return LogisticProbe(W=W_raw, b=b64 - (m / s) @ W64, l2=lam, val_acc=val_acc, n_iter=n_iter, loss=loss)


def _check_l2(v: Any, name: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a non-negative number, got {v!r}") from exc
    if not (x >= 0 and math.isfinite(x)):
        raise ValueError(f"{name} must be a non-negative finite number, got {v!r}")
    return x


def _lbfgs_fit(Z: torch.Tensor, Zt: torch.Tensor, Y: torch.Tensor, l2: float, max_iter: int, tol: float,
               W: torch.Tensor, b: torch.Tensor):
    """L-BFGS on the L2-penalised mean cross-entropy; ``Zt = Z^T`` (contiguous), ``Y`` one-hot."""
    N = Z.shape[0]
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=10, tolerance_grad=tol,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        with torch.no_grad():
            S = torch.addmm(b, Z, W)
            lse = torch.logsumexp(S, dim=1)
            loss = lse.mean() - (S * Y).sum() / N + 0.5 * l2 * W.square().sum()
            P = torch.exp(S - lse.unsqueeze(1)).sub_(Y)  # softmax - one-hot
            W.grad = torch.addmm(W, Zt, P, beta=l2, alpha=1.0 / N)
            b.grad = P.sum(dim=0) / N
        return loss

    opt.step(closure)
    n_iter = int(opt.state[W].get("n_iter", 0))
    return W.detach(), b.detach(), n_iter, float(closure())


# --------------------------------------------------------------------------------------
# the authors' SGD probe
# --------------------------------------------------------------------------------------
def sgd_probe(X_train: Any, y_train: Any, num_classes: int, X_val: Any = None, y_val: Any = None,
              lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int = 128,
              epochs: int = 20, seed: int = 0) -> SGDProbe:
    """The authors' probe: ``nn.Linear(D, K)`` on the raw features, cross-entropy, mini-batch SGD.

    Defaults are paper A's protocol: lr 0.01, momentum 0.9, no weight decay, batch 128, 20
    epochs, samples reshuffled every epoch; the weights of the epoch with the best validation
    accuracy are returned (first best on ties; the last epoch without validation data).
    float32 (as ``nn.Linear``); PyTorch's default ``nn.Linear`` initialisation, seeded by
    ``seed``, as is the shuffling.
    """
    Xt = _features(X_train, "X_train")
    N, D = Xt.shape
    K = _num_classes(num_classes)
    yt = _labels(y_train, "y_train", N, K, "X_train")
    for name, v in (("batch_size", batch_size), ("epochs", epochs)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if (X_val is None) != (y_val is None):
        raise ValueError("give both X_val and y_val, or neither")
    if X_val is not None:
        Xv = _features(X_val, "X_val", D=D).float()
        yv = _labels(y_val, "y_val", Xv.shape[0], K, "X_val")
    g = torch.Generator().manual_seed(int(seed))
    lin = torch.nn.Linear(D, K)
    with torch.no_grad():  # nn.Linear's default init, drawn from our generator
        bound = 1.0 / math.sqrt(D)
        lin.weight.uniform_(-bound, bound, generator=g)
        lin.bias.uniform_(-bound, bound, generator=g)
    opt = torch.optim.SGD(lin.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    X32 = Xt.float()
    accs: list[float] = []
    best = (-1.0, 0, None)
    for ep in range(1, int(epochs) + 1):
        perm = torch.randperm(N, generator=g)
        for s in range(0, N, batch_size):
            bi = perm[s:s + batch_size]
            loss = F.cross_entropy(lin(X32[bi]), yt[bi])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if X_val is not None:
            with torch.no_grad():
                acc = _acc(_argmax(lin(Xv)), yv)
            accs.append(acc)
            if acc > best[0]:
                best = (acc, ep, (lin.weight.detach().clone(), lin.bias.detach().clone()))
    if best[2] is None:
        best = (float("nan"), int(epochs), (lin.weight.detach().clone(), lin.bias.detach().clone()))
    Wt, bt = best[2]
    return SGDProbe(W=Wt.T.to(_F64).contiguous(), b=bt.to(_F64), best_epoch=best[1], val_acc=accs)


# --------------------------------------------------------------------------------------
# retain / forget test accuracy
# --------------------------------------------------------------------------------------
def _stratified_val(y: torch.Tensor, frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    yn = y.numpy()
    val = []
    for c in np.unique(yn):
        idx = rng.permutation(np.flatnonzero(yn == c))
        k = min(int(round(frac * idx.size)), idx.size - 1)
        val.append(idx[:k])
    val = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    tr = np.setdiff1d(np.arange(yn.size), val)
    return torch.from_numpy(tr), torch.from_numpy(val)


def _split_report(pred: torch.Tensor, y: torch.Tensor, fc: tuple[int, ...]) -> dict:
    is_f = torch.isin(y, torch.tensor(fc, dtype=torch.int64)) if fc else torch.zeros_like(y, dtype=torch.bool)
    return {
        "retain_test": _acc(pred[~is_f], y[~is_f]),
        "forget_test": _acc(pred[is_f], y[is_f]),
        "test": _acc(pred, y),
        "n_retain_test": int((~is_f).sum()),
        "n_forget_test": int(is_f.sum()),
    }


def _check_common(features_train, y_train, features_test, y_test, forget_classes, num_classes):
    Xtr = _features(features_train, "features_train")
    K = _num_classes(num_classes)
    ytr = _labels(y_train, "y_train", Xtr.shape[0], K, "features_train")
    Xte = _features(features_test, "features_test", D=Xtr.shape[1])
    yte = _labels(y_test, "y_test", Xte.shape[0], K, "features_test")
    fc = _forget_classes(forget_classes, K)
    return Xtr, ytr, Xte, yte, fc, K


def probe_accuracy(features_train: Any, y_train: Any, features_test: Any, y_test: Any,
                   forget_classes: Sequence[int], num_classes: int, method: str = "logistic",
                   val_fraction: float = 0.1, seed: int = 0, **probe_kwargs: Any) -> dict:
    """Fit a linear probe on training features and report retain / forget **test** accuracy.

    Paper A's protocol: ``features_train`` are the frozen features of the whole training set,
    forget classes included. A stratified ``val_fraction`` of it (seeded by ``seed``; see the
    module docstring) is held out to pick the hyper-parameter / epoch, the probe is fitted on
    the rest, and accuracy is measured on ``features_test``.

    ``method``: ``"logistic"`` (:func:`logistic_probe`, L2 chosen on validation), ``"ridge"``
    (:func:`ridge_path` on features standardized with the fitting-set statistics) or ``"sgd"``
    (:func:`sgd_probe`, the authors' protocol, raw features). ``probe_kwargs`` go to that function.

    Returns a dict: ``retain_test``, ``forget_test`` (NaN without forget classes or forget test
    samples), ``test`` (all test samples), ``val_acc`` (of the chosen probe), ``method``,
    ``seconds`` (wall time of fitting + evaluation, the split excluded), ``hparam`` (the chosen
    alpha / l2 / best epoch), ``n_train``, ``n_val``, ``n_retain_test``, ``n_forget_test``.

    Caveat: the validation samples are *training* images of the network. For a network at 100 %
    training accuracy they are often all classified correctly by every candidate probe; the
    tie-breaking rules then pick the strongest regularisation (largest alpha / l2) or the
    earliest SGD epoch.
    """
    Xtr, ytr, Xte, yte, fc, K = _check_common(features_train, y_train, features_test, y_test,
                                             forget_classes, num_classes)
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    try:
        vf = float(val_fraction)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}") from exc
    if not 0 < vf < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    tr, va = _stratified_val(ytr, vf, seed)
    if va.numel() == 0:
        raise ValueError(f"val_fraction={val_fraction!r} leaves an empty validation set for "
                         f"{Xtr.shape[0]} training samples; use more samples or a larger val_fraction")
    Xf, yf, Xv, yv = Xtr[tr], ytr[tr], Xtr[va], ytr[va]
    t0 = time.perf_counter()
    if method == "ridge":
        (Zf, Zv, Zte), _ = standardize(Xf, Xv, Xte)
        probe = ridge_path(Zf, yf, Zv, yv, K, **probe_kwargs)
        val_acc, hparam, pred = float(probe.val_acc.max()), probe.alpha, probe.predict(Zte)
    elif method == "logistic":
        probe = logistic_probe(Xf, yf, K, Xv, yv, **probe_kwargs)
        val_acc, hparam, pred = probe.val_acc[probe.l2], probe.l2, probe.predict(Xte)
    else:
        probe = sgd_probe(Xf, yf, K, Xv, yv, seed=seed, **probe_kwargs)
        val_acc, hparam, pred = probe.val_acc[probe.best_epoch - 1], probe.best_epoch, probe.predict(Xte)
    out = _split_report(pred, yte, fc)
    out.update(val_acc=float(val_acc), method=method, seconds=time.perf_counter() - t0,
               hparam=hparam, n_train=int(tr.numel()), n_val=int(va.numel()))
    return out


def ncc_accuracy(features_train: Any, y_train: Any, features_test: Any, y_test: Any,
                 forget_classes: Sequence[int], num_classes: int, normalize: bool = False) -> dict:
    """Nearest-class-mean classifier: retain / forget test accuracy.

    Class means ``mu_c`` of the training features (every training sample, forget classes
    included; :func:`nbutils.metrics.nc.class_means`), prediction
    ``argmin_c ||h - mu_c||`` over the classes present in training
    (:func:`nbutils.metrics.nc.ncc_predict`; ties to the smallest index). ``normalize=True``
    L2-normalises every feature row (train and test) first.

    Returns a dict like :func:`probe_accuracy` (``val_acc`` NaN, ``method="ncc"``).
    """
    Xtr, ytr, Xte, yte, fc, K = _check_common(features_train, y_train, features_test, y_test,
                                             forget_classes, num_classes)
    t0 = time.perf_counter()
    if normalize:
        tiny = torch.finfo(_F64).tiny
        Xtr = Xtr / torch.linalg.vector_norm(Xtr, dim=1, keepdim=True).clamp_min(tiny)
        Xte = Xte / torch.linalg.vector_norm(Xte, dim=1, keepdim=True).clamp_min(tiny)
    means, _ = _class_means(Xtr, ytr, K)
    pred = _ncc_predict(Xte, means)
    out = _split_report(pred, yte, fc)
    out.update(val_acc=float("nan"), method="ncc", seconds=time.perf_counter() - t0, hparam=None,
               n_train=int(Xtr.shape[0]), n_val=0)
    return out


# --------------------------------------------------------------------------------------
# layer-wise probes
# --------------------------------------------------------------------------------------
def layerwise_probe(model, store_train, idx_train, store_test, idx_test, layers: Sequence[str],
                    forget_classes: Sequence[int], num_classes: int, method: str = "ridge",
                    batch_size: int = 1000, autocast: bool = False, **kwargs: Any) -> dict:
    """Probe several layers of ``model``: ``{layer: result}`` (:func:`probe_accuracy`, or
    :func:`ncc_accuracy` for ``method="ncc"``).

    All layers' features are read in ONE eval-mode pass per split with
    ``nbutils.models.extract(model, store, idx, layers=layers)`` (global-average pooled; layer
    names are module names, e.g. ``"encoder.layer3"``, ``"encoder"`` = penultimate). Labels are
    the stores' labels. Each result also holds ``extract_seconds`` (both passes together).
    ``kwargs`` go to :func:`probe_accuracy` (``val_fraction``, ``seed``, probe options) or to
    :func:`ncc_accuracy` (``normalize``).
    """
    from .. import models as _models  # attribute lookup at call time (lets tests count calls)

    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers must name at least one module")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers contains duplicates: {list(layers)}")
    if method not in METHODS + ("ncc",):
        raise ValueError(f"method must be one of {list(METHODS + ('ncc',))}, got {method!r}")
    if idx_train is None or len(idx_train) == 0:
        raise ValueError("idx_train is empty; need at least one training sample")
    t0 = time.perf_counter()
    ftr = _models.extract(model, store_train, idx_train, layers=layers, batch_size=batch_size, autocast=autocast)
    fte = _models.extract(model, store_test, idx_test, layers=layers, batch_size=batch_size, autocast=autocast)
    t_extract = time.perf_counter() - t0
    out = {}
    for name in layers:
        if method == "ncc":
            r = ncc_accuracy(ftr[name], ftr["labels"], fte[name], fte["labels"], forget_classes, num_classes,
                             **kwargs)
        else:
            r = probe_accuracy(ftr[name], ftr["labels"], fte[name], fte["labels"], forget_classes,
                               num_classes, method=method, **kwargs)
        r["extract_seconds"] = t_extract
        r["dim"] = int(ftr[name].shape[1])
        out[name] = r
    return out
