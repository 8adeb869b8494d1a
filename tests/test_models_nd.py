"""The families in 1, 2 and 3 dimensions: one definition, ``ndim`` a parameter.

Every registered model × every ndim: those that take it build and run on several sizes and depths (tiny
inputs too); those that do not are refused in one line naming the archs that do. Parameter counts follow the
conv formula in every ndim; the 2D models are the ones the 2D-only code built (same weights under a seed).
"""
import hashlib
import math
import re

import pytest
import torch
from typer.testing import CliRunner

from cnn_depth import CnnDepthError, count_params, depth_cnn, list_models
from cnn_depth.checkpoint import (check_checkpoint, checkpoint_dict, load_run_model, model_path, save_run_model,
                                  write_checkpoint)
from cnn_depth.cli import app
from cnn_depth.explain import stage_outputs
from cnn_depth.models import (NDIMS, STAGE_WIDTHS, STEM_WIDTH, check_input_size, check_ndim, count_macs,
                              mlp_widths, model_spec, model_table, stage_sizes)
from cnn_depth.run import macs_per_image

FAMILIES = [m for m in list_models() if model_spec(m).depth is None]
CONV_FAMILIES = [m for m in FAMILIES if model_spec(m).kind == "cnn"]
TWO_D_ONLY = [m for m in list_models() if model_spec(m).ndims == (2,)]
SIZES = {1: [(1,), (2,), (7,), (150,)], 3: [(1, 1, 1), (2, 3, 5), (9, 16, 12)]}
DEPTHS = [1, 2, 4, 7, 20]
CHANNELS = {1: 6, 3: 1}  # a multivariate series (BasicMotions has 6), a gray volume
runner = CliRunner()


def expected_params(arch: str, depth: int, n_in: int, n_out: int, ndim: int, sides=()) -> int:
    """The parameter count by hand: a conv has ni × nf × 3**ndim weights, plus a bias (plain) or a BN's
    weight and bias (bn, residual); a residual projection is a 1×1 conv-BN; the head is linear."""
    if arch == "mlp":
        count, ni = 0, n_in * math.prod(sides)
        for nf in mlp_widths(depth):
            count, ni = count + ni * nf + nf, nf
        return count + ni * n_out + n_out
    k = 3 ** ndim

    def conv(ni, nf, ks=k):
        return ni * nf * ks + (nf if arch == "plain" else 2 * nf)

    count, ni = conv(n_in, STEM_WIDTH), STEM_WIDTH
    for nf, n in zip(STAGE_WIDTHS, stage_sizes(depth)):
        count += sum(conv(ni if i == 0 else nf, nf) for i in range(n))
        if arch == "residual":
            count += conv(ni, nf, ks=1)  # each stage's first block changes width and stride: a projection
        ni = nf
    return count + ni * n_out + n_out


def fingerprint(model) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(f"{k}{tuple(v.shape)}".encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# Every model × every ndim


@pytest.mark.parametrize("ndim", [1, 3])
@pytest.mark.parametrize("arch", list_models())
def test_every_model_in_every_ndim_builds_and_runs_or_is_refused_in_one_line(arch, ndim):
    spec = model_spec(arch)
    if ndim not in spec.ndims:
        with pytest.raises(CnnDepthError) as e:
            depth_cnn(spec.depth, arch=arch, img_size=16, ndim=ndim)
        assert "\n" not in str(e.value)
        assert str(e.value).startswith(f"arch {arch} takes 2D inputs (images) only, not {ndim}D "
                                       f"{'series' if ndim == 1 else 'volumes'}; for {ndim}D data use one of: "
                                       f"plain, bn, residual, mlp")
        return
    n_in = CHANNELS[ndim]
    for depth in DEPTHS:
        for sides in SIZES[ndim]:
            model = depth_cnn(depth, n_in=n_in, n_out=5, arch=arch, img_size=sides, ndim=ndim).eval()
            assert model.config == dict(arch=arch, depth=depth, n_in=n_in, n_out=5, img_size=list(sides), ndim=ndim)
            with torch.no_grad():
                y = model(torch.randn(3, n_in, *sides))
            assert y.shape == (3, 5) and torch.isfinite(y).all()
            assert count_params(model) == expected_params(arch, depth, n_in, 5, ndim, sides)


@pytest.mark.parametrize("ndim", NDIMS)
@pytest.mark.parametrize("arch", CONV_FAMILIES)
def test_the_head_is_independent_of_the_input_size_and_tiny_inputs_train(arch, ndim):
    model = depth_cnn(20, n_in=2, n_out=3, arch=arch, img_size=8, ndim=ndim).train()
    for n in (1, 2, 5, 33):  # a stride-2 conv maps n to ceil(n / 2): never below 1, at any depth
        model(torch.randn(2, 2, *[n] * ndim)).sum().backward()  # batch 2: BN needs more than one value
    check_input_size(arch, 20, (1,) * ndim)


@pytest.mark.parametrize("ndim", NDIMS)
@pytest.mark.parametrize("arch", CONV_FAMILIES)
@pytest.mark.parametrize("depth", [1, 3, 4, 9])
def test_depth_means_main_path_convs_and_stages_halve_every_axis(arch, ndim, depth):
    model = depth_cnn(depth, n_in=1, arch=arch, img_size=8, ndim=ndim)
    conv_type = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[ndim - 1]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert all(isinstance(m, conv_type) for m in convs)
    assert sum(m.kernel_size == (3,) * ndim for m in convs) == depth
    sides = (11, 6, 9)[:ndim]
    outs = stage_outputs(model, torch.randn(1, *sides))
    widths = [STEM_WIDTH] + list(STAGE_WIDTHS[:len(stage_sizes(depth))])
    assert [tuple(o.shape[1:]) for _, o in outs] == [(w, *[math.ceil(s / 2 ** i) for s in sides])
                                                     for i, w in enumerate(widths)]
    assert isinstance(model.head[0], (torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d,
                                      torch.nn.AdaptiveAvgPool3d)[ndim - 1])


@pytest.mark.parametrize("ndim,sides", [(1, (150,)), (2, (28, 20)), (3, (8, 10, 12))])
def test_mlp_flattens_any_ndim(ndim, sides):
    model = depth_cnn(3, n_in=2, n_out=4, arch="mlp", img_size=sides, ndim=ndim)
    assert model.hidden1[0].in_features == 2 * math.prod(sides)
    assert model(torch.randn(5, 2, *sides)).shape == (5, 4)


# ---------------------------------------------------------------------------------------------------------
# 2D unchanged


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("depth", [1, 3, 8, 20])
def test_2d_params_follow_the_formula(arch, depth):
    model = depth_cnn(depth, arch=arch)
    assert count_params(model) == expected_params(arch, depth, 3, 10, 2, (32, 32))
    assert count_params(depth_cnn(20, arch="bn")) == 1_078_170  # as `cnn-depth models --depth 20` printed before


@pytest.mark.parametrize("arch,depth,expected", [
    ("plain", 3, "ff2a7e79f674a8b6"), ("bn", 7, "028411e50be40377"), ("residual", 9, "e6b9c32e3a1701b5"),
    ("mlp", 3, "4dd14aa4a5557855"),
])
def test_2d_models_are_the_2d_only_codes_weight_for_weight(arch, depth, expected):
    """The fingerprints (parameter names, shapes and values under torch.manual_seed(0)) were taken from the
    models built by the 2D-only code (commit 7dda7a4) on torch 2.14: same modules, order and initialisation,
    so recorded studies rerun the same. (A torch that changes its initialisers changes them too.)"""
    torch.manual_seed(0)
    model = depth_cnn(depth, n_in=3, n_out=10, arch=arch, img_size=32)
    assert fingerprint(model) == expected
    torch.manual_seed(0)
    assert fingerprint(depth_cnn(depth, n_in=3, n_out=10, arch=arch, img_size=(32, 32), ndim=2)) == expected


# ---------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("arch", TWO_D_ONLY)
def test_check_ndim_names_the_archs_that_take_the_dimension(arch):
    assert check_ndim(arch, 2) == 2
    for ndim, what in ((1, "series"), (3, "volumes")):
        with pytest.raises(CnnDepthError, match=re.escape(
                f"arch {arch} takes 2D inputs (images) only, not {ndim}D {what}; for {ndim}D data use one of: "
                f"plain, bn, residual, mlp")):
            check_ndim(arch, ndim)
    # the sweep's check of the data's size says the same from a series' or volume's img_size
    with pytest.raises(CnnDepthError, match="takes 2D inputs"):
        check_input_size(arch, None, (150,))


@pytest.mark.parametrize("kwargs,message", [
    (dict(ndim=0), "ndim must be a whole number ≥ 1, got 0 (1: series, 2: images, 3: volumes)"),
    (dict(ndim=4), "ndim must be at most 3, got 4"),
    (dict(ndim="1"), "ndim must be a whole number ≥ 1, got '1'"),
    (dict(ndim=1.0), "ndim must be a whole number"),
    (dict(ndim=True), "ndim must be a whole number"),
    (dict(ndim=1, img_size=(16, 16)), "img_size (16, 16) does not fit 1D inputs (series): give one whole number "
                                      "(the length)"),
    (dict(ndim=3, img_size=(16, 16)), "img_size (16, 16) does not fit 3D inputs (volumes): give one whole number or "
                                      "3 (depth, height, width)"),
    (dict(ndim=3, img_size=(4, 0, 4)), "img_size must be a whole number ≥ 1, got 0"),
    (dict(ndim=2, img_size=(32,)), "does not fit 2D inputs (images)"),
    (dict(arch="resnet18", depth=None, ndim=1), "arch resnet18 takes 2D inputs (images) only, not 1D series"),
])
def test_bad_dimensions_are_one_line(kwargs, message):
    with pytest.raises(CnnDepthError, match=re.escape(message)) as e:
        depth_cnn(**dict(dict(depth=3), **kwargs))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("ndim,sides", [(1, (96,)), (3, (6, 10, 8))])
def test_checkpoint_round_trip_in_1d_and_3d(arch, ndim, sides, tmp_path):
    torch.manual_seed(0)
    n_in = CHANNELS[ndim]
    model = depth_cnn(5, n_in=n_in, n_out=4, arch=arch, img_size=sides, ndim=ndim)
    x = torch.randn(3, n_in, *sides)
    with torch.no_grad():  # a few BN statistics, so that the saved buffers are not the defaults
        model.train()(x)
    path = save_run_model(model_path(tmp_path, arch, 5, 0), model, vocab=list("abcd"),
                          stats=([0.1] * n_in, [2.0] * n_in), seed=0)
    loaded, info = load_run_model(tmp_path)
    assert info["config"] == dict(arch=arch, depth=5, n_in=n_in, n_out=4, img_size=list(sides), ndim=ndim)
    assert loaded.config == model.config and loaded.vocab == list("abcd")
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert torch.load(path, weights_only=True)["config"]["ndim"] == ndim


def test_checkpoints_written_before_ndim_load_as_2d(tmp_path):
    torch.manual_seed(0)
    model = depth_cnn(3, n_in=1, n_out=3, arch="residual", img_size=28)
    ckpt = checkpoint_dict(model, vocab=["a", "b", "c"])
    del ckpt["config"]["ndim"]  # as every file saved before 1D/3D models existed
    for size in ([28, 28], 28):  # [h, w] as written, or one int
        ckpt["config"]["img_size"] = size
        path = model_path(tmp_path, "residual", 3, 0)
        write_checkpoint(path, ckpt)
        loaded, info = load_run_model(tmp_path)
        assert loaded.config == dict(arch="residual", depth=3, n_in=1, n_out=3, img_size=[28, 28], ndim=2)
        x = torch.randn(2, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.parametrize("change,message", [
    (dict(ndim=4), "config.ndim is 4, not a dimension bn takes (1 or 2 or 3)"),
    (dict(ndim="1"), "config.ndim is a string '1', not a dimension bn takes"),
    (dict(ndim=3), "config.img_size is a list [64], not [depth, height, width], each from 1 to 2048"),
    (dict(img_size=[64, 64]), "config.img_size is a list [64, 64], not [length], each from 1 to 4194304"),
    (dict(img_size=[0]), "config.img_size is a list [0], not [length]"),
    (dict(n_in=0), "config.n_in is 0, not a whole number of channels from 1 to 4096"),
    (dict(arch="simplecnn", depth=3), "config.ndim is 1, not a dimension simplecnn takes (2)"),
])
def test_a_damaged_nd_config_is_one_line(change, message):
    ckpt = checkpoint_dict(depth_cnn(2, n_in=6, n_out=4, img_size=64, ndim=1))
    ckpt["config"].update(change)
    with pytest.raises(CnnDepthError, match=re.escape(f"m.pt: {message}")) as e:
        check_checkpoint(ckpt, "m.pt")
    assert "\n" not in str(e.value)
    ckpt = checkpoint_dict(depth_cnn(2, n_in=6, n_out=4, img_size=64, ndim=1))
    assert check_checkpoint(ckpt, "m.pt") is ckpt  # 6 channels are fine for a series (an image has 1 or 3)


# ---------------------------------------------------------------------------------------------------------
# Costs: params and MACs per input


def test_macs_per_input_by_hand_in_1d_and_3d():
    # 1D, length 100: the stem's 3-tap conv at full length, then a stride-2 conv to 50 samples, then the head
    one = dict(arch="bn", depth=2, n_in=1, n_out=2, img_size=[100], ndim=1)
    assert macs_per_image(one) == 16 * 100 * 1 * 3 + 32 * 50 * 16 * 3 + 32 * 2
    # 3D, 8×10×12: 3×3×3 kernels; stride 2 maps the volume to 4×5×6
    three = dict(arch="residual", depth=2, n_in=1, n_out=2, img_size=[8, 10, 12], ndim=3)
    assert macs_per_image(three) == 16 * 960 * 27 + 32 * 120 * 16 * 27 + 32 * 120 * 16 + 32 * 2  # + projection
    mlp = dict(arch="mlp", depth=2, n_in=2, n_out=2, img_size=[8, 10, 12], ndim=3)
    assert macs_per_image(mlp) == 2 * 960 * 256 + 256 * 128 + 128 * 2
    # a config written before ndim: an image model
    assert macs_per_image(dict(arch="bn", depth=3, n_in=3, n_out=10, img_size=[32, 32])) == 2_802_304


def test_model_table_lists_the_models_of_a_dimension_with_params_and_macs():
    rows = model_table(1, depth=8, n_in=1, n_out=2, img_size=150)
    assert [r["arch"] for r in rows] == FAMILIES
    for r in rows:
        model = depth_cnn(8, n_in=1, n_out=2, arch=r["arch"], img_size=150, ndim=1)
        assert r["params"] == count_params(model) and r["macs"] == count_macs(model, (1, 150))
        assert r["dims"] == "1D/2D/3D" and r["family"]
    everything = model_table(macs=False)
    assert [r["arch"] for r in everything] == list_models() and all(r["macs"] is None for r in everything)
    assert {r["arch"]: r["dims"] for r in everything}["resnet18"] == "2D"


def test_cli_models_by_dimension():
    r = runner.invoke(app, ["models", "--dims", "1", "--size", "150", "--depth", "8", "--n-in", "1"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "1D inputs (series) of 1×150 (channels, length), 10 classes; families at depth 8"
    bn = depth_cnn(8, n_in=1, arch="bn", img_size=150, ndim=1)
    assert re.search(rf"^bn\s+8\s+{count_params(bn):,}\s+{count_macs(bn, (1, 150)):,}\s", r.output, re.M)
    assert lines[-1] == f"2D only: {', '.join(TWO_D_ONLY)}"
    r = runner.invoke(app, ["models", "--size", "28x28x28", "--n-in", "1", "--depth", "4"])
    assert r.exit_code == 0 and r.output.startswith("3D inputs (volumes) of 1×28×28×28")
    r = runner.invoke(app, ["models", "--depth", "20"])  # the default: every model, its dims, its params
    assert r.exit_code == 0
    assert re.search(r"^bn\s+1D/2D/3D\s+20\s+1,078,170\s", r.output, re.M)
    assert re.search(r"^simplecnn\s+2D\s+3\s+33,834\s", r.output, re.M)
    for args, message in ((["--dims", "4"], "--dims must be at most 3"),
                          (["--size", "3x"], "--size '3x' is not a size"),
                          (["--dims", "3", "--size", "16x32"],
                           "--size 16x32 has 2 sides; --dims 3 takes one number or 3")):
        r = runner.invoke(app, ["models", *args])
        assert r.exit_code == 2 and r.output.startswith("error: ") and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
