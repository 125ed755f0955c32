"""Neural-regression-collapse (NRC) metrics, per layer and at the last layer.

References
----------
* A. Rangamani, A. Unal, "Deep Neural Regression Collapse", CPAL 2026
  (arXiv:2603.23805): the per-layer ("deep") NRC1-NRC4 below.
* G. Andriopoulos et al., "The Prevalence of Neural Collapse in Neural Multivariate
  Regression", NeurIPS 2024 (arXiv:2409.04180): the last-layer NRC1-NRC3 and the
  unconstrained-feature-model (UFM) optimum.

Conventions (used by every function in this module)
---------------------------------------------------
* ``H`` is an ``(N, D)`` matrix whose rows are the *inputs of a layer's linear map*
  (for a Conv layer: the input feature maps global-average-pooled to ``D = C_in``
  channels, done by the caller). ``Y`` is ``(N, n)`` (a 1-D ``(N,)`` vector is read as
  ``n = 1``). ``W`` is the layer's weight: ``(out, D)`` for ``nn.Linear`` or
  ``(C_out, C_in, *kernel)`` for ``nn.Conv{1,2,3}d``; a conv weight is read as the
  ``C_in x (C_out * prod(kernel))`` matrix ``W.transpose(0, 1).reshape(C_in, -1)``,
  i.e. its *input space* is the ``C_in``-dimensional channel space of the pooled
  features. For a 1x1 conv this is exactly ``Linear(weight[:, :, 0, 0])``.
* Inputs may be torch tensors (any device / dtype) or numpy arrays; everything is
  computed in float64 torch on the CPU, scalars are returned as Python floats.
* Centring: ``H_c = H - mean(H)``, ``Y_c = Y - mean(Y)`` (sample means). The deep
  metrics only need the centred cross-products ``C_HH = H_c^T H_c`` (D x D),
  ``C_HY = H_c^T Y_c`` (D x n) and ``C_YY = Y_c^T Y_c`` (n x n). They are accumulated
  in float64 over row blocks, after subtracting a shift (the exact mean in the two-pass
  functions, the first batch's mean in :class:`FeatureStats`), never as
  ``E[h h^T] - mu mu^T`` of raw data. Nothing of size ``N x N`` is ever formed (except in
  the reference :func:`cka_gram`), and no float64 copy of all of ``H`` is made.
* ``Sigma_H = C_HH / N`` with eigenvalues ``lambda_1 >= lambda_2 >= ... >= lambda_D``
  (tiny negative rounding values clipped to 0) and orthonormal eigenvectors ``V_H``;
  ``Sigma_Y = C_YY / N`` likewise. The eigendecomposition is computed once and shared by
  NRC1, NRC3, NRC4 and the stable ranks in :func:`deep_nrc` / :meth:`FeatureStats.metrics`.
* ``n`` (the target dimension, default ``Y.shape[1]``) must satisfy ``1 <= n <= D``;
  a ValueError is raised otherwise (for a layer narrower than the targets pass
  ``n=min(n, D)`` explicitly).
* Degenerate inputs (all features equal, ``W = 0``, ...) give ``nan`` for the ratios
  that are then undefined, never an exception.
* MSE convention: ``nrc4`` reports the mean squared error *per target entry*,
  ``||Y_c - H_c P||_F^2 / (N n)`` (what ``torch.nn.MSELoss()`` computes), so its
  ``ratio`` can be taken against a model's ``MSELoss``. The UFM (:func:`ufm_optimum`)
  follows Andriopoulos et al. and sums over the n targets (see there).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

__all__ = [
    "nrc1",
    "cka",
    "cka_gram",
    "nrc2",
    "nrc3",
    "nrc4",
    "stable_rank",
    "feature_stable_rank",
    "target_stable_rank",
    "deep_nrc",
    "FeatureStats",
    "last_layer_nrc1",
    "last_layer_nrc2",
    "last_layer_nrc3",
    "nrc3_gamma_scan",
    "ufm_optimum",
    "last_layer_from_stats",
    "nrc_layers",
    "layer_nrc",
]

_F64 = torch.float64
_EPS = torch.finfo(_F64).eps
_BLOCK_BYTES = 16 << 20  # float64 row blocks of ~16 MiB
_NAN = float("nan")


# --------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------
def _as_tensor(x: Any, name: str) -> torch.Tensor:
    """CPU torch view of ``x`` keeping a floating dtype (converted to float64 per block later).

    Integer / bool inputs become float64; complex and non-numeric inputs raise."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_complex():
            raise ValueError(f"{name} must be real, got dtype {t.dtype}")
        if not t.is_floating_point():
            t = t.to(_F64)
        return t.cpu()
    try:
        a = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} must be a real numeric array, got {type(x).__name__}") from exc
    if a.dtype.kind in "biu":
        a = a.astype(np.float64)
    elif a.dtype.kind != "f" or a.dtype == np.longdouble:
        raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if not a.flags.writeable or any(st < 0 for st in a.strides):
        a = a.copy()  # torch.from_numpy warns on read-only and rejects negative-stride arrays
    return torch.from_numpy(a)


def _as_f64(x: Any, name: str) -> torch.Tensor:
    t = _as_tensor(x, name).to(_F64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _check_finite_block(b: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(b.sum())) and not bool(torch.isfinite(b).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _features(H: Any, name: str = "H") -> torch.Tensor:
    t = _as_tensor(H, name)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    return t


def _targets(Y: Any, N: int, name: str = "Y", h_name: str = "H") -> torch.Tensor:
    t = _as_tensor(Y, name)
    if t.ndim == 1:
        t = t.unsqueeze(1)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 1-D (N,) or 2-D (N, n), got shape {tuple(t.shape)}")
    if t.shape[0] != N:
        raise ValueError(f"{name} has {t.shape[0]} rows but {h_name} has N={N} rows")
    if t.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {tuple(t.shape)}")
    return t


def _check_n(n: Any, D: int, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {n!r}")
    n = int(n)
    if not 1 <= n <= D:
        raise ValueError(f"{name} must satisfy 1 <= {name} <= D={D}, got {name}={n}")
    return n


def _check_nonneg(x: Any, name: str, allow_none: bool = False) -> Optional[float]:
    if x is None and allow_none:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a non-negative finite number, got {x!r}") from exc
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {x!r}")
    return v


def _input_space(W: Any, D: int) -> torch.Tensor:
    """The ``D x m`` matrix whose column space is W's input space (see module docstring)."""
    Wt = _as_f64(W, "W")
    if Wt.ndim == 2:
        if Wt.shape[1] != D or Wt.shape[0] == 0:
            raise ValueError(
                f"W (Linear weight, shape (out, D)) must have input dimension D={D}, "
                f"got shape {tuple(Wt.shape)}"
            )
        return Wt.T
    if Wt.ndim >= 3:
        if Wt.shape[1] != D or Wt.numel() == 0:
            raise ValueError(
                f"W (conv weight, shape (C_out, C_in, *kernel)) must have C_in = D={D}, "
                f"got shape {tuple(Wt.shape)}"
            )
        return Wt.transpose(0, 1).reshape(D, -1)
    raise ValueError(f"W must be a 2-D Linear or >=3-D conv weight, got shape {tuple(Wt.shape)}")


def _like(x: torch.Tensor, ref: Any):
    """``x`` as a torch tensor if ``ref`` is one, else as a numpy array."""
    return x if isinstance(ref, torch.Tensor) else x.numpy()


def _block_rows(width: int) -> int:
    return max(1, _BLOCK_BYTES // (8 * max(1, width)))


def _descending_eigh(C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors of a symmetric PSD matrix."""
    evals, evecs = torch.linalg.eigh(0.5 * (C + C.T))
    return evals.flip(0).clamp_min(0.0), evecs.flip(1)


def _stable_rank_from_values(v: torch.Tensor) -> float:
    """``sum v_i^2 / max v_i^2`` for non-negative values ``v`` (nan if all are 0)."""
    top = v.max() if v.numel() else torch.tensor(0.0, dtype=_F64)
    if top == 0:
        return _NAN
    return float((v / top).square().sum())


# --------------------------------------------------------------------------------------
# moments: one-pass accumulator (also used, with the exact mean as shift, as pass 2)
# --------------------------------------------------------------------------------------
class _Moments:
    """Centred cross-products ``C_HH, C_HY, C_YY`` of N samples, with a cached eigh of C_HH."""

    def __init__(self, N: int, C_HH: torch.Tensor, C_HY: torch.Tensor, C_YY: torch.Tensor, eps: float = _EPS):
        self.N, self.C_HH, self.C_HY, self.C_YY = N, C_HH, C_HY, C_YY
        self.eps = eps  # relative precision of C_HH (float32's for mixed accumulation): NRC4's cut-off
        self._eig = None

    @property
    def D(self) -> int:
        return self.C_HH.shape[0]

    @property
    def n(self) -> int:
        return self.C_YY.shape[0]

    @property
    def eig(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, V)``: eigenvalues of C_HH (= N lambda_i, descending) and eigenvectors."""
        if self._eig is None:
            self._eig = _descending_eigh(self.C_HH)
        return self._eig


#: rows per float32 Gram block of FeatureStats(precision="mixed") (bounds float32 accumulation)
MIXED_BLOCK_ROWS = 16384
_MIXED_MIN_D = 32  # narrower layers are cheap in float64

try:  # BLAS symmetric rank-k update (half the flops of H^T H); torch has no syrk
    from scipy.linalg.blas import ssyrk as _ssyrk
except ImportError:  # pragma: no cover - scipy is a dependency
    _ssyrk = None


def _gram32(A: torch.Tensor, upper_only: bool = False) -> torch.Tensor:
    """``A^T A`` of a float32 ``(B, D)`` block (CPU: BLAS SYRK). ``upper_only``: only the upper
    triangle is valid (the strict lower one is 0 or anything); else the full symmetric matrix."""
    if _ssyrk is None or A.device.type != "cpu":
        G = A.T @ A
        return G.triu() if upper_only else G
    a = A.numpy()  # C-contiguous (B, D) is the Fortran-ordered (D, B) matrix a.T: no copy
    up = torch.from_numpy(_ssyrk(1.0, a.T, trans=0, lower=0))  # (D, D), upper triangle filled
    return up if upper_only else up.triu() + up.triu(1).T


class FeatureStats:
    """One-pass, float64 accumulator of the statistics behind :func:`deep_nrc`.

    Feed ``(H_batch, Y_batch)`` pairs with :meth:`update` (e.g. from a forward hook);
    :meth:`metrics` then returns the same dict as :func:`deep_nrc` on the concatenated
    batches, without ever storing ``H``. Memory: ``O(D^2 + D n + n^2)``.

    Accumulated: the count N, and with ``s_H, s_Y`` the means of the *first* batch,
    ``S_H = sum (h - s_H)``, ``S_Y = sum (y - s_Y)``, ``S_HH = sum (h - s_H)(h - s_H)^T``,
    ``S_HY = sum (h - s_H)(y - s_Y)^T``, ``S_YY = sum (y - s_Y)(y - s_Y)^T``. The centred
    products are ``C_HH = S_HH - S_H S_H^T / N`` (and likewise ``C_HY``, ``C_YY``). As the
    shift is close to the mean, ``S_H`` is small and the correction loses no precision even
    for features with a large common offset (float32 activations included: each batch is
    converted to float64 before the shift is subtracted).

    ``precision="mixed"`` (for float32 activations of wide layers, what :func:`layer_nrc` uses):
    the shifted block is kept in float32 and its Gram matrix ``S_HH`` is computed by a float32
    symmetric rank-k update (BLAS ``ssyrk``, half the flops of a matrix product) over row blocks
    of :data:`MIXED_BLOCK_ROWS`, each block's result added to the float64 accumulator; ``S_H``,
    ``S_HY`` and ``S_YY`` stay float64. The error per entry of ``C_HH`` is then about
    ``sqrt(MIXED_BLOCK_ROWS) * 6e-8`` relative to ``||h||^2`` (float32 rounding within one
    block), i.e. NRC1-NRC3 agree with ``"float64"`` to ~1e-5 and NRC4's MSE to ~1e-7 of the
    target variance (tested); NRC4's pseudo-inverse then drops feature directions below
    ``D * eps_float32`` of the top eigenvalue. ~2.6x faster than float64 on a 2-core CPU for
    D = 512 (``benchmarks/nrc_bench.py``). float64 inputs, and layers narrower than 32, use float64.
    """

    def __init__(self, precision: str = "float64") -> None:
        if precision not in ("float64", "mixed"):
            raise ValueError(f"precision must be 'float64' or 'mixed', got {precision!r}")
        self.precision = precision
        self._mixed_seen = False  # some block went through the float32 path
        self._upper_only = False  # S_HH holds only its upper triangle (mixed blocks) until _moments
        self.N = 0
        self._shift_H: Optional[torch.Tensor] = None
        self._shift_Y: Optional[torch.Tensor] = None
        self._cache: Optional[_Moments] = None

    # -- accumulation ------------------------------------------------------------------
    def _init(self, shift_H: torch.Tensor, shift_Y: torch.Tensor) -> None:
        D, n = shift_H.numel(), shift_Y.numel()
        self._shift_H, self._shift_Y = shift_H, shift_Y
        self._S_H = torch.zeros(D, dtype=_F64)
        self._S_Y = torch.zeros(n, dtype=_F64)
        self._S_HH = torch.zeros(D, D, dtype=_F64)
        self._S_HY = torch.zeros(D, n, dtype=_F64)
        self._S_YY = torch.zeros(n, n, dtype=_F64)

    def _accumulate(self, Hb: torch.Tensor, Yb: torch.Tensor) -> None:
        """Add float64 blocks (already checked) to the running sums."""
        Hb = Hb - self._shift_H
        Yb = Yb - self._shift_Y
        self._S_H += Hb.sum(dim=0)
        self._S_Y += Yb.sum(dim=0)
        self._S_HH.addmm_(Hb.T, Hb)
        self._S_HY.addmm_(Hb.T, Yb)
        self._S_YY.addmm_(Yb.T, Yb)
        self.N += Hb.shape[0]
        self._cache = None

    def update(self, H: Any, Y: Any) -> "FeatureStats":
        """Add a batch: ``H`` is ``(B, D)`` features, ``Y`` the ``(B, n)`` (or ``(B,)``) targets.

        D and n must be the same for every batch; empty batches are ignored. Returns self."""
        Ht = _as_tensor(H, "H")
        if Ht.ndim != 2 or Ht.shape[1] == 0:
            raise ValueError(f"H must be 2-D (B, D) with D >= 1, got shape {tuple(Ht.shape)}")
        Yt = _targets(Y, Ht.shape[0])
        if self._shift_H is not None:
            D, n = self._shift_H.numel(), self._shift_Y.numel()
            if Ht.shape[1] != D:
                raise ValueError(f"H has D={Ht.shape[1]} columns but earlier batches had D={D}")
            if Yt.shape[1] != n:
                raise ValueError(f"Y has n={Yt.shape[1]} columns but earlier batches had n={n}")
        if Ht.shape[0] == 0:
            return self
        mixed = self.precision == "mixed" and Ht.dtype == torch.float32 and Ht.shape[1] >= _MIXED_MIN_D
        rows = MIXED_BLOCK_ROWS if mixed else _block_rows(Ht.shape[1] + Yt.shape[1])
        for start in range(0, Ht.shape[0], rows):
            sl = slice(start, start + rows)
            Hb, Yb = Ht[sl], Yt[sl].to(_F64)
            if not mixed:  # the mixed path checks its float32 block sum instead (O(D), not O(B D))
                _check_finite_block(Hb, "H")
            _check_finite_block(Yb, "Y")
            if not mixed:
                Hb = Hb.to(_F64)
            if self._shift_H is None:
                if mixed:
                    _check_finite_block(Hb, "H")
                self._init(Hb.to(_F64).mean(dim=0), Yb.mean(dim=0))
            if mixed:
                self._accumulate_mixed(Hb, Yb)
            else:
                self._accumulate(Hb, Yb)
        return self

    def _accumulate_mixed(self, Hb: torch.Tensor, Yb: torch.Tensor) -> None:
        """float32 block ``Hb``: block products in float32 (Gram by SYRK), added to float64 sums."""
        Hs = (Hb - self._shift_H.to(torch.float32)).contiguous()
        col = Hs.sum(dim=0)  # float32 within the block (a dtype=float64 sum is ~20x slower)
        if not bool(torch.isfinite(col).all()):  # NaN/inf anywhere in the block shows in its column sums
            _check_finite_block(Hb, "H")
        Yb = Yb - self._shift_Y
        self._S_H += col.to(_F64)
        self._S_Y += Yb.sum(dim=0)
        self._S_HH += _gram32(Hs, upper_only=True).to(_F64)  # symmetrised in _moments
        self._upper_only = True
        self._S_HY += (Yb.to(torch.float32).T @ Hs).T.to(_F64)  # (n, B) @ (B, D): fast for small n
        self._S_YY.addmm_(Yb.T, Yb)
        self.N += Hb.shape[0]
        self._mixed_seen = True
        self._cache = None

    # -- results -----------------------------------------------------------------------
    @property
    def D(self) -> Optional[int]:
        return None if self._shift_H is None else self._shift_H.numel()

    @property
    def n(self) -> Optional[int]:
        return None if self._shift_Y is None else self._shift_Y.numel()

    def _moments(self) -> _Moments:
        if self.N == 0:
            raise ValueError("FeatureStats is empty: call update() with at least one sample first")
        if self._cache is None:
            N = self.N
            if self._upper_only:  # mixed blocks filled the upper triangle only
                self._S_HH = self._S_HH.triu() + self._S_HH.triu(1).T
                self._upper_only = False
            C_HH = self._S_HH - torch.outer(self._S_H, self._S_H) / N
            C_HY = self._S_HY - torch.outer(self._S_H, self._S_Y) / N
            C_YY = self._S_YY - torch.outer(self._S_Y, self._S_Y) / N
            eps = torch.finfo(torch.float32).eps if self._mixed_seen else _EPS
            self._cache = _Moments(N, 0.5 * (C_HH + C_HH.T), C_HY, 0.5 * (C_YY + C_YY.T), eps)
        return self._cache

    def mean_H(self) -> torch.Tensor:
        """Sample mean of the features seen so far, ``(D,)`` float64."""
        self._moments()
        return self._shift_H + self._S_H / self.N

    def mean_Y(self) -> torch.Tensor:
        """Sample mean of the targets seen so far, ``(n,)`` float64."""
        self._moments()
        return self._shift_Y + self._S_Y / self.N

    def covariance_H(self) -> torch.Tensor:
        """``Sigma_H = H_c^T H_c / N``, ``(D, D)`` float64."""
        m = self._moments()
        return m.C_HH / m.N

    def metrics(self, W: Any = None, n: Optional[int] = None, model_mse: Optional[float] = None,
                *, ridge: float = 0.0) -> dict:
        """The :func:`deep_nrc` dict for all samples seen so far (see there for the keys)."""
        return _deep_from_moments(self._moments(), W, n, model_mse, ridge)


def _two_pass(Ht: torch.Tensor, Yt: Optional[torch.Tensor]) -> _Moments:
    """Exact-mean moments: pass 1 computes the means, pass 2 accumulates around them."""
    N, D = Ht.shape
    if Yt is None:
        Yt = torch.empty(N, 0, dtype=_F64)
    n = Yt.shape[1]
    rows = _block_rows(D + n)
    sH, sY = torch.zeros(D, dtype=_F64), torch.zeros(n, dtype=_F64)
    for start in range(0, N, rows):
        Hb, Yb = Ht[start:start + rows].to(_F64), Yt[start:start + rows].to(_F64)
        _check_finite_block(Hb, "H")
        _check_finite_block(Yb, "Y")
        sH += Hb.sum(dim=0)
        sY += Yb.sum(dim=0)
    st = FeatureStats()
    st._init(sH / N, sY / N)
    for start in range(0, N, rows):
        st._accumulate(Ht[start:start + rows].to(_F64), Yt[start:start + rows].to(_F64))
    return st._moments()


def _moments_HY(H: Any, Y: Any) -> _Moments:
    Ht = _features(H)
    return _two_pass(Ht, _targets(Y, Ht.shape[0]))


# --------------------------------------------------------------------------------------
# deep NRC from moments
# --------------------------------------------------------------------------------------
def _nrc1_m(m: _Moments, n: int) -> float:
    mu = m.eig[0]
    total = mu.sum()
    if total == 0:
        return _NAN
    return float(mu[n:].sum() / total)


def _cka_parts(C_HH: torch.Tensor, C_HY: torch.Tensor, C_YY: torch.Tensor) -> float:
    den = torch.linalg.matrix_norm(C_HH) * torch.linalg.matrix_norm(C_YY)
    if den == 0:
        return _NAN
    return float(torch.linalg.matrix_norm(C_HY).square() / den)


def _cka_m(m: _Moments, first_n_columns: bool = False) -> float:
    if first_n_columns:
        k = min(m.n, m.D)
        return _cka_parts(m.C_HH[:k, :k], m.C_HY[:k], m.C_YY)
    return _cka_parts(m.C_HH, m.C_HY, m.C_YY)


def _nrc3_m(m: _Moments, U_W: torch.Tensor, n: int) -> float:
    """``U_W``: left singular vectors (D x min(D, m), descending) of W's input-space matrix."""
    k = min(n, U_W.shape[1])  # W has at most min(D, m) input-space directions
    U = U_W[:, :k]
    V = m.eig[1][:, :k]
    s = torch.linalg.svdvals(V.T @ U).clamp(0.0, 1.0)
    return float(s.mean())


def _nrc4_m(m: _Moments, ridge: float) -> float:
    """Residual of the least-squares fit Y_c ~ H_c P, solved in the eigenbasis of C_HH."""
    mu, V = m.eig
    G = V.T @ m.C_HY  # (D, n): rows g_i = v_i^T C_HY
    g2 = G.square().sum(dim=1)
    if ridge > 0:
        f = 1.0 / (mu + ridge)
    else:
        keep = mu > m.D * m.eps * mu[0] if mu[0] > 0 else torch.zeros_like(mu, dtype=torch.bool)
        f = torch.where(keep, 1.0 / torch.where(keep, mu, torch.ones_like(mu)), torch.zeros_like(mu))
    # ||Y_c - H_c P||^2 = tr C_YY - 2 tr P^T C_HY + tr P^T C_HH P, with P = V diag(f) G
    sse = torch.trace(m.C_YY) - (g2 * (2.0 * f - mu * f.square())).sum()
    return float(sse.clamp_min(0.0) / (m.N * m.n))


def _ratio(mse: float, model_mse: Optional[float]) -> Optional[float]:
    if model_mse is None:
        return None
    if model_mse == 0:
        return _NAN if mse == 0 else math.inf
    return mse / model_mse


def _deep_from_moments(m: _Moments, W: Any, n: Optional[int], model_mse: Any, ridge: Any) -> dict:
    if m.n == 0:
        raise ValueError("targets Y are required for deep_nrc")
    n = _check_n(m.n if n is None else n, m.D)
    model_mse = _check_nonneg(model_mse, "model_mse", allow_none=True)
    ridge = _check_nonneg(ridge, "ridge")
    U_W = S_W = None
    if W is not None:
        U_W, S_W, _ = torch.linalg.svd(_input_space(W, m.D), full_matrices=False)
    mu = m.eig[0]
    total = mu.sum()
    k = min(5, m.D)
    mse = _nrc4_m(m, ridge)
    return {
        "n": n,
        "nrc1": _nrc1_m(m, n),
        "nrc2": _cka_m(m),
        "nrc2_first_n_columns": _cka_m(m, first_n_columns=True),
        "nrc3": None if W is None else _nrc3_m(m, U_W, n),
        "nrc4_mse": mse,
        "nrc4_ratio": _ratio(mse, model_mse),
        "feature_stable_rank": _stable_rank_from_values(mu),
        "weight_stable_rank": None if W is None else _stable_rank_from_values(S_W),
        "explained_variance": [(float(v) if total > 0 else _NAN) for v in (mu[:k] / total)],
    }


# --------------------------------------------------------------------------------------
# public API: deep NRC
# --------------------------------------------------------------------------------------
def nrc1(H: Any, n: int) -> float:
    """Deep NRC1, the noise fraction of the feature spectrum: ``sum_{i>n} lambda_i / sum_i lambda_i``.

    ``lambda_i`` are the eigenvalues of ``Sigma_H = H_c^T H_c / N`` (descending). 0 when the
    centred features lie in an n-dimensional subspace (collapse), ``1 - n/D`` for isotropic
    features. nan if all features are equal. Requires ``1 <= n <= D``.
    """
    Ht = _features(H)
    n = _check_n(n, Ht.shape[1])
    return _nrc1_m(_two_pass(Ht, None), n)


def cka(H: Any, Y: Any) -> float:
    """Linear CKA of features and targets, computed in feature space (exact):

        CKA = ||Y_c^T H_c||_F^2 / (||H_c^T H_c||_F ||Y_c^T Y_c||_F).

    Equal to the Gram-matrix form :func:`cka_gram` (``<K_c, L_c>_F / (||K_c||_F ||L_c||_F)``
    with ``K = H H^T``, ``L = Y Y^T`` double-centred), because ``<H_c H_c^T, Y_c Y_c^T>_F =
    ||H_c^T Y_c||_F^2`` etc.; costs O(N (D + n)^2) time and O((D + n)^2) memory instead of
    O(N^2 (D + n)) and two N x N matrices. Invariant to orthogonal transforms and isotropic
    scaling of H or Y; in [0, 1]; nan if H or Y is constant.
    """
    return _cka_m(_moments_HY(H, Y))


def cka_gram(H: Any, Y: Any) -> float:
    """Reference linear CKA through the N x N Gram matrices (tests and benchmarks only).

    ``K = H H^T``, ``L = Y Y^T``, ``K_c = C K C``, ``L_c = C L C`` with ``C = I - 11^T/N``;
    ``HSIC(K, L) = <K_c, L_c>_F / (N-1)^2`` and ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``
    (the (N-1)^2 cancels). Memory 2 N^2 float64 -- prohibitive for large N; use :func:`cka`.
    """
    Ht = _features(H)
    Yt = _targets(Y, Ht.shape[0])
    Hf, Yf = _as_f64(Ht, "H"), _as_f64(Yt, "Y")

    def centred_gram(X: torch.Tensor) -> torch.Tensor:
        K = X @ X.T
        K = K - K.mean(dim=0, keepdim=True)
        return K - K.mean(dim=1, keepdim=True)

    K = centred_gram(Hf)
    L = centred_gram(Yf)
    den = torch.linalg.matrix_norm(K) * torch.linalg.matrix_norm(L)
    if den == 0:
        return _NAN
    return float((K * L).sum() / den)


def nrc2(H: Any, Y: Any, first_n_columns: bool = False) -> float:
    """Deep NRC2: alignment of feature and target covariance, the linear :func:`cka` of (H, Y).

    -> 1 under collapse (features an isometric, scaled image of the targets).
    ``first_n_columns=True`` reproduces a variant found in the authors' code: H is first
    truncated to its first ``n = Y.shape[1]`` columns (coordinates). That variant is NOT
    invariant to rotations of the feature space (it depends on the neuron basis) and is
    provided for comparison only.
    """
    Ht = _features(H)
    Yt = _targets(Y, Ht.shape[0])
    if first_n_columns:
        if Yt.shape[1] > Ht.shape[1]:
            raise ValueError(
                f"first_n_columns=True needs n = Y.shape[1] <= D, got n={Yt.shape[1]} > D={Ht.shape[1]}"
            )
        Ht = Ht[:, : Yt.shape[1]]
    return _cka_m(_two_pass(Ht, Yt))


def nrc3(H: Any, W: Any, n: int) -> float:
    """Deep NRC3: alignment of the layer's input space with the top-n feature subspace.

    ``NRC3 = (1/k) sum_j s_j(V_H[:, :k]^T U_W[:, :k])``, the mean cosine of the principal
    angles between the span of the top-k eigenvectors ``V_H`` of ``Sigma_H`` and the span of
    the top-k input-space singular vectors ``U_W`` of W (right singular vectors of a Linear
    weight ``(out, D)``; left singular vectors of the ``C_in x C_out k^2`` reshaped conv
    weight). -> 1 when W reads exactly the feature subspace, 0 when orthogonal to it.

    ``k = min(n, m)`` where m is the number of input-space singular vectors W has
    (``min(out, D)`` for Linear, ``min(C_in, C_out prod(kernel))`` for conv): a W with fewer
    than n outputs is compared on its whole input space. The subspaces are ill-defined (and
    the value arbitrary within the tie) if ``lambda_k == lambda_{k+1}`` or the k-th and
    (k+1)-th singular values of W coincide (e.g. W of rank < k). Requires ``1 <= n <= D``.
    """
    Ht = _features(H)
    D = Ht.shape[1]
    n = _check_n(n, D)
    U_W = torch.linalg.svd(_input_space(W, D), full_matrices=False)[0]
    return _nrc3_m(_two_pass(Ht, None), U_W, n)


def nrc4(H: Any, Y: Any, model_mse: Optional[float] = None, ridge: float = 0.0) -> dict:
    """Deep NRC4: how well the layer's features predict the targets *linearly*.

    Least squares ``Y_c ~ H_c P`` via the float64 normal equations
    ``(H_c^T H_c + ridge I) P = H_c^T Y_c``, solved in the eigenbasis of ``C_HH = H_c^T H_c``
    (shared with NRC1/NRC3): ``P = V diag(1/(mu_i + ridge)) V^T C_HY``. With ``ridge = 0``
    eigenvalues ``mu_i <= D * eps * mu_1`` are treated as 0 (pseudo-inverse, i.e. the
    minimum-norm lstsq solution), so singular / collapsed features are handled without a
    separate fall-back. Centring both sides is the same as fitting an intercept.

    Returns ``{"mse": ||Y_c - H_c P||_F^2 / (N n), "model_mse": model_mse, "ratio": mse /
    model_mse}`` (``ratio`` None if no ``model_mse`` given; ``mse`` is per target entry, as
    ``torch.nn.MSELoss``). Under collapse ``ratio -> 1``: the layer already carries all the
    linearly decodable information the model uses. The error is obtained from the moments
    as ``tr C_YY - 2 tr P^T C_HY + tr P^T C_HH P``, so it is accurate to about
    ``eps * tr(C_YY) / (N n)`` in absolute terms.
    """
    mc = _check_nonneg(model_mse, "model_mse", allow_none=True)
    r = _check_nonneg(ridge, "ridge")
    mse = _nrc4_m(_moments_HY(H, Y), r)
    return {"mse": mse, "model_mse": mc, "ratio": _ratio(mse, mc)}


def stable_rank(A: Any) -> float:
    """Stable rank of a matrix: ``sum_i s_i^2 / s_1^2 = ||A||_F^2 / ||A||_2^2`` (nan if A = 0).

    For a layer weight pass the 2-D matrix (a Linear weight; the stable rank is transpose
    invariant). :func:`deep_nrc` uses the input-space matrix of W (conv: ``C_in x C_out k^2``).
    """
    At = _as_f64(A, "A")
    if At.ndim != 2 or At.numel() == 0:
        raise ValueError(f"A must be a non-empty 2-D matrix, got shape {tuple(At.shape)}")
    return _stable_rank_from_values(torch.linalg.svdvals(At))


def feature_stable_rank(H: Any) -> float:
    """Stable rank of the feature covariance: ``sum_i lambda_i^2 / lambda_1^2``.

    ``lambda_i`` are the eigenvalues of ``Sigma_H = H_c^T H_c / N``, i.e. the singular values
    of the PSD matrix Sigma_H, so this is ``stable_rank(Sigma_H)`` (as computed by the Deep
    NRC authors). Note: the stable rank of ``H_c`` itself would be ``sum lambda_i / lambda_1``;
    the covariance version weights the spectrum quadratically and is smaller. Equals r for r
    equal non-zero eigenvalues; nan if all features are equal.
    """
    return _stable_rank_from_values(_two_pass(_features(H), None).eig[0])


def target_stable_rank(Y: Any) -> float:
    """Stable rank of the target covariance ``Sigma_Y = Y_c^T Y_c / N``: ``sum sigma_i^2 / sigma_1^2``
    (same convention as :func:`feature_stable_rank`)."""
    Yt = _as_tensor(Y, "Y")
    if Yt.ndim == 1:
        Yt = Yt.unsqueeze(1)
    return _stable_rank_from_values(_two_pass(_features(Yt, "Y"), None).eig[0])


def deep_nrc(H: Any, Y: Any, W: Any = None, n: Optional[int] = None,
             model_mse: Optional[float] = None, *, ridge: float = 0.0) -> dict:
    """All deep-NRC metrics of one layer from one set of statistics.

    ``H`` ``(N, D)`` layer inputs, ``Y`` ``(N, n_Y)`` targets, ``W`` the layer weight
    (Linear or conv, optional), ``n`` the collapse dimension (default ``Y.shape[1]``),
    ``model_mse`` the network's own ``MSELoss`` (optional). ``C_HH`` and its
    eigendecomposition are computed once (O(N D^2 + D^3)) and shared. Keys:

    * ``n`` -- the n used; ``nrc1`` (:func:`nrc1`); ``nrc2`` (:func:`cka`);
      ``nrc2_first_n_columns`` (the non-invariant variant of :func:`nrc2`, first
      ``min(n_Y, D)`` columns); ``nrc3`` (:func:`nrc3`, None without W);
    * ``nrc4_mse`` / ``nrc4_ratio`` (:func:`nrc4`, ratio None without model_mse);
    * ``feature_stable_rank`` (:func:`feature_stable_rank`), ``weight_stable_rank``
      (:func:`stable_rank` of W's input-space matrix, None without W);
    * ``explained_variance`` -- list of ``lambda_i / sum_j lambda_j`` for the top
      ``k = min(5, D)`` eigenvalues of Sigma_H.

    :class:`FeatureStats` gives the same dict from batches, without storing H.
    """
    return _deep_from_moments(_moments_HY(H, Y), W, n, model_mse, ridge)


# --------------------------------------------------------------------------------------
# last-layer NRC (Andriopoulos et al. 2024)
# --------------------------------------------------------------------------------------
def _normalised_blocks(Ht: torch.Tensor):
    """Row blocks of ``h_i / ||h_i||`` in float64 (all-zero rows stay zero)."""
    rows = _block_rows(Ht.shape[1])
    tiny = torch.finfo(_F64).tiny
    for start in range(0, Ht.shape[0], rows):
        b = Ht[start:start + rows].to(_F64)
        _check_finite_block(b, "H")
        yield b / torch.linalg.vector_norm(b, dim=1, keepdim=True).clamp_min(tiny)


def last_layer_nrc1(H: Any, n: int) -> float:
    """Last-layer NRC1 (Andriopoulos et al. 2024): distance to the top-n principal subspace.

        NRC1 = (1/N) sum_i ||h~_i - P_n h~_i||^2,   h~_i = h_i / ||h_i||,

    where ``P_n = V V^T`` projects onto the span of the top-n principal components (the top
    eigenvectors of the covariance of the *centred* normalised features ``H~``); the
    projection, as in the paper, is applied to ``h~_i`` itself (a linear subspace through 0,
    not an affine one). In [0, 1]; 0 when the normalised features lie in an n-dim subspace
    through the origin. All-zero rows are kept as zero vectors (they add 0 to the sum but
    count in N). Computed as ``(sum_i ||h~_i||^2 - tr(V^T G V)) / N`` with ``G = H~^T H~``,
    G obtained as the centred product plus ``N m m^T`` (m the mean of the h~_i).
    """
    Ht = _features(H)
    N, D = Ht.shape
    n = _check_n(n, D)
    s = torch.zeros(D, dtype=_F64)
    sq = torch.zeros((), dtype=_F64)
    for b in _normalised_blocks(Ht):
        s += b.sum(dim=0)
        sq += b.square().sum()
    mean = s / N
    C = torch.zeros(D, D, dtype=_F64)
    for b in _normalised_blocks(Ht):
        b = b - mean
        C.addmm_(b.T, b)
    V = _descending_eigh(C)[1][:, :n]
    captured = torch.trace(V.T @ C @ V) + N * (V.T @ mean).square().sum()
    return float((sq - captured).clamp_min(0.0) / N)


def last_layer_nrc2(H: Any, W: Any) -> float:
    """Last-layer NRC2 (Andriopoulos et al. 2024): distance to the row space of the last layer W.

        NRC2 = (1/N) sum_i ||h~_i - P_W h~_i||^2,   h~_i = h_i / ||h_i||,

    with ``P_W`` the orthogonal projector onto the row space of ``W`` (``(n, D)``, any
    number of rows). The row space is taken from the SVD of W, dropping singular values
    ``<= max(W.shape) * eps * s_1``. Residuals are formed explicitly, block by block.
    In [0, 1]; 0 when every feature lies in the span of the weight vectors; nan if W = 0.
    """
    Ht = _features(H)
    N, D = Ht.shape
    Wt = _as_f64(W, "W")
    if Wt.ndim != 2 or Wt.shape[1] != D or Wt.shape[0] == 0:
        raise ValueError(f"W must have shape (n, D) with D={D}, got shape {tuple(Wt.shape)}")
    _, S, Vh = torch.linalg.svd(Wt, full_matrices=False)
    if S[0] == 0:
        return _NAN
    Q = Vh[S > max(Wt.shape) * _EPS * S[0]].T  # (D, r) orthonormal basis of the row space
    total = torch.zeros((), dtype=_F64)
    for b in _normalised_blocks(Ht):
        total += (b - (b @ Q) @ Q.T).square().sum()
    return float(total / N)


def _target_cov_eig(Y: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(sigma, U, Sigma, N)``: ascending eigenvalues (clipped >= 0) / vectors of Sigma_Y."""
    Yt = _as_tensor(Y, "Y")
    if Yt.ndim == 1:
        Yt = Yt.unsqueeze(1)
    m = _two_pass(_features(Yt, "Y"), None)
    Sigma = m.C_HH / m.N
    sig, U = torch.linalg.eigh(Sigma)
    return sig.clamp_min(0.0), U, Sigma, m.N


def _check_last_W(W: Any, n: int) -> torch.Tensor:
    Wt = _as_f64(W, "W")
    if Wt.ndim != 2 or Wt.shape[0] != n or Wt.shape[1] == 0:
        raise ValueError(
            f"W must be the last-layer weight of shape (n, D) with n = Y.shape[1] = {n}, "
            f"got shape {tuple(Wt.shape)}"
        )
    return Wt


def last_layer_nrc3(W: Any, Y: Any, gamma: float) -> float:
    """Last-layer NRC3 (Andriopoulos et al. 2024): Gram structure of the weights.

        NRC3(gamma) = || W W^T / ||W W^T||_F - (Sigma^{1/2} - sqrt(gamma) I) / ||Sigma^{1/2} - sqrt(gamma) I||_F ||_F^2

    with ``Sigma = Y_c^T Y_c / N`` the target covariance (n x n) and ``Sigma^{1/2}`` its PSD
    square root (eigenvalues clipped at 0). W is ``(n, D)``. The paper scans
    ``gamma in [0, lambda_min(Sigma)]`` (see :func:`nrc3_gamma_scan`); any ``gamma >= 0`` is
    accepted here (beyond lambda_min the reference matrix is indefinite). In [0, 4]; 0 at
    the UFM optimum with ``gamma = lambda_H lambda_W`` (:func:`ufm_optimum`); nan if
    ``W W^T = 0`` or the reference matrix is 0 (isotropic Sigma at gamma = lambda_min).
    """
    g = _check_nonneg(gamma, "gamma")
    sig, U, _, _ = _target_cov_eig(Y)
    Wt = _check_last_W(W, sig.numel())
    A = Wt @ Wt.T
    B = (U * (sig.sqrt() - math.sqrt(g))) @ U.T
    nA, nB = torch.linalg.matrix_norm(A), torch.linalg.matrix_norm(B)
    if nA == 0 or nB == 0:
        return _NAN
    return float(torch.linalg.matrix_norm(A / nA - B / nB).square())


def nrc3_gamma_scan(W: Any, Y: Any, num: int = 101):
    """Evaluate :func:`last_layer_nrc3` on ``num`` equally spaced ``gamma`` in ``[0, lambda_min(Sigma)]``.

    Returns ``(gammas, values, best_gamma)``: two ``(num,)`` float64 arrays (torch if W is a
    torch tensor, else numpy) and the gamma of the smallest (non-nan) value, as in the paper's
    choice of gamma. Vectorised: in the eigenbasis ``Sigma = U diag(sigma) U^T``,
    ``NRC3 = 2 - 2 sum_j a_j b_j / ||b||`` with ``a = diag(U^T A U)``, ``A = WW^T/||WW^T||_F``,
    ``b_j = sqrt(sigma_j) - sqrt(gamma)``.
    """
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 2:
        raise ValueError(f"num must be an integer >= 2, got {num!r}")
    sig, U, _, _ = _target_cov_eig(Y)
    Wt = _check_last_W(W, sig.numel())
    gammas = torch.linspace(0.0, float(sig[0]), int(num), dtype=_F64)
    A = Wt @ Wt.T
    nA = torch.linalg.matrix_norm(A)
    if nA == 0:
        values = torch.full((int(num),), _NAN, dtype=_F64)
    else:
        a = torch.diagonal(U.T @ (A / nA) @ U)
        b = sig.sqrt().unsqueeze(0) - gammas.sqrt().unsqueeze(1)  # (num, n)
        nb = torch.linalg.vector_norm(b, dim=1)
        values = torch.where(nb > 0, 2.0 - 2.0 * (b @ a) / torch.where(nb > 0, nb, 1.0),
                             torch.full_like(nb, _NAN)).clamp_min(0.0)
    finite = torch.isfinite(values)
    if bool(finite.any()):
        idx = int(torch.where(finite, values, torch.full_like(values, math.inf)).argmin())
        best = float(gammas[idx])
    else:
        best = _NAN
    return _like(gammas, W), _like(values, W), best


def ufm_optimum(Y: Any, lambda_H: float, lambda_W: float) -> dict:
    """Global optimum of the regression unconstrained feature model (Andriopoulos et al. 2024).

    Loss (features ``H`` N x D free, last layer ``W`` n x D, bias ``b``):

        L = 1/(2N) sum_i ||W h_i + b - y_i||^2 + lambda_H/(2N) ||H||_F^2 + lambda_W/2 ||W||_F^2,

    i.e. ``1/2 MSE + 1/2 lambda_H ||H||^2/N + 1/2 lambda_W ||W||^2`` with the MSE *summed*
    over the n targets (the paper's convention; for ``torch.nn.MSELoss``, which also averages
    over targets, use ``n lambda_H`` and ``n lambda_W``). With ``Sigma = Y_c^T Y_c / N``
    (eigen-pairs ``sigma_j, u_j``) and ``gamma = lambda_H lambda_W``:

        W W^T = sqrt(lambda_H / lambda_W) * (Sigma^{1/2} - sqrt(gamma) I)_+,

    where ``(.)_+`` keeps the positive part per eigen-direction. Derivation: for fixed W the
    optimal features are ``h_i = (W^T W + lambda_H I)^{-1} W^T (y_i - b)``, ``b = mean(y)``,
    which leaves ``sum_j [lambda_H sigma_j / (t_j + lambda_H) + lambda_W t_j] / 2`` over the
    eigenvalues ``t_j`` of W W^T (aligned with the u_j); its minimiser is
    ``t_j = max(sqrt(lambda_H sigma_j / lambda_W) - lambda_H, 0)``. Collapse (every
    direction kept, NRC1-NRC3 = 0) iff ``gamma < lambda_min(Sigma)``; directions with
    ``sigma_j <= gamma`` collapse to 0 (W = H = 0 if ``gamma >= lambda_max``).

    Returns a dict: ``WWt`` (n x n), ``gamma``, ``collapse`` (bool), ``Sigma`` (n x n),
    ``scale`` = sqrt(lambda_H/lambda_W), and one optimal realisation with D = n:
    ``W`` = (WW^T)^{1/2} (symmetric; any ``W R^T`` with R^T R = I is optimal too),
    ``H`` (N x n) the optimal features for that W, ``b`` = mean(Y). Arrays are torch if Y
    is a torch tensor, else numpy.
    """
    for v, nm in ((lambda_H, "lambda_H"), (lambda_W, "lambda_W")):
        if _check_nonneg(v, nm) == 0:
            raise ValueError(f"{nm} must be > 0, got {v!r}")
    lh, lw = float(lambda_H), float(lambda_W)
    gamma = lh * lw
    Yt = _as_tensor(Y, "Y")
    if Yt.ndim == 1:
        Yt = Yt.unsqueeze(1)
    Yf = _as_f64(_features(Yt, "Y"), "Y")
    sig, U, Sigma, N = _target_cov_eig(Yf)
    t = (math.sqrt(lh / lw) * (sig.sqrt() - math.sqrt(gamma))).clamp_min(0.0)
    WWt = (U * t) @ U.T
    Wopt = (U * t.sqrt()) @ U.T
    b = Yf.mean(dim=0)
    # h_i^T = (y_i - b)^T W (W^T W + lambda_H I)^{-1}; in the eigenbasis: sqrt(t)/(t + lambda_H)
    Hopt = ((Yf - b) @ U) * (t.sqrt() / (t + lh)) @ U.T
    return {
        "WWt": _like(WWt, Y), "gamma": gamma, "collapse": bool(gamma < float(sig[0])),
        "Sigma": _like(Sigma, Y), "scale": math.sqrt(lh / lw),
        "W": _like(Wopt, Y), "H": _like(Hopt, Y), "b": _like(b, Y),
    }


# --------------------------------------------------------------------------------------
# all layers of a model from one forward pass
# --------------------------------------------------------------------------------------
def last_layer_from_stats(stats: FeatureStats, W: Any, n: Optional[int] = None) -> dict:
    """Last-layer NRC1 and NRC2 (:func:`last_layer_nrc1`, :func:`last_layer_nrc2`) from a
    :class:`FeatureStats` fed with the *row-normalised* features ``h_i / ||h_i||`` (no second pass).

    With ``C`` the centred Gram matrix and ``m`` the mean of the normalised rows, ``G = C + N m m^T``
    and ``sum_i ||h~_i||^2 = tr G``: NRC1 ``= (tr G - tr(V^T C V) - N ||V^T m||^2) / N`` (V: top-n
    eigenvectors of C), NRC2 ``= (tr G - tr(Q^T G Q)) / N`` (Q: orthonormal basis of W's row space)."""
    mom = stats._moments()
    N, D = mom.N, mom.D
    Wt = _as_f64(W, "W")
    if Wt.ndim != 2 or Wt.shape[1] != D:
        raise ValueError(f"W must have shape (n, D) with D={D}, got shape {tuple(Wt.shape)}")
    n = _check_n(Wt.shape[0] if n is None else min(n, D), D)
    m = stats.mean_H()
    C = mom.C_HH
    G = C + N * torch.outer(m, m)
    V = mom.eig[1][:, :n]
    trG = torch.trace(G)
    nrc1_v = (trG - torch.trace(V.T @ C @ V) - N * (V.T @ m).square().sum()) / N
    _, S, Vh = torch.linalg.svd(Wt, full_matrices=False)
    if S[0] == 0:
        nrc2_v = torch.tensor(_NAN, dtype=_F64)
    else:
        Q = Vh[S > max(Wt.shape) * _EPS * S[0]].T
        nrc2_v = (trG - torch.trace(Q.T @ G @ Q)) / N
    return {"nrc1": float(nrc1_v.clamp_min(0.0)), "nrc2": float(nrc2_v.clamp_min(0.0))}


def nrc_layers(model: torch.nn.Module, include_shortcuts: bool = False) -> list[tuple[str, torch.nn.Module]]:
    """The layers deep NRC reads, in forward order: every ``nn.Linear`` and ``nn.Conv{1,2,3}d`` of
    ``model`` (projection shortcuts of residual blocks only with ``include_shortcuts``)."""
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return [(name, mod) for name, mod in model.named_modules()
            if isinstance(mod, kinds) and (include_shortcuts or "shortcut" not in name)]


@torch.no_grad()
def layer_nrc(model: torch.nn.Module, store, idx: torch.Tensor, *, n: Optional[int] = None,
              batch_size: int = 4096, precision: str = "mixed", spectrum: int = 32,
              gamma_points: int = 101) -> dict:
    """Deep NRC1-NRC4 of every layer of ``model`` and the last-layer NRC, from one eval-mode pass.

    ``store[idx]`` gives inputs and targets (``store.labels``, ``(N, n_Y)``). Forward pre-hooks on
    every layer of :func:`nrc_layers` feed its input (conv inputs global-average-pooled to channels)
    and the batch targets to a :class:`FeatureStats` (``precision``: see there); the model's own MSE
    (per target entry, as ``nn.MSELoss``) is accumulated in the same pass, so ``nrc4_ratio`` is
    ``NRC4 / model MSE``. Returns::

        {"model_mse": float, "n": n, "N": N,
         "layers": [{"name", "D", **deep_nrc keys, "spectrum": top eigenvalue fractions}, ...],
         "last": {"nrc1", "nrc2" (Andriopoulos et al., normalised features), "nrc3_gammas",
                  "nrc3_values", "nrc3_best_gamma", "lambda_min", "explained_variance"}}

    ``n`` (default: the target dimension) is capped at each layer's width. Memory: O(sum D^2).
    """
    layers = nrc_layers(model)
    if not layers:
        raise ValueError("model has no Linear or Conv layer")
    Y_all = store.labels[idx]
    if Y_all.ndim != 2:
        raise ValueError(f"targets must be (N, n), got shape {tuple(Y_all.shape)}")
    n_t = Y_all.shape[1] if n is None else n
    stats = [FeatureStats(precision) for _ in layers]
    last_stats = FeatureStats(precision)
    current: dict[str, torch.Tensor] = {}
    last_name = layers[-1][0]

    def make_hook(i: int, name: str):
        def hook(_mod, inputs):
            h = inputs[0]
            if h.ndim > 2:
                h = h.float().mean(dim=tuple(range(2, h.ndim)))
            h = h.detach().float().cpu()
            stats[i].update(h, current["y"])
            if name == last_name:
                last_stats.update(h / torch.linalg.vector_norm(h, dim=1, keepdim=True).clamp_min(1e-30), current["y"])
        return hook

    was = model.training
    model.eval()
    handles = [mod.register_forward_pre_hook(make_hook(i, name)) for i, (name, mod) in enumerate(layers)]
    sse, count = 0.0, 0
    try:
        for x, y in store.iter_batches(idx, batch_size):
            current["y"] = y.detach().float().cpu()
            out = model(x)
            sse += float((out.double() - y.double()).square().sum())
            count += y.numel()
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if count == 0:
        raise ValueError("layer_nrc: the index is empty")
    model_mse = sse / count
    rows = []
    for (name, mod), st in zip(layers, stats):
        D = st.D
        r = st.metrics(mod.weight.detach().cpu(), n=min(n_t, D), model_mse=model_mse)
        mu = st._moments().eig[0]
        k = min(spectrum, D)
        r["spectrum"] = [float(v) for v in (mu[:k] / mu.sum())] if mu.sum() > 0 else [_NAN] * k
        rows.append({"name": name, "D": D, **r})
    W_last = layers[-1][1].weight.detach().cpu()
    last = {}
    if W_last.ndim == 2 and W_last.shape[0] == Y_all.shape[1]:
        last = last_layer_from_stats(last_stats, W_last, n=n_t)
        gammas, values, best = nrc3_gamma_scan(W_last, Y_all.detach().cpu(), num=gamma_points)
        last.update({"nrc3_gammas": gammas.tolist(), "nrc3_values": values.tolist(), "nrc3_best_gamma": best,
                     "lambda_min": float(gammas[-1]),  # the scan ends at lambda_min(Sigma)
                     "explained_variance": rows[-1]["explained_variance"]})
    return {"model_mse": model_mse, "n": n_t, "N": stats[0].N, "layers": rows, "last": last}
