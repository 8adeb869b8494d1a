"""What a run measures of its model while it trains, with forward hooks: the conv stages of a registered
model, and the statistics of every ReLU on a fixed validation batch (``activations.csv``).

Kept apart from :mod:`cnn_depth.explain` (figures) so that training imports no plotting.
"""
from __future__ import annotations

import torch
from fastai.callback.hook import Hooks
from fastai.torch_core import one_param
from torch import nn

from .errors import CnnDepthError
from .models import eval_mode


def conv_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The named conv stages of a registered model: every child except ``head``, in order."""
    stages = [(n, m) for n, m in model.named_children() if n != "head"]
    if not stages:
        raise CnnDepthError(f"{type(model).__name__} has no named conv stages before a 'head' child; build the "
                            f"model with depth_cnn()")
    return stages


_ONE_INPUT = {1: "a series (C, L)", 2: "an image (C, H, W)", 3: "a volume (C, D, H, W)"}


def _batch(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` as a float batch (N, C, *sides) on the model's device; its sides are ``model.config["ndim"]`` (2
    when the model has no config)."""
    ndim = (getattr(model, "config", None) or {}).get("ndim", 2)
    x = torch.as_tensor(x)
    if x.ndim == ndim + 1:
        x = x[None]
    if x.ndim != ndim + 2:
        one = _ONE_INPUT[ndim]
        raise CnnDepthError(f"expected {one} or a batch (N, {one.split('(')[1]}, got shape {tuple(x.shape)}")
    return x.float().to(one_param(model).device)


def relu_layers(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """The ReLUs of the stages in order, as (stage, qualified name, module): one per main-path conv (or per
    hidden linear layer of an MLP)."""
    return [(sname, f"{sname}.{n}", m) for sname, stage in conv_stages(model)
            for n, m in stage.named_modules() if isinstance(m, nn.ReLU)]


def _relu_stats(m, i, o) -> dict:
    o = o.detach().float()
    return dict(mean=o.mean().item(), std=o.std().item() if o.numel() > 1 else 0.0,
                frac_zero=(o == 0).float().mean().item(), shape="x".join(map(str, o.shape[1:])))


def activation_stats(model: nn.Module, xb: torch.Tensor) -> list[dict]:
    """Statistics of every conv layer's ReLU output on the batch ``xb``, in eval mode.

    One row per ReLU module in the stages (the ReLUs of the head's linear layers are left out). A ReLU
    follows every main-path conv (after the shortcut add for the last conv of a residual block) or hidden
    linear layer, so the depth family, the MLPs and the presets give ``model.config["depth"]`` rows
    (torchvision nets one per ReLU module: see the module docstring).

    Returns:
        rows with ``layer`` (the ReLU's qualified name), ``stage``, ``index`` (1 = first conv, on the input
        side), ``mean``, ``std``, ``frac_zero`` (the fraction of outputs exactly 0, over batch, channels and
        pixels) and ``shape`` ("CxHxW", or the width for an MLP layer).
    """
    relus = relu_layers(model)
    with eval_mode(model), Hooks([m for _, _, m in relus], _relu_stats) as hooks, torch.no_grad():
        model(_batch(model, xb))
        stored = list(hooks.stored)
    return [dict(layer=name, stage=stage, index=i, **s)
            for i, ((stage, name, _), s) in enumerate(zip(relus, stored), start=1)]


def fixed_valid_batch(dls, n: int = 64) -> torch.Tensor:
    """The first ``n`` validation images (normalised, no shuffle, no augmentation): the same batch every run."""
    n = min(n, len(dls.valid_ds))
    if n < 1:
        raise CnnDepthError("the validation split is empty; activation statistics need validation images")
    return dls.valid.new(shuffle=False, drop_last=False, bs=n).one_batch()[0]
