"""``dataloaders()``: fastai DataLoaders for a dataset, through the stock DataBlock pipeline or the fast path.

This is where the two pipelines meet: :mod:`cnn_depth.data` (sources, the DataBlock) and
:mod:`cnn_depth.fastpath` (decoded tensors) do not import each other; this module imports both. What the
DataLoaders were built from travels with them as one :class:`DataInfo`, ``dls.data_info``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

from fastai.data.transforms import IntToFloatTensor
from fastai.vision.augment import Normalize, Resize, ResizeMethod
from fastcore.foundation import L
from PIL import Image

from .arrays import (DEFAULT_VALID_PCT, KINDS, ArraySource, array_dataloaders, array_folder, array_stats,
                     check_dims, holds_arrays)
from .data import (DEFAULT_SOURCE, PIPELINES, ImageSource, _image_size, _single_top_folder, _SOURCES,
                   augment_item_tfms, channel_stats, extract_archive, image_datablock, image_folder, resolve_source)
from .archives import is_archive
from .errors import CnnDepthError, check_int
from .fastpath import ImageDL, tensor_dataloaders
from .files import PathLike


@dataclass(frozen=True)
class DataInfo:
    """What a cnn-depth ``DataLoaders`` was built from (``dls.data_info``): read by the Learner factory,
    the sweep, saved models and explain."""

    source: Union[ImageSource, ArraySource]  # items, split names, vocab, max_per_class (arrays: their spec too)
    img_size: tuple  # spatial size of every batch: (h, w) for images, (length,) for series, (d, h, w) for volumes
    stats: tuple[list, list]  # per-channel mean and std used to normalise: images on the 0-1 scale, arrays as stored
    pipeline: str  # "fast" or "pil" (arrays: always "fast", tensors in memory)
    augment: bool
    ndim: int = 2  # spatial dimensions: 1 series, 2 images, 3 volumes (what depth_learner builds the model for)
    kind: str = "image"  # "image", "series" or "volume" (arrays forced to dims=2 are "image")

    @property
    def n_in(self) -> int:
        """Input channels: 1 grayscale, 3 RGB; for arrays, as many as each sample has."""
        return self.source.n_in

    @property
    def input_shape(self) -> tuple:
        """The shape of one input: ``(n_in, *img_size)``."""
        return (self.n_in, *self.img_size)


def data_info(dls) -> Optional[DataInfo]:
    """The :class:`DataInfo` of DataLoaders made by :func:`dataloaders`; None for any other DataLoaders."""
    info = getattr(dls, "data_info", None)
    return info if isinstance(info, DataInfo) else None


# Keywords of dataloaders() itself or set by it: not to be passed through **kw.
_OWN = {"self", "kwargs", "dataset", "bs", "device", "num_workers", "dl_type", "dl_kwargs", "after_item",
        "after_batch", "do_setup"}


@lru_cache(maxsize=None)
def loader_options() -> tuple[str, ...]:
    """The fastai options ``dataloaders(**kw)`` passes on: ``Datasets.dataloaders``' and ``DataLoader``'s
    keywords (``shuffle``, ``val_bs``, ``drop_last``, ``pin_memory``, ...), read from fastai itself."""
    from fastai.data.core import Datasets, TfmdDL
    from fastai.data.load import DataLoader
    names = set()
    for f in (Datasets.dataloaders, TfmdDL.__init__, DataLoader.__init__):
        names |= {p.name for p in inspect.signature(f).parameters.values()
                  if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    names |= set(DataLoader._methods)  # callbacks fastai's DataLoader takes by keyword (get_idxs, ...)
    return tuple(sorted(names - _OWN))


def check_loader_options(kw: dict) -> None:
    """A one-line error for a keyword neither ``dataloaders()`` nor fastai's loaders take."""
    options = loader_options()
    for k in kw:
        if k in ("after_item", "after_batch"):
            raise CnnDepthError(f"dataloaders() builds {k} itself; pass your transforms as "
                                f"{'item_tfms' if k == 'after_item' else 'batch_tfms'}= instead")
        if k not in options and not (k.startswith("val_") and k[4:] in options):
            raise CnnDepthError(f"dataloaders() got an unknown keyword {k!r}; besides its own arguments it takes "
                                f"fastai's loader options: {', '.join(options)} (val_<option> for validation)")


def _tfm_size(tfm) -> Optional[tuple[int, int]]:
    """The (h, w) an item transform resizes or crops to (fastai keeps ``size`` as (w, h)), or None."""
    size = getattr(tfm, "size", None)
    if isinstance(size, tuple) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return size[1], size[0]
    return None


def item_tfms_size(item_tfms: list, size, pipeline: str):
    """The ``size`` that ``item_tfms`` imply, checked against the pipeline; returns (size, the item
    transforms the DataBlock still needs, whether they set the size themselves).

    The fast pipeline decodes every image once, so only a deterministic resize can apply to it: a squish
    ``Resize`` with bilinear resampling becomes the decode size (and part of the cache key); anything that
    changes pixels per item or per epoch (a crop at a random place, a flip) is refused with a line that
    names ``pipeline="pil"``. The pil pipeline applies every item transform as given; one that sets a size
    replaces the automatic resize of mixed-size images.
    """
    sized = [(t, _tfm_size(t)) for t in item_tfms if _tfm_size(t) is not None]
    implied = sized[-1][1] if sized else None
    if implied is not None and size is not None:
        given = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(given) != implied:
            raise CnnDepthError(f"size={size!r} and item_tfms (which resize to {implied[0]}×{implied[1]}) disagree; "
                                f"give the size once")
    if pipeline == "pil":
        return (implied if implied is not None else size), item_tfms, implied is not None
    for t in item_tfms:
        squish = (isinstance(t, Resize) and t.method == ResizeMethod.Squish and t.mode == Image.BILINEAR)
        if not squish:
            name = f"Resize(method={t.method!r})" if isinstance(t, Resize) else type(t).__name__
            raise CnnDepthError(
                f"item transform {name} cannot run on the fast pipeline, which decodes each image once (the only "
                f"item transform it takes is a squish Resize, which size=N also gives); pass pipeline='pil' for "
                f"per-item transforms, or use batch_tfms (e.g. aug_transforms()) for augmentation")
    return (implied if implied is not None else size), [], False


def check_batch_tfms(batch_tfms) -> list:
    """``batch_tfms`` as a list (one transform or several, as fastai takes them), without the conversions
    dataloaders() adds itself."""
    tfms = list(L(batch_tfms)) if batch_tfms is not None else []
    for t in tfms:
        if isinstance(t, (Normalize, IntToFloatTensor)):
            raise CnnDepthError(f"dataloaders() converts to float and normalises with the training set's channel "
                                f"statistics itself; leave {type(t).__name__} out of batch_tfms")
    return tfms


def array_root(source: PathLike) -> Optional[Path]:
    """The array folder ``source`` is or converts to; None when it holds images (or nothing we know).

    A registered series or volume name: its folder (fetched or converted once). A folder (or an archive of one)
    holding one UCR problem's ``<Name>_TRAIN``/``_TEST`` ``.ts``/``.tsv`` files: their converted folder. A
    MedMNIST-3D ``.npz`` file: its converted folder. A folder whose class folders hold ``.npy``/``.npz`` files:
    itself. One line for a single ``.ts``/``.tsv`` file (a problem is two)."""
    resolved = resolve_source(source)
    if isinstance(resolved, str):
        spec = _SOURCES[resolved]
        return None if spec.kind == "image" else spec.fetch()
    if resolved.is_file():
        suffix = resolved.suffix.lower()
        if suffix == ".npz":
            from .volumes import medmnist_folder
            return medmnist_folder(resolved)
        if suffix in (".ts", ".tsv"):
            raise CnnDepthError(f"{resolved} is one file of a UCR problem; give the folder that holds both "
                                f"<Name>_TRAIN{suffix} and <Name>_TEST{suffix}")
        if not is_archive(resolved):
            return None
        resolved = extract_archive(resolved)
    root = _single_top_folder(resolved)
    from .series import find_ucr, ucr_folder
    pair = find_ucr(root)
    if pair is not None:
        return ucr_folder(*pair)
    return root if holds_arrays(root) else None


def _not_for_arrays(**given) -> None:
    """One line for an image option given with array data."""
    for name, value in given.items():
        if value:
            why = {"size": "series and volumes are used at their own shape (pad=True pads series to the longest)",
                   "item_tfms": "arrays are loaded once and served as tensors; augment with augment=True or batch_tfms",
                   "pipeline": "arrays have one pipeline, tensors in memory (pipeline='fast')"}[name]
            raise CnnDepthError(f"{name}= is for images; {why}")


def dataloaders(source: PathLike = DEFAULT_SOURCE, bs: int = 64, max_per_class: Optional[int] = None,
                size=None, train_name: Optional[str] = None, valid_name: Optional[str] = None,
                num_workers: int = 0, device=None, pipeline: str = "fast", augment: bool = False,
                item_tfms=None, batch_tfms=None, mmap: bool = True, dims: Optional[int] = None, pad: bool = False,
                fill: Optional[float] = None, valid_pct: float = DEFAULT_VALID_PCT, seed: int = 0, **kw):
    """fastai ``DataLoaders`` for a dataset name, a folder or an archive.

    Args:
        source: a name from ``list_datasets()`` (default: the embedded CIFAR-10 sample; series and volumes
            too), or the path of a folder or .tgz/.tar.gz/.zip laid out ``<root>/<train>/<class>/*``,
            ``<root>/<valid>/<class>/*`` holding images or ``.npy``/``.npz`` arrays (:mod:`cnn_depth.arrays`;
            arrays may also sit in ``<root>/<class>/``, split at random), a folder holding a UCR problem's
            ``<Name>_TRAIN.ts``/``_TEST.ts`` (or ``.tsv``) files, or a MedMNIST-3D ``.npz`` file.
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
        item_tfms: fastai item transforms, as ``ImageDataLoaders`` takes them. The pil pipeline applies any;
            the fast pipeline only a squish ``Resize`` (it decodes once) and refuses others in one line.
        batch_tfms: fastai batch transforms, e.g. ``aug_transforms()``: run between the float conversion and
            the normalisation (by their ``order``) in both pipelines, as in fastai.
        mmap: fast pipeline: map the decoded cache into memory (processes share one copy) rather than read a
            private copy (see :func:`cnn_depth.fastpath.decoded_images`).
        dims: arrays only: 1 (series), 2 (images) or 3 (volumes), forcing how each file is read; inferred
            when None (a file of 1 or 2 dimensions is a series, of 3 or 4 a volume). Images are 2D.
        pad: series only: zero-pad series shorter than the longest at the end (else different lengths are a
            one-line error naming a file).
        fill: arrays only: the value that replaces missing values (NaN); None refuses them, naming the file.
        valid_pct, seed: arrays in one folder of classes (no split folders): the share of each class held out
            for validation, and the seed that picks it.
        **kw: fastai loader options passed on to ``Datasets.dataloaders`` (``val_bs``, ``shuffle``, ...); an
            unknown keyword is a one-line error.

    Arrays are read, checked and held as one float32 tensor (``num_workers`` and ``mmap`` do not apply), and
    normalised per channel with the training split's mean and std; ``augment`` shifts series in time by up to
    1/8 of their length and flips volumes along each axis, on ``device``, training batches only.

    Returns:
        fastai ``DataLoaders``; ``dls.data_info`` (a :class:`DataInfo`) says what they were built from.
    """
    if pipeline not in PIPELINES:
        raise CnnDepthError(f"unknown pipeline {pipeline!r}; choose one of: {', '.join(PIPELINES)}")
    bs = check_int(bs, "bs")
    check_loader_options(kw)
    batch_tfms = check_batch_tfms(batch_tfms)
    dims = check_dims(dims)
    root = array_root(source)
    if root is not None:
        _not_for_arrays(size=size is not None, item_tfms=bool(list(L(item_tfms))) if item_tfms is not None else False,
                        pipeline=pipeline != "fast")
        src, x = array_folder(root, str(source), max_per_class, train_name, valid_name, dims, pad, fill, valid_pct,
                              seed)
        stats = array_stats(x, src.splits[0])
        dls = array_dataloaders(src, x, stats, bs=bs, augment=augment, device=device, batch_tfms=batch_tfms, **kw)
        dls.data_info = DataInfo(src, tuple(src.spec.shape), stats, "fast", augment, ndim=src.dims,
                                 kind=KINDS[src.dims])
        return dls
    if dims not in (None, 2):
        raise CnnDepthError(f"dims={dims} is for arrays; {source} holds images, which are 2D (leave dims out)")
    if pad or fill is not None:
        raise CnnDepthError(f"{'pad' if pad else 'fill'}= is for series and arrays; {source} holds images")
    size, item_tfms, sized = item_tfms_size(list(L(item_tfms)) if item_tfms is not None else [], size, pipeline)
    folder = image_folder(source, max_per_class, train_name, valid_name)
    img_size = _image_size(folder, size)
    stats = channel_stats(folder, img_size)
    if pipeline == "fast":
        dls = tensor_dataloaders(folder, img_size, stats, bs=bs, augment=augment, device=device,
                                 batch_tfms=batch_tfms, mmap=mmap, **kw)
    else:
        if sized:  # the user's transforms set the size (a crop Resize, RandomResizedCrop, ...): no squish of ours
            item_tfms += augment_item_tfms(img_size) if augment else []
        dblock = image_datablock(folder, None if sized else img_size, augment=augment and not sized,
                                 batch_tfms=[Normalize.from_stats(*stats)] + batch_tfms, item_tfms=item_tfms)
        dls = dblock.dataloaders(folder.root, bs=bs, num_workers=num_workers, device=device, dl_type=ImageDL, **kw)
    dls.data_info = DataInfo(folder, img_size or folder.uniform_size, stats, pipeline, augment)
    return dls
