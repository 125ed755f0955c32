import pytest

from nbutils import profiles
from nbutils.profiles import ConfigError, resolve


def test_default_profile_is_quick_and_valid():
    cfg = resolve()
    assert cfg.profile == "quick" and cfg.dataset == "fashion_mnist"
    assert cfg.num_classes == 10 and cfg.in_channels == 1
    assert profiles.current() is cfg


@pytest.mark.parametrize("name", list(profiles.PROFILES))
def test_every_profile_resolves(name):
    cfg = resolve(name, device="cpu")
    assert cfg.as_dict()["profile"] == name
    assert cfg.snapshot_epochs[0] == 0 and cfg.snapshot_epochs[-1] == cfg.epochs


def test_none_keeps_profile_value_and_overrides_apply():
    cfg = resolve("smoke", epochs=None, lr=0.1, forget_classes=(3, 4))
    assert cfg.epochs == profiles.PROFILES["smoke"]["epochs"]
    assert cfg.lr == 0.1 and cfg.forget_classes == [3, 4]


def test_int_accepted_for_float():
    assert resolve("smoke", lr=1).lr == 1.0


@pytest.mark.parametrize("kwargs, words", [
    (dict(epoch=3), ["'epoch'", "did you mean 'epochs'"]),
    (dict(epochs=-1), ["epochs=-1", "> 0"]),
    (dict(epochs="3"), ["epochs='3'", "expected int"]),
    (dict(lr=True), ["lr=True", "expected float"]),
    (dict(forget_classes=[10]), ["forget_classes", "[10]", "0..9"]),
    (dict(forget_classes=list(range(10))), ["every class"]),
    (dict(device="tpu"), ["device='tpu'", "'cuda:N'"]),
    (dict(dataset="mnist"), ["dataset='mnist'", "fashion_mnist"]),
    (dict(val_fraction=1.5), ["val_fraction=1.5", "[0, 1)"]),
    (dict(warmup_epochs=100), ["warmup_epochs=100", "exceeds epochs"]),
])
def test_bad_input_is_named(kwargs, words):
    with pytest.raises(ConfigError) as e:
        resolve("smoke", **kwargs)
    for w in words:
        assert w in str(e.value)


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile 'fast'.*smoke"):
        resolve("fast")


def test_cuda_unavailable_is_explained(monkeypatch):
    monkeypatch.setattr(profiles.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve("smoke", device="cuda")


def test_forget_class_checked_against_dataset():
    resolve("paper", dataset="cifar100", forget_classes=[99], device="cpu")
    with pytest.raises(ConfigError, match="not in dataset 'cifar10'"):
        resolve("paper", forget_classes=[99], device="cpu")


def test_config_is_immutable_and_replace_revalidates():
    cfg = resolve("smoke")
    with pytest.raises(Exception):
        cfg.epochs = 5
    assert cfg.replace(epochs=5).epochs == 5
    with pytest.raises(ConfigError):
        cfg.replace(epochs=0)


def test_snapshot_epochs():
    s = profiles.snapshot_epochs(300, 12)
    assert s[0] == 0 and s[-1] == 300 and len(s) == 12 and s == sorted(set(s))
    assert profiles.snapshot_epochs(3, 3) == [0, 1, 3]
    assert profiles.snapshot_epochs(5, 0) == []
