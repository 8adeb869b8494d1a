"""Explaining 1D and 3D models: feature maps, Grad-CAM, activation statistics and their figures.

Two toy models are trained for a few dozen steps on synthetic data whose class sits at one place: series
with a bump up (class "up") or a dip ("down") at a random time, and volumes with a bright or a dark blob at a
random voxel. Grad-CAM must find that place. The figures are drawn from saved models, as ``explain`` does.
"""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cnn_depth import CnnDepthError, activation_stats, depth_cnn, feature_maps, grad_cam
from cnn_depth.checkpoint import model_path, save_run_model
from cnn_depth.explain import (cam_stage, check_array, depth_slices, explain_depths, explain_run, hidden_units,
                               normalise_array, stage_outputs)
from cnn_depth.models import STAGE_WIDTHS, STEM_WIDTH, stage_sizes

LENGTH, SIDE = 128, 16
CONV_FAMILIES = ["plain", "bn", "residual"]


def bumps(n: int, g: torch.Generator):
    """Series (n, 1, 128): noise plus a bump up (class 0) or a dip (class 1) of width ~3 samples at a random
    centre in [16, 112); returns (x, y, centres)."""
    y = torch.randint(0, 2, (n,), generator=g)
    c = torch.randint(16, LENGTH - 16, (n,), generator=g).float()
    t = torch.arange(LENGTH).float()
    shape = torch.exp(-((t[None] - c[:, None]) / 3.0) ** 2) * (1.0 - 2.0 * y.float())[:, None]
    return 0.3 * torch.randn(n, 1, LENGTH, generator=g) + 2.0 * shape[:, None], y, c


def blobs(n: int, g: torch.Generator):
    """Volumes (n, 1, 16, 16, 16): noise plus a bright (class 0) or dark (class 1) blob at a random voxel at
    least 4 from the faces; returns (x, y, centres (n, 3))."""
    y = torch.randint(0, 2, (n,), generator=g)
    c = torch.randint(4, SIDE - 4, (n, 3), generator=g).float()
    grid = torch.stack(torch.meshgrid(*[torch.arange(SIDE).float()] * 3, indexing="ij"))  # (3, d, h, w)
    d2 = ((grid[None] - c[:, :, None, None, None]) ** 2).sum(1)
    shape = torch.exp(-d2 / 4.0) * (1.0 - 2.0 * y.float()).view(n, 1, 1, 1)
    return 0.3 * torch.randn(n, 1, SIDE, SIDE, SIDE, generator=g) + 2.0 * shape[:, None], y, c


def trained(model, data, steps: int, bs: int):
    """``model`` after ``steps`` Adam steps (lr 1e-2) on fresh batches of ``data``; then a held-out set."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        x, y, _ = data(bs, g)
        loss = F.cross_entropy(model.train()(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data(40, g)


@pytest.fixture(scope="module")
def toy1d():
    torch.manual_seed(0)
    return trained(depth_cnn(3, n_in=1, n_out=2, arch="bn", img_size=LENGTH, ndim=1), bumps, 40, 32)


@pytest.fixture(scope="module")
def toy3d():
    torch.manual_seed(0)
    return trained(depth_cnn(2, n_in=1, n_out=2, arch="bn", img_size=SIDE, ndim=3), blobs, 30, 16)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# ---------------------------------------------------------------------------------------------------------
# Grad-CAM finds where the class is


def test_grad_cam_of_a_1d_model_peaks_at_the_bump(toy1d):
    model, (x, y, centres) = toy1d
    assert accuracy(model, x, y) >= 0.95
    errors = []
    for i in range(len(x)):
        cam = grad_cam(model, x[i], int(y[i]))
        assert cam.shape == (LENGTH,) and 0 <= float(cam.min()) and float(cam.max()) == 1
        assert float(cam.std()) > 0.1  # not constant: it points somewhere
        errors.append(abs(int(cam.argmax()) - float(centres[i])))
    errors = np.array(errors)
    assert np.median(errors) <= 3 and (errors <= 8).mean() >= 0.9, errors


def test_grad_cam_of_a_3d_model_peaks_at_the_blob(toy3d):
    model, (x, y, centres) = toy3d
    assert accuracy(model, x, y) >= 0.9
    errors = []
    for i in range(len(x)):
        cam = grad_cam(model, x[i], int(y[i]))
        assert cam.shape == (SIDE,) * 3 and float(cam.std()) > 0.05
        peak = torch.tensor(np.unravel_index(int(cam.argmax()), cam.shape)).float()
        errors.append(float((peak - centres[i]).norm()))
    errors = np.array(errors)
    assert np.median(errors) <= 2 and (errors <= 3).mean() >= 0.9, errors


# ---------------------------------------------------------------------------------------------------------
# Feature maps, stage outputs, Grad-CAM on any family, any size


@pytest.mark.parametrize("ndim,sides", [(1, (50,)), (3, (5, 9, 7))])
@pytest.mark.parametrize("arch", CONV_FAMILIES)
@pytest.mark.parametrize("depth", [1, 5])
def test_feature_maps_are_each_stage_halving_every_axis(arch, depth, ndim, sides):
    model = depth_cnn(depth, n_in=2, arch=arch, img_size=sides, ndim=ndim)
    x = torch.randn(3, 2, *sides)
    maps = feature_maps(model, x)
    assert [n for n, _ in maps] == [n for n, _ in model.named_children() if n != "head"]
    widths = [STEM_WIDTH] + list(STAGE_WIDTHS[:len(stage_sizes(depth))])
    assert [tuple(o.shape) for _, o in maps] == [(3, w, *[-(-s // 2 ** i) for s in sides])
                                                 for i, w in enumerate(widths)]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(maps, stage_outputs(model, x)))
    rows = activation_stats(model, x)  # one row per main-path conv, shaped like its stage's map
    assert len(rows) == depth and rows[0]["shape"] == "x".join(map(str, (STEM_WIDTH, *sides)))


@pytest.mark.parametrize("ndim,sides", [(1, (40,)), (3, (6, 8, 10))])
@pytest.mark.parametrize("arch", CONV_FAMILIES)
def test_grad_cam_shape_range_and_no_side_effects(arch, ndim, sides):
    torch.manual_seed(0)
    model = depth_cnn(4, n_in=3, n_out=5, arch=arch, img_size=sides, ndim=ndim).train()
    model.vocab = list("abcde")
    x = torch.randn(3, *sides)
    for target in (None, 2, "c"):
        cam = grad_cam(model, x, target)
        assert cam.shape == sides and torch.isfinite(cam).all()
        assert 0 <= float(cam.min()) and float(cam.max()) <= 1
    assert torch.equal(grad_cam(model, x, "c"), grad_cam(model, x[None], 2))
    assert model.training and all(p.grad is None for p in model.parameters())


def test_grad_cam_skips_single_sample_maps_and_flat_maps_are_zero():
    model = depth_cnn(4, n_in=1, arch="bn", img_size=4, ndim=1)
    x = torch.randn(1, 4)  # stage3's map is one sample long: its heatmap would be uniform by construction
    assert [o.shape[-1] for _, o in feature_maps(model, x)] == [4, 2, 1, 1]
    assert cam_stage(model, x) == "stage1"
    flat = depth_cnn(3, n_in=1, arch="plain", img_size=(4, 6, 6), ndim=3)
    with torch.no_grad():
        for p in flat.parameters():
            p.zero_()
    assert torch.equal(grad_cam(flat, torch.randn(1, 4, 6, 6)), torch.zeros(4, 6, 6))


@pytest.mark.parametrize("call,message", [
    (lambda: grad_cam(depth_cnn(2, n_in=1, img_size=8, ndim=1), torch.randn(2, 1, 8)), "grad_cam explains one input"),
    (lambda: grad_cam(depth_cnn(2, n_in=1, img_size=8, ndim=1), torch.randn(8)),
     "expected a series (C, L) or a batch (N, C, L), got shape (8,)"),
    (lambda: feature_maps(depth_cnn(2, n_in=1, img_size=4, ndim=3), torch.randn(1, 4, 4)),
     "expected a volume (C, D, H, W) or a batch (N, C, D, H, W), got shape (1, 4, 4)"),
    (lambda: grad_cam(depth_cnn(2, n_in=1, arch="mlp", img_size=8, ndim=1), torch.randn(1, 8)),
     "mlp has no conv layers, so it has no Grad-CAM"),
])
def test_bad_explain_calls_are_one_line(call, message):
    with pytest.raises(CnnDepthError, match=re.escape(message)) as e:
        call()
    assert "\n" not in str(e.value)


def test_mlp_hidden_units_in_1d_and_3d():
    for ndim, sides in ((1, (30,)), (3, (4, 5, 6))):
        model = depth_cnn(2, n_in=2, arch="mlp", img_size=sides, ndim=ndim)
        units = hidden_units(model, torch.randn(2, *sides))
        assert [(n, tuple(u.shape)) for n, u in units] == [("hidden1", (1, 256)), ("hidden2", (1, 128))]


# ---------------------------------------------------------------------------------------------------------
# Array inputs


def test_arrays_are_checked_and_normalised_per_channel():
    config = dict(arch="bn", depth=2, n_in=2, n_out=3, img_size=[5], ndim=1)
    a = np.arange(10, dtype=np.float64).reshape(2, 5)
    assert check_array(a, config, "x").dtype == np.float32
    x = normalise_array(check_array(a, config, "x"), dict(mean=[2.0, 7.0], std=[2.0, 1.0]))
    assert torch.allclose(x, torch.tensor([[-1.0, -0.5, 0, 0.5, 1], [-2, -1, 0, 1, 2]]))
    one = dict(config, n_in=1)
    assert check_array(np.zeros(5), one, "x").shape == (1, 5)  # one channel: the channel axis may be left out
    for bad, message in ((np.zeros((2, 6)), "x has shape (2, 6); the model takes (2, 5) (channels, length) as it "
                                            "was trained: give a series of that shape"),
                         (np.full((2, 5), np.nan), "x has 10 missing values (NaN; the first at index (0, 0))"),
                         (np.full((2, 5), np.inf), "x has infinite values"),
                         (np.zeros((1, 2, 5)), "x is a 3-dim array (1, 2, 5), not a series")):
        with pytest.raises(CnnDepthError, match=re.escape(message)):
            check_array(bad, config, "x")
    # as the run's data was made: NaN filled, a short series padded with zeros at the end
    made = check_array(np.array([[1.0, np.nan, 3.0], [4.0, 5.0, np.nan]]), config, "x", dict(fill=0.5, pad=True))
    assert made.tolist() == [[1, 0.5, 3, 0, 0], [4, 5, 0.5, 0, 0]]
    volume = dict(config, n_in=1, img_size=[4, 5, 6], ndim=3)
    with pytest.raises(CnnDepthError, match=re.escape("the model takes (1, 4, 5, 6) (channels, depth, height, "
                                                      "width) as it was trained: give a volume")):
        check_array(np.zeros((1, 4, 5, 5)), volume, "x")
    assert depth_slices(16) == [0, 4, 8, 11, 15] and depth_slices(3) == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------------
# Figures from saved models


def _check_png(path, min_w=400, min_h=200):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] >= min_w and im.size[1] >= min_h, im.size


@pytest.fixture(scope="module")
def runs(tmp_path_factory, toy1d, toy3d):
    """Run folders as ``sweep --save-models`` writes them: the trained toys (bn) beside untrained models."""
    series, volumes = tmp_path_factory.mktemp("series"), tmp_path_factory.mktemp("volumes")
    vocab, stats = ["up", "down"], ([0.0], [1.0])
    save_run_model(model_path(series, "bn", 3, 0), toy1d[0], vocab=vocab, stats=stats)
    save_run_model(model_path(volumes, "bn", 2, 0), toy3d[0], vocab=vocab, stats=stats)
    torch.manual_seed(0)
    save_run_model(model_path(series, "bn", 6, 0), depth_cnn(6, n_in=1, n_out=2, img_size=LENGTH, ndim=1),
                   vocab=vocab, stats=stats)
    save_run_model(model_path(series, "mlp", 2, 0), depth_cnn(2, n_in=1, n_out=2, arch="mlp", img_size=LENGTH,
                                                              ndim=1), vocab=vocab, stats=stats)
    save_run_model(model_path(volumes, "bn", 5, 0), depth_cnn(5, n_in=1, n_out=2, img_size=SIDE, ndim=3),
                   vocab=vocab, stats=stats)
    return series, volumes


def test_explain_run_of_a_series_writes_line_plots(runs, toy1d, tmp_path):
    _, (x, y, centres) = toy1d
    notes = []
    paths = explain_run(runs[0], 3, arch="bn", array=x[0].numpy(), label=["up", "down"][int(y[0])],
                        out=tmp_path, log=notes.append)
    assert [p.name for p in paths] == ["input.png", "feature_maps.png", "gradcam.png"]
    for p in paths:
        _check_png(p, 700)
    assert notes[-1].startswith(f"bn-d3-s0: the given array (true: {['up', 'down'][int(y[0])]}): predicted "
                                f"{['up', 'down'][int(y[0])]}")
    _check_png(paths[1], 700, 400)  # a row per stage: stem, stage1, stage2


def test_explain_run_of_a_volume_writes_slices(runs, toy3d, tmp_path):
    _, (x, y, _) = toy3d
    paths = explain_run(runs[1], 2, arch="bn", array=x[1, 0].numpy(), out=tmp_path)  # (D, H, W): one channel
    assert [p.name for p in paths] == ["input.png", "feature_maps.png", "gradcam.png"]
    for p in paths:
        _check_png(p, 700)


def test_explain_depths_and_mlps_of_series_and_volumes(runs, toy1d, toy3d, tmp_path):
    a1, a3 = toy1d[1][0][2].numpy(), toy3d[1][0][2].numpy()
    path = explain_depths(runs[0], arch="bn", array=a1, out=tmp_path / "s")
    _check_png(path, 900, 400)  # two rows (depths 3 and 6)
    path = explain_depths(runs[1], arch="bn", array=a3, target="down", out=tmp_path / "v")
    _check_png(path, 900, 400)
    notes = []
    paths = explain_run(runs[0], arch="mlp", array=a1, out=tmp_path / "m", log=notes.append)
    assert [p.name for p in paths] == ["input.png", "hidden_layers.png"] and "no feature maps" in notes[-1]


def test_explain_reads_an_npy_array(runs, toy1d, tmp_path):
    arrays = pytest.importorskip("cnn_depth.arrays")
    if not hasattr(arrays, "load_array"):
        pytest.skip("cnn_depth.arrays has no load_array yet")
    path = tmp_path / "one.npy"
    np.save(path, toy1d[1][0][0].numpy())
    paths = explain_run(runs[0], 3, arch="bn", image=path, out=tmp_path / "out")
    assert [p.name for p in paths] == ["input.png", "feature_maps.png", "gradcam.png"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(array=np.zeros((1, 100))), "the array has shape (1, 100); the model takes (1, 128) (channels, length)"),
    (dict(array=np.full(128, np.inf)), "the array has infinite values"),
    (dict(array=np.zeros(128), index=1), "give one input: array=, image= or index="),
    (dict(), "this saved model records no data source to pick --index from; pass --image FILE.npy"),
    (dict(array=np.zeros(128), target="sideways"), "unknown target class 'sideways'; choose one of: up, down"),
])
def test_bad_array_input_is_one_line_and_writes_nothing(runs, kwargs, message, tmp_path):
    with pytest.raises(CnnDepthError, match=re.escape(message)) as e:
        explain_run(runs[0], 3, arch="bn", out=tmp_path / "out", **kwargs)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_an_image_model_takes_no_array(tmp_path):
    save_run_model(model_path(tmp_path, "bn", 2, 0), depth_cnn(2), vocab=list("abcdefghij"))
    with pytest.raises(CnnDepthError, match=re.escape("array= is for 1D and 3D models (series, volumes)")):
        explain_run(tmp_path, array=np.zeros((3, 32, 32)))


# ---------------------------------------------------------------------------------------------------------
# Runs over array folders, end to end: dataloaders, a Learner, a saved model, explain by index and by file


def _write_series(root, g):
    """train/ and valid/ folders of up/down series, 8 of each class in each, as .npy files."""
    for split in ("train", "valid"):
        x, y, _ = bumps(16, g)
        for i, (a, label) in enumerate(zip(x, y)):
            folder = root / split / ["up", "down"][int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / f"{i:03d}.npy", a.numpy())
    return root


@pytest.mark.parametrize("kind", ["series", "volumes"])
def test_a_saved_run_over_arrays_explains_by_index_and_by_file(kind, tmp_path):
    from typer.testing import CliRunner

    from cnn_depth import dataloaders, depth_learner
    from cnn_depth.cli import app
    from cnn_depth.volumes import synthetic_volumes

    if kind == "series":
        root = _write_series(tmp_path / "data", torch.Generator().manual_seed(1))
    else:
        root = synthetic_volumes(4, 8, 0, tmp_path / "data")
    dls = dataloaders(str(root), bs=8, device="cpu")
    learn = depth_learner(dls, depth=2, arch="bn")
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 3e-3)
    run = tmp_path / "run"
    save_run_model(model_path(run, "bn", 2, 0), learn, seed=0)
    notes = []
    paths = explain_run(run, index=5, out=tmp_path / "by-index", log=notes.append)
    assert [p.name for p in paths] == ["input.png", "feature_maps.png", "gradcam.png"]
    name = "series" if kind == "series" else "volume"
    assert re.match(rf"bn-d2-s0: validation {name} 5 \(true: \w+\): predicted \w+", notes[-1]), notes
    file = sorted((root / "valid").glob("*/*.npy"))[0]
    r = CliRunner().invoke(app, ["explain", str(run), "--image", str(file), "--out", str(tmp_path / "by-file")])
    assert r.exit_code == 0, r.output
    assert f"array {file.name}: predicted" in r.output and (tmp_path / "by-file" / "gradcam.png").is_file()
    r = CliRunner().invoke(app, ["explain", str(run), "--index", "999"])
    assert r.exit_code == 2 and "--index 999 is out of range: the run's validation split has" in r.output
