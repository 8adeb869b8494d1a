"""Arrays as data: folders of ``.npy``/``.npz`` files, one sample per file, served to fastai as tensors.

The layout is the image folders' (:mod:`cnn_depth.data`): ``<root>/<train>/<class>/<file>`` and
``<root>/<valid>/<class>/<file>`` (split names detected as for images, or given), or one folder
``<root>/<class>/<file>`` split at random per class (``valid_pct``, ``seed``). A sample is one array, channels
first:

- dims 1, a series of L time steps: ``(L,)`` (one channel) or ``(C, L)``;
- dims 3, a volume: ``(D, H, W)`` (one channel) or ``(C, D, H, W)``;
- dims 2, an image, only when forced with ``dims=2``: ``(H, W)`` or ``(C, H, W)``.

``dims`` is inferred from the first file's number of dimensions (1 or 2: a series; 3 or 4: a volume), or read
from the ``origin.json`` of a folder this package converted (UCR files, MedMNIST), or forced with ``dims=``.
Every file is loaded once (``np.load(..., allow_pickle=False)``: a pickle is refused), checked, and the whole
dataset is held as one float32 tensor whose batches are sliced in memory (:class:`ArrayDL`, the fast path's loader),
normalised per channel with the training split's mean and std and, with ``augment``, shifted in time (1D) or
flipped (3D) on the DataLoaders' device. A single item (``learn.predict(path_or_array)``, ``test_dl``) takes
the same :class:`LoadArray` transform the dataset was built with, so it is checked and shaped the same way.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import secrets
import stat
import warnings
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from fastai.data.core import Datasets
from fastai.data.transforms import Categorize, parent_label
from fastai.torch_core import TensorBase, TensorImage, default_device
from fastai.vision.augment import RandTransform
from fastai.vision.data import get_grid
from fastcore.foundation import L
from fasttransform import DisplayedTransform
from plum import dispatch
from torch import Tensor

from .cache import cache_error, shared_entry, tmp_name
from .data import _check_name, _entries, _find_splits, _is, _shown, resolve_splits
from .errors import CnnDepthError, check_int
from .fastpath import FlipPadCrop, TensorDL
from .files import PathLike

ARRAY_EXTENSIONS = (".npy", ".npz")
KINDS = {1: "series", 2: "image", 3: "volume"}  # what DataInfo.kind calls data of each dims
ORIGIN = "origin.json"  # written by our converters at a folder's root: its dims and where each file came from
COMPLETE = ".complete"  # written last into a converted folder: one without it is unfinished
SHIFT_FRACTION = 1 / 8  # augment, 1D: shift by up to this fraction of the length either way (pad 4 of 32 px in 2D)
DEFAULT_VALID_PCT = 0.2  # one folder of classes: this share of each class is the validation split
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
SHAPES_HELP = ("a sample is (L,) or (C, L) for a series, (D, H, W) or (C, D, H, W) for a volume, channels first "
               "(or (H, W), (C, H, W) with dims=2)")


# ---------------------------------------------------------------------------------------------------------
# One file


def _npy_header_error(path: Path, head: bytes) -> CnnDepthError:
    if head[:1] == b"\x80":  # every pickle of protocol 2 or later starts with PROTO
        return CnnDepthError(f"{_shown(path)} is a pickle, which is not loaded (a pickle can run code); save the "
                             f"sample with np.save(path, array) as a plain numeric array")
    return CnnDepthError(f"{_shown(path)} is not a NumPy .npy file (no .npy header); save the sample with "
                         f"np.save(path, array)")


def read_array(path: PathLike) -> np.ndarray:
    """The array stored in one ``.npy`` file, or in a ``.npz`` holding one array (or one named ``x``), as stored.

    Loaded with ``allow_pickle=False``: a pickle, an object array, a file that is not NumPy's and a damaged
    one are each a one-line error naming the file.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise CnnDepthError(f"no such file: {_shown(path)}") from e
    except OSError as e:
        raise CnnDepthError(f"cannot read {_shown(path)} ({e.strerror or e}); check its permissions") from e
    if not stat.S_ISREG(st.st_mode):
        raise CnnDepthError(f"{_shown(path)} is not a regular file (a folder, FIFO or device); a sample is one "
                            f".npy or .npz file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            npz = head[:4] == ZIP_MAGIC
            if not npz and head[:6] != NPY_MAGIC:
                raise _npy_header_error(path, head)
            f.seek(0)
            if not npz:
                return np.load(f, allow_pickle=False)
            with np.load(f, allow_pickle=False) as z:
                names = list(z.files)
                if len(names) != 1 and "x" not in names:
                    raise CnnDepthError(f"{_shown(path)} holds {len(names)} arrays ({', '.join(names[:5]) or 'none'}); "
                                        f"a sample file holds one array, or names it x: np.savez(path, x=array)")
                return z["x" if len(names) != 1 else names[0]]
    except CnnDepthError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower() or "object arrays" in str(e).lower():
            raise CnnDepthError(f"{_shown(path)} holds an object array, which is not loaded (allow_pickle=False: "
                                f"a pickle can run code); save a numeric array with np.save(path, array)") from e
        raise _damaged(path, e) from e
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:  # truncated or damaged
        raise _damaged(path, e) from e


def _damaged(path: Path, e: Exception) -> CnnDepthError:
    reason = " ".join(str(e).split())[:100].rstrip(" .")
    return CnnDepthError(f"cannot read {_shown(path)} ({type(e).__name__}: {reason}); it may be truncated or damaged: "
                         f"save it again with np.save(path, array)")


def infer_dims(ndim: int, where: str) -> int:
    """The data dims a file of ``ndim`` dimensions holds when not forced: 1 or 2 a series, 3 or 4 a volume."""
    if ndim in (1, 2):
        return 1
    if ndim in (3, 4):
        return 3
    raise CnnDepthError(f"{where} is a {ndim}-dim array; {SHAPES_HELP}")


def check_dims(dims) -> Optional[int]:
    """``dims`` as given (None: inferred), else a one-line error."""
    if dims is None:
        return None
    if isinstance(dims, bool) or dims not in (1, 2, 3):
        raise CnnDepthError(f"dims must be 1 (series), 2 (images) or 3 (volumes), got {dims!r}")
    return int(dims)


def check_fill(fill) -> Optional[float]:
    """``fill`` as a finite float (None: missing values are refused), else a one-line error."""
    if fill is None:
        return None
    try:
        value = float(fill)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(fill, bool) or not math.isfinite(value):
        raise CnnDepthError(f"fill must be a finite number (the value that replaces missing values), got {fill!r}")
    return value


def sample_shape(a: np.ndarray, dims: int, where: str) -> tuple:
    """The ``(C, *spatial)`` shape ``a`` makes as a sample of ``dims`` spatial dimensions, checked: real numbers,
    ``dims`` or ``dims + 1`` dimensions, not empty."""
    if a.dtype.kind not in "biuf":
        what = "complex numbers" if a.dtype.kind == "c" else f"{a.dtype} values"
        raise CnnDepthError(f"{where} holds {what}, not real numbers; save a numeric array (float or int)")
    if a.ndim not in (dims, dims + 1):
        raise CnnDepthError(f"{where} is a {a.ndim}-dim array {tuple(a.shape)}, not a {KINDS[dims]} "
                            f"({dims} or {dims + 1} dims); {SHAPES_HELP}")
    if a.size == 0:
        raise CnnDepthError(f"{where} is empty (shape {tuple(a.shape)}); remove it")
    return tuple(a.shape) if a.ndim == dims + 1 else (1, *a.shape)


def channels_first(a: np.ndarray, dims: int, where: str, fill: Optional[float] = None) -> np.ndarray:
    """``a`` as a float32 ``(C, *spatial)`` sample (:func:`sample_shape`), NaN replaced by ``fill`` (else
    refused), infinities refused."""
    a = np.asarray(a)
    a = a.reshape(sample_shape(a, dims, where)).astype(np.float32)
    if not np.isfinite(a).all():
        if np.isinf(a).any():
            first = tuple(int(i) for i in np.argwhere(np.isinf(a))[0])
            raise CnnDepthError(f"{where} has infinite values (the first at index {first}); replace them with "
                                f"finite numbers")
        nan = np.isnan(a)
        if fill is None:
            first = tuple(int(i) for i in np.argwhere(nan)[0])
            raise CnnDepthError(f"{where} has {int(nan.sum())} missing values (NaN; the first at index {first}); "
                                f"replace them with dataloaders(fill=0.0) (--fill 0), or remove the file")
        a[nan] = fill
    return a


def load_array(path: PathLike, dims: Optional[int] = None, fill: Optional[float] = None) -> np.ndarray:
    """One sample file as a float32 array, channels first: ``(C, L)`` or ``(C, D, H, W)`` (``(C, H, W)`` with
    ``dims=2``); dims inferred as for a folder (the folder's ``origin.json`` first), NaN replaced by ``fill``
    or refused."""
    path = Path(path)
    a = read_array(path)
    dims = check_dims(dims) or _origin(path.parents[2] if len(path.parents) > 2 else path.parent).get("dims") \
        or infer_dims(a.ndim, _shown(path))
    return channels_first(a, dims, _shown(path), check_fill(fill))


# ---------------------------------------------------------------------------------------------------------
# The spec every sample is shaped by, and the fastai transform that applies it


@dataclass(frozen=True)
class ArraySpec:
    """What every sample of a dataset is made into: ``dims`` spatial dimensions, ``n_in`` channels, ``shape``
    (spatial, after padding); series shorter than ``shape`` are zero-padded at the end when ``pad``; NaN
    becomes ``fill`` (None: refused)."""

    dims: int
    n_in: int
    shape: tuple
    pad: bool = False
    fill: Optional[float] = None

    @property
    def tensor_type(self) -> type:
        return TENSOR_TYPES[self.dims]

    def sample(self, a: np.ndarray, where: str) -> np.ndarray:
        """``a`` (as stored, or as given to ``predict``) as a float32 ``(n_in, *shape)`` array, or a one-line error."""
        a = channels_first(np.asarray(a), self.dims, where, self.fill)
        if a.shape[0] != self.n_in:
            raise CnnDepthError(f"{where} has {a.shape[0]} channel(s) {tuple(a.shape)}, the data {self.n_in}: give "
                                f"{(self.n_in, *self.shape)}, channels first")
        if a.shape[1:] == tuple(self.shape):
            return a
        if self.dims == 1 and self.pad and a.shape[-1] <= self.shape[-1]:
            return np.pad(a, ((0, 0), (0, self.shape[-1] - a.shape[-1])))
        if self.dims == 1:
            fix = (f"pad=True pads up to {self.shape[-1]}" if self.pad else
                   "pad them with zeros to the longest with dataloaders(pad=True) (--pad), or trim them to one length")
            raise CnnDepthError(f"{where} has {a.shape[-1]} time steps, the data's series {self.shape[-1]}; {fix}")
        raise CnnDepthError(f"{where} has shape {tuple(a.shape[1:])}, the data's samples {tuple(self.shape)}; "
                            f"resample it to that shape")


class LoadArray(DisplayedTransform):
    """fastai type transform: a path (``Path``/``str``), a NumPy array or a tensor to the dataset's tensor type
    (:class:`TensorSeries`, :class:`TensorArrayImage` or :class:`TensorVolume`), shaped by its :class:`ArraySpec`.

    ``input_types`` tells fastai's ``test_dl``/``predict`` which inputs start here."""

    input_types = (Path, str, np.ndarray, Tensor)

    def __init__(self, spec: ArraySpec):
        super().__init__()
        self.spec = spec

    def encodes(self, o: Path | str | np.ndarray | Tensor):
        if isinstance(o, (str, Path)):
            a, where = read_array(o), _where(Path(o))
        else:
            a, where = (o.detach().cpu().numpy() if isinstance(o, Tensor) else o), "the array given"
        return self.spec.tensor_type(torch.from_numpy(self.spec.sample(a, where)))


# ---------------------------------------------------------------------------------------------------------
# Tensor types: what show_batch, show_results and predict see


def _title(ctx, title):
    if title:
        ctx.set_title(title)


class TensorSeries(TensorBase):
    """A series ``(C, L)`` (or a batch of them): ``show`` draws each channel as a line."""

    def show(self, ctx=None, title=None, figsize=None, **kwargs):
        import matplotlib.pyplot as plt

        if ctx is None:
            _, ctx = plt.subplots(figsize=figsize or (4, 2.5))
        x = self.as_subclass(Tensor).detach().cpu().float()
        for c in range(x.shape[0]):
            ctx.plot(x[c].numpy(), lw=1, alpha=0.9 if x.shape[0] == 1 else 0.7, label=f"channel {c}")
        ctx.tick_params(labelsize=7)
        _title(ctx, title)
        return ctx


def _middle_slices(x: Tensor) -> np.ndarray:
    """The three orthogonal middle slices of a ``(D, H, W)`` volume side by side, one px apart (NaN)."""
    d, h, w = x.shape
    parts = [x[d // 2], x[:, h // 2], x[:, :, w // 2]]
    rows = max(p.shape[0] for p in parts)
    out = []
    for p in parts:
        p = p.numpy()
        out += [np.pad(p, ((0, rows - p.shape[0]), (0, 0)), constant_values=np.nan), np.full((rows, 1), np.nan)]
    return np.concatenate(out[:-1], axis=1)


class TensorVolume(TensorBase):
    """A volume ``(C, D, H, W)`` (or a batch of them): ``show`` draws its three middle slices (depth, height,
    width) of channel 0 side by side."""

    def show(self, ctx=None, title=None, figsize=None, cmap="viridis", **kwargs):
        import matplotlib.pyplot as plt

        if ctx is None:
            _, ctx = plt.subplots(figsize=figsize or (4.5, 1.8))
        x = self.as_subclass(Tensor).detach().cpu().float()
        ctx.imshow(_middle_slices(x[0]), cmap=cmap)
        ctx.axis("off")
        _title(ctx, title)
        return ctx


class TensorArrayImage(TensorImage):
    """An image read from an array ``(C, H, W)`` (``dims=2``): a ``TensorImage`` (fastai's image batch transforms
    apply) whose ``show`` scales any values to the colour map (channel 0, or RGB for 3 channels)."""

    def show(self, ctx=None, title=None, figsize=None, cmap="viridis", **kwargs):
        import matplotlib.pyplot as plt

        if ctx is None:
            _, ctx = plt.subplots(figsize=figsize or (2.5, 2.5))
        x = self.as_subclass(Tensor).detach().cpu().float()
        if x.shape[0] == 3:
            lo, hi = x.min(), x.max()
            ctx.imshow(((x - lo) / (hi - lo + 1e-12)).permute(1, 2, 0).numpy())
        else:
            ctx.imshow(x[0].numpy(), cmap=cmap)
        ctx.axis("off")
        _title(ctx, title)
        return ctx


TENSOR_TYPES = {1: TensorSeries, 2: TensorArrayImage, 3: TensorVolume}
ArrayTensor = Union[TensorSeries, TensorVolume, TensorArrayImage]


@dispatch  # plum: a method of fastai's show_batch (fastai.data.core), as fastai.vision.data adds its own
def show_batch(x: TensorSeries | TensorVolume, y, samples, ctxs=None, max_n=9, nrows=None, ncols=None, figsize=None,
               **kwargs):
    """fastai's ``show_batch`` for series and volumes: a grid of plots, each titled with its label."""
    if ctxs is None:
        ctxs = get_grid(min(len(samples), max_n), nrows=nrows, ncols=ncols, figsize=figsize)
    for i in range(len(samples[0])):
        ctxs = [b.show(ctx=c, **kwargs) for b, c, _ in zip(samples.itemgot(i), ctxs, range(max_n))]
    return ctxs


@dispatch  # a method of fastai's show_results
def show_results(x: TensorSeries | TensorVolume, y, samples, outs, ctxs=None, max_n=9, nrows=None, ncols=None,
                 figsize=None, **kwargs):
    """fastai's ``show_results`` for series and volumes: each plot titled target/prediction, green when right."""
    if ctxs is None:
        ctxs = get_grid(min(len(samples), max_n), nrows=nrows, ncols=ncols, figsize=figsize)
    ctxs = [b.show(ctx=c, **kwargs) for b, c, _ in zip(samples.itemgot(0), ctxs, range(max_n))]
    for b, r, c, _ in zip(samples.itemgot(1), outs.itemgot(0), ctxs, range(max_n)):
        c.set_title(f"{b}/{r}", color="green" if b == r else "red")
    return ctxs


# ---------------------------------------------------------------------------------------------------------
# Batch transforms: normalisation and augmentation, one op per batch on its device


class NormalizeArray(DisplayedTransform):
    """Per-channel ``(x - mean) / std`` of array batches (order 99, as fastai's ``Normalize``), and back."""

    order = 99

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.mean = torch.tensor(list(mean), dtype=torch.float32)
        self.std = torch.tensor(list(std), dtype=torch.float32)

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return self.mean.to(x.device).view(shape), self.std.to(x.device).view(shape)

    def encodes(self, x: TensorSeries | TensorVolume | TensorArrayImage):
        mean, std = self._stats(x)
        return (x - mean) / std

    def decodes(self, x: TensorSeries | TensorVolume | TensorArrayImage):
        mean, std = self._stats(x)
        return x * std + mean


def shift_crop(x: Tensor, pad: int) -> Tensor:
    """Shift each series of ``x`` (n, c, L) in time by a uniform random ``-pad..pad`` steps, zeros shifted in:
    zero-pad both ends by ``pad`` and crop back to L at a random offset (one gather, no Python loop)."""
    n, c, length = x.shape
    xp = F.pad(x, (pad, pad))
    idx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device) + torch.arange(length, device=x.device)
    return xp.gather(2, idx[:, None, :].expand(n, c, length))


class RandomShift(RandTransform):
    """Batch transform, training only: :func:`shift_crop` of series by up to ``pad`` steps. Order 100, after the
    normalisation, so the steps shifted in are 0 there: the training mean."""

    order, split_idx = 100, 0

    def __init__(self, pad: int, **kwargs):
        super().__init__(**kwargs)
        self.pad = pad

    def encodes(self, x: TensorSeries):
        return shift_crop(x, self.pad) if self.pad else x


def flip3d(x: Tensor) -> Tensor:
    """Flip each volume of ``x`` (n, c, d, h, w) along each spatial axis with p=0.5, independently."""
    for axis in (2, 3, 4):
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1, 1), x.flip(axis), x)
    return x


class RandomFlip3d(RandTransform):
    """Batch transform, training only: :func:`flip3d` (8 orientations). Order 100, after the normalisation."""

    order, split_idx = 100, 0

    def encodes(self, x: TensorVolume):
        return flip3d(x)


def augment_tfms(spec: ArraySpec) -> list:
    """``augment=True``'s batch transforms: a random shift in time by up to 1/8 of the length (1D), flips along
    each axis (3D), flip and pad-4-crop as for images (2D)."""
    if spec.dims == 1:
        return [RandomShift(max(1, round(spec.shape[-1] * SHIFT_FRACTION)))]
    if spec.dims == 3:
        return [RandomFlip3d()]
    return [FlipPadCrop(order=100)]


# ---------------------------------------------------------------------------------------------------------
# Folders: items, splits, the checks


def _origin(root: Path) -> dict:
    """A converted folder's ``origin.json`` (empty for any other folder)."""
    try:
        data = json.loads((Path(root) / ORIGIN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _where(path: Path) -> str:
    """``path`` for a message; for a file of a converted folder (``<root>/<split>/<class>/<NNNNN>.npy``), the
    sample of the original file it holds, which is what can be fixed."""
    path = Path(path)
    if len(path.parents) < 3 or not path.stem.isdigit():
        return _shown(path)
    origin = _origin(path.parents[2])
    source = origin.get("files", {}).get(path.parents[1].name) if origin else None
    if source:
        return f"{origin.get('unit', 'sample')} {int(path.stem)} (from 0) of {_shown(source)}"
    return _shown(path)


def _is_array_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(ARRAY_EXTENSIONS)


def _first_file(folder: str) -> Optional[str]:
    """The first non-hidden file name ``os.scandir`` gives in ``folder`` (None when it has none or cannot be
    read): one entry read, not the folder's thousands."""
    try:
        with os.scandir(folder) as it:
            for e in it:
                if not e.name.startswith(".") and not _is(e, "dir"):
                    return e.name
    except OSError:
        return None
    return None


def holds_arrays(root: PathLike) -> bool:
    """Whether ``root`` is laid out as an array folder: its class folders (under split folders or not) hold
    ``.npy``/``.npz`` files (judged by the first file of each; any array file decides)."""
    root = str(root)
    splits = _find_splits(Path(root), quiet=True)
    tops = [os.path.join(root, s) for s in splits] if splits else [root]
    for top in tops:
        for c in _entries(top):
            if not c.name.startswith(".") and _is(c, "dir"):
                name = _first_file(c.path)
                if name is not None and _is_array_file(name):
                    return True
    return False


def array_items(path: PathLike, folders: Sequence[str], max_per_class: Optional[int] = None) -> L:
    """The array files ``<path>/<split>/<class>/<file>`` of the split ``folders`` (``"."``: ``<path>/<class>/``),
    sorted, the first ``max_per_class`` of each class and split by name; a class folder without any is a
    one-line error."""
    root, kept = str(path), []
    for split in sorted(set(folders)):
        split_dir = os.path.normpath(os.path.join(root, split))
        for c in sorted(_entries(split_dir), key=lambda e: e.name):
            if c.name.startswith(".") or not _is(c, "dir"):
                continue
            _check_name(c.name, split_dir)
            names = sorted(e.name for e in _entries(c.path) if _is_array_file(e.name))
            if not names:
                raise CnnDepthError(f"class folder {_shown(c.path)} has no .npy or .npz files; put the samples of "
                                    f"class {c.name!r} in it, or remove it")
            for name in names[:max_per_class]:
                _check_name(name, c.path)
                kept.append(Path(c.path) / name)
    return L(kept)


class ClassSplitter:
    """fastai splitter for one folder of classes: ``valid_pct`` of each class (rounded, at least one of a class
    with two or more items) to validation, chosen by ``seed``; the same items and seed give the same split."""

    def __init__(self, valid_pct: float = DEFAULT_VALID_PCT, seed: int = 0):
        self.valid_pct, self.seed = valid_pct, seed

    def __call__(self, items) -> tuple[list, list]:
        by_class = defaultdict(list)
        for i, o in enumerate(items):
            by_class[Path(o).parent.name].append(i)
        rng = np.random.default_rng(self.seed)
        train, valid = [], []
        for c in sorted(by_class):
            idx = by_class[c]
            n_valid = min(len(idx) - 1, max(1, round(self.valid_pct * len(idx)))) if len(idx) > 1 else 0
            chosen = set(rng.permutation(len(idx))[:n_valid].tolist())
            for k, i in enumerate(idx):
                (valid if k in chosen else train).append(i)
        return sorted(train), sorted(valid)


def check_valid_pct(valid_pct) -> float:
    try:
        v = float(valid_pct)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(valid_pct, bool) or not 0 < v < 1:
        raise CnnDepthError(f"valid_pct must be a fraction between 0 and 1 (the share of each class held out for "
                            f"validation), got {valid_pct!r}")
    return v


@dataclass
class ArraySource:
    """A resolved array dataset: root, split, items, the spec every sample is shaped by, what was found.

    The attributes an :class:`cnn_depth.data.ImageSource` has too (name, root, split names, items, n_in,
    vocab, counts, max_per_class) mean the same here; with one folder of classes ``train_name`` and
    ``valid_name`` are ``"train"``/``"valid"`` and name the random split (``valid_pct``, ``seed``)."""

    name: str
    root: Path
    train_name: str
    valid_name: str
    items: L = field(repr=False)
    splits: tuple = field(repr=False)  # (train indices, valid indices) into items
    spec: ArraySpec = None
    format: str = "arrays"  # where the files came from: arrays, ts, tsv, medmnist, synthetic
    max_per_class: Optional[int] = None
    vocab: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    valid_pct: Optional[float] = None  # one folder of classes: the random split
    seed: Optional[int] = None

    @property
    def n_in(self) -> int:
        return self.spec.n_in

    @property
    def dims(self) -> int:
        return self.spec.dims

    @property
    def kind(self) -> str:
        return KINDS[self.spec.dims]


def _spec(arrays: list, paths: Sequence[Path], dims: Optional[int], pad: bool, fill: Optional[float]) -> ArraySpec:
    """The spec of a dataset: dims (given, or from the first file), channels and shape from the first file,
    every file's shape checked against it (the first that differs named, with the first file)."""
    first = _where(paths[0])
    dims = dims or infer_dims(arrays[0].ndim, first)
    s0 = sample_shape(arrays[0], dims, first)
    longest = s0[-1]
    for a, p in zip(arrays, paths):
        s = sample_shape(a, dims, _where(p))
        if s[0] != s0[0]:
            raise CnnDepthError(f"{_where(p)} has {s[0]} channel(s) {s}, {first} has {s0[0]} {s0}; every sample "
                                f"needs the same channels (channels first)")
        if s[1:] != s0[1:]:
            if dims != 1:
                raise CnnDepthError(f"{_where(p)} has shape {s[1:]}, {first} has {s0[1:]}: samples need one shape; "
                                    f"resample them to one")
            if not pad:
                raise CnnDepthError(f"{_where(p)} has {s[-1]} time steps, {first} has {s0[-1]}: the series differ in "
                                    f"length; pad them with zeros to the longest with dataloaders(pad=True) (--pad), "
                                    f"or trim them to one length")
            longest = max(longest, s[-1])
    if dims == 1 and s0[0] > s0[-1] and not pad:
        warnings.warn(f"the series in {_shown(paths[0].parent.parent)} are read as {s0[0]} channels of {s0[-1]} "
                      f"time steps (arrays are channels first, (C, L)); if they are (length, channels), save them "
                      f"transposed", stacklevel=3)
    return ArraySpec(dims, s0[0], (longest,) if dims == 1 else s0[1:], bool(pad), fill)


def array_folder(source: PathLike, name: Optional[str] = None, max_per_class: Optional[int] = None,
                 train_name: Optional[str] = None, valid_name: Optional[str] = None, dims: Optional[int] = None,
                 pad: bool = False, fill: Optional[float] = None, valid_pct: float = DEFAULT_VALID_PCT,
                 seed: int = 0) -> tuple[ArraySource, np.ndarray]:
    """Read and check a folder of array files: an :class:`ArraySource` and every sample as one float32 array
    ``(n, C, *shape)`` in item order.

    Args:
        source: the folder (see the module docstring for the layout).
        name: what the dataset was asked for by (default: the folder).
        max_per_class: keep the first N files (by name) of each class in each split (one folder: of each
            class, before the random split).
        train_name, valid_name: split folder names; detected when omitted.
        dims: 1, 2 or 3; inferred when None.
        pad: zero-pad series shorter than the longest at the end (else different lengths are refused).
        fill: the value that replaces missing values (NaN); None refuses them.
        valid_pct, seed: the random split of one folder of classes (ignored with split folders).
    """
    root = Path(source)
    dims, fill = check_dims(dims), check_fill(fill)
    if max_per_class is not None:
        max_per_class = check_int(max_per_class, "max_per_class")
    origin = _origin(root)
    dims = dims or origin.get("dims")
    if train_name or valid_name or _find_splits(root, quiet=True):
        train_name, valid_name = resolve_splits(root, train_name, valid_name)
        items = array_items(root, (train_name, valid_name), max_per_class)
        splits = ([i for i, p in enumerate(items) if p.parent.parent.name == train_name],
                  [i for i, p in enumerate(items) if p.parent.parent.name == valid_name])
        valid_pct = seed = None
    else:
        valid_pct, seed = check_valid_pct(valid_pct), check_int(seed, "seed", minimum=0)
        items = array_items(root, (".",), max_per_class)
        train_name, valid_name = "train", "valid"
        splits = ClassSplitter(valid_pct, seed)(items)
    if not items:
        raise CnnDepthError(f"no .npy or .npz files found in {_shown(root)}; lay it out <root>/<train>/<class>/*.npy "
                            f"and <root>/<valid>/<class>/*.npy, or <root>/<class>/*.npy")
    raw = [read_array(p) for p in items]
    spec = _spec(raw, items, dims, pad, fill)
    x = np.empty((len(items), spec.n_in, *spec.shape), dtype=np.float32)
    for i, (a, p) in enumerate(zip(raw, items)):
        x[i] = spec.sample(a, _where(p))
    labels = [p.parent.name for p in items]
    train_classes = {labels[i] for i in splits[0]}
    valid_classes = {labels[i] for i in splits[1]}
    if not splits[0] or not splits[1]:
        empty = train_name if not splits[0] else valid_name
        raise CnnDepthError(f"the {empty} split of {_shown(root)} has no samples; both splits need samples"
                            + ("" if valid_pct is None else " (one folder of classes: give each class 2 or more)"))
    if len(train_classes) < 2:
        raise CnnDepthError(f"the {train_name} split of {_shown(root)} has only one class "
                            f"({', '.join(train_classes)}); a classifier needs at least two class folders")
    if valid_classes - train_classes:
        raise CnnDepthError(f"classes {sorted(valid_classes - train_classes)} are in {valid_name}/ but not in "
                            f"{train_name}/; every validation class needs training samples")
    src = ArraySource(str(name or source), root, train_name, valid_name, items, splits, spec,
                      format=origin.get("format", "arrays"), max_per_class=max_per_class, vocab=sorted(train_classes),
                      counts={train_name: len(splits[0]), valid_name: len(splits[1])}, valid_pct=valid_pct, seed=seed)
    return src, x


def array_stats(x: np.ndarray, train: Sequence[int]) -> tuple[list, list]:
    """Per-channel mean and std of the training samples (float64 sums; a constant channel gets std 1, so it is
    only shifted)."""
    t = x[np.asarray(train)]
    axes = (0, *range(2, t.ndim))
    mean = t.mean(axis=axes, dtype=np.float64)
    std = t.std(axis=axes, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    return [float(v) for v in mean], [float(v) for v in std]


# ---------------------------------------------------------------------------------------------------------
# The DataLoaders


class ArrayDL(TensorDL):
    """:class:`cnn_depth.fastpath.TensorDL` whose batches are of ``x_type`` (:class:`TensorSeries`,
    :class:`TensorArrayImage` or :class:`TensorVolume`): slices of the float samples, the same type the per-item
    path (:class:`LoadArray`) gives."""

    def __init__(self, dataset=None, x_type: type = TensorSeries, **kwargs):
        self.x_type = x_type
        super().__init__(dataset, **kwargs)

    def new(self, dataset=None, cls=None, **kwargs):
        kwargs.setdefault("x_type", self.x_type)
        return super().new(dataset, cls, **kwargs)

    def create_batches(self, samps):
        for x, *rest in super().create_batches(samps):
            yield (x.as_subclass(self.x_type), *rest)


def array_dataloaders(source: ArraySource, x: np.ndarray, stats: tuple[list, list], bs: int = 64,
                      augment: bool = False, device=None, batch_tfms: Sequence = (), **kw):
    """fastai ``DataLoaders`` over ``source``: a ``Datasets`` of its items (:class:`LoadArray`, then
    ``parent_label`` and ``Categorize``), served as slices of ``x`` (moved to ``device`` once) by
    :class:`ArrayDL`; batch transforms by order: ``batch_tfms``, :class:`NormalizeArray`
    (99), the augmentation (100, training only)."""
    spec = source.spec
    dsets = Datasets(source.items, tfms=[[LoadArray(spec)], [parent_label, Categorize(vocab=source.vocab)]],
                     splits=[list(s) for s in source.splits])
    by_class = {c: i for i, c in enumerate(dsets.vocab)}
    targets = torch.tensor([by_class[p.parent.name] for p in source.items], dtype=torch.long)
    images = torch.from_numpy(x)
    device = torch.device(device) if device is not None else default_device()
    if device.type != "cpu":
        images, targets = images.to(device), targets.to(device)
    index = [torch.as_tensor(list(s), dtype=torch.long, device=images.device) for s in source.splits]
    dl_kwargs = [dict(images=images, targets=targets, index=i, x_type=spec.tensor_type) for i in index]
    after_batch = list(batch_tfms) + [NormalizeArray(*stats)] + (augment_tfms(spec) if augment else [])
    return dsets.dataloaders(bs=bs, dl_type=ArrayDL, dl_kwargs=dl_kwargs, after_batch=after_batch, device=device,
                             **kw)


# ---------------------------------------------------------------------------------------------------------
# Writing: the converters' folders (UCR files, MedMNIST, synthetic volumes)


def class_folder_name(label: str) -> str:
    """A label as a folder name: separators and control characters to ``-``, no leading dot, not empty."""
    name = "".join("-" if ch in "/\\" or ord(ch) < 32 else ch for ch in str(label).strip())
    return ("_" + name[1:] if name.startswith(".") else name) or "_"


def write_array_folder(dest: Path, splits: dict, origin: dict, what: str) -> Path:
    """Write a converted dataset once into the cache folder ``dest``: ``<split>/<class>/<NNNNN>.npy`` (NNNNN the
    sample's place in its split, from 0) and ``origin.json``; safe for many processes (:mod:`cnn_depth.cache`).

    ``splits`` maps a split name to a list of (label, array) or to a callable returning it (called only when
    the folder is built)."""

    def load(entry: Path) -> Optional[Path]:
        return entry if (entry / COMPLETE).is_file() else None

    def build(entry: Path) -> Path:
        if entry.exists():  # unfinished: only a killed build without our lock leaves this
            shutil.rmtree(entry)
        tmp = tmp_name(entry, secrets.token_hex(4))
        try:
            os.mkdir(tmp)
        except OSError as e:
            raise cache_error(e, entry.parent, "create a folder") from e
        try:
            for split, samples in splits.items():
                samples = samples() if callable(samples) else samples
                folders = {}
                for label in dict.fromkeys(str(lab) for lab, _ in samples):
                    folder = class_folder_name(label)
                    if folder in folders.values():
                        raise CnnDepthError(f"labels {label!r} and "
                                            f"{next(k for k, v in folders.items() if v == folder)!r} make the same "
                                            f"folder name {folder!r}; rename one of them")
                    folders[label] = folder
                    os.makedirs(tmp / split / folder)
                width = max(5, len(str(len(samples) - 1)))
                for i, (label, a) in enumerate(samples):
                    np.save(tmp / split / folders[str(label)] / f"{i:0{width}d}.npy", np.ascontiguousarray(a),
                            allow_pickle=False)
            (tmp / ORIGIN).write_text(json.dumps(origin, indent=1), encoding="utf-8")
            (tmp / COMPLETE).write_text("")
            os.rename(tmp, entry)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise cache_error(e, entry.parent, "write a converted dataset") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return entry

    return shared_entry(dest, load, build, what)


# ---------------------------------------------------------------------------------------------------------
# For saved runs: the validation samples again


def valid_arrays(source: dict) -> list:
    """The validation samples of a saved run's data source (``checkpoint``'s ``source`` dict: name, root,
    max_per_class, split names; ``dims``, ``pad``, ``fill``, ``valid_pct`` and ``seed`` when recorded), in the
    DataLoaders' order, as (float32 array ``(C, *sides)`` as stored, class name) pairs: what explain's
    ``--index`` picks from. The split names are used when those folders exist (a random split has none)."""
    from .loaders import array_root

    root = source.get("root")
    if not root or not Path(root).is_dir():
        root = array_root(source["name"])  # a registered name, converted again where it went
    if root is None:
        raise CnnDepthError(f"{source.get('name')} holds no arrays; its runs take images")
    root = Path(root)
    names = [source.get(k) for k in ("train_name", "valid_name")]
    split_folders = all(n and (root / n).is_dir() for n in names)
    src, x = array_folder(root, source.get("name"), source.get("max_per_class"),
                          *(names if split_folders else (None, None)), source.get("dims"),
                          bool(source.get("pad", False)), source.get("fill"),
                          source.get("valid_pct") or DEFAULT_VALID_PCT, source.get("seed") or 0)
    return [(x[i], src.items[i].parent.name) for i in src.splits[1]]
