import numpy as np
import pytest
import torch

from nbutils import data, models, train


def test_resnet_shapes_and_features():
    m = models.build_model("resnet18", num_classes=7, width=4, in_channels=1)
    x = torch.randn(5, 1, 12, 12)
    assert m(x).shape == (5, 7) and m.features(x).shape == (5, 32)
    m50 = models.build_model("resnet50", num_classes=3, width=2, in_channels=3)
    assert m50(torch.randn(2, 3, 16, 16)).shape == (2, 3) and m50.encoder.out_dim == 64
    with pytest.raises(ValueError, match="arch must be one of"):
        models.build_model("vgg")


def test_extract_reads_named_layers_in_one_pass(digits):
    m = models.build_model("resnet18", 10, 4, 1)
    idx = torch.arange(50)
    out = models.extract(m, digits.train, idx, layers=("encoder", "encoder.stem", "encoder.layer3"), batch_size=16)
    assert out["encoder"].shape == (50, 32) and out["encoder.stem"].shape == (50, 4)
    assert out["encoder.layer3"].shape == (50, 16) and out["logits"].shape == (50, 10)
    # features are what the model computes; the head maps them to the logits
    assert torch.allclose(m.head(out["encoder"]), out["logits"], atol=1e-5)
    assert torch.equal(out["labels"], digits.train.labels[idx])
    assert not m._forward_hooks and not any(mod._forward_hooks for mod in m.modules())
    with pytest.raises(ValueError, match="unknown layer"):
        models.extract(m, digits.train, idx, layers=("nope",))


def test_warmup_cosine_schedule():
    lrs = [train.warmup_cosine(s, 100, 10, 0.1, 1e-5) for s in range(101)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.1) and lrs[100] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def _small_fit(digits, sp, **kw):
    torch.manual_seed(0)
    m = models.build_model("resnet18", 10, 4, 1)
    h = train.fit(m, digits.train, sp.train, epochs=3, lr=0.05, batch_size=64, warmup_epochs=1,
                  val_idx=sp.val, patience=10, seed=0, **kw)
    return m, h


def test_fit_learns_and_is_deterministic(digits):
    sp = data.make_split(digits, seed=0)
    m1, h1 = _small_fit(digits, sp)
    m2, h2 = _small_fit(digits, sp)
    assert h1.epochs[-1]["val_acc"] > 0.5  # digits are easy: well above chance after 3 epochs
    assert h1.column("train_loss")[-1] < h1.column("train_loss")[0]
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k


def test_fit_resumes_from_checkpoint_bit_identically(digits, tmp_path):
    sp = data.make_split(digits, seed=0)
    ref, _ = _small_fit(digits, sp, restore_best=False)
    calls = {"n": 0}

    def crashing_loss(model, x, y):
        calls["n"] += 1
        if calls["n"] == 40:  # in the 2nd epoch (19 batches per epoch)
            raise KeyboardInterrupt
        return train.ce_loss(model, x, y)

    ck = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):
        _small_fit(digits, sp, restore_best=False, loss_fn=crashing_loss, checkpoint=ck)
    assert ck.exists()
    resumed, h = _small_fit(digits, sp, restore_best=False, checkpoint=ck)
    assert [e["epoch"] for e in h.epochs] == [1, 2, 3]
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_fit_hooks_and_frozen_params(digits):
    sp = data.make_split(digits, seed=0)
    torch.manual_seed(0)
    m = models.build_model("resnet18", 10, 4, 1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    seen = []
    train.fit(m, digits.train, sp.train[:128], epochs=1, lr=0.1, batch_size=64, params=m.head.parameters(),
              grad_hook=lambda mod: seen.append(mod.head.weight.grad.norm().item()),
              train_mode=lambda mod: mod.eval())
    assert len(seen) == 2
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}


def test_fit_rejects_bad_arguments(digits):
    m = models.build_model("resnet18", 10, 4, 1)
    with pytest.raises(ValueError, match="lr > 0"):
        train.fit(m, digits.train, torch.arange(10), epochs=1, lr=-1.0, batch_size=4)
    with pytest.raises(ValueError, match="empty"):
        train.fit(m, digits.train, torch.arange(0), epochs=1, lr=0.1, batch_size=4)


def test_train_classifier_caches_and_snapshots(smoke_cfg, digits):
    sp = data.make_split(digits, seed=smoke_cfg.seed)
    a = train.train_classifier(smoke_cfg, digits, sp)
    assert not a.cached and a.snapshots == smoke_cfg.snapshot_epochs
    assert not (a.path / "checkpoint.pt").exists()
    b = train.train_classifier(smoke_cfg, digits, sp)
    assert b.cached and b.path == a.path
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)
    s0 = b.load_snapshot(0, smoke_cfg)
    assert any(not torch.equal(p, q) for p, q in zip(s0.state_dict().values(), b.model.state_dict().values()))
    r = train.train_classifier(smoke_cfg, digits, sp, which="retrain")
    assert r.path != a.path and r.snapshots == []
    assert train.accuracy(r.model, digits.test, sp.test_forget) < 0.2  # never saw the forget class
    assert np.isnan(train.accuracy(r.model, digits.test, sp.test_forget[:0]))


def test_extract_with_folded_batchnorm_matches_the_model_and_leaves_it_unchanged():
    from nbutils import data, models, profiles

    cfg = profiles.resolve("smoke", device="cpu")
    ds = data.load_image_data(cfg)
    torch.manual_seed(0)
    m = models.build_model("resnet18", ds.num_classes, width=4, in_channels=cfg.in_channels)
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    idx = torch.arange(64)
    layers = ("encoder.stem", "encoder.layer2.0", "encoder")
    a = models.extract(m, ds.train, idx, layers=layers, fuse=True)
    b = models.extract(m, ds.train, idx, layers=layers, fuse=False)
    for k in layers + ("logits",):
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
    assert m.training and all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    f = models.fuse_for_eval(m)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in f.modules())
    assert {n for n, _ in f.named_modules()} == {n for n, _ in m.named_modules()}
