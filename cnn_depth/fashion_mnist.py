"""Fashion-MNIST (Xiao, Rasul and Vollgraf 2017) as the registered dataset ``fashion-mnist``.

fastai has no URL for it, so the four original idx files come through torchvision's ``FashionMNIST``
(download=True) into ``<cache>/downloads/FashionMNIST/raw/`` (torchvision's own layout; ``<cache>`` is
``$CNN_DEPTH_CACHE`` or ``~/.cache/cnn_depth``). They are converted once into the folder layout every other
dataset has, ``<cache>/datasets/fashion-mnist/{training,testing}/<class>/NNNNN.png`` (28×28 gray PNGs; NNNNN
is the image's index in its idx file, so ``max_per_class=N`` keeps the first N of each class in the original
order), written to a temporary folder and renamed into place, so a crash or a second process never leaves
half a dataset.

Offline: copy the four files, ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each as ``.gz`` as published, or unpacked), into
that raw folder; nothing is downloaded when all four are there. :func:`idx_to_folder` converts any folder of
MNIST-format idx files, for use with ``--data``.

Class folders are the ten class names in lower case with ``-`` for spaces and the slash: ``t-shirt-top``
(``T-shirt/top``: a slash cannot be in a folder name), ``trouser``, ``pullover``, ``dress``, ``coat``, ``sandal``,
``shirt``, ``sneaker``, ``bag``, ``ankle-boot``.
"""
from __future__ import annotations

import gzip
import math
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .errors import CnnDepthError
from .files import PathLike, cache_dir

CLASSES = ["t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
SPLITS = {"training": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "testing": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_FILES = [name for pair in SPLITS.values() for name in pair]
# idx type byte -> numpy type; every idx file is big-endian (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: PathLike) -> np.ndarray:
    """An idx file (``.gz`` or not) as an array: 2 zero bytes, a type byte, the number of dimensions, then
    each dimension as a big-endian int32, then the data, big-endian. One-line errors for anything else."""
    path = Path(path)
    try:
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise CnnDepthError(f"cannot read {path} ({type(e).__name__}: {e}); replace it with the original file") from e
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_TYPES or data[3] == 0:
        raise CnnDepthError(f"{path} is not an idx file (its first 4 bytes are {data[:4].hex() or 'missing'}, not "
                            f"00 00 <type> <dims>); replace it with the original file")
    ndim, dtype = data[3], IDX_TYPES[data[2]]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CnnDepthError(f"{path} is truncated (its header needs {header} bytes); replace it with the original file")
    dims = struct.unpack(f">{ndim}i", data[4:header])
    size = math.prod(dims) * dtype.itemsize
    if min(dims) < 0 or len(data) - header != size:
        raise CnnDepthError(f"{path} holds {len(data) - header} data bytes, not the {size} its dimensions "
                            f"{'×'.join(map(str, dims))} need; replace it with the original file")
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx_files(folder: PathLike) -> Optional[dict[str, Path]]:
    """The four idx files in ``folder`` (each unpacked or ``.gz``), by name; None unless all four are there."""
    folder = Path(folder)
    found = {}
    for name in IDX_FILES:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
    return found if len(found) == len(IDX_FILES) else None


def idx_to_folder(src: PathLike, dest: PathLike, classes: Sequence[str] = CLASSES) -> Path:
    """Convert the four MNIST-format idx files in ``src`` to ``dest/{training,testing}/<class>/NNNNN.png``.

    Args:
        src: a folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and
            t10k-labels-idx1-ubyte (each unpacked or ``.gz``).
        dest: the image folder to create; when it exists already (converted before, or by another process at
            the same time) it is returned as it is.
        classes: folder name of each label value, in label order.

    Returns:
        ``dest``. The PNGs are written to a temporary folder beside it, which is renamed to ``dest`` when
        complete.
    """
    src, dest = Path(src), Path(dest)
    if dest.is_dir():
        return dest
    files = find_idx_files(src)
    if files is None:
        missing = [n for n in IDX_FILES if not (src / n).is_file() and not (src / f"{n}.gz").is_file()]
        raise CnnDepthError(f"{src} lacks {', '.join(missing)} (or .gz); it needs the four idx files "
                            f"{', '.join(IDX_FILES)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        for split, (images_name, labels_name) in SPLITS.items():
            images, labels = read_idx(files[images_name]), read_idx(files[labels_name])
            if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
                raise CnnDepthError(f"{files[images_name].name} ({images.dtype}, {'×'.join(map(str, images.shape))}) "
                                    f"and {files[labels_name].name} ({len(labels)} labels) are not one set of uint8 "
                                    f"images and their labels; replace them with the original files")
            if len(labels) and not 0 <= labels.min() <= labels.max() < len(classes):
                raise CnnDepthError(f"{files[labels_name]} has labels {labels.min()}-{labels.max()}, not "
                                    f"0-{len(classes) - 1}; replace it with the original file")
            for c in classes:
                (tmp / split / c).mkdir(parents=True)
            width = max(5, len(str(len(labels) - 1)))
            for i, (a, y) in enumerate(zip(images, labels)):
                Image.fromarray(a, mode="L").save(tmp / split / classes[y] / f"{i:0{width}d}.png")
        try:
            tmp.rename(dest)
        except OSError:  # another process renamed its copy into place first: use that one
            if not dest.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def raw_dir() -> Path:
    """Where torchvision keeps the downloaded files and local copies go: ``<cache>/downloads/FashionMNIST/raw``."""
    return cache_dir() / "downloads" / "FashionMNIST" / "raw"


def download() -> Path:
    """torchvision's ``FashionMNIST(download=True)`` into :func:`raw_dir`; offline, one line saying where to put
    local copies."""
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(raw_dir().parent.parent), train=True, download=True)
    except Exception as e:  # RuntimeError listing each mirror's URLError, timeouts, HTTP errors
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        why = (lines[-1] if lines else type(e).__name__)[:100]  # torchvision's last line is the cause
        raise CnnDepthError(f"cannot download Fashion-MNIST ({why}); offline, copy the four original files "
                            f"({', '.join(n + '.gz' for n in IDX_FILES)}) into {raw_dir()} and rerun, or pass "
                            f"--data path/to/folder laid out training/<class>/, testing/<class>/") from e
    return raw_dir()


def fashion_mnist() -> Path:
    """The Fashion-MNIST folder in the cache (registered as ``fashion-mnist`` by :mod:`cnn_depth.data`)."""
    dest = cache_dir() / "datasets" / "fashion-mnist"
    if dest.is_dir():
        return dest
    return idx_to_folder(raw_dir() if find_idx_files(raw_dir()) else download(), dest)
