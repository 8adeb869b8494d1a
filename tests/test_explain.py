"""Explaining saved models: safe checkpoints, feature maps, Grad-CAM, activation statistics, PNGs, CLI errors.

A module fixture trains three tiny bn learners (80 images, one epoch) and saves them the way a sweep with
``--save-models`` does; the per-model tests parametrise over the whole registry with untrained models.
"""
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fastai.torch_core import set_seed
from PIL import Image
from typer.testing import CliRunner

from cnn_depth import (CnnDepthError, activation_stats, dataloaders, depth_cnn, depth_learner, feature_maps,
                       grad_cam, layer_table, list_models, load_run_model, save_run_model)
from cnn_depth.records import ACTIVATION_CSV_COLUMNS, model_path, run_id, write_rows
from cnn_depth.cli import app
from cnn_depth.data import load_image
from cnn_depth.reports import plot_activations
from cnn_depth.explain import (explain_depths, explain_run, fixed_valid_batch, hidden_units, normalise,
                               relu_layers, valid_items)
from cnn_depth.models import STAGE_WIDTHS, STEM_WIDTH, model_spec, stage_sizes

RUNS = [("bn", 2, 0), ("bn", 2, 1), ("bn", 3, 0)]  # (arch, depth, seed)
BIG = {"resnet50", "vgg16"}  # forward passes in test_transfer.py only
MODELS = [(a, model_spec(a).depth or d) for a in list_models() if a not in BIG
          for d in ((1, 6) if model_spec(a).depth is None else (None,))]
CONV_MODELS = [(a, d) for a, d in MODELS if model_spec(a).kind != "mlp"]
MLP_MODELS = [(a, d) for a, d in MODELS if model_spec(a).kind == "mlp"]
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dls():
    return dataloaders("cifar10-sample", bs=16, max_per_class=8, device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dls):
    """A run folder as ``sweep --save-models`` writes it, and the trained learners by (arch, depth, seed)."""
    run_dir = tmp_path_factory.mktemp("run")
    learners = {}
    for arch, depth, seed in RUNS:
        set_seed(seed)
        learn = depth_learner(tiny_dls, depth=depth, arch=arch)
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(1, 3e-3)
        save_run_model(model_path(run_dir, arch, depth, seed), learn, run_id=run_id(arch, depth, seed), seed=seed,
                       dataset="cifar10-sample")
        learners[arch, depth, seed] = learn
    return run_dir, learners


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def test_loaded_model_gives_identical_outputs(run, tiny_dls):
    run_dir, learners = run
    xb = fixed_valid_batch(tiny_dls, 16)
    for (arch, depth, seed), learn in learners.items():
        model, info = load_run_model(run_dir, depth, seed)
        assert not model.training and info["run_id"] == f"{arch}-d{depth}-s{seed}"
        with torch.no_grad():
            assert torch.equal(model(xb), learn.model.eval()(xb))
        assert info["vocab"] == list(tiny_dls.vocab) == model.vocab
        assert info["stats"] == dict(mean=tiny_dls.data_info.stats[0], std=tiny_dls.data_info.stats[1])
        assert info["source"]["name"] == "cifar10-sample" and info["source"]["max_per_class"] == 8
        assert info["meta"] == dict(run_id=info["run_id"], seed=seed, dataset="cifar10-sample")


def test_file_loads_with_weights_only(run):
    ckpt = torch.load(model_path(run[0], "bn", 3, 0), weights_only=True)
    assert ckpt["format"] == "cnn-depth-model" and ckpt["version"] == 1
    assert ckpt["config"] == dict(arch="bn", depth=3, n_in=3, n_out=10, img_size=[32, 32], ndim=2)
    assert ckpt["source"]["train_name"] == "train" and ckpt["source"]["valid_name"] == "test"
    assert all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())


def test_lowest_seed_is_taken_and_said(run):
    _, info = load_run_model(run[0], 2)
    assert info["seed"] == 0 and info["seeds"] == [0, 1] and "using seed 0, the lowest" in info["note"]
    _, info = load_run_model(run[0], 3)
    assert info["seed"] == 0 and info["note"] is None


def test_save_needs_config_and_plain_meta(tmp_path, tiny_dls):
    with pytest.raises(CnnDepthError, match="no .config"):
        save_run_model(tmp_path / "m.pt", torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="plain data only"):
        save_run_model(tmp_path / "m.pt", depth_cnn(2), tiny_dls, note=object())


# ---------------------------------------------------------------------------------------------------------
# Feature maps, Grad-CAM, activation statistics: every registered model


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)], ids=["rgb32", "gray28"])
@pytest.mark.parametrize("arch,depth", CONV_MODELS)
def test_feature_maps_match_each_stage(arch, depth, shape):
    model = depth_cnn(depth, n_in=shape[0], arch=arch, img_size=shape[1:])
    maps = feature_maps(model, torch.randn(2, *shape))
    names = [n for n, _ in model.named_children() if n != "head"]
    assert [n for n, _ in maps] == names
    rows = layer_table(model, shape)  # leaf layers in execution order: a stage's last one gives its output
    for name, fm in maps:
        assert fm.shape == (2, *[r for r in rows if r["layer"].startswith(name + ".")][-1]["output_shape"][1:])
    if model_spec(arch).depth is None:  # the stride rule: the stem keeps the size, each stage halves it
        widths = [STEM_WIDTH] + list(STAGE_WIDTHS[:len(stage_sizes(depth))])
        sizes = [[math.ceil(s / 2 ** i) for s in shape[1:]] for i in range(len(widths))]
        assert [tuple(fm.shape[1:]) for _, fm in maps] == [(w, *s) for w, s in zip(widths, sizes)]


@pytest.mark.parametrize("arch,depth", CONV_MODELS)
def test_grad_cam_in_unit_range_at_input_size(arch, depth):
    torch.manual_seed(0)
    model = depth_cnn(depth, arch=arch).train()
    x = torch.randn(3, 32, 32)
    for target in (None, 7):
        cam = grad_cam(model, x, target)
        assert cam.shape == (32, 32) and torch.isfinite(cam).all()
        assert 0 <= float(cam.min()) and float(cam.max()) <= 1
    assert model.training and all(p.grad is None for p in model.parameters())  # mode restored, no side effects


def test_grad_cam_flat_map_is_zero_not_nan():
    model = depth_cnn(3, arch="plain")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    cam = grad_cam(model, torch.randn(1, 3, 32, 32))
    assert torch.equal(cam, torch.zeros(32, 32))


def test_grad_cam_target_by_name_and_bad_target():
    model = depth_cnn(2, n_out=3)
    model.vocab = ["cat", "dog", "frog"]
    x = torch.randn(3, 32, 32)
    assert torch.equal(grad_cam(model, x, "dog"), grad_cam(model, x, 1))
    with pytest.raises(CnnDepthError, match="unknown target class 'zebra'; choose one of: cat, dog, frog"):
        grad_cam(model, x, "zebra")


@pytest.mark.parametrize("arch,depth", MLP_MODELS)
def test_mlp_has_hidden_units_not_feature_maps_or_grad_cam(arch, depth):
    model = depth_cnn(depth, n_in=1, arch=arch, img_size=28)
    x = torch.randn(1, 28, 28)
    for fn, what in ((feature_maps, "feature maps"), (grad_cam, "Grad-CAM")):
        with pytest.raises(CnnDepthError, match=f"{arch} has no conv layers, so it has no {what}; for an MLP use "
                                                f"activation_stats") as e:
            fn(model, x)
        assert "\n" not in str(e.value)
    units = hidden_units(model, x)
    assert [(n, tuple(u.shape)) for n, u in units] == [(f"hidden{i + 1}", (1, w)) for i, w in
                                                       enumerate([256, 128, 64, 32, 32, 32][:depth])]
    rows = activation_stats(model, torch.randn(4, 1, 28, 28))  # one row per hidden layer
    assert [(r["stage"], r["index"], r["shape"]) for r in rows] == [(n, i, str(u.shape[1]))
                                                                    for i, (n, u) in enumerate(units, start=1)]
    assert len(rows) == model.config["depth"] and all(0 <= r["frac_zero"] <= 1 for r in rows)
    with pytest.raises(CnnDepthError, match="hidden_units is for MLPs"):
        hidden_units(depth_cnn(2), torch.randn(3, 32, 32))


@pytest.mark.parametrize("arch,depth", [(a, d) for a, d in CONV_MODELS if model_spec(a).kind == "cnn"]
                         + [("residual", 9), ("plain", 20)])
def test_activation_stats_one_row_per_conv_layer(arch, depth):
    model = depth_cnn(depth, arch=arch)
    rows = activation_stats(model, torch.randn(4, 3, 32, 32))
    # one row per ReLU in the conv stages = per main-path conv (1×1 projection shortcuts excluded) = depth
    convs = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and not n.startswith("head")
             and m.kernel_size != (1, 1)]
    assert len(rows) == len(relu_layers(model)) == len(convs) == model.config["depth"]
    assert [r["index"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(0 <= r["frac_zero"] <= 1 and r["std"] >= 0 and r["mean"] >= 0 for r in rows)
    assert rows[0]["stage"] == list(dict(model.named_children()))[0]


def test_fixed_valid_batch_is_the_first_validation_images(tiny_dls):
    xb = fixed_valid_batch(tiny_dls, n=20)
    assert xb.shape == (20, 3, 32, 32) and torch.equal(xb, fixed_valid_batch(tiny_dls, n=20))
    items = valid_items(dict(name="cifar10-sample", max_per_class=8, train_name="train", valid_name="test"))
    assert items == list(tiny_dls.valid_ds.items)  # --index K is the K-th image of the DataLoaders' valid split
    for k in (0, 19):
        assert torch.allclose(xb[k], normalise(load_image(items[k], 3), dict(zip(("mean", "std"), tiny_dls.data_info.stats))),
                              atol=1e-5)


def test_activations_csv_and_plot(run, tiny_dls, tmp_path):
    csv = tmp_path / "activations.csv"
    for (arch, depth, seed), learn in run[1].items():
        rid = run_id(arch, depth, seed)
        rows = [dict(run_id=rid, dataset="cifar10-sample", arch=arch, depth=depth, seed=seed, **r)
                for r in activation_stats(learn.model, fixed_valid_batch(tiny_dls))]
        write_rows(csv, ACTIVATION_CSV_COLUMNS, rows)
    import pandas as pd
    df = pd.read_csv(csv)
    assert list(df.columns) == ["run_id", "dataset", "arch", "depth", "seed", "layer", "stage", "index", "mean",
                                "std", "frac_zero", "shape"]
    assert df.groupby("run_id").size().to_dict() == {"bn-d2-s0": 2, "bn-d2-s1": 2, "bn-d3-s0": 3}
    assert df["frac_zero"].between(0, 1).all() and df.loc[0, "shape"] == "16x32x32"
    png = plot_activations(csv, tmp_path / "activations.png")
    assert Image.open(png).size[0] > 600


# ---------------------------------------------------------------------------------------------------------
# PNGs and the CLI


def _check_pngs(paths):
    assert [p.name for p in paths] == ["input.png", "feature_maps.png", "gradcam.png"]
    for p in paths:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.size[0] > 300 and im.size[1] > 150


def test_explain_run_writes_three_pngs(run):
    notes = []
    paths = explain_run(run[0], 2, log=notes.append)
    assert paths[0].parent == run[0] / "explain" / "bn-d2-s0"
    _check_pngs(paths)
    assert "using seed 0" in notes[0] and "validation image 0 (true: airplane)" in notes[1]


@pytest.mark.slow
@pytest.mark.parametrize("arch,depth", [(a, d) for a, d in CONV_MODELS if d != 1])
def test_explain_every_registered_model(arch, depth, tiny_dls, tmp_path):
    save_run_model(model_path(tmp_path, arch, depth, 0), depth_cnn(depth, arch=arch), tiny_dls)
    _check_pngs(explain_run(tmp_path, index=5, target="cat"))


def test_explain_run_of_an_mlp_shows_its_hidden_layers(tiny_dls, tmp_path):
    save_run_model(model_path(tmp_path, "mlp", 3, 0), depth_cnn(3, arch="mlp"), tiny_dls)
    notes = []
    paths = explain_run(tmp_path, index=2, target="cat", log=notes.append)
    assert [p.name for p in paths] == ["input.png", "hidden_layers.png"]
    assert "an MLP has no conv layers, so no feature maps or Grad-CAM" in notes[-1]
    with Image.open(paths[1]) as im:
        assert im.size[0] > 600 and im.size[1] > 300  # three rows, one per hidden layer


# ---------------------------------------------------------------------------------------------------------
# Depths side by side


@pytest.fixture(scope="module")
def depth_run(tmp_path_factory, tiny_dls):
    """Saved (untrained) bn models of depths 1, 3 and 6 (two seeds of 3), and mlp models of depths 1 and 2."""
    run_dir = tmp_path_factory.mktemp("depths")
    for arch, depth, seed in [("bn", 1, 0), ("bn", 3, 0), ("bn", 3, 1), ("bn", 6, 0), ("mlp", 1, 0), ("mlp", 2, 0)]:
        torch.manual_seed(seed)
        save_run_model(model_path(run_dir, arch, depth, seed), depth_cnn(depth, arch=arch), tiny_dls)
    return run_dir


def test_explain_depths_one_figure_a_row_per_depth(depth_run, tmp_path):
    notes = []
    two = explain_depths(depth_run, [6, 1], arch="bn", index=4, out=tmp_path / "two", log=notes.append)
    three = explain_depths(depth_run, None, arch="bn", index=4, target="cat", out=tmp_path / "all", log=notes.append)
    assert two == tmp_path / "two" / "depths.png"
    with Image.open(two) as a, Image.open(three) as b:
        a.verify()
        assert b.size[1] > a.size[1] * 1.3 and a.size[0] > 900  # a row per depth; 2 + 4 stages + Grad-CAM wide
    assert [n for n in notes if n.startswith("several seeds")] == [
        "several seeds saved; using the lowest (pass --seed to pick one): depth 3: seed 0 of 0, 1"]
    predicted = [n for n in notes if "predicted" in n]
    assert [n.split(":")[0] for n in predicted] == ["bn-d1-s0", "bn-d6-s0", "bn-d1-s0", "bn-d3-s0", "bn-d6-s0"]
    assert all("validation image 4 (true: airplane)" in n for n in predicted)
    default = explain_depths(depth_run, [1, 3], arch="bn")
    assert default == depth_run / "explain" / "bn-d1_3" / "depths.png"


def test_explain_depths_of_mlps(depth_run, tmp_path):
    path = explain_depths(depth_run, arch="mlp", out=tmp_path)
    with Image.open(path) as im:
        assert im.size[0] > 500 and im.size[1] > 300


@pytest.mark.parametrize("kwargs,message", [
    (dict(depths=[3, 4], arch="bn"), "depth 4 is not saved in"),
    (dict(depths=[3]), "holds models of several archs (bn, mlp); pick one with --arch"),
    (dict(depths=[1, 6], arch="bn", seed=1), "seed 1 is not saved for bn depth 1"),
    (dict(depths=[1], arch="bn", target="zebra"), "unknown target class 'zebra'"),
    (dict(depths=[1], arch="bn", index=3, image="x.png"), "give --image or --index, not both"),
])
def test_explain_depths_bad_input_is_one_line(depth_run, kwargs, message):
    with pytest.raises(CnnDepthError, match=re.escape(message)) as e:
        explain_depths(depth_run, **kwargs)
    assert "\n" not in str(e.value)
    if "depth 4" in message:
        assert str(e.value).endswith("saved depths: 1, 3, 6")


def test_cli_explain_depths(depth_run, tmp_path):
    r = runner.invoke(app, ["explain", str(depth_run), "--depths", "1", "6", "--arch", "bn", "--index", "1", "--out",
                            str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines() == [str(tmp_path / "depths.png")]
    r = runner.invoke(app, ["explain", str(depth_run), "--depths", "all", "--arch", "mlp", "--out", str(tmp_path)])
    assert r.exit_code == 0 and "mlp-d2-s0: validation image 0" in r.output
    for args, message in ((["--depths", "1", "--depth", "3"], "give --depth N (one model) or --depths 2 4 8"),
                          (["--depths", "x"], "depths: 'x' is not a whole number or a range")):
        r = runner.invoke(app, ["explain", str(depth_run), "--arch", "bn", *args])
        assert r.exit_code == 2 and r.output.startswith("error: ") and message in r.output
        assert len(r.output.strip().splitlines()) == 1


def test_cli_explain_with_image(run, tmp_path):
    img = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 24, 3), dtype=np.uint8)).save(img)
    r = runner.invoke(app, ["explain", str(run[0]), "--depth", "3", "--image", str(img), "--target", "cat",
                            "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "image photo.jpg: predicted" in r.output
    for name in ("input.png", "feature_maps.png", "gradcam.png"):
        assert str(tmp_path / "out" / name) in r.output
    _check_pngs([tmp_path / "out" / n for n in ("input.png", "feature_maps.png", "gradcam.png")])


@pytest.mark.parametrize("case,args,message", [
    ("missing_dir", ["--depth", "2"], "no such run folder"),
    ("empty_dir", ["--depth", "2"], "has no saved models (models/{arch}-d{depth}-s{seed}.pt); to save them, run "
                                    "`cnn-depth sweep <the options that made it> --out "),
    ("corrupt", ["--depth", "4"], "cannot read saved model"),
    ("run", ["--depth", "9"], "no saved model of depth 9 in"),
    ("run", ["--depth", "2", "--seed", "7"], "seed 7 is not saved for bn depth 2"),
    ("run", ["--depth", "3", "--arch", "plain"], "arch 'plain' is not in"),
    ("run", ["--depth", "3", "--image", "IMG"], "cannot read"),
    ("run", ["--depth", "3", "--image", "nope.png"], "no such image file"),
    ("run", ["--depth", "3", "--image", "DIR"], "is not a regular file (a FIFO, device or folder)"),
    ("run", ["--depth", "3", "--image", "FIFO"], "is not a regular file (a FIFO, device or folder)"),
    ("run", ["--depth", "3", "--image", "/dev/zero"], "is not a regular file (a FIFO, device or folder)"),
    ("run", ["--depth", "3", "--target", "zebra"], "unknown target class 'zebra'; choose one of: airplane, "),
    ("run", ["--depth", "3", "--index", "999"], "--index 999 is out of range: the run's validation split has 80"),
    ("run", ["--depth", "3", "--index", "1", "--image", "IMG"], "give --image or --index, not both"),
])
def test_bad_input_is_one_line_and_exit_2(case, args, message, run, tmp_path):
    run_dir = run[0] if case == "run" else tmp_path / "run"
    if case == "empty_dir":
        run_dir.mkdir()
    if case == "corrupt":
        (run_dir / "models").mkdir(parents=True)
        model_path(run_dir, "bn", 4, 0).write_bytes(b"PK\x03\x04 truncated")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    os.mkfifo(tmp_path / "fifo.png")  # opening it for reading would block forever
    (tmp_path / "folder.png").mkdir()
    named = {"IMG": str(bad), "nope.png": str(tmp_path / "nope.png"), "DIR": str(tmp_path / "folder.png"),
             "FIFO": str(tmp_path / "fifo.png")}
    args = [named.get(a, a) for a in args]
    r = runner.invoke(app, ["explain", str(run_dir), *args])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and message in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    if case == "run" and "--depth" in args and "9" in args:
        assert "saved depths: 2, 3" in r.output
    if "--seed" in args:
        assert "saved seeds: 0, 1" in r.output


@pytest.mark.slow
def test_sweep_save_models_then_explain_from_the_cli(tmp_path):
    """End to end: `cnn-depth sweep --save-models` writes loadable models that `cnn-depth explain` reads."""
    out = tmp_path / "sweep"
    r = CliRunner().invoke(app, ["sweep", "--depths", "1", "3", "--epochs", "1", "--max-per-class", "8", "--bs", "16",
                                 "--device", "cpu", "--quiet", "--save-models", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "models").iterdir()) == ["bn-d1-s0.pt", "bn-d3-s0.pt"]
    ckpt = torch.load(out / "models" / "bn-d3-s0.pt", weights_only=True)
    assert ckpt["config"]["depth"] == 3 and ckpt["meta"]["run_id"] == "bn-d3-s0"
    model, info = load_run_model(out, 3, seed=0)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    r = CliRunner().invoke(app, ["explain", str(out), "--depth", "3", "--index", "5"])
    assert r.exit_code == 0, r.output
    _check_pngs([Path(line) for line in r.stdout.splitlines() if line.endswith(".png")])


@pytest.mark.slow
def test_explain_without_models_names_the_command_that_saves_them(tmp_path):
    """The advice is true: running the command the error names gives explain its model."""
    import shlex

    out = tmp_path / "sweep"
    small = ["--epochs", "1", "--max-per-class", "8", "--bs", "16", "--device", "cpu", "--quiet"]
    assert CliRunner().invoke(app, ["sweep", "--depths", "2", *small, "--out", str(out)]).exit_code == 0
    r = CliRunner().invoke(app, ["explain", str(out)])
    assert r.exit_code == 2 and "has no saved models" in r.stderr
    command = r.stderr.split("`")[1]
    args = shlex.split(command)
    assert args[:4] == ["cnn-depth", "sweep", "--depths", "2"] and args[-3:] == ["--out", str(out), "--save-models"]
    assert "--max-per-class" in args and "--bs" in args and "--epochs" in args
    rows = (out / "results.csv").read_text().splitlines()
    r = CliRunner().invoke(app, args[1:] + ["--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (out / "models" / "bn-d2-s0.pt").exists()
    after = (out / "results.csv").read_text().splitlines()
    acc = rows[0].split(",").index("accuracy")
    assert len(after) == len(rows) and after[1].split(",")[acc] == rows[1].split(",")[acc]  # same seed, same number
    r = CliRunner().invoke(app, ["explain", str(out), "--index", "1"])
    assert r.exit_code == 0, r.output
