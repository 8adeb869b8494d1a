"""``dataloaders()``: fastai DataLoaders for a dataset, through the stock DataBlock pipeline or the fast path.

This is where the two pipelines meet: :mod:`cnn_depth.data` (sources, the DataBlock) and
:mod:`cnn_depth.fastpath` (decoded tensors) do not import each other; this module imports both. What the
DataLoaders were built from travels with them as one :class:`DataInfo`, ``dls.data_info``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from fastai.vision.augment import Normalize

from .data import DEFAULT_SOURCE, PIPELINES, ImageSource, _image_size, channel_stats, image_datablock, image_folder
from .errors import CnnDepthError, check_int
from .fastpath import tensor_dataloaders
from .files import PathLike


@dataclass(frozen=True)
class DataInfo:
    """What a cnn-depth ``DataLoaders`` was built from (``dls.data_info``): read by the Learner factory,
    the sweep and saved models."""

    source: ImageSource  # items, split names, vocab, max_per_class, scan
    img_size: tuple[int, int]  # (h, w) of every batch
    stats: tuple[list, list]  # per-channel mean and std on the 0-1 scale, used to normalise
    pipeline: str  # "fast" or "pil"
    augment: bool

    @property
    def n_in(self) -> int:
        """Input channels: 1 grayscale, 3 RGB."""
        return self.source.n_in


def data_info(dls) -> Optional[DataInfo]:
    """The :class:`DataInfo` of DataLoaders made by :func:`dataloaders`; None for any other DataLoaders."""
    info = getattr(dls, "data_info", None)
    return info if isinstance(info, DataInfo) else None


def dataloaders(source: PathLike = DEFAULT_SOURCE, bs: int = 64, max_per_class: Optional[int] = None,
                size=None, train_name: Optional[str] = None, valid_name: Optional[str] = None,
                num_workers: int = 0, device=None, pipeline: str = "fast", augment: bool = False,
                mmap: bool = True, **kw):
    """fastai ``DataLoaders`` for a dataset name, a folder or an archive.

    Args:
        source: a name from ``list_datasets()`` (default: the embedded CIFAR-10 sample), or the path of a
            folder or .tgz/.tar.gz/.zip laid out ``<root>/<train>/<class>/*``, ``<root>/<valid>/<class>/*``.
        bs: batch size.
        max_per_class: keep the first N images (by file name) of each class in each split.
        size: resize every image to this (int or (h, w)); by default images of one size are used as they
            are and mixed sizes are resized to 32×32.
        train_name, valid_name: split folder names; detected when omitted.
        num_workers: loader worker processes for ``pipeline="pil"`` (0 decodes in the main process); the
            fast pipeline has nothing to decode per batch and always uses 0.
        device: where batches go; fastai's default device (CUDA when available) when None.
        pipeline: ``"fast"`` (default): every image decoded once into a uint8 tensor cached on disk, batches
            sliced from memory and converted, normalised and augmented on ``device``
            (:mod:`cnn_depth.fastpath`); ``"pil"``: the stock DataBlock pipeline, a PIL decode per item
            every epoch. Both give the same items, split, labels and (without ``augment``) the same batches.
        augment: random left-right flip and pad-4-and-random-crop on the training set (never validation):
            per batch on the device in the fast pipeline, per item with fastai's ``FlipItem``, ``CropPad``
            and ``RandomCrop`` in the pil pipeline (same distribution, different random draws).
        mmap: fast pipeline: map the decoded cache into memory (processes share one copy) rather than read a
            private copy (see :func:`cnn_depth.fastpath.decoded_images`).
        **kw: passed on to ``Datasets.dataloaders`` (``val_bs``, ``shuffle``, ...).

    Returns:
        fastai ``DataLoaders``; ``dls.data_info`` (a :class:`DataInfo`) says what they were built from.
    """
    if pipeline not in PIPELINES:
        raise CnnDepthError(f"unknown pipeline {pipeline!r}; choose one of: {', '.join(PIPELINES)}")
    bs = check_int(bs, "bs")
    folder = image_folder(source, max_per_class, train_name, valid_name)
    img_size = _image_size(folder, size)
    stats = channel_stats(folder, img_size)
    if pipeline == "fast":
        dls = tensor_dataloaders(folder, img_size, stats, bs=bs, augment=augment, device=device, mmap=mmap, **kw)
    else:
        dblock = image_datablock(folder, img_size, batch_tfms=[Normalize.from_stats(*stats)], augment=augment)
        dls = dblock.dataloaders(folder.root, bs=bs, num_workers=num_workers, device=device, **kw)
    dls.data_info = DataInfo(folder, img_size or folder.uniform_size, stats, pipeline, augment)
    return dls
