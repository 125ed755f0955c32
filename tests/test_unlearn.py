"""Every unlearning method under the smoke profile: runs, is deterministic, forgets; plus the invariants
the paper's methods rely on (SalUn's mask, classifier-only, SVD without gradients, random labels)."""
import pytest
import torch

from nbutils import data, train, unlearn
from nbutils.metrics.mia import mia_efficacy
from nbutils.metrics.output import output_metrics
from nbutils.unlearn.base import random_relabeler
from nbutils.unlearn.finetune import saliency_mask


@pytest.fixture(scope="module")
def setup(smoke_original):
    return smoke_original


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("method", sorted(unlearn.METHODS))
def test_method_runs_is_deterministic_and_forgets(setup, method):
    cfg, ds, sp, orig = setup
    before = output_metrics(orig.model, ds, sp)["forget_test"]
    r1 = unlearn.unlearn(method, cfg, ds, sp, orig.model, cache=False)
    r2 = unlearn.unlearn(method, cfg, ds, sp, orig.model, cache=False)
    assert _same(r1.model, r2.model), "same seed must give the same model"
    after = output_metrics(r1.model, ds, sp)
    assert after["forget_test"] < before, (method, before, after)
    assert r1.seconds > 0 and r1.model.head.out_features == ds.num_classes
    assert not any(m.training for m in r1.model.modules())  # returned in eval mode
    assert all(p.requires_grad for p in r1.model.parameters())


def test_salun_masked_weights_stay_bit_identical(setup):
    cfg, ds, sp, orig = setup
    probe = unlearn.unlearn("rl", cfg, ds, sp, orig.model, cache=False, track=False)  # any copy for the mask
    params = dict(orig.model.named_parameters())
    mask = saliency_mask(orig.model, ds.train, sp.forget, list(params.values()), 0.5)
    names = {p: n for n, p in params.items()}
    r = unlearn.unlearn("salun", cfg, ds, sp, orig.model, cache=False)
    new = dict(r.model.named_parameters())
    frac = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert 0.45 < frac < 0.55
    moved = 0
    for p, m in mask.items():
        n = names[p]
        assert torch.equal(new[n][~m], p[~m]), n  # masked-out: bit-identical to the original
        moved += int((new[n][m] != p[m]).sum())
    assert moved > 0 and not _same(probe.model, r.model)


@pytest.mark.parametrize("method", ["rl", "scrub", "svd", "boundary_expand", "unsir"])
def test_classifier_only_touches_only_the_head(setup, method):
    cfg, ds, sp, orig = setup
    r = unlearn.unlearn(method, cfg, ds, sp, orig.model, classifier_only=True, cache=False)
    o, n = orig.model.state_dict(), r.model.state_dict()
    for k in o:
        if k.startswith("head."):
            continue
        assert torch.equal(o[k], n[k]), k  # weights and BatchNorm running statistics alike
    assert not torch.equal(o["head.weight"], n["head.weight"])
    if method != "svd":  # a projection of the head alone is not expected to forget (notebook 19, exercise 2)
        assert output_metrics(r.model, ds, sp)["forget_test"] <= 0.2


def test_svd_takes_no_gradient_step(setup, monkeypatch):
    cfg, ds, sp, orig = setup

    def forbidden(*a, **k):
        raise AssertionError("SVD must not train")

    monkeypatch.setattr(train, "fit", forbidden)
    monkeypatch.setattr(torch.optim, "SGD", forbidden)
    r = unlearn.unlearn("svd", cfg, ds, sp, orig.model, cache=False)
    assert not _same(r.model, orig.model)
    assert all(p.grad is None for p in r.model.parameters())


def test_random_labels_never_hit_a_forget_class():
    mask = torch.zeros(500, dtype=torch.bool)
    mask[:200] = True
    y = torch.randint(0, 10, (500,))
    y[:200] = torch.tensor([2, 7]).repeat(100)
    relabel = random_relabeler(10, [2, 7], mask)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        new = relabel(torch.arange(500), y, g)
        assert not set(new[:200].tolist()) & {2, 7}
        assert torch.equal(new[200:], y[200:])  # retain labels untouched
        seen |= set(new[:200].tolist())
    assert seen == set(range(10)) - {2, 7}
    # random-sample forgetting: any label but the sample's own
    new = random_relabeler(10, [], mask)(torch.arange(500), y, g)
    assert (new[:200] != y[:200]).all() and torch.equal(new[200:], y[200:])


def test_bad_parameters_fail_clearly(setup):
    cfg, ds, sp, orig = setup
    with pytest.raises(ValueError, match="unknown unlearning method 'forget_me'"):
        unlearn.unlearn("forget_me", cfg, ds, sp, orig.model)
    with pytest.raises(ValueError, match="lr=-0.1 of 'rl' must be > 0"):
        unlearn.unlearn("rl", cfg, ds, sp, orig.model, hparams={"lr": -0.1})
    with pytest.raises(ValueError, match="unknown hyper-parameter 'lrr'"):
        unlearn.unlearn("rl", cfg, ds, sp, orig.model, hparams={"lrr": 0.1})
    with pytest.raises(ValueError, match="not in dataset 'digits'"):
        data.make_split(ds, forget_classes=[11])
    empty = data.make_split(ds, forget_classes=[3], seed=0)
    empty.forget = empty.forget[:0]
    with pytest.raises(ValueError, match="forget set is empty"):
        unlearn.unlearn("rl", cfg, ds, empty, orig.model)


def test_results_are_cached(setup):
    cfg, ds, sp, orig = setup
    a = unlearn.unlearn("ga", cfg, ds, sp, orig.model, original_key=orig.path.name)
    b = unlearn.unlearn("ga", cfg, ds, sp, orig.model, original_key=orig.path.name)
    assert not a.cached and b.cached and _same(a.model, b.model) and a.seconds == b.seconds
    assert len(b.history) == unlearn.method_hparams("smoke", "ga")["epochs"]
    assert {"retain_test_acc", "forget_test_acc"} <= set(b.history[0])


def test_mia_efficacy_separates_retrained_from_original(setup):
    cfg, ds, sp, orig = setup
    r = unlearn.unlearn("retrain", cfg, ds, sp, orig.model, cache=False)
    m_orig, m_re = mia_efficacy(orig.model, ds, sp), mia_efficacy(r.model, ds, sp)
    assert 0 <= m_orig["mia_efficacy"] <= 1 and m_orig["n_members"] == m_orig["n_nonmembers"]
    assert m_re["mia_efficacy"] >= m_orig["mia_efficacy"]
    assert mia_efficacy(orig.model, ds, sp) == m_orig  # seeded subsampling: same numbers twice


@pytest.mark.parametrize("method", ["rl", "scrub", "neggrad_plus"])
def test_classifier_only_on_cached_features_equals_the_full_network(setup, method):
    """Under classifier-only the encoder is frozen with BatchNorm in eval mode: running the method on the
    cached features gives the same head as running it through the whole network (to float rounding)."""
    cfg, ds, sp, orig = setup
    fast = unlearn.unlearn(method, cfg, ds, sp, orig.model, classifier_only=True, cache=False)
    full = unlearn.unlearn(method, cfg, ds, sp, orig.model, classifier_only=True, cache=False, frozen_features=False)
    assert torch.allclose(fast.model.head.weight, full.model.head.weight, atol=1e-4, rtol=1e-3)
    assert torch.allclose(fast.model.head.bias, full.model.head.bias, atol=1e-4, rtol=1e-3)
    assert _same(fast.model.encoder, orig.model.encoder)
    assert [round(h["forget_test_acc"], 6) for h in fast.history] == [round(h["forget_test_acc"], 6) for h in full.history]
    with pytest.raises(ValueError, match="frozen_features"):
        unlearn.unlearn("unsir", cfg, ds, sp, orig.model, classifier_only=True, cache=False, frozen_features=True)
