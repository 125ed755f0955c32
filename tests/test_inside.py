"""Looking inside unlearned models (nbutils.unlearn.inside), the trainer's step callback and the claims report."""
import json

import pytest
import torch
import torch.nn as nn

from nbutils import claims, train, unlearn
from nbutils.metrics import nc
from nbutils.unlearn import inside
from nbutils.unlearn.base import Context


@pytest.fixture(scope="module")
def setup(smoke_original):
    return smoke_original


# ---------------------------------------------------------------------------------- alignment
def test_exactly_aligned_head_has_zero_misalignment_and_opposite_has_two():
    g = torch.Generator().manual_seed(0)
    K, D = 4, 6
    means = torch.randn(K, D, generator=g, dtype=torch.float64) * 3
    y = torch.arange(K).repeat_interleave(20)
    H = means[y] + 0.1 * torch.randn(len(y), D, generator=g, dtype=torch.float64)
    mu, _ = nc.class_means(H, y, K)
    W = mu - mu.mean(0)  # w_c = mu_c - mu_G (global mean = mean of class means)
    assert torch.allclose(nc.nc3(H, y, W, K)["per_class_misalignment"], torch.zeros(K, dtype=torch.float64), atol=1e-12)
    W2 = W.clone()
    W2[1] = -W2[1]
    mis = nc.nc3(H, y, W2, K)["per_class_misalignment"]
    assert abs(float(mis[1]) - 2.0) < 1e-12 and float(mis[0]) < 1e-12


def test_head_trajectory_cosines():
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    tr = inside.HeadTrajectory(means, means.mean(0), [0])
    model = nn.Module()
    model.head = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.head.weight.copy_(-2 * means)
    tr(0, model)
    assert tr.records[0]["cos_raw_0"] == pytest.approx(-1.0)
    assert tr.records[0]["norm_0"] == pytest.approx(2.0)
    centred = means[0] - means.mean(0)
    assert tr.records[0]["cos_centred_0"] == pytest.approx(float(-means[0] @ centred / (centred.norm())))
    with torch.no_grad():
        model.head.weight.zero_()
    tr(1, model)
    assert tr.records[1]["norm_0"] == 0 and tr.records[1]["cos_raw_0"] != tr.records[1]["cos_raw_0"]  # NaN


# ---------------------------------------------------------------------------------- trainer step callback
def test_on_step_is_called_once_per_step_and_leaves_training_unchanged(setup):
    cfg, ds, sp, orig = setup
    import copy
    seen = []
    m1, m2 = copy.deepcopy(orig.model), copy.deepcopy(orig.model)
    train.fit(m1, ds.train, sp.retain, epochs=2, lr=0.01, batch_size=64, seed=1, progress=False,
              on_step=lambda s, m: (seen.append(s), train.accuracy(m, ds.test, sp.test_forget)))
    train.fit(m2, ds.train, sp.retain, epochs=2, lr=0.01, batch_size=64, seed=1, progress=False)
    steps = 2 * -(-len(sp.retain) // 64)
    assert seen == list(range(steps + 1))
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_context_counts_steps_across_fits(setup):
    cfg, ds, sp, orig = setup
    import copy
    seen = []
    ctx = Context(model=copy.deepcopy(orig.model), original=orig.model, data=ds, split=sp, cfg=cfg, hp={},
                  progress=False, on_step=lambda s, m: seen.append(s))
    ctx.fit(sp.forget, epochs=1, lr=1e-3, batch_size=32)
    ctx.fit(sp.forget, epochs=1, lr=1e-3, batch_size=32)
    n = -(-len(sp.forget) // 32)
    assert seen == list(range(2 * n + 1))


def test_unlearn_records_are_cached_with_the_model(setup, monkeypatch):
    cfg, ds, sp, orig = setup
    from nbutils import models
    f = models.extract(orig.model, ds.train, sp.train)
    tr = inside.HeadTrajectory.from_features(f["encoder"], f["labels"], ds.num_classes, [3])
    r1 = unlearn.unlearn("rl", cfg, ds, sp, orig.model, classifier_only=True, original_key="orig-test",
                         on_step=tr, record="trajectory.json")
    assert not r1.cached and r1.records[0]["step"] == 0 and len(r1.records) > 2
    assert r1.records[-1]["cos_raw_3"] < 0  # head-only RL turns w_k away from the class mean
    assert torch.equal(r1.model.encoder.stem[0].weight, orig.model.encoder.stem[0].weight)

    def boom(ctx):
        raise AssertionError("a cached result with its records must not run again")
    monkeypatch.setitem(unlearn.METHODS, "rl", unlearn.METHODS["rl"].__class__(
        "rl", boom, "RL", "finetune"))
    tr2 = inside.HeadTrajectory.from_features(f["encoder"], f["labels"], ds.num_classes, [3])
    r2 = unlearn.unlearn("rl", cfg, ds, sp, orig.model, classifier_only=True, original_key="orig-test",
                         on_step=tr2, record="trajectory.json")
    assert r2.cached and r2.records == json.loads(json.dumps(r1.records))
    with pytest.raises(AssertionError, match="must not run"):  # another record file: runs again
        unlearn.unlearn("rl", cfg, ds, sp, orig.model, classifier_only=True, original_key="orig-test",
                        on_step=tr2, record="other.json")
    with pytest.raises(ValueError, match="record"):
        unlearn.unlearn("rl", cfg, ds, sp, orig.model, on_step=tr2, record="../x.json")


# ---------------------------------------------------------------------------------- evaluation
def test_evaluate_representations_consistent_and_cached(setup, tmp_path, monkeypatch):
    cfg, ds, sp, orig = setup
    cache = tmp_path / "inside.json"
    r = inside.evaluate_representations(orig.model, ds, sp, tsne_per_class=5, cache=cache)
    layers = inside.block_layers(orig.model)
    assert layers[0] == "encoder.stem" and len(layers) == 9 and r["penultimate"] == layers[-1]
    # the output head agrees with the model's own predictions
    from nbutils.metrics.output import output_metrics
    out = output_metrics(orig.model, ds, sp)
    assert r["output"]["forget_test"] == pytest.approx(out["forget_test"])
    assert r["output"]["retain_test"] == pytest.approx(out["retain_test"])
    # the last block, pooled, is the penultimate feature: its layer-wise probe equals the ridge probe
    assert r["layers"][layers[-1]]["ridge"]["forget_test"] == r["ridge"]["forget_test"]
    assert len(r["misalignment"]) == ds.num_classes and all(0 <= v <= 2 for v in r["misalignment"])
    assert len(r["tsne"]["xy"]) == len(r["tsne"]["labels"]) == 5 * ds.num_classes
    assert 0 <= r["probe"]["forget_test"] <= 1 and r["nc"]["nc1"] > 0
    monkeypatch.setattr(inside.models, "extract", lambda *a, **k: pytest.fail("a cached evaluation must not extract"))
    r2 = inside.evaluate_representations(orig.model, ds, sp, tsne_per_class=5, cache=cache)
    assert r2["seconds"] == r["seconds"] and r2["probe"] == r["probe"]


def test_relearn_curve_and_few_shot_batches(setup):
    cfg, ds, sp, orig = setup
    rl = unlearn.unlearn("rl", cfg, ds, sp, orig.model, cache=False, track=False)
    c = inside.relearn(rl.model, cfg, ds, sp, steps=6, lr=0.05, n_forget=4, eval_every=2)
    assert [r["step"] for r in c] == [0, 2, 4, 6] and "retain_test" in c[0] and "retain_test" in c[-1]
    assert "retain_test" not in c[1]
    assert c[0]["forget_test"] == pytest.approx(train.accuracy(rl.model, ds.test, sp.test_forget))
    assert c == inside.relearn(rl.model, cfg, ds, sp, steps=6, lr=0.05, n_forget=4, eval_every=2)  # deterministic
    # every batch holds the same few forget images
    few = sp.forget[:3]
    s = inside._FewShotSampler(ds.train, sp.retain, few, 16, steps=3)
    batches = list(s(torch.Generator().manual_seed(0)))
    assert len(batches) == 3 and all(len(y) == 16 and int((y == 3).sum()) == 3 for _, y in batches)
    with pytest.raises(ValueError, match="n_forget"):
        inside.relearn(rl.model, cfg, ds, sp, n_forget=len(sp.forget) + 1)
    with pytest.raises(ValueError, match="steps"):
        inside.relearn(rl.model, cfg, ds, sp, steps=0)


def test_during_unlearning_measures_at_the_requested_steps_and_the_end(setup):
    cfg, ds, sp, orig = setup
    curve, res = inside.during_unlearning("rl", cfg, ds, sp, orig.model, at=(0, 2, 4), probe_train_per_class=20,
                                          test_per_class=10, cache=False)
    steps = [r["step"] for r in curve]
    assert steps[:3] == [0, 2, 4] and steps[-1] > 4
    assert curve[0]["output"]["forget_test"] > curve[-1]["output"]["forget_test"]
    assert set(curve[0]) == {"step", "output", "probe", "ncc"}


# ---------------------------------------------------------------------------------- claims report
def test_claims_report_lists_every_claim_and_records_measurements():
    claims.record("A1", held=False, criterion="c", measured={"x": 0.5, "nan": float("nan")}, summary="s",
                  notebook="nb", setting={"profile": "smoke"})
    md = (claims.manifest.figures_dir() / "claims.md").read_text()
    assert "| A1 | **did not hold** |" in md and "| B4 | not measured in this run |" in md
    assert md.count("\n## ") == len(claims.CLAIMS)
    js = json.loads((claims.manifest.figures_dir() / "claims.json").read_text())
    assert js["A1"]["measured"]["nan"] is None and js["A1"]["held"] is False
    claims.record("A2", held=None, criterion="c", measured={}, summary="s", notebook="nb")
    assert set(claims.load()) == {"A1", "A2"} and "**undecided**" in (claims.manifest.figures_dir() / "claims.md").read_text()
    with pytest.raises(ValueError, match="unknown claim"):
        claims.record("Z9", held=True, criterion="", measured={}, summary="", notebook="")
    with pytest.raises(ValueError, match="held"):
        claims.record("A1", held=1, criterion="", measured={}, summary="", notebook="")


def test_claims_variants_are_recorded_beside_the_default_setting():
    claims.record("A1", held=True, criterion="c", measured={"x": 1}, summary="default", notebook="nb")
    claims.record("A1", held=False, criterion="c", measured={"x": 2}, summary="three classes", notebook="nb",
                  variant="_forget0-1-2")
    rep = claims.load()
    assert rep["A1"]["summary"] == "default" and rep["A1_forget0-1-2"]["held"] is False
    md = (claims.manifest.figures_dir() / "claims.md").read_text()
    assert "| A1 | **held** |" in md and "| A1 (forget0-1-2) | **did not hold** |" in md
