"""Neural-collapse (NC) metrics.

Reference: V. Papyan, X. Y. Han, D. L. Donoho, "Prevalence of neural collapse during
the terminal phase of deep learning training", PNAS 117 (40), 2020. CDNV follows
T. Galanti, A. György, M. Hutter, "On the role of neural collapse in transfer
learning", ICLR 2022.

Conventions (used by every function in this module)
---------------------------------------------------
* ``H`` is an ``(N, D)`` feature matrix (penultimate-layer activations), ``y`` an
  ``(N,)`` vector of integer labels in ``[0, K)``, ``K = num_classes`` (given, or
  ``max(y) + 1``). Inputs may be torch tensors (any device / dtype) or numpy arrays;
  everything is computed in float64 torch on the CPU.
* Only *present* classes (count > 0) enter the means and the metrics -- after
  unlearning a class can be empty. ``K'`` is the number of present classes; at least
  two are required.
* ``mu_c`` are the class means. ``mu_G`` is the global mean, by default
  (``global_mean="classes"``) the unweighted **mean of the class means of the
  present classes**, so that ``sum_c (mu_c - mu_G) = 0`` whatever the class
  sizes. Papyan et al. use the mean of all samples; pass ``global_mean="samples"``
  for that. The two coincide for balanced classes.
* ``M = [mu_c - mu_G]`` is ``D x K'`` (present classes, increasing label order).
* ``Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T`` and
  ``Sigma_B = (1/K') sum_c (mu_c - mu_G)(mu_c - mu_G)^T = M M^T / K'``.
* Numerics: two passes. The features are first shifted by their sample mean and
  deviations ``h_i - mu_{y_i}`` are formed explicitly; second moments are never
  obtained as ``E[h h^T] - mu mu^T``. This keeps float32 features with a large
  common offset accurate.
* Returned arrays (``class_means``, ``ncc_predict``, per-class misalignment) are
  torch tensors when ``H`` is a torch tensor and numpy arrays otherwise; scalar
  metrics are Python floats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

__all__ = [
    "class_means",
    "nc1",
    "nc1_pinv_reference",
    "nc2",
    "nc3",
    "nc4",
    "ncc_predict",
    "cdnv",
    "nc_metrics",
]

_F64 = torch.float64
_EPS = torch.finfo(_F64).eps
_BLOCK_BYTES = 4 << 20  # residual row blocks of ~4 MiB (cache friendly, bounded memory)
_GLOBAL_MEANS = ("classes", "samples")


# --------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------
def _to_f64_owned(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """Convert a tensor / array-like to a float64 CPU torch tensor (detached).

    Also returns whether the result is a fresh copy (safe to modify in place)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_complex():
            raise ValueError(f"{name} must be real, got dtype {t.dtype}")
        out = t.to(device="cpu", dtype=_F64)
        return out, out.data_ptr() != t.data_ptr()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real numeric array, got {type(x).__name__}") from exc
    owned = not (isinstance(x, np.ndarray) and np.may_share_memory(a, x))
    if not a.flags.writeable:  # torch.from_numpy warns on read-only arrays
        a, owned = a.copy(), True
    return torch.from_numpy(a), owned


def _to_f64(x: Any, name: str) -> torch.Tensor:
    return _to_f64_owned(x, name)[0]


def _check_finite(t: torch.Tensor, name: str) -> None:
    # cheap test first: any NaN/inf makes the sum non-finite
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_features_owned(H: Any, name: str = "H") -> tuple[torch.Tensor, bool]:
    t, owned = _to_f64_owned(H, name)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    _check_finite(t, name)
    return t, owned


def _check_features(H: Any, name: str = "H") -> torch.Tensor:
    return _check_features_owned(H, name)[0]


def _centre(t: torch.Tensor, owned: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 1 of the two-pass scheme: subtract the sample mean (in place if ``t`` is a copy)."""
    shift = t.mean(dim=0)
    return (t.sub_(shift) if owned else t - shift), shift


def _check_labels(y: Any, n: int, num_classes: Optional[int]) -> tuple[torch.Tensor, int]:
    if isinstance(y, torch.Tensor):
        yt = y.detach().cpu()
    else:
        yt = torch.as_tensor(np.asarray(y))
    if yt.ndim != 1:
        raise ValueError(f"y must be 1-D (N,), got shape {tuple(yt.shape)}")
    if yt.shape[0] != n:
        raise ValueError(f"y has {yt.shape[0]} labels but H has N={n} rows")
    if yt.dtype == torch.bool or yt.is_complex():
        raise ValueError(f"y must hold integer labels, got dtype {yt.dtype}")
    if yt.is_floating_point():
        if not bool(torch.isfinite(yt).all()) or not bool((yt == yt.round()).all()):
            raise ValueError("y must hold integer labels, got non-integral float values")
    yt = yt.to(torch.int64)
    ymin, ymax = int(yt.min()), int(yt.max())
    if ymin < 0:
        raise ValueError(f"y contains a negative label {ymin}; labels must lie in [0, num_classes)")
    if num_classes is None:
        k = ymax + 1
    else:
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        k = int(num_classes)
        if ymax >= k:
            raise ValueError(f"y contains label {ymax} >= num_classes={k}")
    return yt, k


def _check_global_mean(global_mean: str) -> None:
    if global_mean not in _GLOBAL_MEANS:
        raise ValueError(f"global_mean must be one of {_GLOBAL_MEANS}, got {global_mean!r}")


def _like(x: torch.Tensor, ref: Any):
    """Return ``x`` as a torch tensor if ``ref`` is one, else as a numpy array."""
    return x if isinstance(ref, torch.Tensor) else x.numpy()


# --------------------------------------------------------------------------------------
# shared statistics
# --------------------------------------------------------------------------------------
@dataclass
class _Stats:
    Hc: torch.Tensor  # (N, D) features minus `shift`
    shift: torch.Tensor  # (D,) sample mean subtracted from H
    y: torch.Tensor  # (N,) int64
    K: int
    counts: torch.Tensor  # (K,) int64
    means: torch.Tensor  # (K, D) class means of Hc, NaN rows for absent classes
    present: torch.Tensor  # (K',) int64 indices of present classes
    mu_G: torch.Tensor  # (D,) global mean (in shifted coordinates)
    Mt: torch.Tensor  # (K', D) rows mu_c - mu_G of present classes (= M^T)

    @property
    def N(self) -> int:
        return self.Hc.shape[0]

    @property
    def D(self) -> int:
        return self.Hc.shape[1]

    @property
    def Kp(self) -> int:
        return self.present.numel()

    def residual_blocks(self):
        """Yield ``(sl, R)`` with ``R = h_i - mu_{y_i}`` for consecutive row blocks ``sl``.

        Deviations are formed explicitly (pass 2). ``R`` is a reused buffer: consume it
        before advancing the generator."""
        chunk = max(1, min(self.N, _BLOCK_BYTES // (8 * self.D)))
        buf = torch.empty(chunk, self.D, dtype=_F64)
        for start in range(0, self.N, chunk):
            sl = slice(start, min(start + chunk, self.N))
            R = buf[: sl.stop - start]
            torch.index_select(self.means, 0, self.y[sl], out=R)
            torch.sub(self.Hc[sl], R, out=R)
            yield sl, R


def _class_means_shifted(Hc: torch.Tensor, y: torch.Tensor, K: int):
    D = Hc.shape[1]
    counts = torch.bincount(y, minlength=K)
    sums = torch.zeros(K, D, dtype=_F64).index_add_(0, y, Hc)
    means = sums / counts.unsqueeze(1).to(_F64)  # 0/0 -> NaN rows for absent classes
    means[counts == 0] = float("nan")
    return means, counts


def _stats(H: Any, y: Any, num_classes: Optional[int], global_mean: str = "classes",
           normalize: bool = False, min_present: int = 2) -> _Stats:
    _check_global_mean(global_mean)
    Ht, owned = _check_features_owned(H)
    yt, K = _check_labels(y, Ht.shape[0], num_classes)
    if normalize:
        Ht = Ht / torch.linalg.vector_norm(Ht, dim=1, keepdim=True).clamp_min(torch.finfo(_F64).tiny)
        owned = True
    Hc, shift = _centre(Ht, owned)  # pass 1; never modifies the caller's data
    means, counts = _class_means_shifted(Hc, yt, K)  # pass 2 on centred data
    present = torch.nonzero(counts > 0).flatten()
    if present.numel() < min_present:
        raise ValueError(
            f"y must contain at least {min_present} present classes, got {present.numel()} "
            f"(present: {present.tolist()})"
        )
    mp = means[present]
    if global_mean == "classes":
        mu_G = mp.mean(dim=0)
    else:
        mu_G = Hc.mean(dim=0)
    return _Stats(Hc=Hc, shift=shift, y=yt, K=K, counts=counts, means=means,
                  present=present, mu_G=mu_G, Mt=mp - mu_G)


def _check_W(W: Any, st: _Stats) -> torch.Tensor:
    Wt = _to_f64(W, "W")
    if Wt.ndim != 2 or Wt.shape != (st.K, st.D):
        raise ValueError(f"W must have shape (num_classes, D) = ({st.K}, {st.D}), got {tuple(Wt.shape)}")
    if not bool(torch.isfinite(Wt).all()):
        raise ValueError("W contains NaN or infinite values")
    return Wt


def _etf_distance(G: torch.Tensor) -> float:
    """``|| G/||G||_F - (I - 11^T/K)/sqrt(K-1) ||_F`` for a K x K matrix G."""
    k = G.shape[0]
    target = (torch.eye(k, dtype=_F64) - torch.full((k, k), 1.0 / k, dtype=_F64)) / math.sqrt(k - 1)
    nrm = torch.linalg.matrix_norm(G)
    if nrm == 0:
        return float("nan")
    return float(torch.linalg.matrix_norm(G / nrm - target))


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------
def class_means(H: Any, y: Any, num_classes: Optional[int] = None):
    """Per-class means ``mu_c = (1/n_c) sum_{i: y_i = c} h_i``.

    Returns ``(means, counts)``: ``means`` is ``(K, D)`` float64 with NaN rows for
    absent classes (``n_c = 0``), ``counts`` is ``(K,)`` int64. Computed in two
    passes (shift by the sample mean, then average), so float32 inputs with a large
    common offset keep full float64 accuracy. Torch in -> torch out, else numpy.
    """
    Ht, owned = _check_features_owned(H)
    yt, K = _check_labels(y, Ht.shape[0], num_classes)
    Hc, shift = _centre(Ht, owned)
    means, counts = _class_means_shifted(Hc, yt, K)
    means = means + shift
    return _like(means, H), _like(counts, H)


def nc1(H: Any, y: Any, num_classes: Optional[int] = None, *, global_mean: str = "classes") -> float:
    """NC1 = (1/K') tr(Sigma_W Sigma_B^+), without forming any D x D matrix.

    Convention: the trace is divided by the number of present classes K' (as in
    Papyan et al.); some code omits this 1/K factor -- multiply by K' to compare.

    Method: thin SVD ``M = U S V^T`` of the ``D x K'`` centred class-mean matrix.
    Singular values ``s_j <= rtol * s_max`` with ``rtol = max(D, K') * eps`` are
    discarded (numpy/torch ``pinv`` default; this drops the structural null
    direction: the columns of M sum to zero, count-weighted for
    ``global_mean="samples"``). As ``Sigma_B = M M^T / K'``,
    ``Sigma_B^+ = K' U S^-2 U^T`` and

        tr(Sigma_W Sigma_B^+) = K' * sum_j s_j^-2 * (1/N) sum_i ((h_i - mu_{y_i}) . u_j)^2,

    so ``NC1 = sum_j s_j^-2 (1/N) sum_i ((h_i - mu_{y_i}) . u_j)^2``. The projected
    deviations are formed as ``(h_i - a) . u_j - (mu_{y_i} - a) . u_j`` with ``a`` the
    sample mean (pass 1), then squared (pass 2): no second moment is ever differenced.
    Cost O(N D K) (one N x D x K' matrix product), extra memory O(N K + D K).
    Returns 0.0 if all class means coincide (Sigma_B = 0, whose pseudo-inverse is 0).
    """
    st = _stats(H, y, num_classes, global_mean)
    return _nc1_from_stats(st)


def _nc1_from_stats(st: _Stats) -> float:
    M = st.Mt.T  # (D, K')
    U, S, _ = torch.linalg.svd(M, full_matrices=False)
    if S.numel() == 0 or S[0] == 0:
        return 0.0
    keep = S > max(st.D, st.Kp) * _EPS * S[0]
    U, S = U[:, keep], S[keep]
    P = st.Hc @ U  # (N, r) projections of the centred features
    P -= (st.means[st.present] @ U).index_select(0, _dense_labels(st))  # minus projected class means
    proj_sq = P.square().sum(dim=0)
    return float((proj_sq / st.N / S.square()).sum())


def _dense_labels(st: _Stats) -> torch.Tensor:
    """Labels mapped to 0..K'-1 (position among the present classes)."""
    remap = torch.full((st.K,), -1, dtype=torch.int64)
    remap[st.present] = torch.arange(st.Kp)
    return remap[st.y]


def nc1_pinv_reference(H: Any, y: Any, num_classes: Optional[int] = None, *,
                       global_mean: str = "classes") -> float:
    """Reference NC1 = (1/K') tr(Sigma_W Sigma_B^+) with explicit D x D matrices.

    Builds ``Sigma_W = (1/N) R^T R`` (R the N x D within-class deviations, two-pass)
    and ``Sigma_B = M M^T / K'`` in float64 and applies
    ``torch.linalg.pinv(Sigma_B, hermitian=True, rtol=max(D, K') * eps)``, i.e. the
    same relative cut-off as :func:`nc1` but applied to the eigenvalues of Sigma_B
    (= s_j^2 / K') instead of the singular values s_j of M. The two agree whenever M
    (minus its null direction) is not nearly rank deficient. Cost O(N D^2 + D^3);
    meant for tests and benchmarks.
    """
    st = _stats(H, y, num_classes, global_mean)
    Sw = torch.zeros(st.D, st.D, dtype=_F64)
    for _, R in st.residual_blocks():
        Sw += R.T @ R
    Sw /= st.N
    Sb = st.Mt.T @ st.Mt / st.Kp
    Sb = 0.5 * (Sb + Sb.T)
    Sb_pinv = torch.linalg.pinv(Sb, hermitian=True, rtol=max(st.D, st.Kp) * _EPS)
    return float(torch.trace(Sw @ Sb_pinv) / st.Kp)


def nc2(H: Any, y: Any, num_classes: Optional[int] = None, *, global_mean: str = "classes") -> dict:
    """NC2: convergence of the centred class means to a simplex ETF.

    Returns a dict of floats (present classes only, ``m_c = mu_c - mu_G``):

    * ``equinorm``    = Std_c ||m_c|| / Avg_c ||m_c||  (Bessel-corrected std, as
      ``torch.std``; Papyan et al. Fig. 2),
    * ``equiangular`` = Avg_{c != c'} |cos(m_c, m_c') + 1/(K'-1)|  (Fig. 3),
    * ``etf_distance`` = || M^T M / ||M^T M||_F - (I - 11^T/K') / sqrt(K'-1) ||_F.

    All three are 0 for an exact simplex ETF.
    """
    st = _stats(H, y, num_classes, global_mean)
    return _nc2_from_stats(st)


def _nc2_from_stats(st: _Stats) -> dict:
    Mt, k = st.Mt, st.Kp
    norms = torch.linalg.vector_norm(Mt, dim=1)
    equinorm = float(norms.std(correction=1) / norms.mean())
    Mn = Mt / norms.clamp_min(torch.finfo(_F64).tiny).unsqueeze(1)
    cos = Mn @ Mn.T
    off = ~torch.eye(k, dtype=torch.bool)
    equiangular = float((cos[off] + 1.0 / (k - 1)).abs().mean())
    etf = _etf_distance(Mt @ Mt.T)
    return {"equinorm": equinorm, "equiangular": equiangular, "etf_distance": etf}


def nc3(H: Any, y: Any, W: Any, num_classes: Optional[int] = None, *,
        global_mean: str = "classes") -> dict:
    """NC3: self-duality of the classifier ``W`` (K x D, rows w_c) and the class means.

    Returns a dict:

    * ``duality`` = || W'/||W'||_F - M^T/||M||_F ||_F^2  (squared Frobenius norm;
      W' = rows of W of the present classes, M^T is K' x D),
    * ``per_class_misalignment``: (K,) array of 1 - cos(mu_c - mu_G, w_c), NaN for
      absent classes (torch if H is torch, else numpy),
    * ``wm_etf_distance`` = || W'M/||W'M||_F - (I - 11^T/K')/sqrt(K'-1) ||_F.
    """
    st = _stats(H, y, num_classes, global_mean)
    Wt = _check_W(W, st)
    out = _nc3_from_stats(st, Wt)
    out["per_class_misalignment"] = _like(out["per_class_misalignment"], H)
    return out


def _nc3_from_stats(st: _Stats, Wt: torch.Tensor) -> dict:
    Wp = Wt[st.present]  # (K', D)
    nW, nM = torch.linalg.matrix_norm(Wp), torch.linalg.matrix_norm(st.Mt)
    if nW == 0 or nM == 0:
        duality = float("nan")
    else:
        duality = float(torch.linalg.matrix_norm(Wp / nW - st.Mt / nM).square())
    tiny = torch.finfo(_F64).tiny
    cos = (Wp * st.Mt).sum(dim=1) / (
        torch.linalg.vector_norm(Wp, dim=1) * torch.linalg.vector_norm(st.Mt, dim=1)
    ).clamp_min(tiny)
    mis = torch.full((st.K,), float("nan"), dtype=_F64)
    mis[st.present] = 1.0 - cos
    wm = _etf_distance(Wp @ st.Mt.T)
    return {"duality": duality, "per_class_misalignment": mis, "wm_etf_distance": wm}


def ncc_predict(H: Any, means: Any):
    """Nearest-class-centre prediction ``argmin_c ||h - mu_c||`` over the non-NaN rows of ``means``.

    ``means`` is ``(K, D)``; rows containing NaN (absent classes) are ignored.
    Returns ``(N,)`` int64 class indices in the ORIGINAL label space (row indices of
    ``means``); ties go to the smallest index. Computed as argmin_c of
    ``||mu_c - a||^2 - 2 (h - a) . (mu_c - a)`` with ``a`` the mean of the valid rows
    (the dropped ``||h - a||^2`` is constant per sample). Torch in -> torch out.
    """
    Ht = _check_features(H)
    Mt = _to_f64(means, "means")
    if Mt.ndim != 2 or Mt.shape[1] != Ht.shape[1]:
        raise ValueError(f"means must have shape (K, D={Ht.shape[1]}), got {tuple(Mt.shape)}")
    valid = torch.nonzero(~torch.isnan(Mt).any(dim=1)).flatten()
    if valid.numel() == 0:
        raise ValueError("means has no valid (non-NaN) rows")
    pred = _ncc(Ht, Mt[valid], valid, centre=True)
    return _like(pred, H)


def _ncc(Ht: torch.Tensor, Mv: torch.Tensor, labels: torch.Tensor, centre: bool) -> torch.Tensor:
    """argmin_c ||h - m_c||^2 = argmin_c (||m_c - a||^2 - 2 (h - a).(m_c - a)); ``centre=False``
    when ``Ht`` is already centred (a = 0)."""
    a = Mv.mean(dim=0) if centre else torch.zeros(Mv.shape[1], dtype=_F64)
    Ms = Mv - a
    sq = Ms.square().sum(dim=1)
    out = torch.empty(Ht.shape[0], dtype=torch.int64)
    chunk = max(1, _BLOCK_BYTES // (8 * Ht.shape[1]))
    for start in range(0, Ht.shape[0], chunk):
        sl = slice(start, min(start + chunk, Ht.shape[0]))
        Hb = Ht[sl] - a if centre else Ht[sl]
        d = sq - 2.0 * (Hb @ Ms.T)
        out[sl] = labels[d.argmin(dim=1)]
    return out


def _check_preds(logits_or_preds: Any, st: _Stats, name: str = "logits_or_preds") -> torch.Tensor:
    if isinstance(logits_or_preds, torch.Tensor):
        p = logits_or_preds.detach().cpu()
    else:
        p = torch.as_tensor(np.asarray(logits_or_preds))
    if p.ndim == 2:
        if p.shape != (st.N, st.K):
            raise ValueError(
                f"{name} as logits must have shape (N, num_classes) = ({st.N}, {st.K}), "
                f"got {tuple(p.shape)}"
            )
        return p.argmax(dim=1)
    if p.ndim == 1:
        if p.shape[0] != st.N:
            raise ValueError(f"{name} as predictions must have length N={st.N}, got {p.shape[0]}")
        if p.is_floating_point() and not bool((p == p.round()).all()):
            raise ValueError(f"{name} as predictions must hold integer class indices")
        return p.to(torch.int64)
    raise ValueError(f"{name} must be 2-D logits or 1-D predictions, got shape {tuple(p.shape)}")


def nc4(H: Any, y: Any, logits_or_preds: Any, num_classes: Optional[int] = None) -> float:
    """NC4: fraction of samples whose network prediction differs from the NCC prediction.

    ``NC4 = (1/N) #{i : argmax_c z_ic != argmin_{c present} ||h_i - mu_c||}`` where
    ``z`` are the logits (``(N, K)``, argmax taken) or ``logits_or_preds`` are
    already predicted labels ``(N,)``. Class means of absent classes are not
    candidates for the nearest-class-centre rule.
    """
    st = _stats(H, y, num_classes)
    preds = _check_preds(logits_or_preds, st)
    return _nc4_from_stats(st, preds)


def _nc4_from_stats(st: _Stats, preds: torch.Tensor) -> float:
    ncc = _ncc(st.Hc, st.means[st.present], st.present, centre=False)
    return float((ncc != preds).to(_F64).mean())


def cdnv(H: Any, y: Any, num_classes: Optional[int] = None) -> float:
    """Class-distance normalised variance (Galanti et al. 2022), averaged over pairs.

    ``CDNV = Avg_{c != c'} (sigma_c^2 + sigma_c'^2) / (2 ||mu_c - mu_c'||^2)`` with
    ``sigma_c^2 = (1/n_c) sum_{i: y_i = c} ||h_i - mu_c||^2`` (present classes only).
    Returns ``inf`` if two class means coincide.
    """
    st = _stats(H, y, num_classes)
    return _cdnv_from_stats(st)


def _cdnv_from_stats(st: _Stats) -> float:
    ss = torch.zeros(st.K, dtype=_F64)
    for sl, R in st.residual_blocks():
        ss.index_add_(0, st.y[sl], torch.linalg.vector_norm(R, dim=1).square())
    var = (ss[st.present] / st.counts[st.present].to(_F64))
    mp = st.means[st.present]
    k = st.Kp
    diff = mp.unsqueeze(0) - mp.unsqueeze(1)  # (K', K', D), K' is small
    dist2 = diff.square().sum(dim=2)
    num = var.unsqueeze(0) + var.unsqueeze(1)
    off = ~torch.eye(k, dtype=torch.bool)
    ratio = num[off] / (2.0 * dist2[off])  # inf if two means coincide
    return float(ratio.mean())


def nc_metrics(H: Any, y: Any, W: Any = None, logits: Any = None, num_classes: Optional[int] = None,
               normalize: bool = False, *, global_mean: str = "classes") -> dict:
    """All NC metrics in one pass over shared statistics, as a flat dict.

    Keys: ``nc1, nc2_equinorm, nc2_equiangular, nc2_etf, cdnv``; with ``W`` also
    ``nc3_duality, nc3_wm_etf, nc3_misalignment_mean`` (mean over present classes);
    with ``logits`` (2-D logits or 1-D predictions) also ``nc4``; always
    ``present_classes`` (list of int) and ``num_classes`` (int). Values are floats.

    ``normalize=True`` L2-normalises every feature row first (as the authors of the
    unlearning paper do); W and logits are used as given. See the module docstring
    and the individual functions for the formulas and conventions.
    """
    st = _stats(H, y, num_classes, global_mean, normalize=normalize)
    n2 = _nc2_from_stats(st)
    out = {
        "nc1": _nc1_from_stats(st),
        "nc2_equinorm": n2["equinorm"],
        "nc2_equiangular": n2["equiangular"],
        "nc2_etf": n2["etf_distance"],
        "cdnv": _cdnv_from_stats(st),
    }
    if W is not None:
        n3 = _nc3_from_stats(st, _check_W(W, st))
        out["nc3_duality"] = n3["duality"]
        out["nc3_wm_etf"] = n3["wm_etf_distance"]
        out["nc3_misalignment_mean"] = float(n3["per_class_misalignment"][st.present].mean())
    if logits is not None:
        out["nc4"] = _nc4_from_stats(st, _check_preds(logits, st, "logits"))
    out["present_classes"] = st.present.tolist()
    out["num_classes"] = st.K
    return out
