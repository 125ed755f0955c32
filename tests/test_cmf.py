"""The CMF head (paper A's class-mean-feature classifier), its pre-stage and the CMF unlearning variants."""
import copy

import pytest
import torch
import torch.nn.functional as F

from nbutils import cmf, train, unlearn
from nbutils.metrics import nc


def _etf(K: int, D: int, seed: int = 0) -> torch.Tensor:
    """K unit vectors of a simplex ETF embedded in R^D by a random orthonormal map."""
    g = torch.Generator().manual_seed(seed)
    M = torch.eye(K, dtype=torch.float64) - 1.0 / K
    Q, _ = torch.linalg.qr(torch.randn(D, K, generator=g, dtype=torch.float64))
    return F.normalize(M @ Q.T, dim=1)


@pytest.mark.parametrize("average", cmf.AVERAGES)
def test_cmf_head_of_simplex_etf_features_classifies_perfectly(average):
    K, D = 6, 16
    E = _etf(K, D) * 3 + 5.0 / D ** 0.5  # a common offset: centring must remove it
    y = torch.arange(K).repeat(30)
    H = E[y] * (1 + 0.2 * torch.rand(len(y), 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    head = cmf.CMFHead(D, K, average=average)
    head.set_from_features(H, y)
    assert torch.equal(head(H.float()).argmax(1), y)
    W = head.weight.double()
    assert torch.allclose(W.norm(dim=1), torch.ones(K, dtype=torch.float64), atol=1e-6)  # unit rows
    # centred: w_c is parallel to m_c - mu with mu the mean of all samples, so sum_c n_c (m_c - mu) = 0
    Zs = F.normalize(H, dim=1) if average == "normalized" else H
    m = torch.stack([Zs[y == c].mean(0) for c in range(K)])
    assert torch.allclose(head.mu.double(), Zs.mean(0), atol=1e-6)
    assert torch.allclose(W, F.normalize(m - Zs.mean(0), dim=1), atol=1e-6)
    assert torch.allclose((m - Zs.mean(0)).sum(0), torch.zeros(D, dtype=torch.float64), atol=1e-12)
    # by construction the classifier is aligned with the (normalised, centred) class means: NC3 misalignment 0
    mis = nc.nc3(Zs, y, W, K, global_mean="samples")["per_class_misalignment"]
    assert float(mis.abs().max()) < 1e-6


def test_recompute_is_invariant_to_the_order_of_the_data_and_absent_classes_get_zero_rows():
    g = torch.Generator().manual_seed(0)
    H = torch.randn(500, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (500,), generator=g)  # class 4 of 5 absent
    a, b = cmf.CMFHead(8, 5), cmf.CMFHead(8, 5)
    a.set_from_features(H, y)
    p = torch.randperm(500, generator=g)
    b.set_from_features(H[p], y[p])
    assert torch.allclose(a.weight, b.weight, atol=1e-6, rtol=0) and torch.allclose(a.mu, b.mu, atol=1e-6, rtol=0)
    assert torch.equal(a.weight[4], torch.zeros(8))


def test_gradients_reach_the_features_never_w_or_mu():
    head = cmf.CMFHead(8, 3)
    head.set_from_features(torch.randn(30, 8, dtype=torch.float64), torch.arange(3).repeat(10))
    assert list(head.parameters()) == [] and {n for n, _ in head.named_buffers()} == {"weight", "mu"}
    W0, mu0 = head.weight.clone(), head.mu.clone()
    h = torch.randn(5, 8, requires_grad=True)
    F.cross_entropy(head(h), torch.tensor([0, 1, 2, 0, 1])).backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert head.weight.grad is None and head.mu.grad is None and not head.weight.requires_grad
    torch.optim.SGD([h], lr=1.0).step()
    assert torch.equal(head.weight, W0) and torch.equal(head.mu, mu0)


def test_bad_head_settings_fail_clearly():
    with pytest.raises(ValueError, match="average"):
        cmf.CMFHead(4, 3, average="mean")
    with pytest.raises(ValueError, match="temperature"):
        cmf.CMFHead(4, 3, temperature=0)
    with pytest.raises(RuntimeError, match="bind"):
        cmf.CMFHead(4, 3).recompute(None)
    with pytest.raises(ValueError, match="shape"):
        cmf.CMFHead(4, 3).set_from_features(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))


@pytest.fixture(scope="module")
def setup(smoke_original):
    cfg, ds, sp, orig = smoke_original
    model, info = cmf.prestage(cfg, ds, sp, orig.model, original_key=orig.path.name)
    return cfg, ds, sp, orig, model, info


def test_prestage_binds_to_the_training_set_recomputes_and_caches(setup):
    cfg, ds, sp, orig, model, info = setup
    assert isinstance(model.head, cmf.CMFHead) and not info["cached"]
    acc = train.accuracy(model, ds.test, sp.test)
    assert acc > 0.5, acc
    # the head equals a fresh recomputation on split.train with the final encoder
    fresh = copy.deepcopy(model.head)
    fresh.recompute(model)
    assert torch.allclose(fresh.weight, model.head.weight, atol=1e-6)
    # deepcopy shares the data store, not a copy of it
    assert copy.deepcopy(model).head._source[0] is ds.train
    # cached (per test, results go to a fresh directory: run it twice here)
    first, info1 = cmf.prestage(cfg, ds, sp, orig.model, original_key=orig.path.name)
    again, info2 = cmf.prestage(cfg, ds, sp, orig.model, original_key=orig.path.name)
    assert not info1["cached"] and info2["cached"] and all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("method", cmf.CMF_METHODS)
def test_each_cmf_variant_runs_moves_the_encoder_and_recomputes_w(setup, method):
    cfg, ds, sp, orig, model, info = setup
    calls = []
    real = cmf.CMFHead.recompute

    def spy(self, m):
        calls.append(1)
        return real(self, m)
    mp = pytest.MonkeyPatch()
    mp.setattr(cmf.CMFHead, "recompute", spy)
    try:
        res = unlearn.unlearn(method, cfg, ds, sp, model, head_name="cmf", cache=False,
                              hparams=cmf.CMF_HPARAMS["smoke"][method])
    finally:
        mp.undo()
    assert isinstance(res.model.head, cmf.CMFHead)
    assert len(calls) >= 2  # before the epoch(s) and once at the end
    fresh = copy.deepcopy(res.model.head)
    fresh.recompute(res.model)
    assert torch.allclose(fresh.weight, res.model.head.weight, atol=1e-6)  # W is that of the final encoder
    # with a CMF head only the encoder can move (paper A's point): it did, and W followed it
    moved = [n for (n, a), b in zip(res.model.encoder.state_dict().items(), model.encoder.state_dict().values())
             if a.dtype.is_floating_point and not torch.equal(a, b)]
    assert moved and not torch.equal(res.model.head.weight, model.head.weight)
