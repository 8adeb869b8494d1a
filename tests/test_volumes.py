"""Volumes (cnn_depth.volumes): the synthetic shapes (deterministic, not separable by brightness, learnable by a
3D CNN) and MedMNIST-3D's .npz converted into array folders, checked on tiny files written here (no network)."""
import hashlib
import itertools

import numpy as np
import pytest

from cnn_depth import dataloaders, depth_learner
from cnn_depth.arrays import TensorVolume
from cnn_depth.errors import CnnDepthError
from cnn_depth.volumes import MEDMNIST_3D, MEDMNIST_URL, SHAPES, medmnist_folder, shape_volume, synthetic_volumes


def digest(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.npy"))}


def test_synthetic_volumes_are_deterministic(tmp_path):
    a = synthetic_volumes(3, 8, seed=0, dest=tmp_path / "a")
    b = synthetic_volumes(3, 8, seed=0, dest=tmp_path / "b")
    c = synthetic_volumes(3, 8, seed=1, dest=tmp_path / "c")
    assert digest(a) == digest(b) != digest(c)
    assert sorted(digest(a)) == [f"{s}/{k}/{i:05d}.npy" for s in ("train", "valid") for k in SHAPES
                                 for i in range(SHAPES.index(k) * 3, SHAPES.index(k) * 3 + 3)]
    v = np.load(a / "train" / "torus" / "00006.npy")
    assert v.dtype == np.float32 and v.shape == (8, 8, 8)
    with pytest.raises(CnnDepthError, match="exists"):
        synthetic_volumes(3, 8, dest=a)


def test_the_classes_are_not_told_apart_by_brightness():
    """The shapes fill the same share of the grid on average: a threshold on a volume's mean intensity
    separates no two classes much better than chance."""
    means = {k: np.array([shape_volume(k, 12, np.random.default_rng([0, j, i])).mean() for i in range(100)])
             for j, k in enumerate(SHAPES)}
    for a, b in itertools.combinations(SHAPES, 2):
        x, y = np.r_[means[a], means[b]], np.r_[np.zeros(100), np.ones(100)]
        best = max(max(((x > t) == y).mean(), ((x <= t) == y).mean()) for t in x)
        assert best < 0.65, (a, b, best)


def test_shapes3d_is_registered_as_a_volume_dataset():
    dls = dataloaders("shapes3d", bs=16, device="cpu")
    info = dls.data_info
    assert (info.kind, info.ndim, info.input_shape, dls.vocab) == ("volume", 3, (1, 16, 16, 16), list(SHAPES))
    assert (len(dls.train_ds), len(dls.valid_ds)) == (192, 192) and info.source.format == "synthetic"
    xb = dls.one_batch()[0]
    assert type(xb) is TensorVolume and xb.shape == (16, 1, 16, 16, 16)


def test_a_3d_model_learns_the_shapes(tmp_path):
    from fastai.torch_core import set_seed

    dls = dataloaders(synthetic_volumes(24, 12, seed=0, noise=0.3, dest=tmp_path / "s"), bs=8, device="cpu")
    set_seed(0, reproducible=True)
    learn = depth_learner(dls, depth=3, arch="bn", threads=1)
    assert learn.model.config["ndim"] == 3
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(6, 1e-2)  # about a second
        accuracy = learn.validate()[1]
    # chance is 1/3 on 72 validation volumes (a binomial std of 0.056): 0.45 is 2 std above it (0.60 measured)
    assert accuracy > 0.45, accuracy


# ---------------------------------------------------------------------------------------------------------
# MedMNIST-3D


def medmnist_npz(path, sizes=(6, 3, 4), n_classes=2, side=6, **extra):
    """A tiny MedMNIST-3D file: uint8 volumes whose brightness follows their label, labels as (n, 1)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        labels = np.arange(n) % n_classes
        arrays[f"{split}_images"] = (rng.integers(0, 60, (n, side, side, side)) + 60 * labels[:, None, None, None]
                                     ).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8)
    arrays.update(extra)
    np.savez_compressed(path, **arrays)
    return path


def test_a_medmnist_file_converts_to_its_three_splits(tmp_path):
    npz = medmnist_npz(tmp_path / "mine.npz")
    folder = medmnist_folder(npz)
    z = np.load(npz)
    for split in ("train", "val", "test"):
        files = sorted((folder / split).rglob("*.npy"))
        assert len(files) == len(z[f"{split}_labels"])
        for f in files:  # file NNNNN is volume NNNNN of its split, in its label's folder
            i = int(f.stem)
            assert np.array_equal(np.load(f), z[f"{split}_images"][i])
            assert int(f.parent.name) == z[f"{split}_labels"][i, 0]
    dls = dataloaders(npz, bs=2, device="cpu")
    info = dls.data_info
    assert info.source.valid_name == "test" and (len(dls.train_ds), len(dls.valid_ds)) == (6, 4)
    assert (info.kind, info.input_shape, dls.vocab) == ("volume", (1, 6, 6, 6), ["0", "1"])
    assert len(dataloaders(npz, bs=2, device="cpu", valid_name="val").valid_ds) == 3
    assert medmnist_folder(npz) == folder  # converted once


def test_a_registered_medmnist_name_reads_a_file_already_downloaded(tmp_path):
    """Registered names download the .npz once through data._download: a copy already in the download
    folder is used without the network, and its classes get MedMNIST's names."""
    from fastdownload import FastDownload

    from cnn_depth.files import cache_dir

    archive = FastDownload(base=str(cache_dir() / "fastai")).arch_path()
    archive.mkdir(parents=True, exist_ok=True)
    medmnist_npz(archive / "fracturemnist3d.npz", n_classes=3)
    assert (archive / "fracturemnist3d.npz").name in MEDMNIST_URL.format(name="fracturemnist3d")
    dls = dataloaders("fracturemnist3d", bs=2, device="cpu")
    assert dls.vocab == sorted(MEDMNIST_3D["fracturemnist3d"].labels) and dls.data_info.kind == "volume"
    assert {p.parent.name for p in dls.train_ds.items} == {"buckle", "nondisplaced", "displaced"}


def _volumes_and_labels(path, images, labels):
    np.savez(path, train_images=images, train_labels=labels, test_images=images, test_labels=labels)


@pytest.mark.parametrize("make,match", [
    (lambda p: np.savez(p, train_images=np.zeros((2, 4, 4, 4))), r"is not a MedMNIST file: it needs"),
    (lambda p: _volumes_and_labels(p, np.zeros((2, 5, 5), np.uint8), np.zeros((2, 1))),
     r"train_images is \(2, 5, 5\), not \(n, depth, height, width\) volumes"),
    (lambda p: _volumes_and_labels(p, np.zeros((2, 3, 3, 3)), np.zeros((2, 4))),
     r"train_labels is \(2, 4\) for 2 volumes; one label per volume"),
    (lambda p: p.write_bytes(b"not a zip"), r"bad\.npz is not a \.npz file"),
    (lambda p: p.write_bytes(open(medmnist_npz(p.with_name("ok.npz")), "rb").read()[:300]),
     r"cannot read .*bad\.npz as a MedMNIST \.npz"),
])
def test_bad_medmnist_files_are_one_line(tmp_path, make, match):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(CnnDepthError, match=match) as e:
        dataloaders(path)
    assert "\n" not in str(e.value)


def test_class_names_by_label(tmp_path):
    npz = medmnist_npz(tmp_path / "x.npz", n_classes=3)
    with pytest.raises(CnnDepthError, match=r"train has label 2, but only 2 class names are known; pass labels="):
        medmnist_folder(npz, labels=("a", "b"))
    folder = medmnist_folder(npz, labels=("low", "mid", "high"))
    assert sorted(p.name for p in (folder / "train").iterdir()) == ["high", "low", "mid"]
    assert sorted(p.name for p in (medmnist_folder(npz) / "train").iterdir()) == ["0", "1", "2"]
