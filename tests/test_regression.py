"""Paper B's data, models, training and the all-layer NRC pass: known answers and the file formats."""
import io
import json
import zipfile

import numpy as np
import pytest
import torch

from nbutils import nrc_report, profiles
from nbutils.data import (RegressionDataUnavailable, load_paper_regression, load_regression, make_sprites,
                          make_synthetic, split_standardise)
from nbutils.metrics import nrc
from nbutils.models import RegressionMLP, build_regressor
from nbutils.train import fit, mse_loss, step_decay, train_regressor


# ---------------------------------------------------------------------------------------------- data
def test_synthetic_targets_have_the_requested_rank_and_are_deterministic():
    X, Y, info = make_synthetic(600, 10, 8, 3, noise=0.0, seed=1)
    assert X.shape == (600, 10) and Y.shape == (600, 8)
    sv = np.linalg.svd(Y - Y.mean(0), compute_uv=False)
    assert sv[2] / sv[0] > 0.3 and sv[3] / sv[0] < 1e-5  # rank exactly 3, no vanishing signal direction
    X2, Y2, _ = make_synthetic(600, 10, 8, 3, noise=0.0, seed=1)
    assert np.array_equal(X, X2) and np.array_equal(Y, Y2)
    _, Yn, _ = make_synthetic(600, 10, 8, 3, noise=0.1, seed=1)
    sv = np.linalg.svd(Yn - Yn.mean(0), compute_uv=False)
    assert 1e-3 < sv[3] / sv[0] < 0.3  # noise fills the other directions, weakly
    with pytest.raises(ValueError, match="rank"):
        make_synthetic(100, 5, 2, 3)
    with pytest.raises(ValueError, match="noise"):
        make_synthetic(100, 5, 2, 1, noise=-1.0)


def test_sprites_targets_match_the_drawn_shapes():
    imgs, Y, info = make_sprites(60, 32, ["x", "y", "scale", "rotation"], seed=3)
    assert imgs.dtype == np.uint8 and imgs.shape == (60, 1, 32, 32) and Y.shape == (60, 5)
    assert info["targets"] == ["x", "y", "scale", "cos 4θ", "sin 4θ"]
    w = imgs[:, 0].astype(float)
    g = np.arange(32) + 0.5
    cx = (w.sum(1) * g).sum(1) / w.sum((1, 2)) / 32
    cy = (w.sum(2) * g).sum(1) / w.sum((1, 2)) / 32
    # the intensity centroid is the drawn centre up to the triangle's off-centre mass
    assert np.corrcoef(cx, Y[:, 0])[0, 1] > 0.97 and np.corrcoef(cy, Y[:, 1])[0, 1] > 0.97
    area = w.sum((1, 2)) / 255
    assert np.corrcoef(area, Y[:, 2])[0, 1] > 0.8  # bigger scale -> more pixels (shapes differ in area)
    assert np.allclose(Y[:, 3] ** 2 + Y[:, 4] ** 2, 1, atol=1e-5)
    assert np.array_equal(imgs, make_sprites(60, 32, ["x", "y", "scale", "rotation"], seed=3)[0])
    with pytest.raises(ValueError, match="subset"):
        make_sprites(10, 16, ["colour"])


def test_split_standardises_with_training_statistics():
    X, Y, _ = make_synthetic(500, 6, 4, 2, seed=0)
    rs = split_standardise("synthetic", X * 5 + 3, Y * 2 - 1, seed=0)
    assert len(rs.train) == 400 and len(rs.test) == 100
    assert not set(rs.train.tolist()) & set(rs.test.tolist())
    xt, yt = rs.store.x[rs.train], rs.targets("train")
    assert torch.allclose(xt.mean(0), torch.zeros(6), atol=1e-5) and torch.allclose(xt.std(0, unbiased=False), torch.ones(6), atol=1e-4)
    assert torch.allclose(yt.mean(0), torch.zeros(4), atol=1e-5) and torch.allclose(yt.std(0, unbiased=False), torch.ones(4), atol=1e-4)
    imgs, Yi, _ = make_sprites(40, 16, ["x"], seed=0)
    ri = split_standardise("sprites", imgs, Yi, seed=0)
    assert ri.is_image and ri.store.x.dtype == torch.uint8
    b = ri.store.batch(ri.train)
    assert abs(float(b.mean())) < 1e-4 and abs(float(b.std(unbiased=False)) - 1) < 1e-3


def _sgemm_csv(rows: int, rng) -> str:
    header = ["MWG", "NWG", "KWG", "MDIMC", "NDIMC", "MDIMA", "NDIMB", "KWI", "VWM", "VWN", "STRM", "STRN", "SA", "SB",
              "Run1 (ms)", "Run2 (ms)", "Run3 (ms)", "Run4 (ms)"]
    body = np.concatenate([rng.integers(1, 64, (rows, 14)), rng.uniform(13, 3000, (rows, 1)) * np.ones((1, 4))], 1)
    return ",".join(header) + "\n" + "\n".join(",".join(f"{v:g}" for v in r) for r in body) + "\n"


def test_paper_set_loaders_read_their_formats_and_check_sums(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "regression"
    root.mkdir()
    with pytest.raises(RegressionDataUnavailable, match="sgemm_product.csv"):
        load_paper_regression("sgemm", root)
    # SGEMM: the UCI zip with the CSV inside; targets are the log run times
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("sgemm_product.csv", _sgemm_csv(30, rng))
    (root / "sgemm_product_dataset.zip").write_bytes(buf.getvalue())
    X, Y, info = load_paper_regression("sgemm", root)
    assert X.shape == (30, 14) and Y.shape == (30, 4) and np.all(Y > np.log(12))
    assert json.loads((root / "checksums.json").read_text())["sgemm_product_dataset.zip"] == info["sha256"]
    # a file that changed after its checksum was recorded is refused
    with zipfile.ZipFile(buf, "a") as z:
        z.writestr("extra.txt", "x")
    (root / "sgemm_product_dataset.zip").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="does not match"):
        load_paper_regression("sgemm", root)
    # MuJoCo behaviour cloning: observations -> actions
    np.savez(root / "hopper.npz", observations=rng.normal(size=(20, 11)).astype(np.float32),
             actions=rng.normal(size=(20, 3)).astype(np.float32))
    X, Y, _ = load_paper_regression("hopper", root)
    assert X.shape == (20, 11) and Y.shape == (20, 3)
    np.savez(root / "reacher.npz", obs=np.zeros((5, 11)))
    with pytest.raises(ValueError, match="lacks"):
        load_paper_regression("reacher", root)
    # UTKFace: age_gender_race_date.jpg files
    from PIL import Image

    (root / "UTKFace").mkdir()
    for i, age in enumerate((23, 71)):
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(root / "UTKFace" / f"{age}_0_1_2017{i}.jpg")
    X, Y, _ = load_paper_regression("utkface", root)
    assert X.shape == (2, 3, 64, 64) and X.dtype == np.uint8 and sorted(Y.tolist()) == [23.0, 71.0]
    # CARLA: images + targets
    np.savez(root / "carla.npz", images=rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8),
             targets=rng.normal(size=(6, 2)))
    X, Y, _ = load_paper_regression("carla", root)
    assert X.shape == (6, 3, 16, 16) and Y.shape == (6, 2)


# ---------------------------------------------------------------------------------------------- models, training
def test_regression_mlp_is_bias_free_and_validates():
    for norm in ("none", "layer", "batch"):
        m = RegressionMLP(14, 4, depth=5, width=32, norm=norm)
        assert all(p.ndim == 2 for p in m.parameters())  # no bias vectors, no affine norm parameters
        assert len(m.layers) == 5 and m(torch.randn(7, 14)).shape == (7, 4)
    assert len(nrc.nrc_layers(RegressionMLP(3, 2, 4, 8))) == 4
    with pytest.raises(ValueError, match="norm"):
        RegressionMLP(3, 2, norm="group")
    with pytest.raises(ValueError, match="flat"):
        build_regressor("mlp", (1, 8, 8), 2)
    net = build_regressor("resnet", (1, 16, 16), 3, width=2)
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 3)


def test_step_decay_schedule():
    assert step_decay(0, 90, 0.1, (1 / 3, 2 / 3)) == pytest.approx(0.1)
    assert step_decay(30, 90, 0.1, (1 / 3, 2 / 3)) == pytest.approx(0.01)
    assert step_decay(89, 90, 0.1, (1 / 3, 2 / 3)) == pytest.approx(0.001)


def test_train_regressor_learns_caches_and_records_every_layer(tmp_path):
    cfg = profiles.resolve("smoke", reg_epochs=40, reg_lr=0.1, reg_samples=300)
    rs = load_regression(cfg)
    a = train_regressor(cfg, rs, progress=False)
    assert not a.cached and [c["epoch"] for c in a.checkpoints][0] == 0 and a.checkpoints[-1]["epoch"] == 40
    assert a.checkpoints[-1]["train_mse"] < 0.8 * a.checkpoints[0]["train_mse"]
    assert all(len(c["layers"]) == cfg.reg_depth for c in a.checkpoints)
    assert a.checkpoints[-1]["train_mse"] == pytest.approx(a.history.final["train_mse"])
    b = train_regressor(cfg, rs, progress=False)
    assert b.cached and b.checkpoints == a.checkpoints
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    c = train_regressor(cfg, rs, weight_decay=0.0, progress=False)
    assert not c.cached and c.path != a.path
    with pytest.raises(ValueError, match="image set"):
        train_regressor(cfg, load_regression(cfg, dataset="sprites"), kind="mlp")


# ---------------------------------------------------------------------------------------------- the all-layer pass
def test_layer_nrc_equals_the_metrics_of_captured_features():
    torch.manual_seed(0)
    X, Y, _ = make_synthetic(700, 12, 4, 2, seed=2)
    rs = split_standardise("synthetic", X, Y)
    m = RegressionMLP(12, 4, depth=4, width=48)
    got = nrc.layer_nrc(m, rs.store, rs.train, batch_size=128, precision="float64")
    feats = []
    hs = [lin.register_forward_pre_hook(lambda mod, inp: feats.append(inp[0].detach())) for lin in m.layers]
    with torch.no_grad():
        out = m(rs.store.x[rs.train])
    for h in hs:
        h.remove()
    Yt = rs.targets("train")
    mse = float(((out.double() - Yt.double()) ** 2).mean())
    assert got["model_mse"] == pytest.approx(mse, rel=1e-6) and got["N"] == len(rs.train)
    for lin, H, row in zip(m.layers, feats, got["layers"]):
        ref = nrc.deep_nrc(H, Yt, lin.weight.detach(), n=min(4, H.shape[1]), model_mse=mse)
        for k in ("nrc1", "nrc2", "nrc3", "nrc4_mse", "feature_stable_rank"):
            assert row[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-9), k
    W = m.layers[-1].weight.detach()
    # the hook normalises rows in float32, the reference in float64
    assert got["last"]["nrc1"] == pytest.approx(nrc.last_layer_nrc1(feats[-1], 4), abs=1e-7)
    assert got["last"]["nrc2"] == pytest.approx(nrc.last_layer_nrc2(feats[-1], W), abs=1e-7)
    assert got["last"]["nrc3_values"] == pytest.approx(nrc.nrc3_gamma_scan(W, Yt)[1].tolist(), abs=1e-9)
    mixed = nrc.layer_nrc(m, rs.store, rs.train, batch_size=128)
    for a, b in zip(mixed["layers"], got["layers"]):
        for k in ("nrc1", "nrc2", "nrc3", "nrc4_mse"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


def test_layer_nrc_pools_conv_inputs():
    torch.manual_seed(0)
    imgs, Y, _ = make_sprites(40, 16, ["x", "y"], seed=0)
    rs = split_standardise("sprites", imgs, Y)
    net = build_regressor("resnet", (1, 16, 16), 2, width=2).eval()
    got = nrc.layer_nrc(net, rs.store, rs.train, precision="float64")
    names = [r["name"] for r in got["layers"]]
    assert names[0] == "encoder.stem.0" and names[-1] == "head" and not any("shortcut" in n for n in names)
    conv = dict(net.named_modules())["encoder.layer2.0.conv1"]
    feats = []
    h = conv.register_forward_pre_hook(lambda mod, inp: feats.append(inp[0].mean(dim=(2, 3))))
    with torch.no_grad():
        net(rs.store.batch(rs.train))
    h.remove()
    ref = nrc.deep_nrc(feats[0], rs.targets("train"), conv.weight.detach(), n=2)
    row = got["layers"][names.index("encoder.layer2.0.conv1")]
    assert row["nrc1"] == pytest.approx(ref["nrc1"], rel=1e-6) and row["nrc3"] == pytest.approx(ref["nrc3"], rel=1e-6)


def test_mixed_precision_stats_match_float64_on_collapsed_features():
    g = torch.Generator().manual_seed(0)
    N, D, n = 20_000, 256, 3
    Y = torch.randn(N, n, generator=g, dtype=torch.float64)
    A = torch.linalg.qr(torch.randn(D, n, generator=g, dtype=torch.float64))[0].T * 3
    H = (Y @ A + 1e-3 * torch.randn(N, D, generator=g, dtype=torch.float64) + 2.0).float()  # rank n + noise, offset
    W = torch.randn(4, D, generator=g)
    a, b = nrc.FeatureStats("float64"), nrc.FeatureStats("mixed")
    for lo in range(0, N, 7000):
        a.update(H[lo:lo + 7000], Y[lo:lo + 7000])
        b.update(H[lo:lo + 7000], Y[lo:lo + 7000])
    ra, rb = a.metrics(W, n=n, model_mse=0.01), b.metrics(W, n=n, model_mse=0.01)
    assert ra["nrc1"] < 1e-3  # collapsed: the float32 rounding must not swamp the small noise fraction
    for k in ("nrc1", "nrc2", "nrc3"):
        assert rb[k] == pytest.approx(ra[k], abs=1e-5), k
    assert rb["nrc4_mse"] == pytest.approx(ra["nrc4_mse"], abs=1e-6)  # ~float32 eps x target variance (1 here)
    bad = H[:100].clone()
    bad[5, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        nrc.FeatureStats("mixed").update(H[:100], Y[:100]).update(bad, Y[:100])
    with pytest.raises(ValueError, match="precision"):
        nrc.FeatureStats("half")


def test_collapse_reading_and_learned_rank():
    row = {"nrc1": 0.01, "nrc2": 0.95, "nrc3": 0.99}
    assert nrc_report.is_collapsed(row) and not nrc_report.is_collapsed({**row, "nrc2": 0.85})
    assert not nrc_report.is_collapsed({**row, "nrc3": None})
    rec = {"layers": [{"nrc1": 0.5, "nrc2": 0.3, "nrc3": 0.2}, row, {**row, "nrc1": 0.04, "nrc2": 0.5}]}
    assert nrc_report.collapsed_layers(rec) == [1] and nrc_report.low_noise_layers(rec) == [1, 2]
    assert nrc_report.learned_rank([0.5, 0.3, 0.195, 0.004, 0.001]) == 3
    assert nrc_report.mean_std([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2)))
    with pytest.raises(profiles.ConfigError, match="reg_rank"):
        profiles.resolve("quick", reg_rank=9)


def test_tables_escape_latex_and_check_widths():
    md, tex = nrc_report.tables(["λ", "NRC1 ≤ 0.05"], [["0.001", "0.1 ± 0.02"]])
    assert md.splitlines()[0] == "| λ | NRC1 ≤ 0.05 |" and "| 0.001 | 0.1 ± 0.02 |" in md
    assert r"$\lambda$ & NRC1 $\le$ 0.05 \\" in tex and r"0.1 $\pm$ 0.02" in tex and "\\toprule" in tex
    with pytest.raises(ValueError, match="cells"):
        nrc_report.tables(["a", "b"], [["1"]])
