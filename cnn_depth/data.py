"""Datasets: where images come from (a registry of named sources, local folders and archives) and the
fastai DataBlock that turns them into DataLoaders.

Every source ends up as a folder laid out ``<root>/<train>/<class>/*`` and ``<root>/<valid>/<class>/*``,
read by one DataBlock: ``image_items`` (the regular files ``get_image_files`` would pick), ``GrandparentSplitter``
splits, ``parent_label`` labels. Every source is checked before use (see :func:`image_folder`).
"""
from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import socket
import stat
import sys
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union
from urllib.parse import urlparse

import numpy as np
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.external import URLs, untar_data
from fastai.data.transforms import GrandparentSplitter, image_extensions, parent_label
from fastai.vision.augment import CropPad, FlipItem, PadMode, RandomCrop, Resize, ResizeMethod
from fastai.vision.core import PILImage, PILImageBW
from fastai.vision.data import ImageBlock
from fastcore.foundation import L
from PIL import Image
from torch import Tensor

from . import fashion_mnist
from .archives import ARCHIVE_SUFFIXES, archive_key, extract, is_archive
from .cache import shared_entry, write_entry
from .errors import CnnDepthError, check_int
from .files import PathLike, cache_dir
from .machine import available_cpus

DEFAULT_SOURCE = "cifar10-sample"
DEFAULT_SIZE = 32  # px: what mixed-size images are resized to when no size is given
SPLIT_NAMES = [("train", "test"), ("train", "valid"), ("train", "val"), ("training", "testing")]
STATS_SAMPLE = 1000  # training images decoded to compute the per-channel mean and std
PIPELINES = ("fast", "pil")  # dataloaders(pipeline=...): decoded tensors in memory, or a PIL decode per item
SAMPLE_ARCHIVE = "cifar10_sample.tgz"  # package data: see experiments/make_cifar10_sample.py

# ---------------------------------------------------------------------------------------------------------
# Archives (see cnn_depth.archives: extraction is verified, bounded and safe for several processes)


def extract_archive(archive: PathLike, dest: Optional[PathLike] = None) -> Path:
    """Extract a .tgz/.tar.gz/.tar/.zip once into the cache (see :func:`cnn_depth.archives.extract`); return
    the folder, or the one top folder all its entries sit in."""
    return _single_top_folder(extract(archive, dest))


def _single_top_folder(root: Path) -> Path:
    """Descend into ``root``'s only folder while it has no files or other folders (macOS junk ignored)."""
    while True:
        try:
            entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
        except OSError as e:
            raise CnnDepthError(f"cannot read folder {root} ({e.strerror or e}); check its permissions") from e
        if len(entries) == 1 and entries[0].is_dir() and not _find_splits(root, quiet=True):
            root = entries[0]
        else:
            return root


# ---------------------------------------------------------------------------------------------------------
# Named sources


@dataclass(frozen=True)
class SourceSpec:
    """A registered dataset: ``fetch()`` returns its root folder; split folder names and a description; what
    ``cnn-depth datasets`` lists: its kind, one input's shape, the split sizes and the number of classes."""

    name: str
    fetch: Callable[[], Path]
    train_name: str
    valid_name: str
    description: str
    kind: str = "image"  # image, series or volume: image folders are read by image_folder, the rest as arrays
    shape: str = ""  # one input, channels first: "3×32×32", "1×150"
    sizes: tuple = ()  # (train, valid) samples as published
    classes: Optional[int] = None


_SOURCES: dict[str, SourceSpec] = {}


def register_dataset(name: str, train_name: str, valid_name: str, description: str, kind: str = "image",
                     shape: str = "", sizes: tuple = (), classes: Optional[int] = None):
    """Decorator: add a fetch function returning a root folder to the dataset registry."""
    def _register(fetch):
        _SOURCES[name] = SourceSpec(name, fetch, train_name, valid_name, description, kind, shape, tuple(sizes),
                                    classes)
        return fetch
    return _register


def list_datasets() -> list[str]:
    """Names of the registered datasets (any local folder or archive path works too)."""
    return list(_SOURCES)


def dataset_spec(name: str) -> SourceSpec:
    if name not in _SOURCES:
        raise CnnDepthError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}, "
                            f"or give the path of a folder or archive")
    return _SOURCES[name]


DOWNLOAD_CHECK_SECONDS = 5.0  # a registered dataset's host must answer a TCP connection within this, or we are offline


def fastai_copy(url: str) -> Optional[Path]:
    """The folder fastai's ``untar_data(url)`` left in its default place (``~/.fastai/data/<name>``), if any:
    found without creating fastai's config file."""
    folder = Path("~/.fastai/data").expanduser() / Path(url).name.split(".")[0]
    return folder if folder.is_dir() and any(folder.iterdir()) else None


def _download(url: str, name: str, hint: str, extract: bool = True) -> Path:
    """fastai's ``untar_data(url)``, with its config, lock, archive and data in our cache (``~/.fastai`` is
    only read, for a copy fastai made before). Offline, one line at once: no progress bar, nothing written.
    ``extract=False``: the downloaded file itself (fastdownload's ``download``; a copy already there is used)."""
    from fastdownload import FastDownload
    from fastcore.net import urldest

    if not extract:
        loader = FastDownload(base=str(cache_dir() / "fastai"))
        if urldest(url, loader.arch_path()).is_file():
            return urldest(url, loader.arch_path())
    found = fastai_copy(url) if extract else None
    if found is not None:
        return found
    host = urlparse(url).hostname or ""

    def offline(why: str) -> CnnDepthError:
        return CnnDepthError(f"cannot download {name} ({why}); offline, use a local copy instead: {hint}")

    try:
        socket.create_connection((host, 443), timeout=DOWNLOAD_CHECK_SECONDS).close()
    except OSError as e:
        raise offline(f"{host} does not answer: {e.strerror or type(e).__name__}") from e
    try:
        return untar_data(url, base=str(cache_dir() / "fastai")) if extract else loader.download(url)
    except Exception as e:  # URLError, timeouts, HTTP errors: all mean "no copy here and no download"
        raise offline(f"{type(e).__name__}: {str(e)[:80]}") from e


@register_dataset("cifar10-sample", "train", "test",
                  "CIFAR-10, first 500 train + 100 test images per class (embedded, works offline)",
                  shape="3×32×32", sizes=(5000, 1000), classes=10)
def cifar10_sample() -> Path:
    with resources.as_file(resources.files("cnn_depth") / "_data" / SAMPLE_ARCHIVE) as archive:
        return extract_archive(archive, cache_dir() / "datasets" / f"cifar10-sample-{archive_key(archive)}")


@register_dataset("cifar10", "train", "test", "full CIFAR-10 (50,000 / 10,000) via fastai's untar_data(URLs.CIFAR)",
                  shape="3×32×32", sizes=(50000, 10000), classes=10)
def cifar10() -> Path:
    return _download(URLs.CIFAR, "CIFAR-10",
                     "--data path/to/cifar10.tgz (or dataloaders('path/to/cifar10')), laid out train/<class>/, "
                     "test/<class>/")


@register_dataset("mnist", "training", "testing", "MNIST digits, 28×28 grayscale, via untar_data(URLs.MNIST)",
                  shape="1×28×28", sizes=(60000, 10000), classes=10)
def mnist() -> Path:
    return _download(URLs.MNIST, "MNIST",
                     "--data path/to/mnist_png (or a .tgz) laid out training/<digit>/, testing/<digit>/")


register_dataset("fashion-mnist", "training", "testing",
                 "Fashion-MNIST, 28×28 gray clothes, 10 classes (60,000 / 10,000), via torchvision, as PNGs",
                 shape="1×28×28", sizes=(60000, 10000), classes=10)(fashion_mnist.fashion_mnist)

# Series and volumes: arrays (cnn_depth.arrays), converted once into the cache by cnn_depth.series and
# cnn_depth.volumes, imported only when fetched (they import this module). Sizes and classes as published.


def _aeon_dataset(name: str) -> Path:
    from .series import aeon_dataset
    return aeon_dataset(name)


def _medmnist(name: str) -> Path:
    from .volumes import medmnist
    return medmnist(name)


for _name, _shape, _sizes, _classes, _desc in [
        ("GunPoint", "1×150", (50, 150), 2, "UCR GunPoint: hand motion, gun drawn or pointed (univariate)"),
        ("ArrowHead", "1×251", (36, 175), 3, "UCR ArrowHead: outlines of arrowheads as series (univariate)"),
        ("ItalyPowerDemand", "1×24", (67, 1029), 2, "UCR ItalyPowerDemand: a day's electricity demand, winter or "
                                                    "summer (univariate)"),
        ("BasicMotions", "6×100", (40, 40), 4, "UEA BasicMotions: smartwatch accelerometer + gyroscope, 4 activities "
                                               "(multivariate)")]:
    register_dataset(_name, "train", "test", f"{_desc}; ships in aeon: pip install 'cnn-depth[series]'",
                     kind="series", shape=_shape, sizes=_sizes, classes=_classes)(partial(_aeon_dataset, _name))


@register_dataset("shapes3d", "train", "valid", "synthetic noisy cubes, spheres and tori, 16³ voxels, 64 per class "
                  "and split (generated, works offline)", kind="volume", shape="1×16×16×16", sizes=(192, 192),
                  classes=3)
def shapes3d() -> Path:
    from .volumes import synthetic_volumes
    return synthetic_volumes()


for _name, _classes, _sizes, _desc in [
        ("organmnist3d", 11, (971, 610), "MedMNIST OrganMNIST3D: 11 abdominal organs in CT"),
        ("nodulemnist3d", 2, (1158, 310), "MedMNIST NoduleMNIST3D: lung nodules in CT, benign or malignant"),
        ("adrenalmnist3d", 2, (1188, 298), "MedMNIST AdrenalMNIST3D: adrenal gland shapes, normal or hyperplasia"),
        ("fracturemnist3d", 3, (1027, 240), "MedMNIST FractureMNIST3D: 3 kinds of rib fracture in CT"),
        ("vesselmnist3d", 2, (1335, 382), "MedMNIST VesselMNIST3D: brain vessel segments, vessel or aneurysm"),
        ("synapsemnist3d", 2, (1230, 352), "MedMNIST SynapseMNIST3D: synapses in electron microscopy, 2 kinds")]:
    register_dataset(_name, "train", "test", f"{_desc}, 28³; downloaded from medmnist.com's Zenodo record", kind="volume",
                     shape="1×28×28×28", sizes=_sizes, classes=_classes)(partial(_medmnist, _name))


# ---------------------------------------------------------------------------------------------------------
# Folders: splits, items, a scan of the image headers


def _find_splits(root: Path, quiet: bool = False) -> Optional[tuple[str, str]]:
    for train, valid in SPLIT_NAMES:
        if (root / train).is_dir() and (root / valid).is_dir():
            return train, valid
    return None


def resolve_splits(root: Path, train_name: Optional[str] = None, valid_name: Optional[str] = None) -> tuple[str, str]:
    """The (train, valid) folder names under ``root``: given explicitly, or the first known pair found."""
    if train_name or valid_name:
        train_name, valid_name = train_name or "train", valid_name or "valid"
        missing = [n for n in (train_name, valid_name) if not (root / n).is_dir()]
        if missing:
            raise CnnDepthError(f"{root} has no split folder {' or '.join(missing)}; lay it out as "
                                f"<root>/{train_name}/<class>/* and <root>/{valid_name}/<class>/*")
        return train_name, valid_name
    found = _find_splits(root)
    if not found:
        tried = ", ".join(f"{t}/{v}" for t, v in SPLIT_NAMES)
        raise CnnDepthError(f"{root} has no train/valid split folders (tried {tried}); lay it out as "
                            f"<root>/<train>/<class>/* with one of those name pairs (from Python, dataloaders(train_name=..., "
                            f"valid_name=...) takes other names)")
    return found


def _shown(path: PathLike) -> str:
    """``path`` as printable text: bytes that are not UTF-8 (surrogate escapes) shown as ``\\udcXX``."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _check_name(name: str, folder: str) -> None:
    """A one-line error for a file or folder name that is not UTF-8 (Linux allows any bytes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise CnnDepthError(f"{_shown(os.path.join(folder, name))!r} has a name that is not UTF-8; rename it "
                            f"(e.g. convmv -f latin1 -t utf8 -r --notest {_shown(folder)!r})") from None


def _entries(folder: str) -> list:
    """``os.scandir(folder)`` as a list; a one-line error for a folder that cannot be read."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CnnDepthError(f"cannot read folder {_shown(folder)} ({e.strerror or e}); check its permissions") from e


def _is(entry: os.DirEntry, kind: str) -> bool:
    """``entry.is_dir()``/``is_file()`` (links followed), False where that fails (a dangling link, a loop)."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError:
        return False


def _holds_images(folder: str) -> bool:
    """Whether ``folder`` has a file with an image extension directly in it."""
    return any(not e.name.startswith(".") and f".{e.name.split('.')[-1].lower()}" in image_extensions
               for e in _entries(folder))


def image_items(path: PathLike, folders: Sequence[str], max_per_class: Optional[int] = None,
                exclude: Sequence[str] = (), skipped: Optional[list] = None, nested: Optional[list] = None) -> L:
    """The image files ``<path>/<split>/<class>/<file>`` of the split ``folders``, sorted, capped per class.

    Images are what fastai's ``get_image_files`` takes (an image extension, no hidden names), but only regular
    files (a link to one counts): a dangling link, a link loop, a FIFO or a device named ``x.png`` is left
    out and its path relative to ``path`` appended to ``skipped`` when given; a folder inside a class folder that
    holds images is not read (a class is one folder) and its relative path appended to ``nested`` when given. Only the three levels are
    read, so a link loop among the folders cannot make the walk endless. A name that is not UTF-8 is a
    one-line error. ``exclude`` holds paths relative to ``path`` (unreadable files); the cap counts what
    is left, so ``max_per_class=N`` gives the first N readable images of each class in each split, by name.
    """
    path, skip, root = Path(path), set(exclude), str(path)
    # Strings and os.scandir, not pathlib, per file: pathlib costs ~1 s on CIFAR-10's 60,000 files. Sorting
    # by the parts tuple is the order sorted() gives the Paths themselves.
    kept = []
    for split in sorted(set(folders)):
        split_dir = os.path.join(root, split)
        for c in _entries(split_dir):
            if c.name.startswith(".") or not _is(c, "dir"):
                continue
            _check_name(c.name, split_dir)
            class_dir = path / split / c.name  # each item is class_dir / name: 25 % cheaper than Path(str)
            for e in _entries(c.path):
                name = e.name
                if name.startswith("."):
                    continue
                if f".{name.split('.')[-1].lower()}" not in image_extensions:
                    if nested is not None and _is(e, "dir") and _holds_images(e.path):
                        nested.append(f"{split}{os.sep}{c.name}{os.sep}{name}")
                    continue
                _check_name(name, c.path)
                rel = f"{split}{os.sep}{c.name}{os.sep}{name}"
                if not _is(e, "file"):
                    if skipped is not None:
                        skipped.append(rel)
                elif rel not in skip:
                    kept.append(((split, c.name, name), class_dir, name))
    kept.sort(key=lambda t: t[0])
    if max_per_class is not None:
        taken: Counter = Counter()
        capped = []
        for t in kept:
            split, cls, _ = t[0]
            if taken[split, cls] < max_per_class:
                taken[split, cls] += 1
                capped.append(t)
        kept = capped
    return L(class_dir / name for _, class_dir, name in kept)


def _relative(f: PathLike, root: str) -> str:
    """``str(Path(f).relative_to(root))``, by slicing the string when ``f`` starts with ``root``."""
    s = str(f)
    return s[len(root) + 1:] if s.startswith(root + os.sep) else str(Path(f).relative_to(root))


FINGERPRINT_BYTES = 4096  # bytes of each file's start and end that go into cache keys


def hash_items(h, root: Path, items: Sequence[Path]):
    """Feed each item's path (relative to ``root``), byte size, mtime (ns) and first and last
    ``FINGERPRINT_BYTES`` to the hash ``h``; return it.

    What cache keys are made of: a changed, added, removed or touched file changes the key, and so does new
    content with the same size and mtime (two archives of one layout and fixed-size files). Files of up to
    8 KiB (CIFAR's JPEGs) are hashed whole. A file that vanishes or is not a regular file is a one-line
    error; one that cannot be read is hashed by its metadata (the scan reports it and is not cached).
    """
    root = str(root)
    n = FINGERPRINT_BYTES
    for f in items:
        rel = _relative(f, root)
        try:  # O_NONBLOCK: a FIFO put in place of an image opens at once instead of waiting for a writer
            fd = os.open(f, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError as e:
            raise _vanished(f) from e
        except OSError as e:
            h.update(os.fsencode(rel) + f"|unreadable:{e.errno}\n".encode())
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CnnDepthError(f"{_shown(f)} is not a regular file any more; is another program changing "
                                    f"{_shown(root)}?")
            head = os.read(fd, n)
            tail = os.pread(fd, n, max(st.st_size - n, n)) if st.st_size > n else b""
        finally:
            os.close(fd)
        h.update(os.fsencode(rel) + f"|{st.st_size}|{st.st_mtime_ns}|".encode())
        h.update(head)
        h.update(tail)
        h.update(b"\n")
    return h


def items_fingerprint(root: Path, items: Sequence[Path]) -> str:
    """What identifies a list of image files: the resolved root and :func:`hash_items` (hex sha256)."""
    return hash_items(hashlib.sha256(f"{Path(root).resolve()}\n".encode()), root, items).hexdigest()


def _vanished(f: PathLike) -> CnnDepthError:
    return CnnDepthError(f"{_shown(f)} vanished while it was being read; is another program changing the dataset "
                         f"(or deleting the cache)? Run again when it has finished")


# ---------------------------------------------------------------------------------------------------------
# Decoding: 8-bit pixels from any image PIL opens, with 16-bit and float images scaled


SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
GRAY_MODES = {"1", "L", "LA", "La", "I", "F"} | SIXTEEN_BIT_MODES


class UnsupportedImage(CnnDepthError):
    """An image whose values cannot be mapped to 8 bits without guessing (see :func:`to_uint8`)."""


def to_uint8(im: Image.Image, path: PathLike = "") -> Image.Image:
    """``im`` with 8-bit values: 16-bit (``I;16``) scaled by 255/65535; 32-bit integer (``I``) the same when
    its values fit in 16 bits; float (``F``) scaled by 255 when its values lie in [0, 1]; other modes as
    they are (``convert`` handles them). Anything else is an :class:`UnsupportedImage` (one line).

    PIL's ``convert("L")`` clips these modes instead (a 16-bit image turns white, a [0, 1] float one black).
    """
    if im.mode not in SIXTEEN_BIT_MODES and im.mode not in ("I", "F"):
        return im
    a = np.asarray(im)
    if im.mode == "F":
        ok = a.size == 0 or (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1)
        if not ok:
            lo, hi = (np.nanmin(a), np.nanmax(a)) if np.isfinite(a).any() else (np.nan, np.nan)
            raise UnsupportedImage(f"{_shown(path)} is a float image with values {lo:.4g}..{hi:.4g}, outside [0, 1]; "
                                   f"save it as 8 or 16 bits, or scale it to [0, 1]")
        return Image.fromarray(np.round(a.astype(np.float64) * 255).astype(np.uint8), mode="L")
    a = a.astype(np.int64)
    if im.mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
        raise UnsupportedImage(f"{_shown(path)} is a 32-bit integer image with values {a.min()}..{a.max()}, "
                               f"beyond 16 bits; save it as 8 or 16 bits")
    return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def open_image(path: PathLike, mode: Optional[str] = None) -> Image.Image:
    """fastai's ``load_image`` (open, decode all of it, convert to ``mode``), with :func:`to_uint8` first.

    Only a regular file is opened (a FIFO would block PIL forever); anything else is a one-line error.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise CnnDepthError(f"no such image file: {_shown(path)}") from e
    if not stat.S_ISREG(st.st_mode):
        raise CnnDepthError(f"{_shown(path)} is not a regular file (a FIFO, device or folder); give an image file")
    with warnings.catch_warnings():  # PIL's size warning: image_folder says it once per dataset instead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
        im.load()
    im = to_uint8(im._new(im.im), path)
    return im.convert(mode) if mode else im


class _ScaledCreate:
    """``create`` from a path through :func:`open_image`; anything else as fastai does it.

    The annotation is fastai's own (``PILBase.create``): fastai reads it to know which inputs ``test_dl`` and
    ``predict`` may start from (a str, Path, bytes, array, tensor or PIL image), so it must stay the same."""

    @classmethod
    def create(cls, fn: Path | str | Tensor | np.ndarray | bytes | Image.Image, **kwargs):
        args = {**cls._open_args, **kwargs}
        if isinstance(fn, (str, os.PathLike)):
            return cls(open_image(fn, **args))
        if isinstance(fn, Image.Image) and type(fn) is not cls:
            # a loaded copy: fastai re-classes the object it is given (a lazily opened file then has no data,
            # and the caller's image would change class under them)
            fn = fn.copy()
        img = super().create(fn, **kwargs)
        mode = args.get("mode")
        if mode and img.mode != mode:  # an array or image of other channels: converted as a file of it would be
            img = cls(to_uint8(img._new(img.im)).convert(mode))
        return img


class PILImage8(_ScaledCreate, PILImage):
    """fastai's ``PILImage`` (RGB) whose files are decoded by :func:`open_image` (16-bit and float scaled)."""


class PILImageBW8(_ScaledCreate, PILImageBW):
    """fastai's ``PILImageBW`` (grayscale) whose files are decoded by :func:`open_image`."""


# ---------------------------------------------------------------------------------------------------------
# A scan of every image: decoded once, so truncated files are found before training


SCAN_VERSION = 2  # bump when what a scan records changes
PARALLEL_MIN = 4000  # images: below this one process is faster than starting a pool (~150 µs/image)
CHUNK = 1000  # images per task sent to a worker process


def _workers(n: int, workers: Optional[int] = None) -> int:
    """Worker processes for ``n`` images: ``workers`` if given, else 1 below ``PARALLEL_MIN``, else one per CPU (≤ 8)."""
    if workers is not None:
        return max(1, workers)
    return 1 if n < PARALLEL_MIN else min(available_cpus(), 8)


def map_chunks(fn: Callable, items: Sequence, workers: int, *args) -> Iterator[tuple[int, object]]:
    """``(start, fn(items[start:start + CHUNK], *args))`` for every chunk, in order; in ``workers``
    processes when more than one (fork where the platform has it: workers start in milliseconds).

    The processes start with SIGINT blocked: a terminal's Ctrl-C reaches the whole process group, and each of
    them would print its own KeyboardInterrupt traceback; this process alone takes it, cancels the chunks not
    started and waits only for those running (one chunk each, a second or so)."""
    from .executors import sigint_blocked

    starts = range(0, len(items), CHUNK)
    if workers == 1:
        for s in starts:
            yield s, fn(items[s:s + CHUNK], *args)
        return
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    ex = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        with sigint_blocked():  # the pool's processes start at the first submit and inherit the block
            futures = {s: ex.submit(fn, items[s:s + CHUNK], *args) for s in starts}
        for s in starts:  # pop each result once used, so the chunks never add up to a second copy
            yield s, futures.pop(s).result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _scan_chunk(files: Sequence[Path]) -> list[tuple]:
    """(kind, detail) per file: ("ok", (size, mode)), ("bad", reason), ("unsupported", message) or
    ("oserror", reason) for a file the OS would not read (not a property of its content: never cached)."""
    out = []
    for f in files:
        try:
            with warnings.catch_warnings():  # PIL's size warning: image_folder says it once per dataset instead
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(f) as im:
                    im.load()  # decodes it all: a truncated file fails here, not in the middle of training
                    to_uint8(im, f)
                    out.append(("ok", (f"{im.size[0]}x{im.size[1]}", im.mode)))
        except FileNotFoundError as e:
            raise _vanished(f) from e
        except UnsupportedImage as e:
            out.append(("unsupported", str(e)))
        except OSError as e:
            out.append(("oserror" if e.errno is not None else "bad", str(e)))
        except Exception as e:  # any file PIL cannot decode is skipped and counted, never a crash
            out.append(("bad", str(e) or type(e).__name__))
    return out


def _scan_headers(root: Path, files: Sequence[Path], fingerprint: Optional[str] = None) -> dict:
    """Size and mode of every image, each decoded in full, cached by :func:`items_fingerprint`.

    Returns ``sizes`` ("WxH" -> count), ``modes``, ``bad`` (paths relative to ``root`` that cannot be
    decoded) and ``unsupported`` (one message per image :func:`to_uint8` refuses). A scan in which the OS
    refused to read a file is returned but not cached; one in which a file vanished is an error.
    """
    fingerprint = fingerprint or items_fingerprint(root, files)
    key = hashlib.sha256(f"scan v{SCAN_VERSION}|{fingerprint}".encode()).hexdigest()[:24]

    def load(entry: Path) -> Optional[dict]:
        try:
            scan = json.loads(entry.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return scan if isinstance(scan, dict) and {"sizes", "modes", "bad", "unsupported"} <= set(scan) else None

    def build(entry: Path) -> dict:
        sizes, modes, bad, unsupported, cacheable = Counter(), Counter(), [], [], True
        root_s = str(root)
        for s, results in map_chunks(_scan_chunk, list(files), _workers(len(files))):
            for f, (kind, detail) in zip(files[s:s + CHUNK], results):
                if kind == "ok":
                    sizes[detail[0]] += 1
                    modes[detail[1]] += 1
                elif kind == "unsupported":
                    unsupported.append(detail)
                else:
                    bad.append(_relative(f, root_s))
                    cacheable &= kind != "oserror"
        scan = dict(sizes=dict(sizes), modes=dict(modes), bad=bad, unsupported=unsupported)
        if cacheable:
            write_entry(entry, json.dumps(scan))
        return scan

    return shared_entry(cache_dir() / "scans" / f"{key}.json", load, build, "scanning the same images")


@dataclass
class ImageSource:
    """A resolved image dataset: root, split names, the items and what a scan of them found.

    ``items`` are the files the DataBlock will use (unreadable ones dropped, ``max_per_class`` applied);
    ``get_items`` is the picklable function that yields them.
    """

    name: str  # what it was asked for by: a registry name or the path given
    root: Path
    train_name: str
    valid_name: str
    items: L
    get_items: Callable
    n_in: int  # channels: 1 when every image is grayscale, else 3
    sizes: dict  # "WxH" -> count
    n_bad: int
    max_per_class: Optional[int] = None
    vocab: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)  # split -> number of items
    fingerprint: str = ""  # items_fingerprint(root, items): the cache key of these exact files

    @property
    def uniform_size(self) -> Optional[tuple[int, int]]:
        """(h, w) when every image has one size, else None."""
        if len(self.sizes) != 1:
            return None
        w, h = map(int, next(iter(self.sizes)).split("x"))
        return h, w


def resolve_source(source: PathLike) -> Union[str, Path]:
    """A registry name as it is, or the absolute path of an existing folder or archive; else a one-line
    error (an unknown name lists the known ones)."""
    if isinstance(source, str) and source in _SOURCES:
        return source
    path = Path(source).expanduser()
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise CnnDepthError(f"the path {_shown(path)!r} is not UTF-8; rename it or use a link with a UTF-8 name") \
            from None
    try:
        st = path.stat()
    except OSError as e:  # ENOENT, a dangling link, a link loop, a path through a file, no permission
        if e.errno == errno.ENOENT:
            st = None
        else:
            raise CnnDepthError(f"cannot read {path} ({e.strerror or e}); check the path (--data, or dataloaders' source)") from e
    if st is not None:
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise CnnDepthError(f"{path} is not a folder or an archive file (a device, FIFO or socket); give a "
                                f"folder or a {'/'.join(ARCHIVE_SUFFIXES)} file")
        return path.resolve()
    if isinstance(source, str) and "/" not in source and "." not in source:
        raise CnnDepthError(f"unknown dataset {source!r}; choose one of: {', '.join(list_datasets())}, "
                            f"or give a folder or archive with --data PATH")
    raise CnnDepthError(f"no such file or folder: {path}; check the path (--data, or dataloaders' source)")


def image_folder(source: PathLike = DEFAULT_SOURCE, max_per_class: Optional[int] = None,
                 train_name: Optional[str] = None, valid_name: Optional[str] = None) -> ImageSource:
    """Resolve a dataset name, folder or archive into an :class:`ImageSource` (validated, scanned).

    Every image the source will use is decoded once (the result is cached per exact set of files): files that
    cannot be decoded (truncated, not an image, unreadable) are left out with a warning that counts them, and
    so are entries that are not regular files; images whose values :func:`to_uint8` cannot map to 8 bits are
    a one-line error.
    """
    if max_per_class is not None:
        max_per_class = check_int(max_per_class, "max_per_class")
    name = str(source)
    resolved = resolve_source(source)
    if isinstance(resolved, str):
        spec = _SOURCES[resolved]
        if spec.kind != "image":
            raise CnnDepthError(f"{resolved} holds {spec.kind}, not images; read it with cnn_depth.dataloaders("
                                f"{resolved!r}) (cnn_depth.arrays)")
        root = spec.fetch()
        train_name, valid_name = train_name or spec.train_name, valid_name or spec.valid_name
    elif resolved.is_file():
        if not is_archive(resolved):
            raise CnnDepthError(f"{resolved} is a file but not an archive; give a folder or a "
                                f"{'/'.join(ARCHIVE_SUFFIXES)} file")
        root = extract_archive(resolved)
    else:
        root = _single_top_folder(resolved)
    train_name, valid_name = resolve_splits(root, train_name, valid_name)
    folders = (train_name, valid_name)
    # Scan the files the cap keeps; an unreadable one is replaced by the next file of its class, so a small
    # cap over a big dataset decodes only a few images.
    bad: list[str] = []
    not_files: list[str] = []
    nested: list[str] = []
    while True:
        get_items = partial(image_items, folders=folders, max_per_class=max_per_class, exclude=tuple(bad))
        items = image_items(root, folders, max_per_class, tuple(bad), skipped=None if bad else not_files,
                            nested=None if bad else nested)
        if not items and not bad:  # the first pass excludes nothing, and a cap keeps ≥ 1 per class
            raise CnnDepthError(f"no images found in {root}/{train_name}/<class>/ or {root}/{valid_name}/<class>/; "
                                f"put image files (.jpg, .png, ...) in one folder per class")
        fingerprint = items_fingerprint(root, items)
        scan = _scan_headers(root, items, fingerprint)
        if scan["unsupported"]:
            n = len(scan["unsupported"])
            raise CnnDepthError(f"{n} image(s) cannot be scaled to 8 bits; the first: {scan['unsupported'][0]}")
        if not scan["bad"]:
            break
        bad += scan["bad"]
    if not_files:
        warnings.warn(f"skipped {len(not_files)} entries in {root} that are not regular files (a dangling or "
                      f"looping link, a FIFO, a device; first: {_shown(not_files[0])})", stacklevel=2)
    large = sum(n for wh, n in scan["sizes"].items()
                if Image.MAX_IMAGE_PIXELS and int(wh.split("x")[0]) * int(wh.split("x")[1]) > Image.MAX_IMAGE_PIXELS)
    if large:
        warnings.warn(f"{large} image(s) in {root} are larger than {Image.MAX_IMAGE_PIXELS:,} pixels (PIL's limit "
                      f"against decompression bombs); they are decoded whole, so each takes that much memory",
                      stacklevel=2)
    if nested:
        warnings.warn(f"skipped {len(nested)} folder(s) of images inside class folders in {root} (first: "
                      f"{_shown(nested[0])}): images are read from <split>/<class>/ only; move them up a level to "
                      f"use them", stacklevel=2)
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image file(s) in {root} (truncated, damaged or not "
                      f"readable; first: {_shown(bad[0])})", stacklevel=2)
    by_split = defaultdict(set)
    counts = Counter()
    for f in items:
        by_split[f.parent.parent.name].add(f.parent.name)
        counts[f.parent.parent.name] += 1
    train_classes, valid_classes = by_split[train_name], by_split[valid_name]
    if not counts[train_name] or not counts[valid_name]:
        empty = train_name if not counts[train_name] else valid_name
        raise CnnDepthError(f"no readable images in {root}/{empty}/<class>/; both splits need images")
    if len(train_classes) < 2:
        raise CnnDepthError(f"{root}/{train_name} has only one class ({', '.join(train_classes)}); a classifier "
                            f"needs at least two class folders")
    if valid_classes - train_classes:
        raise CnnDepthError(f"classes {sorted(valid_classes - train_classes)} are in {valid_name}/ but not in "
                            f"{train_name}/; every validation class needs training images")
    n_in = 1 if set(scan["modes"]) <= GRAY_MODES else 3
    return ImageSource(name, root, train_name, valid_name, items, get_items, n_in, scan["sizes"], len(bad),
                       max_per_class=max_per_class, vocab=sorted(train_classes),
                       counts={train_name: counts[train_name], valid_name: counts[valid_name]},
                       fingerprint=fingerprint)


def _image_size(folder: ImageSource, size) -> Optional[tuple[int, int]]:
    """The (h, w) to resize to, or None to use images as they are."""
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        if h < 1 or w < 1:
            raise CnnDepthError(f"size must be ≥ 1 px, got {size}")
        return int(h), int(w)
    if folder.uniform_size is None:
        warnings.warn(f"{folder.root} holds images of {len(folder.sizes)} sizes; resizing all to "
                      f"{DEFAULT_SIZE}×{DEFAULT_SIZE} (pass size= to choose)", stacklevel=3)
        return DEFAULT_SIZE, DEFAULT_SIZE
    return None


def load_image(path: Path, n_in: int, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Decode one image to a (h, w, c) uint8 array, as the DataBlock sees it (mode, squish resize)."""
    img = (PILImageBW8 if n_in == 1 else PILImage8).create(path)
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    a = np.asarray(img)
    return a[..., None] if a.ndim == 2 else a


def channel_stats(folder: ImageSource, size: Optional[tuple[int, int]] = None) -> tuple[list, list]:
    """Per-channel mean and std (0-1 scale) over up to STATS_SAMPLE training images, evenly spaced."""
    train = [f for f in folder.items if f.parent.parent.name == folder.train_name]
    idx = np.linspace(0, len(train) - 1, min(STATS_SAMPLE, len(train))).round().astype(int)
    s = np.zeros(folder.n_in)
    s2 = np.zeros(folder.n_in)
    n = 0
    for i in np.unique(idx):
        a = load_image(train[i], folder.n_in, size).reshape(-1, folder.n_in).astype(np.float64) / 255
        s += a.sum(0)
        s2 += (a ** 2).sum(0)
        n += a.shape[0]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))
    return mean.round(4).tolist(), std.round(4).tolist()


def augment_item_tfms(size: tuple[int, int], pad: int = 4) -> list:
    """fastai item transforms for the stock pipeline's ``augment=True``: random flip, pad-and-crop.

    The per-item PIL counterpart of :class:`cnn_depth.fastpath.FlipPadCrop`: zero-pad by ``pad`` px
    (``CropPad``), crop back to ``size`` at a uniform random offset (``RandomCrop``; a centre crop, i.e. the
    image itself, on validation) and flip left-right with p=0.5 (``FlipItem``, training only). The orders
    put them after ``Resize`` (1).
    """
    h, w = size
    return [CropPad((h + 2 * pad, w + 2 * pad), pad_mode=PadMode.Zeros, order=2), RandomCrop((h, w), order=3),
            FlipItem(0.5)]


def image_datablock(folder: ImageSource, size: Optional[tuple[int, int]] = None, batch_tfms=None,
                    augment: bool = False, item_tfms: Sequence = ()) -> DataBlock:
    """The DataBlock for ``folder``: image files, grandparent split, parent-folder label.

    Images are decoded by :class:`PILImage8` (fastai's ``PILImage`` with 16-bit and float images scaled).
    ``size`` adds a squish ``Resize``; ``augment`` adds :func:`augment_item_tfms` (per item, on PIL images,
    in the loader); ``item_tfms`` are added as given.
    """
    item_tfms = ([Resize(size, method=ResizeMethod.Squish)] if size else []) + list(item_tfms)
    if augment:
        item_tfms += augment_item_tfms(size or folder.uniform_size)
    return DataBlock(blocks=(ImageBlock(cls=PILImageBW8 if folder.n_in == 1 else PILImage8), CategoryBlock),
                     get_items=folder.get_items,
                     splitter=GrandparentSplitter(train_name=folder.train_name, valid_name=folder.valid_name),
                     get_y=parent_label,
                     item_tfms=item_tfms or None,
                     batch_tfms=batch_tfms)


