"""The Learner factory: a registered model wrapped in a fastai ``Learner``, split into body and head so that
``freeze()``, ``fine_tune()`` and discriminative learning rates work as fastai users expect; and
``fit_learner``, the one training call of a sweep (from scratch, feature extraction or fine-tuning)."""
from __future__ import annotations

import time
from typing import Optional, Union

import fastai.callback.all  # noqa: F401  (patches Learner: fit_one_cycle, fine_tune, lr_find, progress bars)
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import params
from fastcore.foundation import L
from torch import nn

from .errors import CnnDepthError, check_int
from .loaders import data_info
from .models import depth_cnn
from .transfer import check_transfer


def body_head_split(model: nn.Module) -> L:
    """fastai splitter for every registered model: two parameter groups, the body (every child before
    ``head``: conv stages, hidden layers or a torchvision body) and the ``head``.

    ``learn.freeze()`` then trains the head only (and, fastai's ``train_bn=True``, the body's BatchNorm
    weights); ``fine_tune`` gives the body a learning rate 100× lower than the head's.
    """
    body = [m for name, m in model.named_children() if name != "head"]
    if not hasattr(model, "head") or not body:
        raise CnnDepthError(f"{type(model).__name__} has no body and 'head' children to split; build it with "
                            f"depth_cnn()")
    return L(nn.Sequential(*body), model.head).map(params)


Threads = Union[int, str, None]


def _check_threads(threads: Threads) -> Threads:
    if threads is None or threads == "auto":
        return threads
    return check_int(threads, "threads", hint="; or threads='auto' (the free cores), or None (torch's setting)")


class SetThreads(Callback):
    """torch's intra-op threads for the duration of a fit (and of ``validate``/``get_preds``/``predict``,
    which fastai runs as a fit too), restored afterwards.

    ``threads="auto"``: the cores other processes leave free (:func:`cnn_depth.machine.free_cores`, the rule a
    sweep uses to train serially). Measuring the host takes a quarter of a second, so the choice is kept for
    ``REMEASURE_SECONDS``: a loop of ``predict`` calls measures it once. An int: that many threads. The count
    last used is ``used`` (``learn.set_threads.used``): record it with your results, it can change their last
    digits. A fit stopped by an exception other than fastai's cancels does not reach ``after_fit``; the next
    fit restores the count from before the first one.
    """

    order = -20  # before every other callback, so all of the fit runs with these threads
    REMEASURE_SECONDS = 60.0

    def __init__(self, threads: Union[int, str] = "auto"):
        self.threads = _check_threads(threads)
        self.used: Optional[int] = None
        self._measured = -float("inf")
        self._restore: Optional[int] = None

    def choose(self) -> int:
        """The thread count for the next fit (measured now for ``auto`` unless measured recently)."""
        if self.threads != "auto":
            return self.threads
        if self.used is None or time.monotonic() - self._measured > self.REMEASURE_SECONDS:
            from .machine import free_cores

            self.used, self._measured = free_cores(), time.monotonic()
        return self.used

    def before_fit(self):
        import torch

        self.used = self.choose()
        if self._restore is None:  # else an earlier fit never reached after_fit: keep what it found
            self._restore = torch.get_num_threads()
        if torch.get_num_threads() != self.used:
            torch.set_num_threads(self.used)

    def after_fit(self):
        import torch

        if self._restore is not None:
            if torch.get_num_threads() != self._restore:
                torch.set_num_threads(self._restore)
            self._restore = None


def depth_learner(dls, depth=None, arch: str = "bn", pretrained: bool = False, threads: Threads = "auto",
                  **kw) -> Learner:
    """A fastai ``Learner`` for a registered model of the given depth.

    Args:
        dls: ``DataLoaders`` (from :func:`cnn_depth.dataloaders`, or any fastai DataLoaders whose batches are
            ``(n, channels, *sides)``).
        depth: number of conv layers (hidden layers for ``mlp``; a preset's own depth when None).
        arch: a name from ``list_models()``.
        pretrained: ImageNet weights for resnet18, resnet50 or vgg16 (from the torch hub cache, else
            downloaded); the Learner is then frozen, as fastai's ``vision_learner`` leaves it: only the head
            (and BatchNorm) trains until ``unfreeze()``.
        threads: torch threads while it fits, validates or predicts (:class:`SetThreads`, restored after):
            ``"auto"`` the cores other processes leave free, as ``cnn-depth sweep`` trains serially (on a
            busy 2-core machine torch's default of 2 threads was 4-6x slower than 1); an int; ``None``
            leaves torch's setting alone. ``learn.set_threads.used`` says what the last fit used.
        **kw: passed on to ``Learner`` (``lr``, ``opt_func``, ``cbs``, ``path``, ``splitter``, ...).

    ``n_in`` (channels), ``n_out`` (``dls.c``), the input size and its dimensions (1 series, 2 images, 3
    volumes: ``dls.data_info.ndim``, or a batch's) come from ``dls``: a series gets the 1D family, a volume the
    3D one, and an arch that cannot take them (the 2D presets) is one line. The model goes to
    the DataLoaders' device, which is fastai's default: CUDA when available, else CPU. The splitter is
    :func:`body_head_split`. Inputs are normalised with the data's own statistics, for pretrained nets too
    (fastai's ``vision_learner`` would add ImageNet's where the DataLoaders have no ``Normalize``).
    """
    info = data_info(dls)
    if info is not None:
        n_in, img_size, ndim = info.n_in, tuple(info.img_size), info.ndim
    else:  # DataLoaders not made by us: read one batch, (n, c, *sides)
        xb = dls.one_batch()[0]
        n_in, img_size, ndim = xb.shape[1], tuple(xb.shape[2:]), xb.ndim - 2
    model = depth_cnn(depth, n_in=n_in, n_out=dls.c, arch=arch, img_size=img_size, pretrained=pretrained, ndim=ndim)
    kw.setdefault("loss_func", CrossEntropyLossFlat())
    kw.setdefault("metrics", accuracy)
    kw.setdefault("splitter", body_head_split)
    threads = _check_threads(threads)
    if threads is not None:
        kw["cbs"] = [*L(kw.get("cbs")), SetThreads(threads)]
    learn = Learner(dls, model, **kw)
    if pretrained:
        learn.freeze()
    return learn


def fit_learner(learn: Learner, epochs: int, lr: Union[float, slice], transfer: Optional[str] = None,
                threads: Threads = "auto") -> None:
    """Train ``learn`` for ``epochs`` passes over the training data in all, as ``transfer`` says.

    Args:
        learn: from :func:`depth_learner`.
        epochs: epochs in all, whatever the mode, so rows of one ``--epochs`` saw the same data.
        lr: the peak learning rate (fine-tune: fastai's ``base_lr``).
        transfer: None: ``fit_one_cycle(epochs, lr)`` as the Learner is (trainable from scratch, or frozen
            when made pretrained); ``"feature-extraction"``: ``freeze()`` then ``fit_one_cycle(epochs, lr)``,
            the body stays as loaded; ``"fine-tune"``: fastai's ``fine_tune(epochs - 1, lr, freeze_epochs=1)``,
            one epoch of the head alone, then ``epochs - 1`` of everything with lr/2 for the head and lr/200
            for the body.
        threads: for a Learner without a :class:`SetThreads` callback (one not made by
            :func:`depth_learner`), the threads of this fit, as in :func:`depth_learner`; a Learner that has
            one keeps its own. ``None``: torch's setting as it is (what a sweep's runs use: the sweep sets it).
    """
    epochs = check_int(epochs, "epochs")
    transfer = check_transfer(transfer, epochs)
    threads = _check_threads(threads)
    if threads is not None and not any(isinstance(cb, SetThreads) for cb in learn.cbs):
        with learn.added_cbs(SetThreads(threads)):
            return fit_learner(learn, epochs, lr, transfer, threads=None)
    if transfer == "fine-tune":
        learn.fine_tune(epochs - 1, lr, freeze_epochs=1)
        return
    if transfer == "feature-extraction":
        learn.freeze()
    learn.fit_one_cycle(epochs, lr)
