"""What each depth learned: feature maps, Grad-CAM, activation statistics, and the PNGs that show them.

Every registered model is an ``nn.Sequential`` of named conv stages followed by a ``head``, so all of this
works the same way for every arch and preset through forward hooks (fastai's ``Hooks``), never by editing
the model:

- ``feature_maps(model, x)``: the output of every conv stage (each child before ``head``).
- ``grad_cam(model, x)``: Grad-CAM (Selvaraju et al. 2017) at the last conv stage whose map is larger than
  1×1 (``cam_stage``), upsampled to the input.
- ``activation_stats(model, xb)``: mean, std and fraction of exact zeros of every ReLU in the stages.
  A ReLU follows each main-path conv (in a residual block the last conv's ReLU comes after the shortcut
  is added) and each hidden linear layer of an MLP, so there is one row per layer: ``model.config["depth"]``
  rows for the depth family, the MLPs and the tutorial presets. torchvision nets reuse one ReLU module per
  block (its last call, after the shortcut add, is the one recorded): resnet18 gives 9 rows, resnet50 17,
  vgg16 13.
- ``explain_run(run_dir, depth)``: loads a saved model of a sweep and writes ``input.png``,
  ``feature_maps.png`` and ``gradcam.png`` (an MLP: ``input.png`` and ``hidden_layers.png``).
- ``explain_depths(run_dir, depths)``: one figure, a row per saved depth for the same image: top-3, the
  feature maps of each stage (or an MLP's hidden units) and Grad-CAM.

MLPs have no conv layers: ``feature_maps`` and ``grad_cam`` refuse them with one line, and their figures
show the activations of each hidden layer's units instead.

1D and 3D models (``model.config["ndim"]``: series (C, L), volumes (C, D, H, W)) go through the same functions:
maps are (N, C, L) or (N, C, D, H, W), Grad-CAM averages the gradient over every spatial axis and is
upsampled linearly (1D) or trilinearly (3D) to the input's length or volume. Their figures: a series is drawn
as lines (a line per channel), its feature maps as the most active channels of each stage over time, its
Grad-CAM as a coloured band under the series; a volume as slices (the middle slice along each axis for the
input, the middle depth slice of each channel's map, Grad-CAM over a few slices along depth). Their inputs are
arrays: ``image=`` a ``.npy``/``.npz`` file read by ``cnn_depth.arrays.load_array``, ``array=`` one already
in memory, or ``index=`` the run's K-th validation item from ``cnn_depth.arrays.valid_arrays(source)``;
shaped as the run's data was (``arrays.channels_first``, its fill and padding) and normalised per channel with
the run's saved stats, as the DataLoaders did.

Figures are drawn on matplotlib ``Figure`` objects (``plots._figure``) and saved atomically by
``files.save_figure`` (a full disk is one line), never through pyplot, so nothing
here changes a notebook's backend.
"""
from __future__ import annotations

import operator
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.hook import Hooks, hook_outputs
from fastai.torch_core import TensorImage
from fastai.vision.augment import Normalize
from torch import nn

from .checkpoint import load_run_model, pick_arch
from .errors import CnnDepthError
from .files import PathLike, output_folder, save_figure
from .models import AXES, DIM_NAMES, count_params, eval_mode
from .plots import _figure
from .probes import _batch, activation_stats, conv_stages, fixed_valid_batch, relu_layers  # noqa: F401 (public here too)

N_CHANNELS = 8  # feature maps shown per conv stage: the most active ones
N_TILES = 4  # channels per stage in explain_depths: a 2×2 mosaic of the most active ones
TOP_K = 3  # predictions shown on input.png
CAM_CMAP = "magma"  # perceptually uniform: equal steps of importance look equally different (jet does not)
N_SERIES = 8  # channels of a series drawn as lines (the first ones)
N_SLICES = 5  # slices along depth in a volume's Grad-CAM figure
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CAM_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}  # how a CAM is upsampled to the input, per ndim
ARRAY_SUFFIXES = (".npy", ".npz")


# ---------------------------------------------------------------------------------------------------------
# Hooks: feature maps, Grad-CAM, activation statistics


def has_convs(model: nn.Module) -> bool:
    """Whether the stages hold conv layers (every registered model but the MLPs)."""
    return any(isinstance(m, CONVS) for _, stage in conv_stages(model) for m in stage.modules())


def model_ndim(model: nn.Module) -> int:
    """The input dimension of a registered model: ``model.config["ndim"]`` (2 when the config predates it)."""
    return (getattr(model, "config", None) or {}).get("ndim", 2)


def _need_convs(model: nn.Module, what: str) -> None:
    if not has_convs(model):
        name = getattr(model, "config", {}).get("arch", type(model).__name__)
        raise CnnDepthError(f"{name} has no conv layers, so it has no {what}; for an MLP use activation_stats "
                            f"(one row per hidden layer) or hidden_units")


def stage_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The output of each stage that has weights (conv stages, or an MLP's hidden layers) for ``x``."""
    stages = [(n, m) for n, m in conv_stages(model) if any(True for _ in m.parameters())]
    xb = _batch(model, x)
    with eval_mode(model), hook_outputs([m for _, m in stages]) as hooks, torch.no_grad():
        model(xb)
        return [(name, h.stored) for (name, _), h in zip(stages, hooks)]


def feature_maps(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The output of each conv stage for ``x`` (one input or a batch): ``[(stage name, (N, C, *sides)), ...]``
    with sides (L,), (H, W) or (D, H, W) for a 1D, 2D or 3D model."""
    _need_convs(model, "feature maps")
    return stage_outputs(model, x)


def hidden_units(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """An MLP's hidden-layer outputs (after ReLU and dropout, in eval mode): ``[(layer name, (N, width)), ...]``."""
    if has_convs(model):
        raise CnnDepthError("hidden_units is for MLPs; this model has conv stages: use feature_maps")
    return stage_outputs(model, x)


def class_index(target, vocab: Optional[Sequence[str]], n_out: int) -> int:
    """A class given by name (from ``vocab``) or index, as an index; a one-line error listing the classes."""
    names = f": {', '.join(map(str, vocab))}" if vocab else ""
    if isinstance(target, str):
        if vocab and target in list(vocab):
            return list(vocab).index(target)
        try:
            target = int(target)
        except ValueError as e:
            raise CnnDepthError(f"unknown target class {target!r}; choose one of{names or f' 0-{n_out - 1}'}") from e
    try:
        i = operator.index(target)
    except TypeError as e:
        raise CnnDepthError(f"target must be a class name or index, got {target!r}") from e
    if not 0 <= i < n_out:
        raise CnnDepthError(f"target index {i} is out of range: the model has {n_out} classes (0-{n_out - 1}){names}")
    return i


def cam_stage(model: nn.Module, x: torch.Tensor) -> str:
    """The stage Grad-CAM explains by default for ``x``: the last conv stage whose map is larger than 1×1 (the
    heatmap of a 1×1 map is uniform by construction: ResNets and VGG16 end at 1×1 on 32 px images; in 1D and
    3D: more than one sample or voxel), or the last stage when every map is a single point."""
    outs = feature_maps(model, x)
    wide = [name for name, o in outs if o.shape[2:].numel() > 1]
    return wide[-1] if wide else outs[-1][0]


def grad_cam(model: nn.Module, x: torch.Tensor, target=None, vocab: Optional[Sequence[str]] = None,
             stage: Optional[str] = None) -> torch.Tensor:
    """Grad-CAM heatmap in [0, 1] at the input's size, on the CPU: (H, W) for an image, (L,) for a series,
    (D, H, W) for a volume.

    Args:
        model: a registered model (an ``nn.Sequential`` of conv stages and a ``head``), of any ``ndim``.
        x: one normalised input (C, *sides) or (1, C, *sides).
        target: class index or name to explain (names need ``vocab`` or ``model.vocab``); the predicted
            class when None.
        vocab: class names in output order.
        stage: the conv stage to explain; when None, :func:`cam_stage`: the last one (the child before
            ``head``) unless its map is 1×1.

    The stage's activations A (C, *sides) are weighted by the mean of d(score)/dA over every spatial axis per
    channel, summed over channels, passed through ReLU, upsampled to the input (linearly in 1D, bilinearly in
    2D, trilinearly in 3D) and divided by their maximum. A map with no positive
    evidence (all zero, e.g. dead ReLUs) is returned as zeros, never NaN. Deep stages have small maps (4×4
    for a 32 px input after three stride-2 stages), so the heatmap is coarse by construction.
    """
    _need_convs(model, "Grad-CAM")
    xb = _batch(model, x)
    if xb.shape[0] != 1:
        raise CnnDepthError(f"grad_cam explains one input; got a batch of {xb.shape[0]}")
    stages = dict(conv_stages(model))
    name = stage or cam_stage(model, xb)
    if name not in stages:
        raise CnnDepthError(f"unknown stage {name!r}; choose one of: {', '.join(stages)}")
    with eval_mode(model), Hooks([stages[name]], lambda m, i, o: o, detach=False) as hooks, torch.enable_grad():
        logits = model(xb.detach().requires_grad_(True))  # the input needs grad when the weights are frozen
        t = (int(logits[0].argmax()) if target is None
             else class_index(target, vocab if vocab is not None else getattr(model, "vocab", None), logits.shape[1]))
        acts = hooks.stored[0]
        (grads,) = torch.autograd.grad(logits[0, t], acts)
    weights = grads.mean(dim=tuple(range(2, grads.ndim)), keepdim=True)  # per channel, over every spatial axis
    cam = F.relu((weights * acts).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=xb.shape[2:], mode=CAM_MODES[xb.ndim - 2], align_corners=False)[0, 0]
    cam = torch.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
    peak = cam.max()
    cam = cam / peak if peak > 0 else torch.zeros_like(cam)
    return cam.clamp_(0, 1).cpu()


# ---------------------------------------------------------------------------------------------------------
# Figures


def _show_image(ax, a: np.ndarray) -> None:
    if a.shape[-1] == 1:
        ax.imshow(a[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(a)
    ax.set_xticks([])
    ax.set_yticks([])


def _show_series(ax, a: np.ndarray, small: bool = False) -> None:
    """A (C, L) series: a line per channel (the first ``N_SERIES``), samples along x."""
    C, L = a.shape
    for c in range(min(C, N_SERIES)):
        ax.plot(np.arange(L), a[c], lw=0.8 if small else 1.1, color=f"C{c % 10}", label=f"ch {c}", zorder=2)
    ax.set_xlim(-0.5, L - 0.5)
    ax.tick_params(labelsize=6 if small else 8)
    if C > 1 and not small:
        ax.legend(fontsize=6, loc="upper right", ncols=min(C, 4),
                  title=f"first {N_SERIES} of {C} channels" if C > N_SERIES else None, title_fontsize=6)


def _volume(a: np.ndarray) -> np.ndarray:
    """A (C, D, H, W) volume as one (D, H, W) view: its channel, or the mean over several."""
    return a[0] if a.shape[0] == 1 else a.mean(axis=0)


def _middle_slices(v: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The middle slice of a (D, H, W) volume along each axis, named by the axis cut."""
    D, H, W = v.shape
    return [(f"depth {D // 2} of {D}", v[D // 2]), (f"height {H // 2} of {H}", v[:, H // 2]),
            (f"width {W // 2} of {W}", v[:, :, W // 2])]


def _show_slice(ax, a2: np.ndarray, vmin: float, vmax: float, cmap: str = "gray"):
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.imshow(a2, cmap=cmap, vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-6, interpolation="nearest")


def _show_input(ax, a: np.ndarray, ndim: int, small: bool = False) -> None:
    """One input in one axes: an image, a series as lines, a volume's middle depth slice."""
    if ndim == 2:
        _show_image(ax, a)
    elif ndim == 1:
        _show_series(ax, a, small)
    else:
        v = _volume(a)
        _show_slice(ax, v[v.shape[0] // 2], float(v.min()), float(v.max()))


def _plot_input(path: Path, a: np.ndarray, probs: torch.Tensor, vocab: list, title: str, label: Optional[str],
                ndim: int = 2):
    top = probs.topk(min(TOP_K, len(probs)))
    names = [vocab[i] for i in top.indices.tolist()]
    if ndim == 3:  # the middle slice along each axis, then the bars
        fig = _figure(10.5, 3.4)
        *ax_slices, ax_bar = fig.subplots(1, 4, width_ratios=[1, 1, 1, 1.3])
        v = _volume(a)
        for ax, (where, sl) in zip(ax_slices, _middle_slices(v)):
            _show_slice(ax, sl, float(v.min()), float(v.max()))
            ax.set_title(f"slice at {where}", fontsize=8)
        fig.suptitle(title, fontsize=9)
    else:
        fig = _figure(9.5 if ndim == 1 else 7.5, 3.2)
        ax_img, ax_bar = fig.subplots(1, 2, width_ratios=[2.2 if ndim == 1 else 1, 1.3])
        _show_input(ax_img, a, ndim)
        ax_img.set_title(title, fontsize=9)
        if ndim == 1:
            ax_img.set_xlabel("sample")
    y = np.arange(len(names))[::-1]
    colours = ["tab:green" if n == label else ("tab:blue" if k == 0 else "tab:gray") for k, n in enumerate(names)]
    ax_bar.barh(y, top.values.tolist(), color=colours)
    for yi, p in zip(y, top.values.tolist()):
        ax_bar.text(min(p + 0.02, 0.85), yi, f"{p:.2f}", va="center", fontsize=9)
    ax_bar.set_yticks(y, [f"{n} (true)" if n == label else n for n in names])
    ax_bar.set(xlim=(0, 1), xlabel="probability", title=f"top-{len(names)} predictions")
    save_figure(fig, path)


def _most_active(fm: torch.Tensor, n: int) -> list[int]:
    """The ``n`` channels of a (C, *sides) map with the highest mean."""
    return fm.flatten(1).mean(1).argsort(descending=True)[:n].tolist()


def _stage_lines(ax, fm: torch.Tensor, length: int, n: int, small: bool = False) -> None:
    """A 1D stage's (C, l) map: its ``n`` most active channels as lines, positions on the input's samples
    (a stage of stride s puts its i-th value at the centre of input samples i·s .. i·s + s - 1)."""
    fm = torch.nan_to_num(fm.float()).cpu()
    l = fm.shape[-1]
    t = (np.arange(l) + 0.5) * length / l - 0.5
    for k, c in enumerate(_most_active(fm, n)):
        ax.plot(t, fm[c].numpy(), lw=0.8 if small else 1.0, color=f"C{k % 10}", label=f"ch {c}",
                marker="." if l <= 32 else None, ms=3)
    ax.set_xlim(-0.5, length - 0.5)
    ax.tick_params(labelsize=6 if small else 7)


def _plot_feature_maps_1d(path: Path, maps: list, title: str, length: int):
    fig = _figure(9, 1.5 * len(maps) + 0.9)
    axes = fig.subplots(len(maps), 1, squeeze=False, sharex=True)[:, 0]
    for ax, (name, fm) in zip(axes, maps):
        _stage_lines(ax, fm[0], length, N_CHANNELS)
        C, l = fm.shape[1:]
        ax.set_ylabel(f"{name}\n{C}×{l}", fontsize=9)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    axes[-1].set_xlabel("position in the input (sample)")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def _plot_feature_maps(path: Path, maps: list, title: str, ndim: int = 2, length: Optional[int] = None):
    if ndim == 1:
        return _plot_feature_maps_1d(path, maps, title, length or maps[0][1].shape[-1])
    rows = len(maps)
    cols = min(N_CHANNELS, max(fm.shape[1] for _, fm in maps))
    fig = _figure(1.25 * cols + 2.2, 1.45 * rows + 0.8)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for r, (name, fm) in enumerate(maps):
        fm = torch.nan_to_num(fm[0].float()).cpu()  # (C, h, w), or (C, d, h, w)
        order = _most_active(fm, cols)
        shape = "×".join(map(str, fm.shape))
        if ndim == 3:  # each channel's middle depth slice
            shape += f"\nslice {fm.shape[1] // 2} of {fm.shape[1]}"
            fm = fm[:, fm.shape[1] // 2]
        vmin, vmax = float(fm[order].min()), float(fm[order].max())
        vmax = vmax if vmax > vmin else vmin + 1e-6
        im = None
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(order):
                ax.set_visible(False)
                continue
            im = ax.imshow(fm[order[c]].numpy(), cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(f"ch {order[c]}", fontsize=7, pad=2)
        axes[r, 0].set_ylabel(f"{name}\n{shape}", fontsize=9)
        fig.colorbar(im, ax=axes[r, :].tolist(), shrink=0.9, pad=0.01, aspect=10).ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def _series_with_cam(ax, a: np.ndarray, cam: torch.Tensor, small: bool = False):
    """A (C, L) series drawn over its Grad-CAM, a coloured band from the left to the right of the plot."""
    _show_series(ax, a, small)
    lo, hi = ax.get_ylim()
    im = ax.imshow(cam.numpy()[None], cmap=CAM_CMAP, vmin=0, vmax=1, alpha=0.6, aspect="auto", zorder=0,
                   extent=(-0.5, a.shape[-1] - 0.5, lo, hi), interpolation="nearest")
    ax.set_ylim(lo, hi)
    return im


def _plot_grad_cam_1d(path: Path, a: np.ndarray, cam: torch.Tensor, title: str):
    fig = _figure(9.5, 4.2)
    ax_s, ax_c = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
    im = _series_with_cam(ax_s, a, cam)
    ax_s.set_title("the series over its Grad-CAM (background: importance)", fontsize=9)
    ax_c.plot(np.arange(len(cam)), cam.numpy(), color="black", lw=1)
    ax_c.fill_between(np.arange(len(cam)), cam.numpy(), color="tab:orange", alpha=0.4)
    ax_c.set(ylim=(0, 1.05), ylabel="importance", xlabel="sample")
    fig.colorbar(im, ax=[ax_s, ax_c], shrink=0.85, label="importance (0-1)")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def depth_slices(d: int, n: int = N_SLICES) -> list[int]:
    """``n`` evenly spaced indices along a volume's depth ``d`` (all of them when ``d <= n``)."""
    return sorted(set(np.linspace(0, d - 1, min(n, d)).round().astype(int).tolist()))


def _plot_grad_cam_3d(path: Path, a: np.ndarray, cam: torch.Tensor, title: str):
    v, c = _volume(a), cam.numpy()
    ds = depth_slices(v.shape[0])
    fig = _figure(1.9 * len(ds) + 1.2, 4.4)
    axes = fig.subplots(2, len(ds), squeeze=False)
    im = None
    for k, d in enumerate(ds):
        _show_slice(axes[0, k], v[d], float(v.min()), float(v.max()))
        axes[0, k].set_title(f"depth {d} of {v.shape[0]}", fontsize=8)
        _show_slice(axes[1, k], v[d], float(v.min()), float(v.max()))
        im = axes[1, k].imshow(c[d], cmap=CAM_CMAP, alpha=0.55, vmin=0, vmax=1, interpolation="nearest")
    axes[0, 0].set_ylabel("input", fontsize=9)
    axes[1, 0].set_ylabel("Grad-CAM", fontsize=9)
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.85, label="importance (0-1)")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def _plot_grad_cam(path: Path, a: np.ndarray, cam: torch.Tensor, title: str, ndim: int = 2):
    if ndim != 2:
        return (_plot_grad_cam_1d if ndim == 1 else _plot_grad_cam_3d)(path, a, cam, title)
    fig = _figure(7.5, 3.6)
    ax_img, ax_cam = fig.subplots(1, 2)
    _show_image(ax_img, a)
    ax_img.set_title("input", fontsize=9)
    _show_image(ax_cam, a)
    im = ax_cam.imshow(cam.numpy(), cmap=CAM_CMAP, alpha=0.55, vmin=0, vmax=1)
    ax_cam.set_title("Grad-CAM over the input", fontsize=9)
    fig.colorbar(im, ax=ax_cam, shrink=0.85, label="importance (0-1)")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def _plot_hidden_units(path: Path, units: list, title: str):
    rows = len(units)
    fig = _figure(8, 1.5 * rows + 0.8)
    axes = np.atleast_1d(fig.subplots(rows, 1, squeeze=False)[:, 0])
    for ax, (name, u) in zip(axes, units):
        _unit_bars(ax, u, name)
    axes[-1].set_xlabel("unit, most active first")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def _unit_bars(ax, u: torch.Tensor, name: str, small: bool = False) -> None:
    """One hidden layer's outputs for one image as bars, largest first, titled with how many are active."""
    v = torch.nan_to_num(u[0].float()).cpu().sort(descending=True).values.numpy()
    ax.bar(np.arange(len(v)), v, width=1.0, color="tab:blue")
    ax.set_xlim(-0.5, len(v) - 0.5)
    ax.tick_params(labelsize=6 if small else 8)
    ax.set_title(f"{name}: {int((v > 0).sum())} of {len(v)} units > 0", fontsize=7 if small else 9, pad=2)


def _mosaic(fm: torch.Tensor, n: int = N_TILES) -> np.ndarray:
    """The ``n`` most active channels (highest mean) of a (C, h, w) map, tiled two wide with 1 px gaps (NaN)."""
    fm = torch.nan_to_num(fm.float()).cpu()
    order = _most_active(fm, n)
    _, h, w = fm.shape
    cols = 2 if len(order) > 1 else 1
    rows = -(-len(order) // cols)
    tiles = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for i, c in enumerate(order):
        r, k = divmod(i, cols)
        tiles[r * (h + 1):r * (h + 1) + h, k * (w + 1):k * (w + 1) + w] = fm[c].numpy()
    return tiles


def _top_bars(ax, probs: torch.Tensor, vocab: list, label: Optional[str]) -> None:
    top = probs.topk(min(TOP_K, len(probs)))
    names = [vocab[i] for i in top.indices.tolist()]
    y = np.arange(len(names))[::-1]
    ax.barh(y, top.values.tolist(), color=["tab:green" if n == label else ("tab:blue" if k == 0 else "tab:gray")
                                           for k, n in enumerate(names)])
    for yi, p in zip(y, top.values.tolist()):
        ax.text(min(p + 0.03, 0.7), yi, f"{p:.2f}", va="center", fontsize=7)
    ax.set_yticks(y, [f"{n} ✓" if n == label else n for n in names], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.5, 1])
    ax.tick_params(axis="x", labelsize=6)


def _plot_depths(path: Path, rows: list, title: str):
    from matplotlib import colormaps

    n_stages = max(len(r["stages"]) for r in rows)
    cam_col = any("cam" in r for r in rows)
    ncols = 2 + n_stages + cam_col
    fig = _figure(1.75 * ncols + 0.8, 1.85 * len(rows) + 0.7)
    axes = fig.subplots(len(rows), ncols, squeeze=False, width_ratios=[1, 1.25] + [1] * (ncols - 2))
    maps_cmap = colormaps["viridis"].with_extremes(bad="white")
    cam_im, cam_axes = None, []
    for i, r in enumerate(rows):
        ax_img, ax_top, *ax_stages = axes[i]
        ndim = r.get("ndim", 2)
        _show_input(ax_img, r["a"], ndim, small=True)
        info = r["info"]
        ax_img.set_ylabel(f"depth {r['depth']}\nseed {info['seed']}\n{r['params']:,} params", fontsize=9)
        _top_bars(ax_top, r["probs"], r["vocab"], r["label"])
        if i == 0:
            ax_img.set_title("input", fontsize=9)
            ax_top.set_title(f"top-{TOP_K}" + (" (✓ true)" if r["label"] else ""), fontsize=9)
        for k in range(n_stages):
            ax = ax_stages[k]
            if k >= len(r["stages"]):
                ax.set_axis_off()
                continue
            name, o = r["stages"][k]
            if o.ndim == 2:  # an MLP's hidden layer
                _unit_bars(ax, o, name, small=True)
                continue
            if o.ndim == 3:  # a series' map: its most active channels as lines
                _stage_lines(ax, o[0], r["a"].shape[-1], N_TILES, small=True)
            else:  # an image's map, or a volume's middle depth slice
                ax.set_xticks([])
                ax.set_yticks([])
                ax.imshow(_mosaic(o[0] if o.ndim == 4 else o[0][:, o.shape[2] // 2]), cmap=maps_cmap,
                          interpolation="nearest")
            ax.set_title(f"{name} {'×'.join(map(str, o.shape[1:]))}", fontsize=7, pad=2)
        if cam_col:
            ax = ax_stages[-1]
            if "cam" in r:
                if ndim == 1:
                    cam_im = _series_with_cam(ax, r["a"], r["cam"], small=True)
                else:
                    _show_input(ax, r["a"], ndim)
                    cam = r["cam"].numpy()
                    cam_im = ax.imshow(cam[cam.shape[0] // 2] if ndim == 3 else cam, cmap=CAM_CMAP, alpha=0.55,
                                       vmin=0, vmax=1)
                c = r["cam_class"]
                flat = ", flat" if float(r["cam"].max()) == 0 else ""
                ax.set_title(f"Grad-CAM at {r['cam_stage']}\n{r['vocab'][c]} ({r['probs'][c]:.2f}){flat}", fontsize=7,
                             pad=2)
                cam_axes.append(ax)
            else:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "no conv layers:\nno Grad-CAM", ha="center", va="center", fontsize=8,
                        transform=ax.transAxes)
    if cam_im is not None:
        fig.colorbar(cam_im, ax=cam_axes, shrink=0.8, aspect=25, pad=0.02).ax.tick_params(labelsize=7)
    ndim = rows[0].get("ndim", 2)
    what = [f"conv stages: the {N_TILES} most active channels (highest mean)"
            + {1: " as lines over the input's samples", 2: ", one colour scale per cell",
               3: ", their middle depth slice, one colour scale per cell"}[ndim]] * cam_col
    if ndim == 3:
        what.append("input and Grad-CAM: the middle depth slice")
    if any(o.ndim == 2 for r in rows for _, o in r["stages"]):
        what.append("hidden layers: their units for this image, largest first")
    fig.suptitle("\n".join([title] + what), fontsize=9)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------
# Inputs and the explain entry point


def _read_image(path: PathLike, n_in: int, size: Sequence[int]) -> np.ndarray:
    from .data import load_image

    path = Path(path).expanduser()
    try:  # data.open_image says what the path is when it is not an image file (missing, a folder, a FIFO, a device)
        return load_image(path, n_in, (int(size[0]), int(size[1])))
    except CnnDepthError:
        raise
    except Exception as e:  # PIL raises several types for non-images and truncated files
        raise CnnDepthError(f"cannot read {path} as an image ({type(e).__name__}); give a .png/.jpg file") from e


def valid_items(source: Optional[dict]) -> list[Path]:
    """The validation files of a saved run's dataset, in the DataLoaders' order (rebuilt with ``image_folder``)."""
    from .data import image_folder, list_datasets

    if not source:
        raise CnnDepthError("this saved model records no data source to pick --index from; pass --image PATH")
    src = source["name"]
    root = source.get("root")
    if src not in list_datasets() and not Path(src).expanduser().exists() and root and Path(root).is_dir():
        src = root  # a relative path saved from another working directory: its resolved root still works
    try:
        folder = image_folder(src, source.get("max_per_class"), source.get("train_name"), source.get("valid_name"))
    except CnnDepthError as e:
        raise CnnDepthError(f"cannot rebuild the run's dataset to pick --index ({e}); pass --image PATH "
                            f"instead") from e
    return [f for f in folder.items if f.parent.parent.name == folder.valid_name]


def normalise(a: np.ndarray, stats: Optional[dict]) -> torch.Tensor:
    """A (h, w, c) uint8 image as a (c, h, w) float tensor on the 0-1 scale, normalised with saved stats
    by fastai's ``Normalize`` (as the DataLoaders did in training)."""
    x = TensorImage(torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1).float().div_(255))[None]
    if stats:
        x = Normalize.from_stats(stats["mean"], stats["std"], cuda=False)(x)
    return x[0].as_subclass(torch.Tensor)


def _shape(config: dict) -> tuple[int, ...]:
    """(channels, *sides) of a saved model's inputs."""
    ndim, size = config.get("ndim", 2), config["img_size"]
    return (config["n_in"], *((size,) * ndim if isinstance(size, int) else size))


def check_array(a, config: dict, what: str, source: Optional[dict] = None) -> np.ndarray:
    """An array input for a saved model trained on arrays, as float32 (C, *sides) the way its data was made
    (``arrays.channels_first``: one channel may leave out its axis; NaN becomes the source's ``fill`` or is
    refused; a short series is zero-padded where the source was ``pad``), and of the model's shape, else one
    line naming ``what``."""
    from .arrays import channels_first

    source = source or {}
    want = _shape(config)
    ndim = len(want) - 1
    a = channels_first(np.asarray(a), ndim, what, source.get("fill"))
    if ndim == 1 and source.get("pad") and a.shape[0] == want[0] and a.shape[-1] < want[-1]:
        a = np.pad(a, ((0, 0), (0, want[-1] - a.shape[-1])))  # as the data's series were
    if a.shape != want:
        kind = {1: "series", 2: "array", 3: "volume"}[ndim]
        raise CnnDepthError(f"{what} has shape {a.shape}; the model takes {want} (channels, {AXES[ndim]}) as it "
                            f"was trained: give a {kind} of that shape")
    return a


def _read_array(path: PathLike, info: dict) -> np.ndarray:
    """A .npy/.npz input read by ``arrays.load_array`` (never a pickle) as the run's data was, then checked."""
    from .arrays import load_array

    config, source = info["config"], info.get("source") or {}
    path = Path(path).expanduser()
    a = load_array(path, dims=config.get("ndim", 2), fill=source.get("fill"))
    return check_array(a, config, str(path), source)


def valid_arrays(source: Optional[dict]) -> list:
    """The validation inputs of a saved run over arrays (series, volumes), in the DataLoaders' order, as
    (array (C, *sides), class name) pairs, rebuilt by ``arrays.valid_arrays`` from the recorded source."""
    from .arrays import valid_arrays as rebuild

    if not source:
        raise CnnDepthError("this saved model records no data source to pick --index from; pass --image FILE.npy")
    try:
        return list(rebuild(source))
    except CnnDepthError as e:
        raise CnnDepthError(f"cannot rebuild the run's dataset to pick --index ({e}); pass --image FILE.npy "
                            f"instead") from e


def normalise_array(a: np.ndarray, stats: Optional[dict]) -> torch.Tensor:
    """A (C, *sides) array as a float tensor, each channel normalised with the saved stats (its mean and std)."""
    x = torch.from_numpy(np.array(a, dtype=np.float32, copy=True))
    if stats:
        shape = (-1,) + (1,) * (x.ndim - 1)
        x = (x - torch.tensor(stats["mean"]).view(shape)) / torch.tensor(stats["std"]).view(shape)
    return x


def takes_arrays(info: dict) -> bool:
    """Whether a saved model's inputs are arrays rather than image files: a 1D/3D model, or a 2D one trained on
    an array folder (its source records ``dims``)."""
    return info["config"].get("ndim", 2) != 2 or (info.get("source") or {}).get("dims") is not None


def model_input(a: np.ndarray, stats: Optional[dict], arrays: bool) -> torch.Tensor:
    """What the model sees for a loaded input ``a``: an image normalised as fastai did, an array per channel."""
    return normalise_array(a, stats) if arrays else normalise(a, stats)


def _displayed(a: np.ndarray, ndim: int, arrays: bool) -> np.ndarray:
    """The input as the figures draw it: a 2D array (C, H, W) as a (H, W, 1 or 3) uint8 image stretched to its
    range (several channels other than 3: their mean); anything else as it is."""
    if not (arrays and ndim == 2):
        return a
    v = a if a.shape[0] in (1, 3) else a.mean(axis=0, keepdims=True)
    lo, hi = float(v.min()), float(v.max())
    return np.round((v - lo) / (hi - lo if hi > lo else 1.0) * 255).astype(np.uint8).transpose(1, 2, 0)


def _input_image(info: dict, image: Optional[PathLike], index: Optional[int], items: Optional[list] = None,
                 array=None, label: Optional[str] = None) -> tuple[np.ndarray, Optional[str], str]:
    """The input to explain for a loaded model: (its array, true label or None, a phrase saying which).

    An image model's is a (h, w, c) uint8 image; a model trained on arrays (:func:`takes_arrays`) a
    (C, *sides) float32 array: ``array`` as given, ``image`` a .npy/.npz file, or the ``index``-th of the run's
    validation arrays."""
    config = info["config"]
    ndim, arrays = config.get("ndim", 2), takes_arrays(info)
    if array is not None:
        if not arrays:
            raise CnnDepthError("array= is for 1D and 3D models (series, volumes) and models trained on arrays; give "
                                "an image model image= a file")
        what = "the given array" + (f" (true: {label})" if label else "")
        return check_array(array, config, "the array", info.get("source")), label, what
    if image is not None:
        if arrays:
            return _read_array(image, info), None, f"array {Path(image).name}"
        return _read_image(image, config["n_in"], config["img_size"]), None, f"image {Path(image).name}"
    index = 0 if index is None else index
    if arrays:
        items = items if items is not None else valid_arrays(info["source"])
    else:
        items = items if items is not None else valid_items(info["source"])
    what = DIM_NAMES[ndim] if arrays and ndim != 2 else "arrays" if arrays else "images"
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(items):
        raise CnnDepthError(f"--index {index} is out of range: the run's validation split has {len(items)} "
                            f"{what} (0-{len(items) - 1})")
    if arrays:
        a, label = items[index]
        name = {1: "series", 2: "array", 3: "volume"}[ndim]
        return (check_array(a, config, f"validation {name} {index}", info.get("source")), str(label),
                f"validation {name} {index} (true: {label})")
    label = items[index].parent.name
    return _read_image(items[index], config["n_in"], config["img_size"]), label, \
        f"validation image {index} (true: {label})"


def _probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.nan_to_num(model(x[None]).softmax(1)[0])


def _one_input(image, index, array) -> None:
    if sum(v is not None for v in (image, index, array)) > 1:
        raise CnnDepthError("give --image or --index, not both" if array is None else
                            "give one input: array=, image= or index=")


def explain_run(run_dir: PathLike, depth: Optional[int] = None, seed: Optional[int] = None,
                image: Optional[PathLike] = None, index: Optional[int] = None, target=None,
                out: Optional[PathLike] = None, arch: Optional[str] = None,
                log: Optional[Callable[[str], None]] = None, array=None, label: Optional[str] = None) -> list[Path]:
    """Explain one saved model of a sweep run: write input.png, feature_maps.png and gradcam.png.

    Args:
        run_dir: the folder a sweep wrote with ``--save-models``.
        depth, seed, arch: which model (see ``load_run_model``: the lowest seed by default).
        image: an image file, loaded like the dataset (channels, resized to the model's size) and normalised
            with the run's stats; for a 1D/3D model, a .npy/.npz array of the run's shape (C, L) or
            (C, D, H, W), read by ``cnn_depth.arrays.load_array``.
        index: the K-th validation image (or series, volume) of the run's dataset instead (default 0 when no
            input is given).
        target: class name or index for Grad-CAM; the predicted class when None.
        out: folder for the PNGs; ``<run_dir>/explain/{run_id}/`` by default.
        log: called with one-line notes (which seed was picked, the prediction); silent when None.
        array: for a 1D/3D model, the input itself, (C, L) or (C, D, H, W) on the data's own scale (normalised
            here with the run's stats), e.g. a series a notebook already holds; ``label`` its true class.

    Returns:
        the paths of the three PNGs; for an MLP (no conv layers, so no feature maps or Grad-CAM) of two,
        input.png and hidden_layers.png (the activations of each hidden layer's units).
    """
    log = log or (lambda s: None)
    _one_input(image, index, array)
    model, info = load_run_model(run_dir, depth, seed, arch)
    vocab, ndim = model.vocab, model_ndim(model)
    t = None if target is None else class_index(target, vocab, info["config"]["n_out"])  # fail before any work
    a, label, what = _input_image(info, image, index, array=array, label=label)
    out = output_folder(out if out is not None else Path(run_dir) / "explain" / info["run_id"])
    if info["note"]:  # after every check, so that bad input prints its error line only
        log(info["note"])
    x = model_input(a, info["stats"], takes_arrays(info))
    a = _displayed(a, ndim, takes_arrays(info))
    probs = _probs(model, x)
    pred = int(probs.argmax())
    log(f"{info['run_id']}: {what}: predicted {vocab[pred]} ({probs[pred]:.2f})")
    _plot_input(out / "input.png", a, probs, vocab, f"{info['run_id']}\n{what}", label, ndim)
    if not has_convs(model):
        log(f"{info['run_id']}: an MLP has no conv layers, so no feature maps or Grad-CAM; hidden_layers.png "
            f"shows each hidden layer's units")
        _plot_hidden_units(out / "hidden_layers.png", hidden_units(model, x),
                           f"{info['run_id']}: {what}: each hidden layer's units for this image, largest first")
        return [out / "input.png", out / "hidden_layers.png"]
    cam_class = pred if t is None else t
    stage = cam_stage(model, x)
    cam = grad_cam(model, x, cam_class, stage=stage)
    maps = feature_maps(model, x)
    paths = [out / "input.png", out / "feature_maps.png", out / "gradcam.png"]
    how = {1: "as lines", 2: "one colour scale per row", 3: "their middle depth slice, one colour scale per row"}
    _plot_feature_maps(paths[1], maps, f"{info['run_id']}: output of each conv stage, its {N_CHANNELS} most "
                                       f"active channels (highest mean), {how[ndim]}", ndim, a.shape[-1])
    shape = "×".join(map(str, dict(maps)[stage].shape[1:]))
    where = "the last conv stage" if stage == maps[-1][0] else "the last conv stage larger than 1×1"
    flat = "; flat: no positive evidence here" if float(cam.max()) == 0 else ""
    _plot_grad_cam(paths[2], a, cam,
                   f"{info['run_id']}: Grad-CAM for '{vocab[cam_class]}' "
                   f"({'target' if t is not None else 'predicted'}, p = {probs[cam_class]:.2f})\n"
                   f"at {where}, {stage} ({shape}){flat}", ndim)
    return paths


def saved_depths(run_dir: PathLike, arch: Optional[str] = None) -> tuple[str, list[int]]:
    """(arch, its saved depths, ascending) of a run folder; ``arch`` may be left out when it holds one."""
    arch, runs = pick_arch(run_dir, arch)
    return arch, sorted({r["depth"] for r in runs})


def explain_depths(run_dir: PathLike, depths: Optional[Sequence[int]] = None, seed: Optional[int] = None,
                   image: Optional[PathLike] = None, index: Optional[int] = None, target=None,
                   out: Optional[PathLike] = None, arch: Optional[str] = None,
                   log: Optional[Callable[[str], None]] = None, array=None, label: Optional[str] = None) -> Path:
    """One figure that compares the saved depths of a sweep on the same image: a row per depth with the
    image and its top-3, the feature maps of each stage and Grad-CAM.

    Args:
        run_dir: the folder a sweep wrote with ``--save-models``.
        depths: which depths (each must be saved); every saved depth of ``arch`` when None.
        seed: the seed of every row; None: per depth, the lowest saved (a note says so where there are more).
        image, index, array, label: the input, as for :func:`explain_run` (default: validation image 0).
        target: class name or index for every row's Grad-CAM; each model's predicted class when None.
        out: folder for the PNG; ``<run_dir>/explain/{arch}-d{depths}/`` by default.
        arch: which arch; may be left out when the run holds one.
        log: called with one-line notes (the seeds used, each depth's prediction); silent when None.

    Each stage cell is a 2×2 mosaic of its 4 most active channels (highest mean) on one colour scale, labelled
    with the stage and its output shape C×H×W: deeper rows have more stages, more channels and coarser
    maps. Grad-CAM is taken at each model's :func:`cam_stage` (the last conv stage, unless its map is 1×1), named
    in its title, and drawn in a perceptually uniform colour map.
    An MLP's row shows each hidden layer's units (sorted, largest first) and no Grad-CAM.

    Returns:
        the path of ``depths.png``.
    """
    from .config import compact_ints

    log = log or (lambda s: None)
    _one_input(image, index, array)
    arch, saved = saved_depths(run_dir, arch)
    if depths is None:
        depths = saved
    else:
        depths = sorted(dict.fromkeys(int(d) for d in depths))
        missing = [d for d in depths if d not in saved]
        if missing:
            raise CnnDepthError(f"depth {', '.join(map(str, missing))} is not saved in {run_dir} (arch {arch}); "
                                f"saved depths: {', '.join(map(str, saved))}")
    rows, items, notes = [], None, []
    for depth in depths:
        model, info = load_run_model(run_dir, depth, seed, arch)
        t = None if target is None else class_index(target, model.vocab, info["config"]["n_out"])
        ndim, arrays = model_ndim(model), takes_arrays(info)
        if image is None and array is None and items is None:  # rebuilt once: every depth has the same dataset
            items = valid_arrays(info["source"]) if arrays else valid_items(info["source"])
        a, true, what = _input_image(info, image, index, items, array=array, label=label)
        if info["note"]:
            notes.append(f"depth {depth}: seed {info['seed']} of {', '.join(map(str, info['seeds']))}")
        x = model_input(a, info["stats"], arrays)
        a = _displayed(a, ndim, arrays)
        probs = _probs(model, x)
        row = dict(depth=depth, info=info, a=a, label=true, what=what, probs=probs, vocab=model.vocab,
                   params=count_params(model), ndim=ndim)
        if has_convs(model):
            row["cam_class"] = int(probs.argmax()) if t is None else t
            row["cam_stage"] = cam_stage(model, x)
            row["cam"] = grad_cam(model, x, row["cam_class"], stage=row["cam_stage"])
        row["stages"] = stage_outputs(model, x)
        rows.append(row)
    out = output_folder(out if out is not None else Path(run_dir) / "explain" / f"{arch}-d{compact_ints(depths)}")
    if notes:  # after every check, so that bad input prints its error line only
        log(f"several seeds saved; using the lowest (pass --seed to pick one): {'; '.join(notes)}")
    for r in rows:
        pred = int(r["probs"].argmax())
        log(f"{r['info']['run_id']}: {r['what']}: predicted {r['vocab'][pred]} ({r['probs'][pred]:.2f})")
    path = out / "depths.png"
    cam = (f" (Grad-CAM for {'the target' if target is not None else 'each predicted class'})"
           if any("cam" in r for r in rows) else "")
    _plot_depths(path, rows, f"{arch}: {rows[0]['what']}, one row per depth{cam}")
    return path
