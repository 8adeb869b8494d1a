"""Volumes: a deterministic synthetic set of noisy 3D shapes, and MedMNIST-3D's ``.npz`` files, each written once
as an array folder (:mod:`cnn_depth.arrays`) in the cache.

``shapes3d`` (:func:`synthetic_volumes`): three classes, ``cube``, ``sphere`` and ``torus``, each a solid shape
of random size, position and orientation in a ``size``³ grid, at a random brightness on a random background,
under Gaussian noise. The sizes are drawn so the classes fill about the same share of the grid (so the mean
intensity does not give the class away) and the noise is as strong as the shape's contrast, so a model has to
see the shape's form; the same arguments give the same files, bit for bit.

MedMNIST-3D (Yang et al. 2023, *MedMNIST v2*, Scientific Data 10:41; https://medmnist.com): each dataset is one
``.npz`` with ``train_images`` (n, 28, 28, 28) uint8, ``train_labels`` (n, 1), and the same for ``val`` and
``test``. :func:`medmnist_folder` converts any such file (``dataloaders("path/to/organmnist3d.npz")``) into
``{train,val,test}/<label>/<NNNNN>.npy`` (uint8 volumes; NNNNN the volume's index in its split); the
registered names download the file once through :func:`cnn_depth.data._download`. The validation split used
is ``test``, as for CIFAR-10 (``valid_name="val"`` picks MedMNIST's validation split instead).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .archives import archive_key
from .errors import CnnDepthError, check_int
from .files import PathLike, cache_dir

SHAPES = ("cube", "sphere", "torus")
SYNTHETIC_VERSION = 1  # bump when synthetic_volumes draws differently
MEDMNIST_SPLITS = ("train", "val", "test")
MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"  # MedMNIST v3's record


@dataclass(frozen=True)
class MedMNIST:
    """A MedMNIST-3D dataset: its file name (without ``.npz``), class names by label, published sizes."""

    name: str
    labels: tuple
    counts: tuple  # (train, val, test)
    description: str


MEDMNIST_3D = {d.name: d for d in [
    MedMNIST("organmnist3d", ("liver", "kidney-right", "kidney-left", "femur-right", "femur-left", "bladder",
                              "heart", "lung-right", "lung-left", "spleen", "pancreas"), (971, 161, 610),
             "MedMNIST OrganMNIST3D: 11 abdominal organs in CT, 28³"),
    MedMNIST("nodulemnist3d", ("benign", "malignant"), (1158, 165, 310),
             "MedMNIST NoduleMNIST3D: lung nodules in CT, 28³"),
    MedMNIST("adrenalmnist3d", ("normal", "hyperplasia"), (1188, 98, 298),
             "MedMNIST AdrenalMNIST3D: adrenal gland shapes, 28³"),
    MedMNIST("fracturemnist3d", ("buckle", "nondisplaced", "displaced"), (1027, 103, 240),
             "MedMNIST FractureMNIST3D: rib fractures in CT, 28³"),
    MedMNIST("vesselmnist3d", ("vessel", "aneurysm"), (1335, 191, 382), "MedMNIST VesselMNIST3D: brain vessels, 28³"),
    MedMNIST("synapsemnist3d", ("inhibitory", "excitatory"), (1230, 177, 352),
             "MedMNIST SynapseMNIST3D: synapses in electron microscopy, 28³"),
]}


# ---------------------------------------------------------------------------------------------------------
# Synthetic shapes


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3×3 rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def shape_volume(kind: str, size: int, rng: np.random.Generator, noise: float = 0.6) -> np.ndarray:
    """One noisy ``kind`` (cube, sphere or torus) in a ``size``³ float32 grid, drawn from ``rng``.

    Coordinates span [-1, 1]; the shape is centred within ±0.15 of the middle, rotated at random, and sized so
    it fills 5-15 % of the grid whatever its kind; inside it the value is a random brightness 0.7-1.3 above a
    random background (-0.3..0.3), then Gaussian noise of std ``noise`` is added."""
    axis = np.linspace(-1, 1, size, dtype=np.float64)
    p = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)  # (size, size, size, 3)
    p = (p - rng.uniform(-0.15, 0.15, 3)) @ _rotation(rng)
    share = rng.uniform(0.05, 0.15) * 8  # the shape's volume, in units of the [-1, 1]³ grid's 8
    if kind == "cube":
        inside = np.abs(p).max(-1) <= share ** (1 / 3) / 2
    elif kind == "sphere":
        inside = np.linalg.norm(p, axis=-1) <= (3 * share / (4 * np.pi)) ** (1 / 3)
    elif kind == "torus":
        ratio = rng.uniform(0.3, 0.45)  # tube radius / ring radius; volume 2π²·R·r²
        ring = (share / (2 * np.pi ** 2 * ratio ** 2)) ** (1 / 3)
        inside = (np.linalg.norm(p[..., :2], axis=-1) - ring) ** 2 + p[..., 2] ** 2 <= (ratio * ring) ** 2
    else:
        raise CnnDepthError(f"unknown shape {kind!r}; choose one of: {', '.join(SHAPES)}")
    v = rng.uniform(-0.3, 0.3) + rng.uniform(0.7, 1.3) * inside + rng.normal(0, noise, inside.shape)
    return v.astype(np.float32)


def synthetic_volumes(n_per_class: int = 64, size: int = 16, seed: int = 0, dest: Optional[PathLike] = None,
                      noise: float = 0.6) -> Path:
    """Write the synthetic shapes dataset (see the module docstring) and return its folder.

    Args:
        n_per_class: volumes per class in each split (``train`` and ``valid``).
        size: the grid's side, in voxels (≥ 4).
        seed: the seed every volume is drawn from (split, class and index each get their own stream).
        dest: the folder to write (it must not exist); by default one in the cache, named by the arguments,
            written once across processes and reused.
        noise: std of the Gaussian noise (the shape's contrast is 0.7-1.3).

    Returns:
        the folder, laid out ``{train,valid}/{cube,sphere,torus}/<NNNNN>.npy``, each ``(size, size, size)`` float32.
    """
    from .arrays import write_array_folder  # arrays imports data, which registers this module's datasets

    n_per_class, size = check_int(n_per_class, "n_per_class"), check_int(size, "size", minimum=4)
    seed = check_int(seed, "seed", minimum=0)

    def samples(split: int):
        return lambda: [(kind, shape_volume(kind, size, np.random.default_rng([seed, split, k, i]), noise))
                        for k, kind in enumerate(SHAPES) for i in range(n_per_class)]

    origin = dict(format="synthetic", dims=3, unit="volume", n_per_class=n_per_class, size=size, seed=seed,
                  noise=noise, version=SYNTHETIC_VERSION)
    if dest is None:
        dest = cache_dir() / "datasets" / f"shapes3d-v{SYNTHETIC_VERSION}-n{n_per_class}-s{size}-seed{seed}-" \
                                          f"noise{str(noise).replace('.', '_')}"
    elif Path(dest).exists():
        raise CnnDepthError(f"{dest} exists; synthetic_volumes writes a new folder: give another dest")
    return write_array_folder(Path(dest), dict(train=samples(0), valid=samples(1)), origin, "writing shapes3d")


# ---------------------------------------------------------------------------------------------------------
# MedMNIST-3D


def _medmnist_arrays(path: Path) -> dict:
    """The images and labels of each split in a MedMNIST ``.npz``, checked (one line per problem)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":  # every .npz is a zip
                raise CnnDepthError(f"{path} is not a .npz file (not a zip); download the MedMNIST file again")
        z = np.load(path, allow_pickle=False)
    except CnnDepthError:
        raise
    except Exception as e:  # truncated, damaged
        raise CnnDepthError(f"cannot read {path} as a MedMNIST .npz ({type(e).__name__}: {str(e)[:80]}); download it "
                            f"again") from e
    with z:
        found = {s: (z[f"{s}_images"], z[f"{s}_labels"]) for s in MEDMNIST_SPLITS
                 if f"{s}_images" in z.files and f"{s}_labels" in z.files}
    if "train" not in found or len(found) < 2:
        raise CnnDepthError(f"{path} is not a MedMNIST file: it needs train_images/train_labels and val_ or test_ "
                            f"images and labels, it has {', '.join(sorted(z.files)) or 'nothing'}")
    for s, (images, labels) in found.items():
        if images.ndim != 4:
            raise CnnDepthError(f"{path}: {s}_images is {images.shape}, not (n, depth, height, width) volumes; this "
                                f"reads MedMNIST-3D (2D MedMNIST: save the images as PNG folders)")
        labels = labels.reshape(len(labels), -1) if len(labels) else labels.reshape(0, 1)
        if labels.shape[1] != 1 or len(labels) != len(images):
            raise CnnDepthError(f"{path}: {s}_labels is {labels.shape} for {len(images)} volumes; one label per "
                                f"volume is needed (multi-label sets are not classified here)")
        found[s] = (images, labels[:, 0].astype(np.int64))
    return found


def medmnist_folder(npz: PathLike, labels: Optional[Sequence[str]] = None, name: Optional[str] = None) -> Path:
    """The array folder converted, once, from a MedMNIST-3D ``.npz`` (see the module docstring).

    ``labels`` names the class folders by label value (default: the registered dataset's names when the file is
    named as one, else the label numbers, zero-padded so they sort in order)."""
    from .arrays import write_array_folder  # arrays imports data, which registers this module's datasets

    npz = Path(npz).resolve()
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", name or npz.name.split(".")[0])
    known = MEDMNIST_3D.get(npz.name.split(".")[0].lower())
    if labels is None and known is not None:
        labels = known.labels
    names = hashlib.sha256(json.dumps(list(labels) if labels is not None else None).encode()).hexdigest()[:6]
    dest = cache_dir() / "datasets" / "medmnist" / f"{stem}-{archive_key(npz)}-{names}"

    loaded: dict = {}

    def arrays() -> dict:  # the .npz read once, only when the folder is built
        if not loaded:
            loaded.update(_medmnist_arrays(npz))
        return loaded

    def samples(split: str):
        def make():
            images, values = arrays()[split]
            width = len(str(max(int(values.max(initial=0)), 1)))
            if labels is not None and len(values) and values.max() >= len(labels):
                raise CnnDepthError(f"{npz}: {split} has label {values.max()}, but only {len(labels)} class names "
                                    f"are known; pass labels= with one name per label")
            return [(labels[v] if labels is not None else f"{v:0{width}d}", images[i]) for i, v in enumerate(values)]
        return make

    splits = [s for s in MEDMNIST_SPLITS if (dest / s).is_dir()] if (dest / ".complete").is_file() else list(arrays())
    origin = dict(format="medmnist", dims=3, unit="volume", files={s: str(npz) for s in splits})
    return write_array_folder(dest, {s: samples(s) for s in splits}, origin, f"converting {npz.name}")


def medmnist(name: str) -> Path:
    """A registered MedMNIST-3D dataset: its ``.npz`` downloaded once (or a copy already there), converted."""
    from .data import _download

    spec = MEDMNIST_3D[name]
    npz = _download(MEDMNIST_URL.format(name=name), spec.name,
                    f"download {name}.npz from https://medmnist.com (Zenodo) and pass its path, "
                    f"dataloaders('path/to/{name}.npz') or --data path/to/{name}.npz", extract=False)
    return medmnist_folder(npz, spec.labels, name)
