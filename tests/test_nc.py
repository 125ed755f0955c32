"""Known-answer tests for nbutils.metrics.nc (neural-collapse metrics)."""
import math

import numpy as np
import pytest
import torch

from nbutils.metrics.nc import (
    cdnv,
    class_means,
    nc1,
    nc1_pinv_reference,
    nc2,
    nc3,
    nc4,
    nc_metrics,
    ncc_predict,
)


# ----------------------------------------------------------------------------- helpers
pytestmark = pytest.mark.usefixtures("single_thread")


def _orthonormal(rng, d, k):
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return q


def _simplex_etf(K=5, D=16, per_class=4, seed=0, scale=2.0):
    """Features exactly at the vertices of a simplex ETF embedded in R^D (global mean 0)."""
    rng = np.random.default_rng(seed)
    P = _orthonormal(rng, D, K)  # D x K, orthonormal columns
    vertices = (np.eye(K) - 1.0 / K) * scale  # K x K, rows = simplex vertices (sum to 0)
    M_t = vertices @ P.T  # K x D, rows mu_c - mu_G
    y = np.repeat(np.arange(K), per_class)
    H = M_t[y]
    return H, y, M_t


def _noisy(N=600, D=20, K=6, noise=1.0, seed=1, absent=None, sep=3.0):
    rng = np.random.default_rng(seed)
    mu = sep * rng.standard_normal((K, D))
    y = rng.integers(0, K, size=N)
    if absent is not None:
        y[y == absent] = (absent + 1) % K
    H = mu[y] + noise * rng.standard_normal((N, D))
    W = rng.standard_normal((K, D))
    return H, y, W


def _all_metrics(H, y, W, K):
    logits = H @ W.T
    out = nc_metrics(H, y, W=W, logits=logits, num_classes=K)
    return {k: v for k, v in out.items() if isinstance(v, float)}


# ------------------------------------------------------------------ exact simplex ETF
def test_exact_simplex_etf_gives_zero_everywhere():
    K, D = 5, 16
    H, y, M_t = _simplex_etf(K=K, D=D)
    W = M_t.copy()  # W = M^T (K x D)
    logits = H @ W.T

    assert nc1(H, y) < 1e-20
    assert nc1_pinv_reference(H, y) < 1e-20
    n2 = nc2(H, y)
    for key in ("equinorm", "equiangular", "etf_distance"):
        assert abs(n2[key]) < 1e-10, (key, n2[key])
    n3 = nc3(H, y, W)
    assert n3["duality"] < 1e-10
    assert n3["wm_etf_distance"] < 1e-10
    assert n3["per_class_misalignment"].shape == (K,)
    assert np.all(np.abs(n3["per_class_misalignment"]) < 1e-10)
    assert nc4(H, y, logits) == 0.0
    assert nc4(H, y, logits.argmax(1)) == 0.0
    assert cdnv(H, y) < 1e-20

    out = nc_metrics(H, y, W=W, logits=logits)
    assert out["present_classes"] == list(range(K)) and out["num_classes"] == K
    for key in ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_etf", "cdnv",
                "nc3_duality", "nc3_wm_etf", "nc3_misalignment_mean", "nc4"):
        assert isinstance(out[key], float)
        assert abs(out[key]) < 1e-10, (key, out[key])

    # a common offset b changes nothing once the classifier has the matching bias -W b
    b = 5.0 * np.random.default_rng(1).standard_normal(D)
    out_b = nc_metrics(H + b, y, W=W, logits=(H + b) @ W.T - W @ b)
    for key in out:
        if isinstance(out[key], float):
            assert abs(out_b[key]) < 1e-10, (key, out_b[key])


def test_non_etf_means_give_positive_nc2_nc3():
    # sanity: the ETF test is not vacuous -- random means are far from an ETF
    H, y, W = _noisy(noise=0.0)
    n2 = nc2(H, y)
    assert n2["equinorm"] > 1e-3 and n2["equiangular"] > 1e-3 and n2["etf_distance"] > 1e-2
    assert nc3(H, y, W)["duality"] > 1e-2


# --------------------------------------------------------------- rotation invariance
def test_orthogonal_rotation_changes_no_metric():
    K, D = 6, 20
    H, y, W = _noisy(K=K, D=D, noise=1.5, seed=2)
    Q = _orthonormal(np.random.default_rng(3), D, D)
    base = _all_metrics(H, y, W, K)
    rot = _all_metrics(H @ Q, y, W @ Q, K)
    assert set(base) == set(rot) and len(base) == 9
    assert 0 < base["nc4"] < 1 and base["nc1"] > 0.01  # non-trivial values
    for key in base:
        assert math.isclose(base[key], rot[key], rel_tol=1e-9, abs_tol=1e-12), (key, base[key], rot[key])
    m0 = nc3(H, y, W)["per_class_misalignment"]
    m1 = nc3(H @ Q, y, W @ Q)["per_class_misalignment"]
    np.testing.assert_allclose(m0, m1, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------- fast path vs D x D reference
@pytest.mark.parametrize(
    "N,D,K,absent",
    [(2000, 64, 10, None), (2000, 64, 10, 3), (500, 5, 10, None), (500, 5, 10, 3)],
    ids=["D>K", "D>K-absent3", "D<K", "D<K-absent3"],
)
def test_nc1_matches_pinv_reference(N, D, K, absent):
    H, y, _ = _noisy(N=N, D=D, K=K, noise=2.0, seed=4, absent=absent)
    fast = nc1(H, y, num_classes=K)
    ref = nc1_pinv_reference(H, y, num_classes=K)
    assert fast > 0
    assert math.isclose(fast, ref, rel_tol=1e-8), (fast, ref)
    # same agreement under the Papyan (sample global mean) convention
    fs = nc1(H, y, num_classes=K, global_mean="samples")
    rs = nc1_pinv_reference(H, y, num_classes=K, global_mean="samples")
    assert math.isclose(fs, rs, rel_tol=1e-8), (fs, rs)


def test_nc1_matches_explicit_formula():
    # (1/K) tr(Sigma_W Sigma_B^+) written out with numpy, D > K so Sigma_B is singular
    H, y, _ = _noisy(N=400, D=12, K=4, noise=1.0, seed=5)
    K = 4
    mu = np.stack([H[y == c].mean(0) for c in range(K)])
    mG = mu.mean(0)
    R = H - mu[y]
    Sw = R.T @ R / len(y)
    Sb = (mu - mG).T @ (mu - mG) / K
    expected = np.trace(Sw @ np.linalg.pinv(Sb, hermitian=True)) / K
    assert math.isclose(nc1(H, y), expected, rel_tol=1e-8)


# --------------------------------------------------------------------- absent class
def test_absent_class_handling():
    K = 6
    H, y, W = _noisy(K=K, absent=2, seed=6)
    assert not np.any(y == 2)
    out = nc_metrics(H, y, W=W, logits=H @ W.T, num_classes=K)
    assert out["present_classes"] == [0, 1, 3, 4, 5]
    assert out["num_classes"] == K
    for key, val in out.items():
        if isinstance(val, float):
            assert np.isfinite(val), key
    mis = nc3(H, y, W, num_classes=K)["per_class_misalignment"]
    assert mis.shape == (K,)
    assert np.isnan(mis[2])
    assert np.all(np.isfinite(np.delete(mis, 2)))

    means, counts = class_means(H, y, num_classes=K)
    assert counts[2] == 0 and np.all(np.isnan(means[2]))
    assert not np.any(np.isnan(np.delete(means, 2, axis=0)))
    pred = ncc_predict(H, means)
    assert set(np.unique(pred)) <= {0, 1, 3, 4, 5}  # original label space, never the absent class
    # metrics of the present classes equal those of the relabelled problem without class 2
    relabel = np.array([0, 1, -1, 2, 3, 4])
    assert math.isclose(nc1(H, y, K), nc1(H, relabel[y], K - 1), rel_tol=1e-12)
    assert math.isclose(cdnv(H, y, K), cdnv(H, relabel[y], K - 1), rel_tol=1e-12)


def test_absent_trailing_class_needs_num_classes():
    H, y, W = _noisy(K=5, seed=7)
    y = np.where(y == 4, 0, y)  # labels in 0..3, K=5 given
    assert nc_metrics(H, y, num_classes=5)["num_classes"] == 5
    assert nc_metrics(H, y)["num_classes"] == 4  # inferred as max label + 1
    assert np.isnan(nc3(H, y, W, num_classes=5)["per_class_misalignment"][4])


# ----------------------------------------------------------------- other known answers
def test_class_means_cdnv_ncc_against_loops():
    K = 4
    H, y, _ = _noisy(N=300, D=7, K=K, seed=8)
    means, counts = class_means(H, y)
    mu = np.stack([H[y == c].mean(0) for c in range(K)])
    np.testing.assert_allclose(means, mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(counts, np.bincount(y, minlength=K))

    var = np.array([np.mean(np.sum((H[y == c] - mu[c]) ** 2, 1)) for c in range(K)])
    vals = [(var[a] + var[b]) / (2 * np.sum((mu[a] - mu[b]) ** 2))
            for a in range(K) for b in range(K) if a != b]
    assert math.isclose(cdnv(H, y), float(np.mean(vals)), rel_tol=1e-10)

    d = ((H[:, None, :] - mu[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(ncc_predict(H, means), d.argmin(1))
    preds = np.random.default_rng(0).integers(0, K, len(y))
    assert math.isclose(nc4(H, y, preds), float(np.mean(preds != d.argmin(1))), rel_tol=1e-12)


def test_nc2_nc3_against_direct_formulas():
    K = 5
    H, y, W = _noisy(N=400, D=9, K=K, seed=9)
    mu = np.stack([H[y == c].mean(0) for c in range(K)])
    Mt = mu - mu.mean(0)
    norms = np.linalg.norm(Mt, axis=1)
    cos = (Mt @ Mt.T) / np.outer(norms, norms)
    off = ~np.eye(K, dtype=bool)
    target = (np.eye(K) - 1.0 / K) / np.sqrt(K - 1)
    G = Mt @ Mt.T
    n2 = nc2(H, y)
    assert math.isclose(n2["equinorm"], norms.std(ddof=1) / norms.mean(), rel_tol=1e-10)
    assert math.isclose(n2["equiangular"], np.mean(np.abs(cos[off] + 1 / (K - 1))), rel_tol=1e-10)
    assert math.isclose(n2["etf_distance"], np.linalg.norm(G / np.linalg.norm(G) - target), rel_tol=1e-10)
    n3 = nc3(H, y, W)
    dual = np.linalg.norm(W / np.linalg.norm(W) - Mt / np.linalg.norm(Mt)) ** 2
    assert math.isclose(n3["duality"], dual, rel_tol=1e-10)
    WM = W @ Mt.T
    assert math.isclose(n3["wm_etf_distance"], np.linalg.norm(WM / np.linalg.norm(WM) - target), rel_tol=1e-10)
    mis = 1 - np.sum(W * Mt, 1) / (np.linalg.norm(W, axis=1) * norms)
    np.testing.assert_allclose(n3["per_class_misalignment"], mis, rtol=1e-10, atol=1e-12)


def test_nc1_decreases_with_within_class_noise():
    rng = np.random.default_rng(10)
    K, D, N = 6, 24, 900
    mu = 3.0 * rng.standard_normal((K, D))
    y = np.arange(N) % K
    E = rng.standard_normal((N, D))
    E -= np.stack([E[y == c].mean(0) for c in range(K)])[y]  # class means stay exactly mu
    vals = [nc1(mu[y] + s * E, y) for s in (1.0, 0.3, 0.1)]
    assert vals[0] > vals[1] > vals[2] > 0
    # with fixed class means NC1 scales exactly with the noise variance
    assert math.isclose(vals[1] / vals[0], 0.09, rel_tol=1e-9)
    assert math.isclose(vals[2] / vals[0], 0.01, rel_tol=1e-9)


def _one_pass_nc1(H, y, K):
    """NC1 with the *naive* one-pass covariance sum(h h^T) - n mu mu^T (float64) -- for contrast."""
    Sw, mus = np.zeros((H.shape[1], H.shape[1])), []
    for c in range(K):
        Hc = H[y == c]
        m = Hc.mean(0)
        mus.append(m)
        Sw += Hc.T @ Hc - len(Hc) * np.outer(m, m)
    Mt = np.stack(mus) - np.mean(mus, axis=0)
    return np.trace(Sw / len(y) @ np.linalg.pinv(Mt.T @ Mt / K, hermitian=True)) / K


@pytest.mark.parametrize("offset", [1e3, 1e5])
def test_float32_large_offset_two_pass(offset):
    rng = np.random.default_rng(11)
    K, D, N = 5, 16, 2000
    y = np.arange(N) % K
    mu = offset + 2.0 * rng.standard_normal((K, D))  # features ~offset, spread ~2, noise 0.5
    H32 = (mu[y] + 0.5 * rng.standard_normal((N, D))).astype(np.float32)
    H64 = H32.astype(np.float64)  # the same numbers, given as float64
    v32, v64 = nc1(H32, y), nc1(H64, y)
    assert v64 > 0
    assert math.isclose(v32, v64, rel_tol=1e-6)
    assert math.isclose(nc1(torch.from_numpy(H32), torch.from_numpy(y)), v64, rel_tol=1e-6)
    assert math.isclose(nc1_pinv_reference(H32, y), v64, rel_tol=1e-8)
    assert math.isclose(nc_metrics(H32, y)["nc1"], v64, rel_tol=1e-6)
    m32, _ = class_means(H32, y)
    m_ref = np.stack([H64[y == c].mean(0) for c in range(K)])
    np.testing.assert_allclose(m32, m_ref, rtol=1e-13)
    # sensitivity checks: the test would catch the naive numerics
    Ht = torch.from_numpy(H32)  # one-pass covariance in float32: far off already at 1e3
    m = Ht.mean(0)
    naive32 = torch.trace(Ht.T @ Ht / N - torch.outer(m, m)).item()
    exact = float(np.trace(np.cov(H64.T, bias=True)))
    assert abs(naive32 - exact) / exact > 1e-4
    if offset >= 1e5:  # one-pass even in float64 loses > 1e-6 relative at this offset
        assert abs(_one_pass_nc1(H64, y, K) - v64) / v64 > 1e-6


def test_torch_and_numpy_inputs_agree():
    H, y, W = _noisy(seed=12)
    a = nc_metrics(H, y, W=W, logits=H @ W.T)
    b = nc_metrics(torch.tensor(H, dtype=torch.float64, requires_grad=True), torch.tensor(y),
                   W=torch.tensor(W), logits=torch.tensor(H @ W.T))
    assert a == b
    means_t, counts_t = class_means(torch.tensor(H), torch.tensor(y))
    assert isinstance(means_t, torch.Tensor) and means_t.dtype == torch.float64
    assert isinstance(ncc_predict(torch.tensor(H), means_t), torch.Tensor)


def test_inputs_are_not_modified():
    H, y, W = _noisy(seed=15)
    for Hin in (H.copy(), torch.tensor(H), torch.tensor(H, dtype=torch.float32)):
        before = Hin.copy() if isinstance(Hin, np.ndarray) else Hin.clone()
        nc_metrics(Hin, y, W=W, logits=H @ W.T)
        nc1(Hin, y)
        nc1_pinv_reference(Hin, y)
        class_means(Hin, y)
        if isinstance(Hin, np.ndarray):
            np.testing.assert_array_equal(Hin, before)
        else:
            assert torch.equal(Hin, before)


def test_global_mean_conventions_and_normalize():
    rng = np.random.default_rng(13)
    K, D = 4, 10
    y_bal = np.repeat(np.arange(K), 50)
    mu = 2.0 * rng.standard_normal((K, D))
    H = mu[y_bal] + rng.standard_normal((len(y_bal), D))
    # balanced classes: class-mean average == sample mean
    assert math.isclose(nc1(H, y_bal), nc1(H, y_bal, global_mean="samples"), rel_tol=1e-10)
    # unbalanced classes: the two conventions differ
    keep = np.concatenate([np.arange(0, 50), np.arange(50, 60), np.arange(100, 200)])
    assert not math.isclose(nc1(H[keep], y_bal[keep]), nc1(H[keep], y_bal[keep], global_mean="samples"),
                            rel_tol=1e-6)
    # normalize=True equals computing on explicitly L2-normalised rows
    Hn = H / np.linalg.norm(H, axis=1, keepdims=True)
    a, b = nc_metrics(H, y_bal, normalize=True), nc_metrics(Hn, y_bal)
    for key in ("nc1", "nc2_equinorm", "nc2_etf", "cdnv"):
        assert math.isclose(a[key], b[key], rel_tol=1e-12)
    assert not math.isclose(a["nc1"], nc_metrics(H, y_bal)["nc1"], rel_tol=1e-3)


# ------------------------------------------------------------------------ validation
def test_bad_inputs_raise_value_error():
    H, y, W = _noisy(N=50, D=6, K=3, seed=14)
    with pytest.raises(ValueError, match=r"y has 49 labels but H has N=50"):
        nc1(H, y[:-1])
    with pytest.raises(ValueError, match=r"label 3 >= num_classes=3"):
        nc1(H, np.where(y == 0, 3, y), num_classes=3)
    with pytest.raises(ValueError, match=r"negative label -1"):
        nc1(H, np.where(y == 0, -1, y))
    with pytest.raises(ValueError, match=r"at least 2 present classes, got 1"):
        nc_metrics(H, np.zeros(50, dtype=int), num_classes=3)
    with pytest.raises(ValueError, match=r"W must have shape \(num_classes, D\) = \(3, 6\), got \(3, 5\)"):
        nc3(H, y, W[:, :5])
    with pytest.raises(ValueError, match=r"H must be 2-D"):
        nc1(H[0], y[:1])
    with pytest.raises(ValueError, match=r"H contains NaN"):
        nc1(np.where(np.arange(6) == 2, np.nan, H), y)
    with pytest.raises(ValueError, match=r"logits must have shape"):
        nc_metrics(H, y, logits=np.zeros((50, 4)))
    with pytest.raises(ValueError, match=r"global_mean must be one of"):
        nc1(H, y, global_mean="all")
    with pytest.raises(ValueError, match=r"y must hold integer labels"):
        nc1(H, y + 0.5)
