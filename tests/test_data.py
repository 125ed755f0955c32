import gzip
import hashlib

import numpy as np
import pytest
import torch

from nbutils import data


def test_digits_store_and_split(digits):
    assert digits.num_classes == 10 and digits.train.shape == (1, 8, 8)
    assert digits.train.images.dtype == torch.uint8
    sp = data.make_split(digits, forget_classes=[3, 7], seed=1)
    tr = set(sp.train.tolist())
    # retain and forget partition train; validation is outside; nothing overlaps
    assert set(sp.retain.tolist()) | set(sp.forget.tolist()) == tr
    assert not set(sp.retain.tolist()) & set(sp.forget.tolist())
    assert not tr & set(sp.val.tolist())
    assert set(digits.train.labels[sp.forget].unique().tolist()) == {3, 7}
    assert not set(digits.train.labels[sp.retain].unique().tolist()) & {3, 7}
    assert set(digits.test.labels[sp.test_forget].unique().tolist()) == {3, 7}
    assert len(sp.test_forget) + len(sp.test_retain) == len(digits.test)
    # validation is stratified, about 10% of every class
    vc = torch.bincount(digits.train.labels[sp.val], minlength=10)
    assert vc.min() >= 10 and abs(len(sp.val) / len(digits.train) - 0.1) < 0.01


def test_random_forgetting_split(digits):
    sp = data.make_split(digits, scenario="random", forget_fraction=0.1, seed=0)
    assert sp.forget_classes == () and len(sp.test_forget) == 0
    assert abs(len(sp.forget) - 0.1 * len(sp.train)) <= 1
    assert set(sp.retain.tolist()) | set(sp.forget.tolist()) == set(sp.train.tolist())


def test_split_is_deterministic_and_seeded(digits):
    a, b = data.make_split(digits, seed=3), data.make_split(digits, seed=3)
    c = data.make_split(digits, seed=4)
    assert torch.equal(a.val, b.val) and not torch.equal(a.val, c.val)


def test_bad_split_arguments(digits):
    with pytest.raises(ValueError, match="forget_classes \\[12\\] not in dataset 'digits'"):
        data.make_split(digits, forget_classes=[12])
    with pytest.raises(ValueError, match="scenario"):
        data.make_split(digits, scenario="concept")


def test_batched_crop_flip_matches_per_image_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 10, 12), dtype=torch.uint8, generator=g)
    out = data.random_crop_flip(x, 2, torch.Generator().manual_seed(5))
    # recompute the same random draws and crop each image by hand
    g2 = torch.Generator().manual_seed(5)
    off = torch.randint(0, 5, (2, 16), generator=g2)
    flip = torch.rand(16, generator=g2) < 0.5
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        ref = xp[i, :, off[0, i]:off[0, i] + 10, off[1, i]:off[1, i] + 12]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def test_store_normalises_and_rejects_bad_images():
    imgs = torch.full((4, 1, 2, 2), 255, dtype=torch.uint8)
    st = data.ImageStore(imgs, torch.zeros(4), mean=[0.5], std=[0.25])
    assert torch.allclose(st.batch(torch.arange(4)), torch.full((4, 1, 2, 2), 2.0))
    with pytest.raises(ValueError, match="uint8"):
        data.ImageStore(imgs.float(), torch.zeros(4), [0.5], [0.25])


def test_stratified_subset_balanced():
    y = np.repeat(np.arange(5), 100)
    idx = data.stratified_subset(y, 52, seed=0)
    assert len(idx) == 52 and np.bincount(y[idx]).max() - np.bincount(y[idx]).min() <= 1
    assert len(data.stratified_subset(y, 0, seed=0)) == 500


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, dtype=">i4").tobytes()
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw))
    return hashlib.sha256(raw).hexdigest()


def test_idx_reader_and_checksum(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    sha = _write_idx(tmp_path / "x.gz", arr)
    assert np.array_equal(data._load_verified_idx(tmp_path / "x.gz", sha), arr)
    with pytest.raises(ValueError, match="checksum mismatch"):
        data._load_verified_idx(tmp_path / "x.gz", "0" * 64)


def test_fashion_mnist_missing_is_explained(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    with pytest.raises(data.DataUnavailable, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist(download=False)


@pytest.mark.skipif(not data.FASHION_MNIST_SYSTEM_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_verified():
    xtr, ytr, xte, yte = data.load_fashion_mnist(download=False)
    assert xtr.shape == (60000, 1, 28, 28) and xte.shape == (10000, 1, 28, 28)
    assert np.bincount(ytr).tolist() == [6000] * 10 and np.bincount(yte).tolist() == [1000] * 10
