"""Datasets: the embedded sample, folders and archives, split detection, channels, sizes, bad input."""
import hashlib
import io
import tarfile
import warnings
import zipfile
from urllib.error import URLError

import pytest
import torch

from cnn_depth import CnnDepthError, dataloaders, image_folder
from cnn_depth import data as data_mod
from conftest import FULL_CIFAR

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_embedded_sample_counts_and_classes():
    f = image_folder("cifar10-sample")
    assert f.counts == {"train": 5000, "test": 1000}
    assert f.vocab == CIFAR_CLASSES
    assert f.n_in == 3 and f.uniform_size == (32, 32) and f.n_bad == 0
    per_class = {}
    for p in f.items:
        key = (p.parent.parent.name, p.parent.name)
        per_class[key] = per_class.get(key, 0) + 1
    assert set(per_class.values()) == {500, 100}
    assert all(per_class[("train", c)] == 500 and per_class[("test", c)] == 100 for c in CIFAR_CLASSES)


def test_sample_dataloaders_split_labels_and_batches(sample_dls):
    dls = sample_dls
    assert len(dls.train_ds) == 200 and len(dls.valid_ds) == 200  # 20 per class per split
    assert list(dls.vocab) == CIFAR_CLASSES and dls.c == 10
    assert all(p.parent.parent.name == "train" for p in dls.train_ds.items)
    assert all(p.parent.parent.name == "test" for p in dls.valid_ds.items)
    assert all(dls.vocab[y] == p.parent.name for p, (_, y) in zip(dls.valid_ds.items[:15], dls.valid_ds[:15]))
    xb, yb = dls.one_batch()
    assert xb.shape == (32, 3, 32, 32) and xb.dtype == torch.float32
    assert abs(float(xb.mean())) < 0.5 and 0.6 < float(xb.std()) < 1.5  # normalised


def test_max_per_class_takes_first_files_by_name():
    f = image_folder("cifar10-sample", max_per_class=3)
    cats = sorted(p.name for p in f.items if p.parent.name == "cat" and p.parent.parent.name == "train")
    assert cats == ["0000.jpg", "0001.jpg", "0002.jpg"]
    assert f.counts == {"train": 30, "test": 30}


def test_items_are_sorted_by_path_and_skip_other_depths(image_folder_factory, monkeypatch):
    root = image_folder_factory(classes=("b", "a"), n=3)
    (root / "train" / "a" / "nested").mkdir()  # deeper than <split>/<class>/<file>: not an item
    (root / "train" / "a" / "10.png").write_bytes((root / "train" / "a" / "0000.png").read_bytes())
    (root / "train" / "stray.png").write_bytes((root / "train" / "a" / "0000.png").read_bytes())
    (root / "train" / "a" / "nested" / "x.png").write_bytes((root / "train" / "a" / "0000.png").read_bytes())
    items = data_mod.image_items(root, ("train", "valid"), exclude=("train/b/0001.png",))
    rel = [str(p.relative_to(root)) for p in items]
    assert rel == sorted(rel, key=lambda r: r.split("/"))  # the order sorted() gives the Paths
    assert rel[:5] == ["train/a/0000.png", "train/a/0001.png", "train/a/0002.png", "train/a/10.png", "train/b/0000.png"]
    assert "train/b/0001.png" not in rel and "train/stray.png" not in rel and len(rel) == 12
    # a relative root gives the same items, relative, and the same cache key
    monkeypatch.chdir(root.parent)
    rel_items = data_mod.image_items(root.name, ("train", "valid"), exclude=("train/b/0001.png",))
    assert [root.parent / p for p in rel_items] == list(items)
    h = lambda r, its: data_mod.hash_items(hashlib.sha256(), r, its).hexdigest()
    assert h(root.name, rel_items) == h(root, items)


def test_grayscale_training_testing_folder_gives_one_channel(image_folder_factory):
    root = image_folder_factory(splits=("training", "testing"), classes=("0", "1", "2"), size=(28, 28), mode="L")
    dls = dataloaders(root, bs=4, device="cpu")
    assert (dls.data_info.source.train_name, dls.data_info.source.valid_name) == ("training", "testing")
    assert dls.data_info.n_in == 1 and dls.c == 3
    xb, _ = dls.one_batch()
    assert xb.shape == (4, 1, 28, 28)


@pytest.mark.parametrize("pair", [("train", "test"), ("train", "valid"), ("train", "val"), ("training", "testing")])
def test_split_names_are_detected(image_folder_factory, pair):
    f = image_folder(image_folder_factory(splits=pair))
    assert (f.train_name, f.valid_name) == pair


def test_explicit_split_names(image_folder_factory):
    root = image_folder_factory(splits=("fit", "holdout"))
    f = image_folder(root, train_name="fit", valid_name="holdout")
    assert f.counts == {"fit": 12, "holdout": 12}


def _tar(root, out, arcname):
    with tarfile.open(out, "w:gz") as t:
        t.add(root, arcname=arcname)
    return out


def test_tgz_with_one_top_folder(image_folder_factory, tmp_path):
    root = image_folder_factory("src")
    f = image_folder(_tar(root, tmp_path / "mydata.tgz", "mydata"))
    assert f.root.name == "mydata" and f.counts == {"train": 12, "valid": 12}


def test_zip_archive(image_folder_factory, tmp_path):
    root = image_folder_factory("src")
    out = tmp_path / "d.zip"
    with zipfile.ZipFile(out, "w") as z:
        for p in root.rglob("*.png"):
            z.write(p, p.relative_to(root))
    assert image_folder(out).counts == {"train": 12, "valid": 12}


def test_archive_entry_outside_target_is_refused(tmp_path):
    out = tmp_path / "evil.tgz"
    with tarfile.open(out, "w:gz") as t:
        data = b"x"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(CnnDepthError, match="outside the target folder"):
        image_folder(out)
    assert not (tmp_path / "escaped.txt").exists()


def test_mixed_sizes_are_resized(image_folder_factory, tmp_path):
    root = image_folder_factory("a", size=(12, 12))
    make_extra = image_folder_factory("b", size=(20, 16))
    for p in make_extra.rglob("*.png"):
        p.rename(root / p.relative_to(make_extra).parent / f"big-{p.name}")
    with pytest.warns(UserWarning, match="resizing all to 32×32"):
        dls = dataloaders(root, bs=8, device="cpu")
    assert dls.one_batch()[0].shape[-2:] == (32, 32)
    dls = dataloaders(root, bs=8, size=16, device="cpu")
    assert dls.one_batch()[0].shape[-2:] == (16, 16)


def test_unreadable_images_are_skipped_with_a_count(image_folder_factory):
    root = image_folder_factory()
    (root / "train" / "a" / "broken.png").write_bytes(b"not an image")
    (root / "train" / "b" / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        f = image_folder(root)
    assert f.counts == {"train": 12, "valid": 12} and f.n_bad == 2


@pytest.mark.parametrize("setup,message", [
    ("unknown", "unknown dataset 'imagenet9'; choose one of: cifar10-sample, cifar10, mnist"),
    ("missing", "no such file or folder"),
    ("no_images", "no images found"),
    ("no_splits", "tried train/test, train/valid, train/val, training/testing"),
    ("one_class", "only one class"),
    ("not_archive", "not an archive"),
    ("valid_only_class", "are in valid/ but not in train/"),
])
def test_bad_sources_give_one_line(setup, message, tmp_path, image_folder_factory):
    if setup == "unknown":
        src = "imagenet9"
    elif setup == "missing":
        src = tmp_path / "nope" / "data"
    elif setup == "no_images":
        src = tmp_path / "empty"
        (src / "train" / "a").mkdir(parents=True)
        (src / "valid" / "a").mkdir(parents=True)
        (src / "train" / "a" / "notes.txt").write_text("hi")
    elif setup == "no_splits":
        src = image_folder_factory(splits=("fit", "check"))
    elif setup == "one_class":
        src = image_folder_factory(classes=("only",))
    elif setup == "not_archive":
        src = tmp_path / "data.csv"
        src.write_text("a,b")
    elif setup == "valid_only_class":
        src = image_folder_factory()
        image_folder_factory(name="data", splits=("valid",), classes=("c",))
    with pytest.raises(CnnDepthError, match=message) as e:
        image_folder(src)
    assert "\n" not in str(e.value)


def test_offline_download_names_the_local_copy(monkeypatch):
    def offline(url, *a, **k):
        raise URLError("Name or service not known")
    monkeypatch.setattr(data_mod, "untar_data", offline)
    with pytest.raises(CnnDepthError, match=r"cannot download CIFAR-10 .* use a local copy instead: --data"):
        image_folder("cifar10")


def test_max_per_class_must_be_positive():
    with pytest.raises(CnnDepthError, match="max_per_class must be a whole number ≥ 1"):
        image_folder("cifar10-sample", max_per_class=0)


@pytest.mark.slow
@pytest.mark.skipif(not FULL_CIFAR.exists(), reason="../shared/data/cifar10.tgz not present")
def test_full_archive_path_with_cap():
    f = image_folder(FULL_CIFAR, max_per_class=2)
    assert f.root.name == "cifar10" and f.counts == {"train": 20, "test": 20}
