"""Shared test set-up: no progress bars, results and figures in temporary folders, one thread."""
import os

import pytest
import torch

os.environ.setdefault("NBUTILS_PROGRESS", "0")


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    """Every test writes its cached results and figures under its own tmp_path."""
    monkeypatch.setenv("NBUTILS_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("NBUTILS_FIGURES_DIR", str(tmp_path / "figures"))
    yield


@pytest.fixture
def smoke_cfg():
    from nbutils import profiles

    return profiles.resolve("smoke", device="cpu")


@pytest.fixture
def digits(smoke_cfg):
    from nbutils import data

    return data.load_image_data(smoke_cfg)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny matrices: one intra-op thread avoids OpenMP contention on a busy 2-core machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def smoke_original(tmp_path_factory):
    """``(cfg, data, split, original)`` under smoke, forget class 3: the trained original model that the
    unlearning, looking-inside and CMF tests start from (trained once per test module)."""
    from nbutils import data, profiles, train

    mp = pytest.MonkeyPatch()
    mp.setenv("NBUTILS_RESULTS", str(tmp_path_factory.mktemp("results")))
    cfg = profiles.resolve("smoke", device="cpu", forget_classes=[3])
    ds = data.load_image_data(cfg)
    sp = data.make_split(ds, forget_classes=[3], seed=0)
    orig = train.train_classifier(cfg, ds, sp)
    yield cfg, ds, sp, orig
    mp.undo()
