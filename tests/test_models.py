"""The model family and presets: every registered model, several depths, RGB 32×32 and gray 28×28."""
import re

import pytest
import torch

from cnn_depth import CnnDepthError, count_params, depth_cnn, layer_table, list_models
from cnn_depth.models import check_input_size, min_input_size, model_spec, stage_sizes

FAMILIES = [m for m in list_models() if model_spec(m).depth is None]
CONV_FAMILIES = [m for m in FAMILIES if model_spec(m).kind == "cnn"]
PRESETS = [m for m in list_models() if model_spec(m).depth is not None]
DEPTHS = [1, 2, 3, 4, 5, 8, 20]
SHAPES = [(3, 32, 32), (1, 28, 28)]


@pytest.mark.parametrize("shape", SHAPES, ids=["rgb32", "gray28"])
@pytest.mark.parametrize("arch,depth", [(a, d) for a in FAMILIES for d in DEPTHS] + [(p, None) for p in PRESETS])
def test_logits_shape_and_finite(arch, depth, shape):
    torch.manual_seed(0)
    model = depth_cnn(depth, n_in=shape[0], n_out=7, arch=arch, img_size=shape[1:]).eval()
    with torch.no_grad():
        y = model(torch.randn(5, *shape))
    assert y.shape == (5, 7)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("arch", FAMILIES)
def test_deep_models_build_and_run(arch):
    for depth in (32, 56):
        for shape in SHAPES:
            model = depth_cnn(depth, n_in=shape[0], arch=arch, img_size=shape[1:]).eval()
            with torch.no_grad():
                assert model(torch.randn(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("arch", FAMILIES)
def test_params_never_decrease_with_depth(arch):
    counts = [count_params(depth_cnn(d, arch=arch)) for d in range(1, 57)]
    assert all(b >= a for a, b in zip(counts, counts[1:])), counts
    assert counts[-1] > counts[0]


@pytest.mark.parametrize("arch", CONV_FAMILIES)
@pytest.mark.parametrize("depth", [1, 3, 4, 9, 20])
def test_depth_counts_main_path_3x3_convs(arch, depth):
    model = depth_cnn(depth, arch=arch)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == depth
    assert sum(stage_sizes(depth)) == depth - 1


def test_maps_never_shrink_below_one_pixel():
    model = depth_cnn(56, arch="residual")
    rows = layer_table(model, (3, 2, 2))
    assert min(min(r["output_shape"][2:] or (1,)) for r in rows if len(r["output_shape"]) == 4) >= 1


def test_presets_reproduce_tutorial_widths_and_compute_flatten():
    simple = depth_cnn(arch="simplecnn")
    assert [m.out_channels for m in simple.modules() if isinstance(m, torch.nn.Conv2d)] == [16, 32, 64]
    assert simple.head[-1].in_features == 64 * 4 * 4  # 32 px halved three times
    gray = depth_cnn(arch="customcnn", n_in=1, img_size=28)
    linears = [m for m in gray.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[0].in_features == 128 * 3 * 3 and linears[0].out_features == 625  # 28→14→7→3
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in gray.modules())
    net = depth_cnn(arch="tutorial-net", n_out=4)
    assert [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)] == [120, 84, 4]
    deeper = depth_cnn(arch="deepercnn")
    assert [m.out_channels for m in deeper.modules() if isinstance(m, torch.nn.Conv2d)] == [16, 32, 64, 128]


def test_family_widths_match_tutorials_at_depth_3_and_4():
    widths = lambda d: [m.out_channels for m in depth_cnn(d, arch="plain").modules()
                        if isinstance(m, torch.nn.Conv2d)]
    assert widths(3) == [16, 32, 64]
    assert widths(4) == [16, 32, 64, 128]


def test_config_records_constructor_arguments():
    assert depth_cnn(5, n_in=1, n_out=3, arch="residual", img_size=28).config == dict(
        arch="residual", depth=5, n_in=1, n_out=3, img_size=[28, 28], ndim=2)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("shape", SHAPES, ids=["rgb32", "gray28"])
def test_mlp_depth_is_hidden_linear_layers_halving_to_32(depth, shape):
    model = depth_cnn(depth, n_in=shape[0], n_out=7, arch="mlp", img_size=shape[1:])
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == depth + 1  # hidden layers + the head
    assert [m.out_features for m in linears] == [256, 128, 64, 32, 32, 32, 32, 32, 32][:depth] + [7]
    assert linears[0].in_features == shape[0] * shape[1] * shape[2]  # the flatten size, from the image size
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == depth
    assert list(dict(model.named_children())) == ["flatten"] + [f"hidden{i}" for i in range(1, depth + 1)] + ["head"]


class FashionDNN(torch.nn.Module):
    """The book chapter's model, as printed there."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(in_features=784, out_features=256)
        self.drop = torch.nn.Dropout(0.25)
        self.fc2 = torch.nn.Linear(in_features=256, out_features=128)
        self.fc3 = torch.nn.Linear(in_features=128, out_features=10)

    def forward(self, input_data):
        out = input_data.view(-1, 784)
        out = torch.nn.functional.relu(self.fc1(out))
        out = self.drop(out)
        out = torch.nn.functional.relu(self.fc2(out))
        return self.fc3(out)


def test_fashiondnn_is_the_chapters_model():
    torch.manual_seed(0)
    ours, theirs = depth_cnn(arch="fashiondnn", n_in=1, img_size=28), FashionDNN()
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    with torch.no_grad():
        for a, b in zip(ours.parameters(), theirs.parameters()):
            a.copy_(b)
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs.eval()(x))
        torch.manual_seed(1)
        y1 = ours.train()(x)
        torch.manual_seed(1)
        assert torch.equal(y1, theirs.train()(x))  # the same dropout, in the same place (after fc1's ReLU)
    assert ours.config == dict(arch="fashiondnn", depth=2, n_in=1, n_out=10, img_size=[28, 28], ndim=2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(depth=0), "depth must be a whole number ≥ 1, got 0 (the number of conv layers)"),
    (dict(depth=-3), "depth must be a whole number ≥ 1"),
    (dict(depth=2.5), "whole number"),
    (dict(depth="x"), "whole number"),
    (dict(depth=3, arch="vgg"), "unknown arch 'vgg'; choose one of: plain, bn, residual"),
    (dict(depth=5, arch="simplecnn"), "fixed depth of 3; use depth 3 or a family arch (plain, bn, residual, mlp)"),
    (dict(depth=0, arch="mlp"), "depth must be a whole number ≥ 1, got 0 (the number of hidden layers)"),
    (dict(depth=34, arch="resnet18"), "preset resnet18 has a fixed depth of 18"),
    (dict(arch="bn", depth=3, pretrained=True), "arch bn has no pretrained weights; --pretrained works with resnet18"),
    (dict(depth=None, arch="bn"), "whole number"),
    (dict(arch="tutorial-net", img_size=8), "preset tutorial-net needs images of at least 16×16 px (its 2 conv + "
                                            "2×2 max-pool stages), these are 8×8: resize the images to 16×16 px"),
])
def test_bad_model_arguments_give_one_line(kwargs, message):
    with pytest.raises(CnnDepthError, match=re.escape(message)) as e:
        depth_cnn(**kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch", [p for p in PRESETS if model_spec(p).kind != "transfer"])
def test_min_input_size_is_the_smallest_that_builds_and_runs(arch):
    """The minimum each preset states is exact: that size trains a batch, one pixel less is refused in one
    line naming it, before any shape error inside the forward pass."""
    n = min_input_size(arch)
    model = depth_cnn(arch=arch, img_size=n).train()
    model(torch.zeros(2, 3, n, n)).sum().backward()
    if n > 1:
        with pytest.raises(CnnDepthError, match=re.escape(f"at least {n}×{n} px")) as e:
            depth_cnn(arch=arch, img_size=(n, n - 1))
        assert "\n" not in str(e.value) and f"size={n}" in str(e.value)
        with pytest.raises(CnnDepthError, match="at least"):
            check_input_size(arch, None, n - 1)
    check_input_size(arch, None, n)


def test_min_input_sizes_of_the_pooled_presets_and_the_families():
    assert {a: min_input_size(a) for a in ("simplecnn", "deepercnn", "tutorial-net", "customcnn")} == \
        {"simplecnn": 8, "deepercnn": 16, "tutorial-net": 16, "customcnn": 8}
    # a family's stride-2 convs round up, so any depth takes a 1-pixel image
    for arch in FAMILIES:
        assert min_input_size(arch, 20) == 1
        depth_cnn(20, arch=arch, img_size=1).eval()(torch.zeros(1, 3, 1, 1))
