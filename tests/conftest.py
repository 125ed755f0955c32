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
