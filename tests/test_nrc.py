"""Known-answer tests for nbutils.metrics.nrc (neural-regression-collapse metrics)."""
import math

import numpy as np
import pytest
import torch

from nbutils.metrics.nrc import (
    FeatureStats,
    cka,
    cka_gram,
    deep_nrc,
    feature_stable_rank,
    last_layer_nrc1,
    last_layer_nrc2,
    last_layer_nrc3,
    nrc1,
    nrc2,
    nrc3,
    nrc3_gamma_scan,
    nrc4,
    stable_rank,
    target_stable_rank,
    ufm_optimum,
)


# ----------------------------------------------------------------------------- helpers
pytestmark = pytest.mark.usefixtures("single_thread")


def _orthonormal_rows(rng, k, d):
    """k x d matrix with orthonormal rows."""
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return q.T


def _targets(rng, N=300, n=3, scales=(3.0, 1.0, 0.3), offset=5.0):
    """Anisotropic targets (covariance eigenvalues ~ scales^2) with a non-zero mean."""
    Z = rng.standard_normal((N, n)) * np.asarray(scales[:n])
    R = _orthonormal_rows(rng, n, n)
    return Z @ R + offset


def _isometric(rng, Y, D=12, c=4.0):
    """Centred features H = Y_c A with A A^T = c I (A is n x D)."""
    A = math.sqrt(c) * _orthonormal_rows(rng, Y.shape[1], D)
    return (Y - Y.mean(0)) @ A, A


def _random_orthogonal(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


_SCALAR_KEYS = ("nrc1", "nrc2", "nrc3", "nrc4_mse", "feature_stable_rank", "weight_stable_rank")


# ----------------------------------------------------------------------------- collapse
def test_isometric_image_of_targets_is_fully_collapsed():
    rng = np.random.default_rng(0)
    Y = _targets(rng)
    H, A = _isometric(rng, Y)
    n = Y.shape[1]
    assert abs(nrc1(H, n)) < 1e-10
    assert abs(nrc2(H, Y) - 1.0) < 1e-10
    assert abs(cka(H, Y) - 1.0) < 1e-10
    out = nrc4(H, Y, model_mse=0.5)
    assert abs(out["mse"]) < 1e-10
    assert out["model_mse"] == 0.5 and abs(out["ratio"]) < 1e-9
    # adding a constant offset to the features changes nothing (centring)
    assert abs(nrc1(H + 7.0, n)) < 1e-10 and abs(cka(H + 7.0, Y) - 1.0) < 1e-10


def test_general_linear_image_is_low_rank_but_not_aligned():
    rng = np.random.default_rng(1)
    N, n, D = 300, 3, 12
    Z = rng.standard_normal((N, n)) * np.array([2.0, 1.0, 0.5])
    R = _orthonormal_rows(rng, n, n)
    Y = Z @ R + 1.0  # anisotropic targets, principal directions = rows of R
    A = _orthonormal_rows(rng, n, D)
    # a linear map that shrinks the large target directions and stretches the small one
    B = R.T @ np.diag([0.1, 0.4, 1.0]) @ A
    H = (Y - Y.mean(0)) @ B
    assert abs(nrc1(H, n)) < 1e-10  # still in a 3-dim subspace
    assert abs(nrc4(H, Y)["mse"]) < 1e-10  # and still linearly decodable
    Sy = np.cov(Y.T, bias=True)
    Sh = B.T @ Sy @ B
    expected = np.linalg.norm(Sy @ B) ** 2 / (np.linalg.norm(Sh) * np.linalg.norm(Sy))
    assert abs(cka(H, Y) - expected) < 1e-12
    assert cka(H, Y) < 0.6  # the covariance is distorted: clearly below 1
    # a random B: nrc1 stays 0 while CKA < 1 (any B that is not a scaled isometry)
    Yi = rng.standard_normal((400, n))
    Bi = rng.standard_normal((n, n)) @ A
    Hi = (Yi - Yi.mean(0)) @ Bi
    assert abs(nrc1(Hi, n)) < 1e-10 and cka(Hi, Yi) < 1.0 - 1e-3


def test_noise_fraction_and_explained_variance_known_spectrum():
    # exact construction: +-1 orthogonal design (Hadamard columns, zero mean)
    Had = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], float)
    H = np.vstack([Had, -Had])[:, 1:] * np.array([2.0, 1.0, 1.0])  # Sigma_H = diag(4, 1, 1)
    assert abs(nrc1(H, 1) - 2.0 / 6.0) < 1e-14
    assert abs(feature_stable_rank(H) - (16 + 1 + 1) / 16) < 1e-14
    out = deep_nrc(H, H[:, :1])
    assert np.allclose(out["explained_variance"], [4 / 6, 1 / 6, 1 / 6], atol=1e-14)
    assert out["n"] == 1


def test_rank_r_targets_collapse_to_r_dimensions():
    rng = np.random.default_rng(3)
    N, r, n = 250, 2, 5
    Y = rng.standard_normal((N, r)) @ rng.standard_normal((r, n)) + 1.0
    H, _ = _isometric(rng, Y, D=16)
    assert abs(nrc1(H, r)) < 1e-10
    assert nrc1(H, 1) > 1e-3  # one dimension is not enough
    assert abs(target_stable_rank(Y) - feature_stable_rank(H)) < 1e-10  # isometry keeps spectrum shape
    assert target_stable_rank(Y) < r + 1e-12


def test_nrc3_aligned_and_orthogonal_weights():
    rng = np.random.default_rng(4)
    Y = _targets(rng, N=400)
    D, n = 16, 3
    A = _orthonormal_rows(rng, D, D)  # first n rows: feature subspace, rest: its complement
    H = (Y - Y.mean(0)) @ (2.0 * A[:n]) + 1e-3 * rng.standard_normal((400, D))
    W_aligned = rng.standard_normal((8, n)) @ A[:n]  # out=8 > n, row space = feature subspace
    W_orth = rng.standard_normal((8, n)) @ A[n:2 * n]
    assert abs(nrc3(H, W_aligned, n) - 1.0) < 1e-6
    assert nrc3(H, W_orth, n) < 1e-3
    # partially aligned: two of three directions
    W_mix = np.vstack([A[0], A[1], A[n + 4]])
    assert abs(nrc3(H, W_mix, n) - 2.0 / 3.0) < 1e-4
    # a W with fewer outputs (2) than n is compared on its whole (2-dim) input space,
    # against the top-2 feature directions
    top2 = np.linalg.eigh(np.cov(H.T, bias=True))[1][:, ::-1][:, :2]
    assert abs(nrc3(H, top2.T, n) - 1.0) < 1e-9
    assert abs(nrc3(H, top2.T, 2) - 1.0) < 1e-9


def test_nrc4_matches_lstsq_and_ridge():
    rng = np.random.default_rng(5)
    N, D, n = 200, 7, 2
    H = rng.standard_normal((N, D)) + 3.0
    Y = H @ rng.standard_normal((D, n)) + 0.5 * rng.standard_normal((N, n)) - 2.0
    Hc, Yc = H - H.mean(0), Y - Y.mean(0)
    P = np.linalg.lstsq(Hc, Yc, rcond=None)[0]
    ref = ((Yc - Hc @ P) ** 2).mean()
    assert abs(nrc4(H, Y)["mse"] - ref) < 1e-12
    ridge = 50.0
    Pr = np.linalg.solve(Hc.T @ Hc + ridge * np.eye(D), Hc.T @ Yc)
    ref_r = ((Yc - Hc @ Pr) ** 2).mean()
    out = nrc4(H, Y, model_mse=2 * ref_r, ridge=ridge)
    assert abs(out["mse"] - ref_r) < 1e-12 and ref_r > ref
    assert abs(out["ratio"] - 0.5) < 1e-10
    assert nrc4(H, Y)["ratio"] is None


# ----------------------------------------------------------------------------- invariance
def test_rotation_of_features_and_weight_input_space_changes_nothing():
    rng = np.random.default_rng(6)
    N, D, n = 300, 10, 3
    Y = _targets(rng, N=N)
    H = (Y - Y.mean(0)) @ rng.standard_normal((n, D)) + 0.3 * rng.standard_normal((N, D)) + 2.0
    W = rng.standard_normal((6, D))
    Q = _random_orthogonal(rng, D)
    a = deep_nrc(H, Y, W, model_mse=0.1)
    b = deep_nrc(H @ Q, Y, W @ Q, model_mse=0.1)
    for k in _SCALAR_KEYS + ("nrc4_ratio",):
        assert abs(a[k] - b[k]) <= 1e-9 * max(1.0, abs(a[k])), k
    assert np.allclose(a["explained_variance"], b["explained_variance"], atol=1e-12)
    assert 0.0 < a["nrc1"] < 1.0 and 0.0 < a["nrc2"] < 1.0 and 0.0 < a["nrc3"] < 1.0
    # the authors' first-n-columns variant is NOT rotation invariant
    assert abs(nrc2(H, Y, first_n_columns=True) - nrc2(H @ Q, Y, first_n_columns=True)) > 1e-3
    assert abs(nrc2(H, Y, first_n_columns=True) - cka(H[:, :n], Y)) < 1e-12
    assert abs(a["nrc2_first_n_columns"] - cka(H[:, :n], Y)) < 1e-12


def test_feature_space_cka_equals_gram_cka():
    rng = np.random.default_rng(7)
    N, D, n = 200, 30, 4
    Y = rng.standard_normal((N, n)) @ np.diag([2.0, 1.0, 0.5, 0.1]) + 1.0
    H = np.tanh(Y @ rng.standard_normal((n, D))) + 0.2 * rng.standard_normal((N, D)) + 4.0
    v_feat, v_gram = cka(H, Y), cka_gram(H, Y)
    assert 0.1 < v_feat < 0.99
    assert abs(v_feat - v_gram) < 1e-10
    # torch float32 input gives the same value (computed in float64 either way)
    Ht = torch.tensor(H, dtype=torch.float32)
    assert abs(cka(Ht, Y) - cka_gram(Ht, Y)) < 1e-10
    # scale invariance
    assert abs(cka(3.0 * H, 0.1 * Y) - v_feat) < 1e-12


def test_stable_rank_known_values():
    assert abs(stable_rank(np.diag([3.0, 2.0, 1.0])) - 14.0 / 9.0) < 1e-14
    Q = _random_orthogonal(np.random.default_rng(8), 4)
    assert abs(stable_rank(Q @ np.diag([2.0, 2.0, 0.0, 0.0])) - 2.0) < 1e-12
    assert math.isnan(stable_rank(np.zeros((3, 2))))
    # target stable rank: Sigma_Y = diag(4, 1) -> (16 + 1) / 16
    Y = np.array([[2.0, 1.0], [-2.0, 1.0], [2.0, -1.0], [-2.0, -1.0]])
    assert abs(target_stable_rank(Y) - 17.0 / 16.0) < 1e-14
    assert abs(target_stable_rank(Y[:, 0]) - 1.0) < 1e-14


# ----------------------------------------------------------------------------- streaming
def test_feature_stats_batches_match_deep_nrc():
    rng = np.random.default_rng(9)
    N, D, n = 1000, 20, 3
    Y = _targets(rng, N=N)
    H = np.maximum((Y - Y.mean(0)) @ rng.standard_normal((n, D)) + rng.standard_normal((N, D)), 0) + 1e3
    W = rng.standard_normal((5, D))
    ref = deep_nrc(H, Y, W, model_mse=0.3)
    st = FeatureStats()
    for lo, hi in [(0, 1), (1, 137), (137, 137), (137, 600), (600, 1000)]:  # incl. size 1 and 0
        st.update(torch.tensor(H[lo:hi]), Y[lo:hi])
    assert st.N == N and st.D == D and st.n == n
    got = st.metrics(W, model_mse=0.3)
    for k in _SCALAR_KEYS + ("nrc4_ratio", "nrc2_first_n_columns"):
        assert abs(got[k] - ref[k]) <= 1e-10 * max(1.0, abs(ref[k])), k
    assert np.allclose(got["explained_variance"], ref["explained_variance"], atol=1e-10)
    assert np.allclose(st.mean_H().numpy(), H.mean(0), rtol=1e-13)
    assert np.allclose(st.covariance_H().numpy(), np.cov(H.T, bias=True), rtol=1e-9, atol=1e-9)
    # deep_nrc's entries agree with the stand-alone functions
    assert abs(ref["nrc1"] - nrc1(H, n)) < 1e-12 and abs(ref["nrc3"] - nrc3(H, W, n)) < 1e-12
    assert abs(ref["nrc4_mse"] - nrc4(H, Y)["mse"]) < 1e-12
    assert ref["weight_stable_rank"] == pytest.approx(stable_rank(W), rel=1e-12)


def test_feature_stats_shift_keeps_float32_offset_features_accurate():
    rng = np.random.default_rng(10)
    N, D = 4000, 6
    Y = rng.standard_normal((N, 2))
    H32 = torch.tensor(rng.standard_normal((N, D)) + 3e3, dtype=torch.float32)
    st = FeatureStats()
    for lo in range(0, N, 500):
        st.update(H32[lo:lo + 500], Y[lo:lo + 500])
    H64 = H32.double().numpy()
    ref = np.cov(H64.T, bias=True)
    assert np.abs(st.covariance_H().numpy() - ref).max() < 1e-11


# ----------------------------------------------------------------------------- conv weights
def test_conv_weight_reshape_matches_linear():
    torch.manual_seed(0)
    rng = np.random.default_rng(11)
    C_in, C_out, n = 8, 5, 3
    Y = _targets(rng, N=64)
    H = (Y - Y.mean(0)) @ rng.standard_normal((n, C_in)) + 0.1 * rng.standard_normal((64, C_in))
    conv = torch.nn.Conv2d(C_in, C_out, kernel_size=1, bias=False)
    lin_w = conv.weight.detach()[:, :, 0, 0]
    assert abs(nrc3(H, conv.weight, n) - nrc3(H, lin_w, n)) < 1e-12
    a, b = deep_nrc(H, Y, conv.weight), deep_nrc(H, Y, lin_w)
    assert a["nrc3"] == pytest.approx(b["nrc3"], abs=1e-12)
    assert a["weight_stable_rank"] == pytest.approx(b["weight_stable_rank"], rel=1e-12)
    # caller convention: for a 1x1 conv, pooled output = Linear(lin_w) of the pooled input
    x = torch.randn(4, C_in, 6, 6)
    with torch.no_grad():
        assert torch.allclose(conv(x).mean(dim=(2, 3)), x.mean(dim=(2, 3)) @ lin_w.T, atol=1e-6)
    # k x k conv: input space = C_in; equals a Linear weight with rows W[o, :, i, j]
    conv3 = torch.nn.Conv2d(C_in, 2, kernel_size=3, bias=False)
    rows = conv3.weight.detach().permute(0, 2, 3, 1).reshape(-1, C_in)  # (2*9, C_in)
    assert abs(nrc3(H, conv3.weight, n) - nrc3(H, rows, n)) < 1e-12
    with pytest.raises(ValueError, match="C_in"):
        nrc3(H, torch.zeros(5, C_in + 1, 3, 3), n)


# ----------------------------------------------------------------------------- last layer
def test_last_layer_nrc1_nrc2_collapsed_and_not():
    rng = np.random.default_rng(12)
    Y = _targets(rng, N=300)
    H, A = _isometric(rng, Y, D=10)
    H = H + 0.5 * A.sum(0)  # non-zero mean inside the same subspace
    W = rng.standard_normal((3, 3)) @ A  # row space = feature subspace
    assert abs(last_layer_nrc1(H, 3)) < 1e-10
    assert abs(last_layer_nrc2(H, W)) < 1e-10
    W_rand = rng.standard_normal((3, 10))
    v2 = last_layer_nrc2(H, W_rand)
    assert 0.05 < v2 < 1.0
    Hn = rng.standard_normal((300, 10))
    v1 = last_layer_nrc1(Hn, 3)
    assert 0.3 < v1 < 1.0
    # explicit reference for the definition
    Ht = Hn / np.linalg.norm(Hn, axis=1, keepdims=True)
    Hc = Ht - Ht.mean(0)
    V = np.linalg.eigh(Hc.T @ Hc)[1][:, ::-1][:, :3]
    ref = np.mean(np.sum((Ht - Ht @ V @ V.T) ** 2, axis=1))
    assert abs(v1 - ref) < 1e-12
    Qw = np.linalg.qr(W_rand.T)[0]
    Ht2 = H / np.linalg.norm(H, axis=1, keepdims=True)
    assert abs(v2 - np.mean(np.sum((Ht2 - Ht2 @ Qw @ Qw.T) ** 2, axis=1))) < 1e-12


def test_ufm_closed_form_gives_zero_nrc3_and_is_stationary():
    rng = np.random.default_rng(13)
    Y = _targets(rng, N=500, scales=(2.0, 1.2, 0.8))
    n = Y.shape[1]
    lam_min = np.linalg.eigvalsh(np.cov(Y.T, bias=True)).min()
    num = 101
    gamma = lam_min * 37 / (num - 1)  # a point of the scan grid
    lam_H = 0.7
    lam_W = gamma / lam_H
    opt = ufm_optimum(Y, lam_H, lam_W)
    assert opt["collapse"] and opt["gamma"] == pytest.approx(gamma, rel=1e-15)
    # embed in D > n dims: W = W* R^T with orthonormal R -> same W W^T
    R = _orthonormal_rows(rng, n, 9)
    W = opt["W"] @ R
    assert np.allclose(W @ W.T, opt["WWt"], atol=1e-12)
    assert last_layer_nrc3(W, Y, gamma) < 1e-12
    assert last_layer_nrc3(W, Y, 0.0) > 1e-4  # the wrong gamma is visibly worse
    gammas, values, best = nrc3_gamma_scan(W, Y, num=num)
    assert gammas.shape == (num,) and gammas[-1] == pytest.approx(lam_min, rel=1e-10)
    assert best == pytest.approx(gamma, rel=1e-10)
    assert values.min() < 1e-12
    for i in (0, 10, 37, 90):
        assert abs(values[i] - last_layer_nrc3(W, Y, gammas[i])) < 1e-12
    # the closed form (with its scale) is a stationary point of the UFM loss
    Yt = torch.tensor(Y)
    Wt = torch.tensor(opt["W"], requires_grad=True)
    Ht = torch.tensor(opt["H"], requires_grad=True)
    bt = torch.tensor(opt["b"], requires_grad=True)

    def loss(Wm, Hm, bm):
        N = Yt.shape[0]
        return (0.5 * (Hm @ Wm.T + bm - Yt).square().sum() / N
                + 0.5 * lam_H * Hm.square().sum() / N + 0.5 * lam_W * Wm.square().sum())

    L = loss(Wt, Ht, bt)
    gW, gH, gb = torch.autograd.grad(L, (Wt, Ht, bt))
    assert gW.abs().max() < 1e-10 and gH.abs().max() < 1e-10 and gb.abs().max() < 1e-10
    # ... and a minimum along random directions (in particular the scale direction)
    with torch.no_grad():
        for eps_ in (1e-2, -1e-2):
            assert loss(Wt * (1 + eps_), Ht, bt) > L and loss(Wt, Ht * (1 + eps_), bt) > L


def test_ufm_no_collapse_when_regularisation_too_strong():
    rng = np.random.default_rng(14)
    Y = _targets(rng, N=300, scales=(2.0, 1.0, 0.2))
    sig = np.linalg.eigvalsh(np.cov(Y.T, bias=True))
    lam = math.sqrt(sig[1])  # gamma = lambda_H lambda_W = sig[1]: smallest two directions dropped
    opt = ufm_optimum(torch.tensor(Y), lam, lam)
    assert isinstance(opt["WWt"], torch.Tensor) and not opt["collapse"]
    assert np.linalg.matrix_rank(opt["WWt"].numpy(), tol=1e-10) == 1
    big = ufm_optimum(Y, 10.0, 10.0)
    assert np.abs(big["WWt"]).max() == 0.0 and np.abs(big["H"]).max() == 0.0


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_errors():
    rng = np.random.default_rng(15)
    H, Y, W = rng.standard_normal((20, 5)), rng.standard_normal((20, 2)), rng.standard_normal((3, 5))
    with pytest.raises(ValueError, match="N=20"):
        deep_nrc(H, Y[:19], W)
    with pytest.raises(ValueError, match="N=20"):
        cka(H, Y[:-1])
    with pytest.raises(ValueError, match="n <= D=5"):
        nrc1(H, 6)
    with pytest.raises(ValueError, match="n <= D=5"):
        nrc3(H, W, 6)
    with pytest.raises(ValueError, match="n <= D=3"):
        deep_nrc(H[:, :3], rng.standard_normal((20, 4)))
    with pytest.raises(ValueError, match="input dimension D=5"):
        nrc3(H, rng.standard_normal((3, 4)), 2)
    with pytest.raises(ValueError, match="input dimension D=5"):
        deep_nrc(H, Y, rng.standard_normal((5, 3)))
    with pytest.raises(ValueError, match="2-D"):
        nrc1(H[:, 0], 1)
    with pytest.raises(ValueError, match="NaN"):
        nrc1(np.where(np.arange(5) == 2, np.nan, H), 2)
    with pytest.raises(ValueError, match="ridge"):
        nrc4(H, Y, ridge=-1.0)
    with pytest.raises(ValueError, match="shape \\(n, D\\)"):
        last_layer_nrc3(rng.standard_normal((3, 5)), Y, 0.1)  # 3 rows but n=2
    with pytest.raises(ValueError, match="gamma"):
        last_layer_nrc3(W[:2], Y, -0.1)
    with pytest.raises(ValueError, match="lambda_W"):
        ufm_optimum(Y, 1.0, 0.0)
    st = FeatureStats()
    with pytest.raises(ValueError, match="empty"):
        st.metrics()
    st.update(H, Y)
    with pytest.raises(ValueError, match="D=5"):
        st.update(H[:, :4], Y)
    with pytest.raises(ValueError, match="n=2"):
        st.update(H, Y[:, :1])
