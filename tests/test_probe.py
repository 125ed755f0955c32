"""Known-answer tests for nbutils.metrics.probe (linear probes, NCC, layer-wise probes)."""
import math

import numpy as np
import pytest
import torch

import nbutils.models as models
from nbutils.data import ImageStore
from nbutils.metrics import probe as P
from nbutils.metrics.probe import (
    layerwise_probe,
    logistic_probe,
    ncc_accuracy,
    probe_accuracy,
    ridge_direct,
    ridge_path,
    sgd_probe,
    standardize,
)


pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------- data
def _blocks(n_per, K=6, width=3, noise=0.05, seed=0):
    """Class c lights up its own block of `width` features (value 1) plus small Gaussian noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per)
    X = np.zeros((y.size, K * width))
    for c in range(K):
        X[y == c, c * width:(c + 1) * width] = 1.0
    X += noise * rng.standard_normal(X.shape)
    perm = rng.permutation(y.size)
    return X[perm], y[perm]


def _blobs(n, K=4, D=8, sep=6.0, seed=0):
    """Gaussian blobs (unit covariance) with class means `sep` apart along orthogonal axes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    mu = np.zeros((K, D))
    mu[np.arange(K), np.arange(K)] = sep
    return mu[y] + rng.standard_normal((n, D)) + 3.0, y  # common offset: intercept must handle it


# ----------------------------------------------------------------------------- standardize
def test_standardize_uses_training_statistics_and_handles_constant_columns():
    rng = np.random.default_rng(0)
    Xtr = rng.normal(5.0, 3.0, (200, 4))
    Xtr[:, 2] = 7.0  # constant column -> std 1, maps to 0
    Xte = rng.normal(0.0, 1.0, (30, 4))
    (Ztr, Zte), (m, s) = standardize(Xtr, Xte)
    np.testing.assert_allclose(m, Xtr.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s[[0, 1, 3]], Xtr.std(0)[[0, 1, 3]], rtol=1e-12)
    assert s[2] == 1.0 and np.all(Ztr[:, 2] == 0)
    np.testing.assert_allclose(Ztr[:, [0, 1, 3]].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Ztr[:, [0, 1, 3]].std(0), 1, rtol=1e-12)
    np.testing.assert_allclose(Zte, (Xte - m) / s, rtol=1e-12)
    (Zt,), (mt, _) = standardize(torch.tensor(Xtr, dtype=torch.float32))
    assert isinstance(Zt, torch.Tensor) and Zt.dtype == torch.float64 and isinstance(mt, torch.Tensor)


# ----------------------------------------------------------------------------- separable data
@pytest.mark.parametrize("method, kw", [("logistic", {}), ("ridge", {}),
                                        ("sgd", {"lr": 0.2})])  # 216 samples: 2 steps/epoch
def test_separable_features_give_perfect_probes_and_correct_split(method, kw):
    K, fc = 6, (1, 4)
    Xtr, ytr = _blocks(40, K=K, seed=0)
    Xte, yte = _blocks(15, K=K, seed=1)
    r = probe_accuracy(Xtr, ytr, Xte, yte, fc, K, method=method, seed=0, **kw)
    assert r["retain_test"] == 1.0 and r["forget_test"] == 1.0 and r["test"] == 1.0
    assert r["val_acc"] == 1.0 and r["method"] == method and r["seconds"] >= 0
    assert r["n_forget_test"] == 2 * 15 and r["n_retain_test"] == 4 * 15
    assert r["n_train"] + r["n_val"] == len(ytr) and r["n_val"] == K * 4  # round(0.1 * 40) per class

    # corrupt the forget-class test features (moved onto class 0's block): forget_test must drop
    # to 0 while retain_test stays 1 -- the two subsets are reported separately.
    Xbad = Xte.copy()
    f = np.isin(yte, fc)
    Xbad[f] = 0.0
    Xbad[f, 0:3] = 1.0
    r2 = probe_accuracy(Xtr, ytr, Xbad, yte, fc, K, method=method, **kw)
    assert r2["retain_test"] == 1.0 and r2["forget_test"] == 0.0
    assert r2["test"] == pytest.approx(4 / 6)

    r3 = probe_accuracy(Xtr, ytr, Xte, yte, (), K, method=method, **kw)
    assert math.isnan(r3["forget_test"]) and r3["retain_test"] == r3["test"] == 1.0


def test_probe_objects_perfect_on_separable_data_torch_and_numpy():
    K = 6
    Xtr, ytr = _blocks(40, K=K, seed=2)
    Xva, yva = _blocks(5, K=K, seed=3)
    Xte, yte = _blocks(20, K=K, seed=4)
    lp = logistic_probe(torch.tensor(Xtr, dtype=torch.float32), torch.tensor(ytr), K)
    rp = ridge_path(Xtr, ytr, Xva, yva, K)
    for p in (lp, rp):
        assert p.accuracy(Xte, yte) == 1.0
        assert p.W.shape == (K * 3, K) and p.b.shape == (K,)
        pt = p.predict(torch.tensor(Xte))
        assert isinstance(pt, torch.Tensor) and pt.dtype == torch.int64
        assert isinstance(p.predict(Xte), np.ndarray)
        np.testing.assert_allclose(p.decision_function(Xte), Xte @ p.W.numpy() + p.b.numpy(), rtol=1e-12)
    assert rp.val_acc.shape == rp.alphas.shape == (15,)


# ----------------------------------------------------------------------------- agreement
def test_ridge_and_logistic_agree_on_well_separated_blobs():
    K = 4
    Xtr, ytr = _blobs(1200, K=K, seed=0)
    Xva, yva = _blobs(200, K=K, seed=1)
    Xte, yte = _blobs(1000, K=K, seed=2)
    (Ztr, Zva, Zte), _ = standardize(Xtr, Xva, Xte)
    rp = ridge_path(Ztr, ytr, Zva, yva, K)
    lp = logistic_probe(Xtr, ytr, K, Xva, yva)
    assert set(lp.val_acc) == set(P.LOGISTIC_L2_GRID) and lp.l2 in P.LOGISTIC_L2_GRID
    acc_r, acc_l = rp.accuracy(Zte, yte), lp.accuracy(Xte, yte)
    assert acc_r >= 0.95 and acc_l >= 0.95
    agree = np.mean(rp.predict(Zte) == lp.predict(Xte))
    assert agree >= 0.95
    # the authors' SGD probe lands in the same place
    sp = sgd_probe(Xtr, ytr, K, Xva, yva, epochs=5)
    assert sp.accuracy(Xte, yte) >= 0.95 and 1 <= sp.best_epoch <= 5 and len(sp.val_acc) == 5


def test_logistic_probe_reaches_the_optimum():
    """At the returned solution the gradient of the penalised loss is ~0 (in standardized space)."""
    K = 3
    Xtr, ytr = _blobs(400, K=K, D=5, sep=2.0, seed=5)
    l2 = 1e-2
    p = logistic_probe(Xtr, ytr, K, l2=l2, tol=1e-9, max_iter=500)
    (Z,), (m, s) = standardize(Xtr)
    Wz = torch.tensor(p.W.numpy() * s[:, None], requires_grad=True)  # back to standardized space
    bz = (p.b + torch.tensor(m) @ p.W).clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(torch.tensor(Z) @ Wz + bz, torch.tensor(ytr)) \
        + 0.5 * l2 * Wz.square().sum()
    loss.backward()
    assert float(Wz.grad.abs().max()) < 1e-6 and float(bz.grad.abs().max()) < 1e-6
    assert p.loss == pytest.approx(float(loss.detach()), rel=1e-9)


# ----------------------------------------------------------------------------- ridge path
def test_ridge_path_equals_direct_solve_for_every_alpha():
    rng = np.random.default_rng(0)
    N, D, K = 300, 12, 5
    A = rng.standard_normal((D, D))
    X = rng.standard_normal((N, D)) @ A + 2.0  # correlated features, common offset
    X[:, 3] = X[:, 2] + 1e-3 * rng.standard_normal(N)  # nearly collinear pair
    y = rng.integers(0, K, N)
    Xv, yv = X[:50] + 0.1, y[:50]
    alphas = np.logspace(-4, 3, 15)
    rp = ridge_path(X, y, Xv, yv, K, alphas=alphas, keep_path=True)
    assert rp.coefs.shape == (15, D, K) and rp.intercepts.shape == (15, K)
    for i, a in enumerate(alphas):
        W, b = ridge_direct(X, y, a, num_classes=K)
        scale = max(1.0, float(W.abs().max()))
        assert float((rp.coefs[i] - W).abs().max()) <= 1e-8 * scale, a
        assert float((rp.intercepts[i] - b).abs().max()) <= 1e-8 * max(1.0, float(b.abs().max())), a
        # the path's validation accuracy of this alpha is that of the direct solution
        acc = np.mean((Xv @ W.numpy() + b.numpy()).argmax(1) == yv)
        assert rp.val_acc[i] == pytest.approx(acc)
    best = rp.alphas[np.flatnonzero(rp.val_acc == rp.val_acc.max())[-1]]
    assert rp.alpha == best
    W, b = ridge_direct(X, y, rp.alpha, num_classes=K)
    torch.testing.assert_close(rp.W, W, rtol=0, atol=1e-8 * max(1.0, float(W.abs().max())))


def test_ridge_direct_against_normal_equations_with_intercept():
    """Independent check: solve [X 1] with an unpenalised intercept via the augmented system."""
    rng = np.random.default_rng(1)
    N, D, K, a = 80, 6, 3, 0.3
    X = rng.standard_normal((N, D)) + 1.5
    Y = rng.standard_normal((N, K))
    Xa = np.hstack([X, np.ones((N, 1))])
    R = np.diag([a * N] * D + [0.0])  # penalty on W only; (1/N)||.||^2 + a||W||^2 scaled by N
    theta = np.linalg.solve(Xa.T @ Xa + R, Xa.T @ Y)
    W, b = ridge_direct(X, Y, a)
    np.testing.assert_allclose(W.numpy(), theta[:D], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.numpy(), theta[D], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- NCC
def test_ncc_equals_brute_force_and_splits_forget_classes():
    rng = np.random.default_rng(0)
    K, D, fc = 5, 7, (0, 3)
    ytr = rng.integers(0, K, 300)
    mu = rng.standard_normal((K, D))
    Xtr = mu[ytr] + 0.9 * rng.standard_normal((300, D))
    yte = rng.integers(0, K, 200)
    Xte = mu[yte] + 0.9 * rng.standard_normal((200, D))
    means = np.stack([Xtr[ytr == c].mean(0) for c in range(K)])

    def brute(Xa, means):
        out = []
        for h in Xa:
            d = [np.sum((h - m_) ** 2) for m_ in means]
            out.append(int(np.argmin(d)))
        return np.array(out)

    pred = brute(Xte, means)
    f = np.isin(yte, fc)
    r = ncc_accuracy(Xtr, ytr, Xte, yte, fc, K)
    assert 0.3 < r["test"] < 1.0  # non-trivial: some errors, well above chance
    assert r["test"] == pytest.approx(np.mean(pred == yte))
    assert r["forget_test"] == pytest.approx(np.mean(pred[f] == yte[f]))
    assert r["retain_test"] == pytest.approx(np.mean(pred[~f] == yte[~f]))
    assert r["n_forget_test"] == f.sum() and r["method"] == "ncc"

    # normalize=True: brute force on L2-normalised rows
    nrm = lambda A: A / np.linalg.norm(A, axis=1, keepdims=True)  # noqa: E731
    mn = np.stack([nrm(Xtr)[ytr == c].mean(0) for c in range(K)])
    predn = brute(nrm(Xte), mn)
    rn = ncc_accuracy(Xtr, ytr, Xte, yte, fc, K, normalize=True)
    assert rn["forget_test"] == pytest.approx(np.mean(predn[f] == yte[f]))
    assert rn["retain_test"] == pytest.approx(np.mean(predn[~f] == yte[~f]))

    # a class absent from training (all its samples forgotten) is never predicted
    keep = ytr != 2
    pred_abs = brute(Xte, np.delete(means, 2, axis=0))
    pred_abs = np.where(pred_abs >= 2, pred_abs + 1, pred_abs)
    ra = ncc_accuracy(Xtr[keep], ytr[keep], Xte, yte, fc, K)
    assert ra["test"] == pytest.approx(np.mean(pred_abs == yte))


# ----------------------------------------------------------------------------- chance level
@pytest.mark.parametrize("method", ["logistic", "ridge"])
def test_uninformative_features_stay_near_chance(method):
    rng = np.random.default_rng(3)
    K, D = 10, 32
    Xtr, ytr = rng.standard_normal((4000, D)), rng.integers(0, K, 4000)
    Xte, yte = rng.standard_normal((2000, D)), rng.integers(0, K, 2000)
    r = probe_accuracy(Xtr, ytr, Xte, yte, (0,), K, method=method)
    assert r["test"] <= 0.30 and r["retain_test"] <= 0.30
    assert r["test"] >= 0.05  # and not systematically below chance either


# ----------------------------------------------------------------------------- layer-wise
def _tiny_stores(n_train=60, n_test=30, seed=0):
    g = np.random.default_rng(seed)
    mk = lambda n: ImageStore(g.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8),  # noqa: E731
                              np.arange(n) % 10, mean=[0.5], std=[0.25])
    return mk(n_train), mk(n_test)


def test_layerwise_probe_one_result_per_layer_one_extraction_per_split(monkeypatch):
    torch.manual_seed(0)
    model = models.build_model("resnet18", 10, width=2, in_channels=1)
    st_tr, st_te = _tiny_stores()
    calls = []
    real = models.extract

    def counting(model_, store, idx, layers=("encoder",), **kw):
        calls.append((store, tuple(layers)))
        return real(model_, store, idx, layers=layers, **kw)

    monkeypatch.setattr(models, "extract", counting)
    layers = ["encoder.layer1", "encoder.layer3", "encoder"]
    res = layerwise_probe(model, st_tr, torch.arange(len(st_tr)), st_te, torch.arange(len(st_te)),
                          layers, forget_classes=[0], num_classes=10, method="ridge")
    assert list(res) == layers
    assert len(calls) == 2 and calls[0][0] is st_tr and calls[1][0] is st_te
    assert all(c[1] == tuple(layers) for c in calls)
    assert [res[n]["dim"] for n in layers] == [2, 8, 16]  # width * 2**stage channels
    for r in res.values():
        assert r["method"] == "ridge" and 0 <= r["retain_test"] <= 1 and 0 <= r["forget_test"] <= 1
        assert r["n_forget_test"] == 3 and r["n_retain_test"] == 27 and r["n_val"] == 10
        assert r["extract_seconds"] >= 0

    calls.clear()
    res2 = layerwise_probe(model, st_tr, torch.arange(len(st_tr)), st_te, torch.arange(len(st_te)),
                           ["encoder"], [0], 10, method="ncc")
    assert len(calls) == 2 and res2["encoder"]["method"] == "ncc"


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_errors_naming_the_argument():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((50, 4)), np.arange(50) % 5
    Xt, yt = rng.standard_normal((20, 4)), np.arange(20) % 5
    with pytest.raises(ValueError, match="features_train must be 2-D"):
        probe_accuracy(X[:, 0], y, Xt, yt, [0], 5)
    with pytest.raises(ValueError, match="y_train has 49 labels"):
        probe_accuracy(X, y[:49], Xt, yt, [0], 5)
    with pytest.raises(ValueError, match="y_train contains label 7"):
        probe_accuracy(X, np.where(y == 4, 7, y), Xt, yt, [0], 5)
    with pytest.raises(ValueError, match="y_test contains label -1"):
        probe_accuracy(X, y, Xt, yt - 1, [0], 5)
    with pytest.raises(ValueError, match="features_train is empty"):
        probe_accuracy(X[:0], y[:0], Xt, yt, [0], 5)
    with pytest.raises(ValueError, match="features_test has D=3"):
        probe_accuracy(X, y, Xt[:, :3], yt, [0], 5)
    with pytest.raises(ValueError, match="forget_classes"):
        probe_accuracy(X, y, Xt, yt, [5], 5)
    with pytest.raises(ValueError, match="num_classes"):
        probe_accuracy(X, y, Xt, yt, [0], 1)
    with pytest.raises(ValueError, match="method"):
        probe_accuracy(X, y, Xt, yt, [0], 5, method="svm")
    with pytest.raises(ValueError, match="val_fraction"):
        probe_accuracy(X, y, Xt, yt, [0], 5, val_fraction=1.0)
    with pytest.raises(ValueError, match="val_fraction"):
        probe_accuracy(X[:5], y[:5], Xt, yt, [0], 5)  # one sample per class: empty validation set
    with pytest.raises(ValueError, match="features_train contains NaN"):
        probe_accuracy(np.where(X > 2, np.nan, X), y, Xt, yt, [0], 5)
    with pytest.raises(ValueError, match="alphas"):
        ridge_path(X, y, Xt, yt, 5, alphas=[1.0, 0.0])
    with pytest.raises(ValueError, match="X_val has D=3"):
        ridge_path(X, y, Xt[:, :3], yt, 5)
    with pytest.raises(ValueError, match="alpha"):
        ridge_direct(X, y, -1.0)
    with pytest.raises(ValueError, match="l2"):
        logistic_probe(X, y, 5, l2=-1.0)
    with pytest.raises(ValueError, match="X_val and y_val"):
        logistic_probe(X, y, 5, X_val=Xt)
    with pytest.raises(ValueError, match="epochs"):
        sgd_probe(X, y, 5, epochs=0)
    with pytest.raises(ValueError, match="y_train must hold integer labels"):
        ncc_accuracy(X, y + 0.5, Xt, yt, [0], 5)
    with pytest.raises(ValueError, match="layers"):
        layerwise_probe(None, None, torch.arange(3), None, torch.arange(3), [], [0], 10)
