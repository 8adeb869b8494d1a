"""The CNN family of any depth in 1, 2 or 3 dimensions, the tutorial presets, and the registry that lists them.

Every model is an ``nn.Sequential`` of named conv *stages* followed by a ``head``, so feature maps,
Grad-CAM and layer tables can walk any of them the same way.

What ``depth`` means: the number of 3×3 conv layers on the main path (1×1 projection shortcuts and the
final linear layer are not counted). The family is a stem conv (16 channels, full resolution) and up to
three stages of widths 32, 64 and 128; the first conv of each stage has stride 2, so every stage halves
the feature map and doubles the width. The ``depth - 1`` convs after the stem are shared out evenly over
the stages (earlier stages get the extra ones), so depth 3 has the tutorial SimpleCNN's widths
16-32-64, depth 4 DeeperCNN's 16-32-64-128, and depth 7 is 16-32-32-64-64-128-128. A stride-2 3×3 conv
with padding 1 maps n pixels to ceil(n/2), so no map ever shrinks below 1 px, whatever the depth or image
size. The head is global average pooling and one linear layer: it never depends on the image size, so
a family takes images of any size at any depth. The presets with 2×2 max-pool stages do not: each stage
halves (rounding down) the map, so they need a minimum size (:func:`min_input_size`, checked by
:func:`check_input_size` before a Learner or a sweep trains).

Dimensions: the families (and ``mlp``) are one definition whose dimension is a parameter, ``ndim``, as in
fastai's ``ConvLayer(..., ndim=)`` and ``XResNet(..., ndim=)``: 1 for series (input (C, L), 3-tap convs), 2 for
images (C, H, W; 3×3), 3 for volumes (C, D, H, W; 3×3×3). Depth means the same in each (conv layers on the
main path), every stage's first conv has stride 2 along every axis (a series' length, a volume's three sides
halve, rounding up) and the head pools globally over whatever axes there are. ``img_size`` is then the
length, (h, w) or (d, h, w). The 2D models are exactly what they were before ``ndim`` existed (same modules,
same parameter order, same weights under a seed). The presets and transfer nets are 2D only
(``ModelSpec.ndims``; :func:`check_ndim` says which archs take a dimension).

Two more kinds of model sit in the same registry, built the same way (named stages, then ``head``):

- ``mlp``, a family of multi-layer perceptrons: the image flattened, then ``depth`` hidden Linear-ReLU layers
  of widths 256, 128, 64, 32, 32, ... (halved per layer, never below 32), then a linear head. Here ``depth``
  is the number of hidden linear layers; the input size is channels × height × width of the data. The preset
  ``fashiondnn`` is the book chapter's FashionDNN: 784-256, dropout 0.25, 256-128, 128-10 on 28×28 gray.
- ``resnet18``, ``resnet50``, ``vgg16``: torchvision nets as fastai's ``vision_learner`` builds them, fixed
  depths 18, 50 and 16 as named (see :mod:`cnn_depth.transfer`); ``depth_cnn(..., pretrained=True)`` loads
  their ImageNet weights.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from fastai.callback.hook import total_params
from fastai.layers import AdaptiveAvgPool, ConvLayer, Flatten, NormType
from torch import nn

from .errors import CnnDepthError, check_int
from .transfer import TRANSFER_ARCHS, transfer_model

STEM_WIDTH = 16  # channels of the first conv
STAGE_WIDTHS = (32, 64, 128)  # one per downsampling stage: halve the map, double the width
MAX_DEPTH = 1000  # a guard against typos such as 2000 when 20 was meant
MLP_WIDTH = 256  # units of the first hidden layer of the mlp family; each next layer has half, down to:
MLP_MIN_WIDTH = 32

NDIMS = (1, 2, 3)  # the dimensions the families take
DIM_NAMES = {1: "series", 2: "images", 3: "volumes"}
AXES = {1: "length", 2: "height, width", 3: "depth, height, width"}  # what img_size holds, per ndim

ImgSize = Union[int, Sequence[int]]


def stage_sizes(depth: int) -> list[int]:
    """Convs per stage after the stem: ``depth - 1`` shared out evenly, extras to earlier stages."""
    m = depth - 1
    n = min(m, len(STAGE_WIDTHS))
    return [m // n + (i < m % n) for i in range(n)] if n else []


def conv_layer(ni: int, nf: int, stride: int = 1, bn: bool = True, ndim: int = 2) -> nn.Sequential:
    """3×3 conv (3 taps in 1D, 3×3×3 in 3D; padding 1) then BN (optional) then ReLU."""
    return ConvLayer(ni, nf, ks=3, stride=stride, ndim=ndim, norm_type=NormType.Batch if bn else None)


class BasicBlock(nn.Module):
    """ResNet basic block: ``n_convs`` 3×3 conv-BN layers (ReLU between) plus a shortcut, then ReLU.

    The shortcut is the identity when shapes match, else a 1×1 strided conv-BN projection (He et al.'s
    option B). The last BN starts at zero, so a new block starts as the identity and deep stacks train.
    """

    def __init__(self, ni: int, nf: int, stride: int = 1, n_convs: int = 2, ndim: int = 2):
        super().__init__()
        convs = []
        for i in range(n_convs):
            last = i == n_convs - 1
            convs.append(ConvLayer(ni if i == 0 else nf, nf, ks=3, stride=stride if i == 0 else 1, ndim=ndim,
                                   norm_type=NormType.BatchZero if last else NormType.Batch,
                                   act_cls=None if last else nn.ReLU))
        self.convs = nn.Sequential(*convs)
        self.shortcut = (nn.Identity() if ni == nf and stride == 1
                         else ConvLayer(ni, nf, ks=1, stride=stride, ndim=ndim, act_cls=None))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.convs(x) + self.shortcut(x))


def _stage(arch: str, ni: int, nf: int, n_convs: int, ndim: int = 2) -> nn.Sequential:
    """One downsampling stage of ``n_convs`` convs; the first has stride 2 (along every axis)."""
    if arch == "residual":  # pairs of convs form basic blocks; an odd one out is a one-conv block
        sizes = [2] * (n_convs // 2) + [1] * (n_convs % 2)
        return nn.Sequential(*[BasicBlock(ni if i == 0 else nf, nf, stride=2 if i == 0 else 1, n_convs=k, ndim=ndim)
                               for i, k in enumerate(sizes)])
    return nn.Sequential(*[conv_layer(ni if i == 0 else nf, nf, stride=2 if i == 0 else 1, bn=arch == "bn",
                                      ndim=ndim)
                           for i in range(n_convs)])


def head(ni: int, n_out: int, ndim: int = 2) -> nn.Sequential:
    """Global average pool (over every spatial axis), flatten, linear: independent of the input size."""
    return nn.Sequential(AdaptiveAvgPool(1, ndim=ndim), Flatten(), nn.Linear(ni, n_out))


class DepthCNN(nn.Sequential):
    """The family: stem conv, up to three stride-2 stages, pooled linear head (see the module docstring).

    Args:
        depth: number of conv layers on the main path (≥ 1).
        n_in: input channels (3 for RGB, 1 for grayscale; a series' or volume's channels).
        n_out: number of classes.
        arch: ``plain`` (conv-ReLU), ``bn`` (conv-BN-ReLU) or ``residual`` (BN + shortcuts).
        ndim: 1 (series), 2 (images) or 3 (volumes): the convs, norms and pooling of that dimension.
    """

    def __init__(self, depth: int, n_in: int = 3, n_out: int = 10, arch: str = "bn", ndim: int = 2):
        stem = conv_layer(n_in, STEM_WIDTH, bn=arch != "plain", ndim=ndim)
        layers = [("stem", stem)]
        ni = STEM_WIDTH
        for i, (nf, n) in enumerate(zip(STAGE_WIDTHS, stage_sizes(depth)), start=1):
            layers.append((f"stage{i}", _stage(arch, ni, nf, n, ndim)))
            ni = nf
        layers.append(("head", head(ni, n_out, ndim)))
        super().__init__(OrderedDict(layers))


def _is_int(v) -> bool:
    return hasattr(v, "__index__") and not isinstance(v, bool)


def input_size(img_size: ImgSize, ndim: int = 2) -> tuple[int, ...]:
    """``img_size`` as ``ndim`` sides (1D: length; 2D: (h, w); 3D: (d, h, w)): an int is every side; a sequence
    must hold ``ndim`` whole numbers ≥ 1, else one line."""
    iterable = hasattr(img_size, "__iter__") and not isinstance(img_size, (str, bytes))
    sizes = (img_size,) * ndim if _is_int(img_size) else tuple(img_size) if iterable else None
    if sizes is None or len(sizes) != ndim:
        what = "one whole number (the length)" if ndim == 1 else f"one whole number or {ndim} ({AXES[ndim]})"
        raise CnnDepthError(f"img_size {img_size!r} does not fit {ndim}D inputs ({DIM_NAMES[ndim]}): give {what}")
    return tuple(check_int(s, "img_size", 1) for s in sizes)


def _pair(img_size: ImgSize) -> tuple[int, int]:
    return input_size(img_size, 2)


class TutorialCNN(nn.Sequential):
    """The tutorial models: conv-ReLU-maxpool stages, flatten, then linear layers.

    The flatten size is computed by running the conv stages on a dummy image of ``img_size``, so the
    model is right for any input size (the tutorials hard-coded it, and one got it wrong).
    """

    def __init__(self, widths: Sequence[int], fc: Sequence[int], n_in: int, n_out: int, img_size: ImgSize,
                 ks: int = 3, padding: int = 1, dropout: float = 0.0, name: str = "tutorial"):
        stages, ni = [], n_in
        for i, nf in enumerate(widths, start=1):
            stages.append((f"conv{i}", nn.Sequential(nn.Conv2d(ni, nf, ks, padding=padding), nn.ReLU(),
                                                     nn.MaxPool2d(2))))
            ni = nf
        h, w = _pair(img_size)
        features = nn.Sequential(OrderedDict(stages))
        try:
            with torch.no_grad():
                n_flat = features(torch.zeros(1, n_in, h, w)).numel()
        except RuntimeError as e:
            raise CnnDepthError(f"preset {name} cannot take {h}×{w} images: its {len(widths)} conv+pool "
                                f"stages need larger inputs ({pooled_min_size([(ks, padding)] * len(widths))} px "
                                f"at least); resize them or pick another arch") from e
        fcs, nf_in = [], n_flat
        for nf in fc:
            fcs += [nn.Linear(nf_in, nf), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            nf_in = nf
        fcs.append(nn.Linear(nf_in, n_out))
        super().__init__(OrderedDict(stages + [("head", nn.Sequential(Flatten(), *fcs))]))


def mlp_widths(depth: int) -> list[int]:
    """Hidden-layer widths of the mlp family: 256, 128, 64, 32, 32, ... (halved per layer, floor 32)."""
    return [max(MLP_MIN_WIDTH, MLP_WIDTH >> i) for i in range(depth)]


class MLP(nn.Sequential):
    """Flatten, hidden Linear-ReLU layers (``hidden1``, ...), a linear ``head``: the depth family's MLP cousin.

    Args:
        widths: units of each hidden layer (``depth = len(widths)``).
        n_in, img_size: channels and sides of the inputs (an int: a square image; else (h, w), (length,) or
            (d, h, w)): the first layer takes ``n_in`` × the product of the sides.
        n_out: number of classes.
        dropout: dropout probability after each hidden layer's ReLU (missing or 0: none).
    """

    def __init__(self, widths: Sequence[int], n_in: int, n_out: int, img_size: ImgSize,
                 dropout: Sequence[float] = ()):
        sides = input_size(img_size, 2 if _is_int(img_size) else len(img_size))
        layers, ni = [("flatten", nn.Flatten())], n_in * math.prod(sides)  # torch's: any ndim, non-contiguous too
        for i, nf in enumerate(widths):
            p = dropout[i] if i < len(dropout) else 0.0
            layers.append((f"hidden{i + 1}", nn.Sequential(nn.Linear(ni, nf), nn.ReLU(),
                                                           *([nn.Dropout(p)] if p else []))))
            ni = nf
        super().__init__(OrderedDict(layers + [("head", nn.Linear(ni, n_out))]))


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: a family of any depth (``depth is None``) or a preset of fixed depth."""

    name: str
    build: Callable[..., nn.Module]  # (depth, n_in, n_out, img_size) -> nn.Module; transfer: also pretrained=
    depth: Optional[int]
    description: str
    kind: str = "cnn"  # "cnn" (conv stages), "mlp" (hidden linear layers) or "transfer" (torchvision nets)
    min_size: int = 1  # the smallest image side (px) it takes; the families and transfer nets take any
    stages: int = 0  # conv + 2x2 max-pool stages (the presets that have them), for the message
    ndims: tuple[int, ...] = (2,)  # the input dimensions it takes: (1, 2, 3) for the families, (2,) for the rest


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, description: str, depth: Optional[int] = None, kind: str = "cnn",
                   pooled: Sequence[tuple[int, int]] = (), ndims: Sequence[int] = (2,)):
    """Decorator: add a builder ``(depth, n_in, n_out, img_size) -> nn.Module`` to the registry; ``img_size``
    reaches it as a tuple of one side per dimension, so its length is the model's ``ndim``.

    ``pooled``: (kernel size, padding) of each conv + 2×2 max-pool stage, for the minimum input size.
    ``ndims``: the input dimensions the builder takes."""
    def _register(build):
        _REGISTRY[name] = ModelSpec(name, build, depth, description, kind, pooled_min_size(pooled), len(pooled),
                                    tuple(ndims))
        return build
    return _register


def pooled_min_size(stages: Sequence[tuple[int, int]]) -> int:
    """The smallest side (px) that conv (kernel ``ks``, padding ``p``, stride 1) + ``MaxPool2d(2)`` stages
    map to at least 1 px: backwards from 1 px, a pool needs twice its output, a conv ``ks - 1 - 2p`` more."""
    n = 1
    for ks, padding in reversed(list(stages)):
        n = max(1, 2 * n + ks - 1 - 2 * padding)
    return n


for _arch, _desc in [("plain", "conv-ReLU layers, no normalisation (the tutorials' style)"),
                     ("bn", "conv-BN-ReLU layers"),
                     ("residual", "conv-BN with identity/projection shortcuts (ResNet basic blocks)")]:
    register_model(_arch, _desc, ndims=NDIMS)(
        lambda depth, n_in, n_out, img_size, _a=_arch: DepthCNN(depth, n_in, n_out, _a, ndim=len(img_size)))


@register_model("simplecnn", "tutorial SimpleCNN: convs 16-32-64, each with 2×2 max-pool, then a linear layer",
                depth=3, pooled=[(3, 1)] * 3)

def simplecnn(depth, n_in, n_out, img_size):
    return TutorialCNN([16, 32, 64], [], n_in, n_out, img_size, name="simplecnn")


@register_model("deepercnn", "tutorial DeeperCNN: convs 16-32-64-128, each with 2×2 max-pool, then a linear layer",
                depth=4, pooled=[(3, 1)] * 4)

def deepercnn(depth, n_in, n_out, img_size):
    return TutorialCNN([16, 32, 64, 128], [], n_in, n_out, img_size, name="deepercnn")


@register_model("tutorial-net", "PyTorch-tutorial net: 5×5 convs 16-32 with 2×2 max-pool, fc 120-84-n_out", depth=2,
                pooled=[(5, 0)] * 2)

def tutorial_net(depth, n_in, n_out, img_size):
    return TutorialCNN([16, 32], [120, 84], n_in, n_out, img_size, ks=5, padding=0, name="tutorial-net")


@register_model("customcnn", "digits CNN: convs 32-64-128 each with 2×2 max-pool, fc 625 with dropout 0.5, fc n_out",
                depth=3, pooled=[(3, 1)] * 3)

def customcnn(depth, n_in, n_out, img_size):
    return TutorialCNN([32, 64, 128], [625], n_in, n_out, img_size, dropout=0.5, name="customcnn")


register_model("mlp", "hidden Linear-ReLU layers on the flattened input, widths 256, 128, 64, 32, 32, ...",
               kind="mlp", ndims=NDIMS)(
    lambda depth, n_in, n_out, img_size: MLP(mlp_widths(depth), n_in, n_out, img_size))


@register_model("fashiondnn", "book chapter FashionDNN: flatten, fc 256 + dropout 0.25, fc 128, fc n_out", depth=2,
                kind="mlp")
def fashiondnn(depth, n_in, n_out, img_size):
    return MLP([256, 128], n_in, n_out, img_size, dropout=[0.25])


for _t in TRANSFER_ARCHS.values():
    register_model(_t.name, _t.description, depth=_t.depth, kind="transfer")(
        lambda depth, n_in, n_out, img_size, pretrained=False, _a=_t.name: transfer_model(_a, n_in, n_out, pretrained))


def list_models() -> list[str]:
    """Names of the registered models: the families first, then the presets."""
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].depth is not None, list(_REGISTRY).index(n)))


def model_spec(arch: str) -> ModelSpec:
    """The registry entry for ``arch``, or a one-line error that lists the known names."""
    if arch not in _REGISTRY:
        raise CnnDepthError(f"unknown arch {arch!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[arch]


def min_input_size(arch: str, depth: Optional[int] = None) -> int:
    """The smallest image side (px) ``arch`` at ``depth`` takes: 1 for the families (a stride-2 conv maps n px
    to ceil(n/2), never below 1, at any depth), the MLPs and the transfer nets; for the presets with 2×2
    max-pool stages, what those stages need (simplecnn and customcnn 8, deepercnn 16, tutorial-net 16)."""
    if depth is not None or model_spec(arch).depth is not None:
        check_depth(depth, arch)
    return model_spec(arch).min_size


def dims_text(ndims: Sequence[int]) -> str:
    """``(1, 2, 3)`` as ``1D/2D/3D``."""
    return "/".join(f"{n}D" for n in ndims)


def check_ndim(arch: str, ndim) -> int:
    """``ndim`` (1 series, 2 images, 3 volumes) if ``arch`` takes inputs of that dimension, else one line naming
    the archs that do: the presets and transfer nets are 2D only; the families take 1, 2 and 3."""
    spec = model_spec(arch)
    ndim = check_int(ndim, "ndim", 1, max(NDIMS), hint=" (1: series, 2: images, 3: volumes)")
    if ndim not in spec.ndims:
        takes = ", ".join(n for n in list_models() if ndim in _REGISTRY[n].ndims)
        raise CnnDepthError(f"arch {arch} takes {dims_text(spec.ndims)} inputs "
                            f"({', '.join(DIM_NAMES[n] for n in spec.ndims)}) only, not {ndim}D {DIM_NAMES[ndim]}; "
                            f"for {ndim}D data use one of: {takes}")
    return ndim


def check_input_size(arch: str, depth: Optional[int], img_size: ImgSize, ndim: Optional[int] = None) -> None:
    """Refuse, in one line naming the smallest size that works, images too small for ``arch`` at ``depth``
    (:func:`min_input_size`): they would fail every run with a shape error deep inside the forward pass.
    ``ndim`` None: the length of ``img_size`` (2 for an int), so a series' (length,) or a volume's (d, h, w)
    is checked against :func:`check_ndim` too. The families take every size in every dimension (a stride-2
    conv maps n to ceil(n/2), never below 1), so no depth is ever too deep for a short series or small volume."""
    if ndim is None:
        ndim = 2 if _is_int(img_size) else len(img_size)
    ndim = check_ndim(arch, ndim)
    sizes = input_size(img_size, ndim)
    need = min_input_size(arch, depth)
    if min(sizes) < need:  # only the 2D presets have a minimum above 1
        h, w = sizes
        spec = model_spec(arch)
        families = ", ".join(n for n in list_models() if _REGISTRY[n].depth is None)
        raise CnnDepthError(f"preset {arch} needs images of at least {need}×{need} px (its {spec.stages} conv + "
                            f"2×2 max-pool stages), these are {h}×{w}: resize the images to {need}×{need} px or more "
                            f"(in Python: dataloaders(..., size={need})), or use a family arch ({families}), "
                            f"which takes any size")


def check_depth(depth, arch: str = "bn") -> int:
    """Validate ``depth`` (an int) for ``arch`` and return it (a preset's own depth when ``depth`` is None)."""
    spec = model_spec(arch)
    if depth is None and spec.depth is not None:
        return spec.depth
    depth = check_int(depth, "depth", 1, MAX_DEPTH,
                      hint=f" (the number of {'hidden' if spec.kind == 'mlp' else 'conv'} layers)")
    if spec.depth is not None and depth != spec.depth:
        families = ", ".join(n for n in list_models() if _REGISTRY[n].depth is None)
        raise CnnDepthError(f"preset {arch} has a fixed depth of {spec.depth}; use depth {spec.depth} "
                            f"or a family arch ({families}) for depth {depth}")
    return depth


def depth_cnn(depth: Optional[int] = None, n_in: int = 3, n_out: int = 10, arch: str = "bn",
              img_size: ImgSize = 32, pretrained: bool = False, ndim: int = 2) -> nn.Module:
    """Build a registered model.

    Args:
        depth: number of conv layers on the main path (≥ 1), or hidden layers for ``mlp``; for a preset, None or
            its own.
        n_in: input channels.
        n_out: number of classes.
        arch: a name from ``list_models()``: plain, bn, residual, mlp, a tutorial preset or a transfer net.
        img_size: input size: an int (every side) or one side per dimension (1D: (length,); 2D: (h, w);
            3D: (d, h, w)); the MLPs and the presets with a flatten layer use it.
        pretrained: load ImageNet weights (resnet18, resnet50, vgg16 only; see :mod:`cnn_depth.transfer`).
        ndim: 1 (series), 2 (images) or 3 (volumes); the families and ``mlp`` take all three, the rest 2 only
            (:func:`check_ndim`).

    Returns:
        the model, with ``model.config`` holding the constructor arguments (for checkpoints; ``pretrained``
        is left out: a saved model is rebuilt and then given its own weights): arch, depth, n_in, n_out,
        img_size (a list of ``ndim`` sides) and ndim.
    """
    depth = check_depth(depth, arch)
    n_in, n_out = check_int(n_in, "n_in"), check_int(n_out, "n_out")
    spec = model_spec(arch)
    ndim = check_ndim(arch, ndim)
    size = input_size(img_size, ndim)
    check_input_size(arch, depth, size, ndim)
    if pretrained and spec.kind != "transfer":
        raise CnnDepthError(f"arch {arch} has no pretrained weights; --pretrained works with "
                            f"{', '.join(TRANSFER_ARCHS)} (or leave it out)")
    model = spec.build(depth, n_in, n_out, size, **({"pretrained": True} if pretrained else {}))
    model.config = dict(arch=arch, depth=depth, n_in=n_in, n_out=n_out, img_size=list(size), ndim=ndim)
    return model


def count_params(model: nn.Module) -> int:
    """Number of parameters (fastai's ``total_params``: trainable or not, so freezing does not change it)."""
    return total_params(model)[0]


@contextmanager
def eval_mode(model: nn.Module):
    """Run a model in eval mode (BN running stats, no dropout), then restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def layer_table(model: nn.Module, input_shape: Sequence[int]) -> list[dict]:
    """One row per leaf layer: name, type, output shape (batch 1) and parameters, from a real forward pass.

    (fastai's ``layer_info`` does this for a ``Learner``; this works on a bare model, with no data.)
    """
    rows, hooks = [], []
    for name, mod in model.named_modules():
        if name and not list(mod.children()):
            def _hook(m, inp, out, name=name):
                rows.append(dict(layer=name, type=type(m).__name__, output_shape=tuple(out.shape),
                                 params=sum(p.numel() for p in m.parameters(recurse=False))))
            hooks.append(mod.register_forward_hook(_hook))
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return rows


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of a ``(C, *sides)`` input: torch's ``FlopCounterMode`` on a
    batch of one, in eval mode, halved (it counts 2 FLOPs per multiply-accumulate); convolutions and linear
    layers only (biases, batch norm, ReLU, pooling and residual adds are a few per cent at most)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    with eval_mode(model), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *input_shape, device=device))
    return counter.get_total_flops() // 2


def model_table(ndim: Optional[int] = None, depth: int = 8, n_in: int = 3, n_out: int = 10,
                img_size: ImgSize = 32, macs: bool = True) -> list[dict]:
    """One row per registered model: what ``cnn-depth models`` prints.

    Args:
        ndim: only the models that take inputs of this dimension, counted at ``img_size`` in it; None: every
            model, counted as an image model (2D).
        depth: the families' depth (a preset has its own).
        n_in, n_out: input channels and classes.
        img_size: an int (every side) or one side per dimension.
        macs: count the MACs too (torch's flop counter takes about a second to import the first time).

    Returns:
        dicts with arch, dims (e.g. "1D/2D/3D"), depth, params, macs (per input of ``(n_in, *sides)``; None
        when not counted), description and family (True for a family of any depth). Building a model draws
        weights: torch's RNG is left as it was.
    """
    check_depth(depth)
    dim = check_int(ndim, "--dims", 1, max(NDIMS), hint=" (1: series, 2: images, 3: volumes)") if ndim else 2
    sides = input_size(img_size, dim)
    rows = []
    for name in list_models():
        spec = model_spec(name)
        if dim not in spec.ndims:
            continue
        d = spec.depth or depth
        with torch.random.fork_rng(devices=[]):
            model = depth_cnn(d, n_in=n_in, n_out=n_out, arch=name, img_size=sides, ndim=dim)
        rows.append(dict(arch=name, dims=dims_text(spec.ndims), depth=d, params=count_params(model),
                         macs=count_macs(model, (n_in, *sides)) if macs else None, description=spec.description,
                         family=spec.depth is None))
    return rows
