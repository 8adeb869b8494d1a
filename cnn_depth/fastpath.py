"""The fast data path: every image decoded once into a uint8 tensor, cached on disk, served from memory.

The DataBlock of :mod:`cnn_depth.data` still defines the items, the split and the labels; this module only
changes how pixels reach the model:

- :func:`decoded_images` decodes every item once with :func:`cnn_depth.data.load_image` (the DataBlock's
  own decode) into one ``(n, c, h, w)`` uint8 array, in parallel processes for large sets, and caches it as
  ``.npy`` under ``cache_dir()/decoded``, keyed by the items' identity (resolved root, relative paths,
  sizes, mtimes and content fingerprints) and the decode settings (channels, resize), so a changed file
  means a new key and a rebuild; the sha256 of its bytes is recorded beside it and checked on every load.
- :class:`TensorDL` is a fastai ``TfmdDL`` over the DataBlock's ``Datasets`` whose batches are sliced out
  of that array with one ``index_select`` per batch (no per-item Python work). :class:`FlipPadCrop`
  augmentation, :class:`ToFloat` and :class:`FastNormalize` are fastai batch transforms at the stock
  transforms' orders, so they run per batch on the DataLoaders' device, fastai's own batch augmentations
  fit between them, and ``show_batch``, ``Learner``, ``lr_find``, ``validate`` and ``predict`` work as
  with the stock pipeline.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import operator
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from fastai.data.core import TfmdDL
from fastai.data.transforms import IntToFloatTensor, Normalize
from fastai.torch_core import TensorCategory, TensorImage, default_device
from fastai.vision.augment import RandTransform
from torch import Tensor

from .cache import shared_entry, write_entry
from .data import ImageSource, _workers, image_datablock, items_fingerprint, load_image, map_chunks
from .errors import CnnDepthError
from .files import cache_dir

DECODE_VERSION = 2  # bump when the cache layout or the decode changes (2: keyed by content, hash recorded)


# ---------------------------------------------------------------------------------------------------------
# Decode once, cache on disk


def decode_key(root: Path, items: Sequence[Path], n_in: int, size: Optional[tuple[int, int]],
               fingerprint: Optional[str] = None) -> str:
    """Cache key: the items' identity (:func:`cnn_depth.data.items_fingerprint`: resolved root, relative
    paths, sizes, mtimes, content fingerprints; pass ``fingerprint`` when known) plus channels and resize."""
    fingerprint = fingerprint or items_fingerprint(root, items)
    return hashlib.sha256(f"v{DECODE_VERSION}|n_in={n_in}|size={size}|{fingerprint}".encode()).hexdigest()[:24]


def decoded_path(key: str) -> Path:
    """Where the decoded array for ``key`` lives: ``cache_dir()/decoded/<key>.npy`` (a ``.json`` beside it)."""
    return cache_dir() / "decoded" / f"{key}.npy"


def array_digest(arr: np.ndarray) -> str:
    """sha256 of an array's bytes (C order): 0.25 s for CIFAR-10's 184 MB on one core."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(arr)).cast("B")).hexdigest()


def _decode_chunk(paths: Sequence[Path], n_in: int, size: Optional[tuple[int, int]]) -> np.ndarray:
    """Decode ``paths`` into one (k, c, h, w) uint8 array (runs in a worker process)."""
    out = []
    for p in paths:
        try:
            out.append(load_image(p, n_in, size).transpose(2, 0, 1))
        except CnnDepthError:
            raise
        except Exception as e:  # the scan decoded it: it changed since
            raise CnnDepthError(f"cannot decode {p} ({str(e) or type(e).__name__}), although it was readable when "
                                f"the dataset was scanned; is another program changing it?") from e
    return np.stack(out)


def _decode_all(items: Sequence[Path], n_in: int, size, shape: tuple, workers: int) -> np.ndarray:
    out = np.empty((len(items), *shape), dtype=np.uint8)
    for s, chunk in map_chunks(_decode_chunk, items, workers, n_in, size):
        out[s:s + len(chunk)] = chunk
    return out


def _load_decoded(path: Path, n: int, mmap: bool) -> Optional[np.ndarray]:
    """The cached array at ``path`` if its ``.json`` says it holds ``n`` images and its bytes match the
    hash recorded there; None when absent or damaged (a damaged one is reported: it will be rebuilt)."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        arr = np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if not (isinstance(meta, dict) and meta.get("version") == DECODE_VERSION and meta.get("n") == n
            and arr.dtype == np.uint8 and list(arr.shape) == meta.get("shape") and len(arr) == n):
        return None
    if array_digest(arr) != meta.get("sha256"):
        warnings.warn(f"the decoded images in {path} do not match the hash recorded beside them (damaged or "
                      f"changed); decoding again", stacklevel=4)
        return None
    return arr


def decoded_images(root: Path, items: Sequence[Path], n_in: int, size: Optional[tuple[int, int]],
                   workers: Optional[int] = None, rebuild: bool = False, mmap: bool = True,
                   fingerprint: Optional[str] = None) -> torch.Tensor:
    """All ``items`` decoded as :func:`load_image` does, as one (n, c, h, w) uint8 tensor, cached on disk.

    The cache entry (``.npy`` and a ``.json`` with the sha256 of its bytes) is built once however many
    processes ask at once (see :mod:`cnn_depth.cache`), and checked against its hash on every load.

    Args:
        root: the dataset root; the cache key uses its resolved path and paths relative to it.
        items: image files, in the order wanted.
        n_in: channels (1 grayscale, 3 RGB).
        size: (h, w) to resize to, or None when every image already has one size.
        workers: decode processes; by default one below ``PARALLEL_MIN`` images, else one per CPU (≤ 8).
        rebuild: decode again even when a cached copy exists.
        mmap: map the cached file into memory copy-on-write instead of reading it: processes that load the
            same entry share one copy of its pages (the OS page cache), and a write to the tensor copies
            only the page written. False reads a private copy.
        fingerprint: :func:`cnn_depth.data.items_fingerprint` of ``(root, items)`` when already computed.
    """
    items = [Path(p) for p in items]
    root = Path(root)
    path = decoded_path(decode_key(root, items, n_in, size, fingerprint))

    def load(p: Path) -> Optional[np.ndarray]:
        return None if rebuild else _load_decoded(p, len(items), mmap)

    def build(p: Path) -> np.ndarray:
        first = load_image(items[0], n_in, size)
        shape = (first.shape[2], first.shape[0], first.shape[1])
        t0 = time.perf_counter()
        arr = _decode_all(items, n_in, size, shape, _workers(len(items), workers))
        seconds = time.perf_counter() - t0
        meta = dict(version=DECODE_VERSION, root=str(root), n=len(items), shape=list(arr.shape), n_in=n_in,
                    size=list(size) if size else None, seconds=round(seconds, 2),
                    first=str(items[0].relative_to(root)), sha256=array_digest(arr))
        # the array first, then its .json: an entry is valid only once both are in place and agree
        write_entry(p, lambda f: np.save(f, arr, allow_pickle=False), "write decoded images")
        write_entry(p.with_suffix(".json"), json.dumps(meta, indent=1), "write decoded images")
        if mmap:  # share the pages just written instead of keeping this private copy
            del arr
            return np.load(p, mmap_mode="c", allow_pickle=False)
        return arr

    arr = shared_entry(path, load, build, "decoding the same images")
    return torch.from_numpy(arr)


# ---------------------------------------------------------------------------------------------------------
# Augmentation: one vectorised transform per batch, on the batch's device


def flip_pad_crop(x: torch.Tensor, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Randomly flip each image left-right (p=0.5) and crop it back to size from a ``pad``-px zero border.

    ``x`` is (n, c, h, w) of any dtype; offsets are uniform in [0, 2·pad] per image and axis (the same
    distribution as ``torchvision``'s ``RandomCrop(size, padding=pad)``). Two gathers, no Python loop.
    """
    n, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = torch.randint(0, 2 * pad + 1, (n, 1), device=dev) + torch.arange(h, device=dev)
    cols = torch.randint(0, 2 * pad + 1, (n, 1), device=dev) + torch.arange(w, device=dev)
    if flip:  # a flipped crop reads its columns backwards
        cols = torch.where(torch.rand(n, 1, device=dev) < 0.5, cols.flip(1), cols)
    xp = xp.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
    return xp.gather(3, cols[:, None, None, :].expand(n, c, h, w))


class _DirectCall:
    """``__call__`` on an (image, target) batch goes straight to the image op: the result fastai's type
    dispatch gives (``encodes`` on the ``TensorImage``, the target as it is), without its cost (about 0.15 ms
    per transform and batch on a CPU, as much as the op itself on a CIFAR batch); any other input takes
    the stock path."""

    def __call__(self, b, split_idx=None, **kwargs):
        if type(b) is tuple and len(b) == 2 and type(b[0]) is TensorImage and not kwargs \
                and getattr(self, "p", 1.0) == 1.0:  # a RandTransform that always applies draws nothing
            if self.split_idx is not None and split_idx != self.split_idx:
                return b  # not this transform's split (FlipPadCrop: training only)
            return self._image(b[0]), b[1]
        return super().__call__(b, split_idx=split_idx, **kwargs)


class FlipPadCrop(_DirectCall, RandTransform):
    """Batch transform: :func:`flip_pad_crop` on training batches only (``split_idx=0``).

    Order 5 puts it before the float conversion (10), so it moves uint8 rather than float pixels.
    """

    order, split_idx = 5, 0

    def __init__(self, pad: int = 4, flip: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.pad, self.flip = pad, flip

    def _image(self, x: TensorImage) -> TensorImage:
        return flip_pad_crop(x, self.pad, self.flip)

    def encodes(self, x: TensorImage):
        return self._image(x)


class ToFloat(_DirectCall, IntToFloatTensor):
    """fastai's ``IntToFloatTensor`` (order 10: uint8 → ``x / 255``) on a plain tensor, called directly.

    The same operations as the stock transform, so bit for bit its floats; decodes back to 0-255 as it does.
    """

    def _image(self, x: TensorImage) -> TensorImage:
        return x.as_subclass(Tensor).float().div_(self.div).as_subclass(TensorImage)  # TensorImage(): ~20 µs more

    def encodes(self, x: TensorImage):
        return self._image(x)


class FastNormalize(_DirectCall, Normalize):
    """fastai's ``Normalize`` (order 99: ``(x - mean) / std``) on a plain tensor, called directly.

    At order 99 like the stock one, so fastai's batch augmentations (``aug_transforms``: affine at 30,
    lighting at 40) run between the float conversion and the normalisation, on 0-1 floats, as they do in
    the stock pipeline. The same operations, so bit for bit its floats; decodes as it does.
    """

    def _image(self, x: TensorImage) -> TensorImage:
        return x.as_subclass(Tensor).sub(self.mean).div_(self.std).as_subclass(TensorImage)

    def encodes(self, x: TensorImage):
        return self._image(x)


# ---------------------------------------------------------------------------------------------------------
# The DataLoader


class ImageDL(TfmdDL):
    """fastai's ``TfmdDL`` (the pil pipeline's loader, and the base of :class:`TensorDL`) that pickles after
    an epoch cut short: fastai keeps the epoch's item generator (``self.it``) until the epoch ends, so after
    ``lr_find`` or a ``break`` out of a loop stock DataLoaders cannot be pickled (``cannot pickle 'generator'``).
    The generator is not part of the loader's state: a pickled copy starts its next epoch afresh."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("it", None)
        return state


class TensorDL(ImageDL):
    """A ``TfmdDL`` whose batches are rows of a decoded uint8 tensor, sliced by index, one op per batch.

    ``dataset`` is the DataBlock's ``Datasets`` subset (items, vocab, decode and show come from it);
    ``images`` (n, c, h, w) uint8 and ``targets`` (n,) hold the whole item list, and ``index`` maps this
    subset's positions into them. A ``new()`` with another dataset (``test_dl``, ``predict``) has no
    tensors and falls back to the stock per-item path through the same transforms.
    """

    def __init__(self, dataset=None, images: Optional[torch.Tensor] = None,
                 targets: Optional[torch.Tensor] = None, index: Optional[torch.Tensor] = None, **kwargs):
        self.images, self.targets, self.index = images, targets, index
        if images is not None:
            kwargs["num_workers"] = 0  # batches are a slice of memory: worker processes would only copy
        super().__init__(dataset, **kwargs)

    def new(self, dataset=None, cls=None, **kwargs):
        if (dataset is None or dataset is self.dataset) and issubclass(cls or type(self), TensorDL):
            for k in ("images", "targets", "index"):
                kwargs.setdefault(k, getattr(self, k))
        return super().new(dataset, cls, **kwargs)

    def create_batches(self, samps):
        if self.images is None or self.bs is None or self.n is None:
            yield from super().create_batches(samps)
            return
        # At most n samples: fastai's index stream may be endless (show_batch(unique=True) repeats index 0).
        samps = list(itertools.islice(samps, self.n))
        idx = self.index[torch.as_tensor(samps, dtype=torch.long, device=self.index.device)]
        end = len(idx) - len(idx) % self.bs if self.drop_last else len(idx)
        for i in range(0, end, self.bs):
            g = idx[i:i + self.bs]
            # as_subclass: what TensorImage(t) gives a fresh tensor, without fastai's cast (~20 µs a batch each)
            yield (self.images.index_select(0, g).as_subclass(TensorImage),
                   self.targets.index_select(0, g).as_subclass(TensorCategory))


def tensor_dataloaders(folder: ImageSource, size: Optional[tuple[int, int]], stats: tuple[list, list],
                       bs: int = 64, augment: bool = False, device=None, workers: Optional[int] = None,
                       batch_tfms: Sequence = (), mmap: bool = True, **kw):
    """fastai ``DataLoaders`` for ``folder`` served from decoded uint8 tensors (see :func:`decoded_images`).

    The items, split and labels come from ``image_datablock(folder, size)`` exactly as in the stock
    pipeline, and so do the batch transforms' places: :class:`FlipPadCrop` on uint8 training batches when
    ``augment`` (order 5), :class:`ToFloat` (10), ``batch_tfms`` (e.g. fastai's ``aug_transforms()``: 30,
    40), :class:`FastNormalize` with ``stats`` (mean, std lists; 99). Off the CPU the whole uint8 array
    is moved to ``device`` once and batches are sliced there. ``mmap`` goes to :func:`decoded_images`;
    ``**kw`` to ``Datasets.dataloaders`` (``val_bs``, ``shuffle``, ...).
    """
    dblock = image_datablock(folder, size)
    dsets = dblock.datasets(folder.root)  # items, split and vocab; nothing is decoded here
    # the scan's fingerprint names these very files when the DataBlock found the same list (it always does
    # unless the folder changed in between): no second read of every file
    same = len(dsets.items) == len(folder.items) and all(map(operator.eq, dsets.items, folder.items))
    images = decoded_images(folder.root, dsets.items, folder.n_in, size, workers=workers, mmap=mmap,
                            fingerprint=folder.fingerprint if same else None)
    # Targets from the DataBlock's own label pipeline (parent_label, then Categorize), run once per class
    # folder since the label is the parent folder's name (60,000 items: 0.02 s instead of 1.6 s).
    label, by_folder = dsets.tls[1].tfms, {}
    for o in dsets.items:
        if o.parent not in by_folder:
            by_folder[o.parent] = int(label(o))
    targets = torch.tensor([by_folder[o.parent] for o in dsets.items], dtype=torch.long)
    device = torch.device(device) if device is not None else default_device()
    if device.type != "cpu":
        images, targets = images.to(device), targets.to(device)
    index = [torch.as_tensor(list(s), dtype=torch.long, device=images.device) for s in dsets.splits]
    dl_kwargs = [dict(images=images, targets=targets, index=i) for i in index]
    after_batch = (([FlipPadCrop()] if augment else []) + [ToFloat()] + list(batch_tfms)
                   + [FastNormalize.from_stats(*stats)])
    return dsets.dataloaders(bs=bs, dl_type=TensorDL, dl_kwargs=dl_kwargs, after_item=dblock.item_tfms,
                             after_batch=after_batch, device=device, **kw)
