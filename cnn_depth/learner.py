"""The Learner factory: a depth-family model wrapped in a fastai ``Learner``."""
from __future__ import annotations

import fastai.callback.all  # noqa: F401  (patches Learner: fit_one_cycle, lr_find, progress bars)
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy

from .loaders import data_info
from .models import depth_cnn


def depth_learner(dls, depth=None, arch: str = "bn", **kw) -> Learner:
    """A fastai ``Learner`` for a registered model of the given depth.

    Args:
        dls: ``DataLoaders`` (from :func:`cnn_depth.dataloaders` or any fastai image DataLoaders).
        depth: number of conv layers (a preset's own depth when None).
        arch: a name from ``list_models()``.
        **kw: passed on to ``Learner`` (``lr``, ``opt_func``, ``cbs``, ``path``, ...).

    ``n_in`` (channels), ``n_out`` (``dls.c``) and the image size come from ``dls``. The model goes to
    the DataLoaders' device, which is fastai's default: CUDA when available, else CPU.
    """
    info = data_info(dls)
    if info is not None:
        n_in, img_size = info.n_in, info.img_size
    else:  # DataLoaders not made by us: read one batch
        xb = dls.one_batch()[0]
        n_in, img_size = xb.shape[1], tuple(xb.shape[-2:])
    model = depth_cnn(depth, n_in=n_in, n_out=dls.c, arch=arch, img_size=img_size)
    kw.setdefault("loss_func", CrossEntropyLossFlat())
    kw.setdefault("metrics", accuracy)
    return Learner(dls, model, **kw)
