"""Datasets: where images come from (a registry of named sources, local folders and archives) and the
fastai DataBlock that turns them into DataLoaders.

Every source ends up as a folder laid out ``<root>/<train>/<class>/*`` and ``<root>/<valid>/<class>/*``,
read by one DataBlock: ``get_image_files`` items, ``GrandparentSplitter`` splits, ``parent_label`` labels.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import warnings
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.external import URLs, untar_data
from fastai.data.transforms import GrandparentSplitter, get_image_files, parent_label
from fastai.vision.augment import CropPad, FlipItem, PadMode, RandomCrop, Resize, ResizeMethod
from fastai.vision.core import PILImage, PILImageBW
from fastai.vision.data import ImageBlock
from fastcore.foundation import L
from PIL import Image

from .errors import CnnDepthError, check_int
from .files import PathLike, atomic_write, cache_dir

DEFAULT_SOURCE = "cifar10-sample"
DEFAULT_SIZE = 32  # px: what mixed-size images are resized to when no size is given
SPLIT_NAMES = [("train", "test"), ("train", "valid"), ("train", "val"), ("training", "testing")]
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")
STATS_SAMPLE = 1000  # training images decoded to compute the per-channel mean and std
PIPELINES = ("fast", "pil")  # dataloaders(pipeline=...): decoded tensors in memory, or a PIL decode per item
SAMPLE_ARCHIVE = "cifar10_sample.tgz"  # package data: see experiments/make_cifar10_sample.py

# ---------------------------------------------------------------------------------------------------------
# Archives


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _file_key(path: Path) -> str:
    """A short key for one file: its resolved path, byte size and mtime (see :func:`hash_items`)."""
    path = path.resolve()
    return hash_items(hashlib.sha256(str(path).encode()), path.parent, [path]).hexdigest()[:16]


def _check_member(dest: Path, name: str, archive: Path) -> None:
    target = (dest / name).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise CnnDepthError(f"refusing to extract {archive}: entry {name!r} would land outside the target "
                            f"folder; unpack it yourself and pass the folder")


def extract_archive(archive: PathLike, dest: Optional[PathLike] = None) -> Path:
    """Extract a .tgz/.tar.gz/.tar/.zip once into the cache (no entry may land outside it); return the folder.

    An archive whose entries all sit in one top folder returns that folder.
    """
    archive = Path(archive)
    dest = Path(dest) if dest else cache_dir() / "archives" / f"{archive.name.split('.')[0]}-{_file_key(archive)}"
    if not (dest / ".complete").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
        try:
            if archive.name.lower().endswith(".zip"):
                with zipfile.ZipFile(archive) as z:
                    for name in z.namelist():
                        _check_member(tmp, name, archive)
                    z.extractall(tmp)
            else:
                with tarfile.open(archive) as t:
                    for m in t.getmembers():
                        _check_member(tmp, m.name, archive)
                        if (m.issym() or m.islnk()):
                            raise CnnDepthError(f"refusing to extract {archive}: it holds a link ({m.name}); "
                                                f"unpack it yourself and pass the folder")
                    t.extractall(tmp, filter="data")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CnnDepthError(f"cannot read archive {archive} ({e}); check the file or pass an extracted "
                                f"folder instead") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / ".complete").write_text(str(archive))
        if dest.exists():  # a half-finished extraction from an interrupted run
            shutil.rmtree(dest)
        tmp.rename(dest)
    return _single_top_folder(dest)


def _single_top_folder(root: Path) -> Path:
    """Descend into ``root``'s only folder while it has no files or other folders (macOS junk ignored)."""
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
        if len(entries) == 1 and entries[0].is_dir() and not _find_splits(root, quiet=True):
            root = entries[0]
        else:
            return root


# ---------------------------------------------------------------------------------------------------------
# Named sources


@dataclass(frozen=True)
class SourceSpec:
    """A registered dataset: ``fetch()`` returns its root folder; split folder names and a description."""

    name: str
    fetch: Callable[[], Path]
    train_name: str
    valid_name: str
    description: str


_SOURCES: dict[str, SourceSpec] = {}


def register_dataset(name: str, train_name: str, valid_name: str, description: str):
    """Decorator: add a fetch function returning a root folder to the dataset registry."""
    def _register(fetch):
        _SOURCES[name] = SourceSpec(name, fetch, train_name, valid_name, description)
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


def _download(url: str, name: str, hint: str) -> Path:
    try:
        return untar_data(url)
    except Exception as e:  # URLError, timeouts, HTTP errors: all mean "no copy here and no download"
        raise CnnDepthError(f"cannot download {name} ({type(e).__name__}: {str(e)[:80]}); offline, use a local "
                            f"copy instead: {hint}") from e


@register_dataset("cifar10-sample", "train", "test",
                  "CIFAR-10, first 500 train + 100 test images per class (embedded, works offline)")
def cifar10_sample() -> Path:
    with resources.as_file(resources.files("cnn_depth") / "_data" / SAMPLE_ARCHIVE) as archive:
        return extract_archive(archive, cache_dir() / "datasets" / f"cifar10-sample-{_file_key(archive)}")


@register_dataset("cifar10", "train", "test", "full CIFAR-10 (50,000 / 10,000) via fastai's untar_data(URLs.CIFAR)")
def cifar10() -> Path:
    return _download(URLs.CIFAR, "CIFAR-10",
                     "--data path/to/cifar10.tgz (or dataloaders('path/to/cifar10')), laid out train/<class>/, "
                     "test/<class>/")


@register_dataset("mnist", "training", "testing", "MNIST digits, 28×28 grayscale, via untar_data(URLs.MNIST)")
def mnist() -> Path:
    return _download(URLs.MNIST, "MNIST",
                     "--data path/to/mnist_png (or a .tgz) laid out training/<digit>/, testing/<digit>/")


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
                            f"<root>/<train>/<class>/* or pass train_name= and valid_name=")
    return found


def image_items(path: PathLike, folders: Sequence[str], max_per_class: Optional[int] = None,
                exclude: Sequence[str] = ()) -> L:
    """``get_image_files`` over the split folders, keeping ``<split>/<class>/<file>``, sorted, capped per class.

    ``exclude`` holds paths relative to ``path`` (unreadable files); the cap counts what is left, so
    ``max_per_class=N`` gives the first N readable images of each class in each split, by file name.
    """
    path, skip, folders = Path(path), set(exclude), set(folders)
    # Work on the relative path's parts as strings: pathlib per file costs ~1 s on CIFAR-10's 60,000 files.
    # Sorting by the parts tuple is the order sorted() gives the Paths themselves.
    kept, root = [], str(path)
    for f in get_image_files(path, folders=list(folders)):
        rel = _relative(f, root)
        parts = tuple(rel.split(os.sep))
        if len(parts) == 3 and parts[0] in folders and rel not in skip:
            kept.append((parts, f))
    kept.sort(key=lambda t: t[0])
    if max_per_class is None:
        return L(f for _, f in kept)
    taken: Counter = Counter()
    out = []
    for (split, cls, _), f in kept:
        if taken[split, cls] < max_per_class:
            taken[split, cls] += 1
            out.append(f)
    return L(out)


def _relative(f: PathLike, root: str) -> str:
    """``str(Path(f).relative_to(root))``, by slicing the string when ``f`` starts with ``root``."""
    s = str(f)
    return s[len(root) + 1:] if s.startswith(root + os.sep) else str(Path(f).relative_to(root))


def hash_items(h, root: Path, items: Sequence[Path]):
    """Feed each item's path (relative to ``root``), byte size and mtime (ns) to the hash ``h``; return it.

    What cache keys are made of: a changed, added, removed or touched file changes the key.
    """
    root = str(root)
    for f in items:
        st = os.stat(f)
        h.update(f"{_relative(f, root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h


def _scan_headers(root: Path, files: Sequence[Path]) -> dict:
    """Size and mode of every image from its header, cached by (paths, sizes, mtimes); lists unreadable ones."""
    h = hash_items(hashlib.sha256(str(root.resolve()).encode()), root, files)
    cache = cache_dir() / "scans" / f"{h.hexdigest()[:24]}.json"
    if cache.exists():
        try:
            return json.loads(cache.read_text())
        except ValueError:
            pass
    sizes, modes, bad = Counter(), Counter(), []
    for f in files:
        try:
            with Image.open(f) as im:
                sizes[f"{im.size[0]}x{im.size[1]}"] += 1
                modes[im.mode] += 1
        except Exception:  # any file PIL cannot read is skipped and counted, never a crash
            bad.append(str(f.relative_to(root)))
    scan = dict(sizes=dict(sizes), modes=dict(modes), bad=bad)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, json.dumps(scan), durable=False)
    return scan


GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


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
    if path.exists():
        return path.resolve()
    if isinstance(source, str) and "/" not in source and "." not in source:
        raise CnnDepthError(f"unknown dataset {source!r}; choose one of: {', '.join(list_datasets())}, "
                            f"or give a folder or archive with --data PATH")
    raise CnnDepthError(f"no such file or folder: {path}; check the path given to --data")


def image_folder(source: PathLike = DEFAULT_SOURCE, max_per_class: Optional[int] = None,
                 train_name: Optional[str] = None, valid_name: Optional[str] = None) -> ImageSource:
    """Resolve a dataset name, folder or archive into an :class:`ImageSource` (validated, scanned)."""
    if max_per_class is not None:
        max_per_class = check_int(max_per_class, "max_per_class")
    name = str(source)
    resolved = resolve_source(source)
    if isinstance(resolved, str):
        spec = _SOURCES[resolved]
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
    # Read the headers of the files the cap keeps; an unreadable one is replaced by the next file of its
    # class, so a small cap over a big dataset reads only a few headers.
    bad: list[str] = []
    while True:
        get_items = partial(image_items, folders=folders, max_per_class=max_per_class, exclude=tuple(bad))
        items = get_items(root)
        if not items and not bad:  # the first pass excludes nothing, and a cap keeps ≥ 1 per class
            raise CnnDepthError(f"no images found in {root}/{train_name}/<class>/ or {root}/{valid_name}/<class>/; "
                                f"put image files (.jpg, .png, ...) in one folder per class")
        scan = _scan_headers(root, items)
        if not scan["bad"]:
            break
        bad += scan["bad"]
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image file(s) in {root} (first: {bad[0]})", stacklevel=2)
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
                       counts={train_name: counts[train_name], valid_name: counts[valid_name]})


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
    img = (PILImageBW if n_in == 1 else PILImage).create(path)
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
                    augment: bool = False) -> DataBlock:
    """The DataBlock for ``folder``: image files, grandparent split, parent-folder label.

    ``augment`` adds :func:`augment_item_tfms` (per item, on PIL images, in the loader).
    """
    item_tfms = [Resize(size, method=ResizeMethod.Squish)] if size else []
    if augment:
        item_tfms += augment_item_tfms(size or folder.uniform_size)
    return DataBlock(blocks=(ImageBlock(cls=PILImageBW if folder.n_in == 1 else PILImage), CategoryBlock),
                     get_items=folder.get_items,
                     splitter=GrandparentSplitter(train_name=folder.train_name, valid_name=folder.valid_name),
                     get_y=parent_label,
                     item_tfms=item_tfms or None,
                     batch_tfms=batch_tfms)


from . import fashion_mnist  # noqa: E402,F401  (registers fashion-mnist; it imports register_dataset from here)
