"""Datasets: the embedded sample, folders and archives, split detection, channels, sizes, bad input."""
import gzip
import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


@pytest.mark.parametrize("name", ["../../escaped.txt", "/tmp/escaped.txt", "d/train/../../../escaped.txt"])
def test_archive_entry_outside_target_is_refused(tmp_path, name):
    out = tmp_path / "evil.tgz"
    with tarfile.open(out, "w:gz") as t:
        data = b"x"
        info = tarfile.TarInfo(name)
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


@pytest.mark.parametrize("name,label", [("cifar10", "CIFAR-10"), ("mnist", "MNIST")])
def test_offline_download_is_one_line_at_once_and_writes_nothing_outside_the_cache(name, label, monkeypatch, tmp_path):
    def unreachable(address, timeout=None):  # what a machine without a route to the host answers
        raise OSError(101, "Network is unreachable")
    monkeypatch.setattr(data_mod.socket, "create_connection", unreachable)
    monkeypatch.setenv("HOME", str(tmp_path))  # fastai's untar_data would create ~/.fastai/config.ini
    before = sorted(Path(os.environ["CNN_DEPTH_CACHE"]).rglob("*"))
    with pytest.raises(CnnDepthError, match=rf"cannot download {label} .*Network is unreachable.* use a local copy "
                                            rf"instead: --data") as e:
        image_folder(name)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no ~/.fastai
    assert sorted(Path(os.environ["CNN_DEPTH_CACHE"]).rglob("*")) == before


def test_a_copy_fastai_downloaded_before_is_used_without_a_download(monkeypatch, tmp_path, image_folder_factory):
    copy = image_folder_factory("mnist_png", splits=("training", "testing"), mode="L", size=(28, 28))
    (tmp_path / ".fastai" / "data").mkdir(parents=True)
    copy.rename(tmp_path / ".fastai" / "data" / "mnist_png")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(data_mod.socket, "create_connection", None)  # never reached: no network call at all
    folder = image_folder("mnist")
    assert folder.root == tmp_path / ".fastai" / "data" / "mnist_png" and folder.n_in == 1


def test_image_folders_nested_in_class_folders_are_named_once(image_folder_factory):
    root = image_folder_factory()
    nested = root / "train" / "a" / "more"
    nested.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(nested / f"{i}.png")
    (root / "train" / "b" / "empty").mkdir()  # no images inside: nothing to say
    with pytest.warns(UserWarning) as record:
        folder = image_folder(root)
    said = [str(w.message) for w in record if "inside class folders" in str(w.message)]
    assert len(said) == 1 and "train/a/more" in said[0] and "move them up" in said[0]
    assert not any("regular files" in str(w.message) for w in record)
    assert len(folder.items) == 24  # the nested images are not read as class a


def test_large_images_are_named_once_per_dataset(image_folder_factory, monkeypatch):
    root = image_folder_factory(size=(8, 8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 8x8 = 64 px is "large" here: PIL warns per open
    with pytest.warns(UserWarning) as record:
        dls = dataloaders(root, bs=4, device="cpu")
        dls.one_batch()
    texts = [str(w.message) for w in record]
    assert sum("larger than 50 pixels" in t for t in texts) == 1
    assert not any(issubclass(w.category, Image.DecompressionBombWarning) for w in record)


def test_the_dataset_registry_has_no_import_cycle():
    import subprocess
    import sys
    code = ("import sys, cnn_depth.fashion_mnist; assert 'cnn_depth.data' not in sys.modules; "
            "from cnn_depth.data import list_datasets; print(list_datasets())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert "fashion-mnist" in out.stdout and "cifar10-sample" in out.stdout


def test_split_error_speaks_to_both_interfaces(image_folder_factory):
    root = image_folder_factory(splits=("a", "b"))
    with pytest.raises(CnnDepthError) as e:
        image_folder(root)
    assert "train_name=" not in str(e.value).split("from Python")[0]  # the fix for everyone comes first


def test_max_per_class_must_be_positive():
    with pytest.raises(CnnDepthError, match="max_per_class must be a whole number ≥ 1"):
        image_folder("cifar10-sample", max_per_class=0)


@pytest.mark.slow
@pytest.mark.skipif(not FULL_CIFAR.exists(), reason="../shared/data/cifar10.tgz not present")
def test_full_archive_path_with_cap():
    f = image_folder(FULL_CIFAR, max_per_class=2)
    assert f.root.name == "cifar10" and f.counts == {"train": 20, "test": 20}


# ---------------------------------------------------------------------------------------------------------
# Hostile and real-world inputs: every input path and every cache folder gives one line, never a traceback,
# a hang or a silently wrong result


def _damage(data: bytes, at: float, n: int = 200) -> bytes:
    b = bytearray(data)
    i = int(len(b) * at)
    b[i:i + n] = bytes((x + 101) % 256 for x in b[i:i + n])
    return bytes(b)


def _zip_with(root, out, edit=None, **kw):
    with zipfile.ZipFile(out, "w", **kw) as z:
        for p in sorted(root.rglob("*.png")):
            z.write(p, p.relative_to(root))
    if edit:
        b = bytearray(out.read_bytes())
        for sig, off, fn in edit:  # patch a field of every local (PK\3\4) or central (PK\1\2) header
            i = b.find(sig)
            while i != -1:
                b[i + off] = fn(b[i + off])
                i = b.find(sig, i + 1)
        out.write_bytes(bytes(b))
    return out


def _hostile(kind, tmp_path, src, monkeypatch):
    """A source of the given kind of trouble (and the environment it needs)."""
    tgz = _tar(src, tmp_path / "good.tgz", "d")
    if kind == "tgz damaged mid-stream":
        (tmp_path / "x.tgz").write_bytes(_damage(tgz.read_bytes(), 0.5))
    elif kind == "tgz truncated":
        (tmp_path / "x.tgz").write_bytes(tgz.read_bytes()[: tgz.stat().st_size * 2 // 3])
    elif kind == "tar header damaged, gzip intact":  # tarfile alone stops at the damage and says nothing
        plain = tmp_path / "plain.tar"
        with tarfile.open(plain, "w") as t:
            t.add(src, arcname="d")
        with tarfile.open(plain) as t:
            offset = t.getmembers()[len(t.getmembers()) // 2].offset
        b = bytearray(plain.read_bytes())
        b[offset:offset + 100] = b"\x07" * 100
        (tmp_path / "x.tgz").write_bytes(gzip.compress(bytes(b)))
    elif kind == "not an archive inside":
        (tmp_path / "x.tgz").write_bytes(b"hello, not a tar")
    elif kind == "zip member corrupt":
        good = _zip_with(src, tmp_path / "good.zip")
        (tmp_path / "x.zip").write_bytes(_damage(good.read_bytes(), 0.1, 40))
        return tmp_path / "x.zip"
    elif kind == "zip encrypted":
        return _zip_with(src, tmp_path / "x.zip", [(b"PK\x03\x04", 6, lambda v: v | 1), (b"PK\x01\x02", 8, lambda v: v | 1)])
    elif kind == "zip unsupported compression":  # e.g. AES (99), Deflate64 (9)
        return _zip_with(src, tmp_path / "x.zip", [(b"PK\x03\x04", 8, lambda v: 99), (b"PK\x01\x02", 10, lambda v: 99)])
    elif kind == "zip empty file":
        (tmp_path / "x.zip").write_bytes(b"")
        return tmp_path / "x.zip"
    elif kind == "zip with a link":
        out = tmp_path / "x.zip"
        with zipfile.ZipFile(out, "w") as z:
            info = zipfile.ZipInfo("train/a/link.png")
            info.external_attr = (0o120777 << 16)
            z.writestr(info, "/etc/passwd")
        return out
    elif kind == "tgz bomb over the limit":  # 40 MB of zeros in a 40 KB archive, limit 10 MB
        monkeypatch.setenv("CNN_DEPTH_MAX_EXTRACT_GB", "0.01")
        with tarfile.open(tmp_path / "x.tgz", "w:gz") as t:
            info = tarfile.TarInfo("d/train/a/zeros.png")
            info.size = 40 * 10**6
            t.addfile(info, io.BytesIO(bytes(info.size)))
    elif kind == "extraction limit not a number":
        monkeypatch.setenv("CNN_DEPTH_MAX_EXTRACT_GB", "lots")
        return tgz
    elif kind == "name not UTF-8 in a tar":
        os.rename(bytes(src / "train" / "a" / "0000.png"), bytes(src / "train" / "a") + b"/caf\xe9.png")
        with tarfile.open(tmp_path / "x.tgz", "w:gz", encoding="utf-8", errors="surrogateescape") as t:
            t.add(src, arcname="d")
    elif kind == "name not UTF-8 in a folder":
        os.rename(bytes(src / "train" / "a" / "0000.png"), bytes(src / "train" / "a") + b"/caf\xe9.png")
        return src
    elif kind == "class folder not UTF-8":
        os.rename(bytes(src / "train" / "b"), bytes(src / "train") + b"/b\xff")
        return src
    elif kind == "character device (/dev/null)":
        return "/dev/null"
    elif kind == "FIFO named like an archive":
        os.mkfifo(tmp_path / "x.tgz")
    elif kind == "cache path is a file":
        monkeypatch.setenv("CNN_DEPTH_CACHE", str(tgz))
        return src
    return tmp_path / "x.tgz"


HOSTILE = {
    "tgz damaged mid-stream": "cannot read archive", "tgz truncated": "cannot read archive",
    "tar header damaged, gzip intact": "a damaged member header", "not an archive inside": "cannot read archive",
    "zip member corrupt": "cannot read archive", "zip encrypted": "is encrypted",
    "zip unsupported compression": "compression method 99", "zip empty file": "cannot read archive",
    "zip with a link": "it holds a link", "tgz bomb over the limit": "would write more than 0.01 GB",
    "extraction limit not a number": "CNN_DEPTH_MAX_EXTRACT_GB must be a positive number",
    "name not UTF-8 in a tar": "not UTF-8", "name not UTF-8 in a folder": "not UTF-8",
    "class folder not UTF-8": "not UTF-8", "character device (/dev/null)": "not a folder or an archive file",
    "FIFO named like an archive": "not a folder or an archive file", "cache path is a file": "CNN_DEPTH_CACHE",
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_inputs_give_one_line_and_leave_nothing(kind, tmp_path, image_folder_factory, monkeypatch):
    monkeypatch.setenv("CNN_DEPTH_CACHE", str(tmp_path / "cache"))
    source = _hostile(kind, tmp_path, image_folder_factory("src", n=4), monkeypatch)
    with pytest.raises(CnnDepthError, match=HOSTILE[kind]) as e:
        dataloaders(source, bs=4, device="cpu")
    assert "\n" not in str(e.value)
    str(e.value).encode("utf-8")  # printable: names that are not UTF-8 are shown escaped
    archives = tmp_path / "cache" / "archives"
    if archives.is_dir():  # a failed extraction leaves no entry and no temporary
        assert [p.name for p in archives.iterdir() if not p.name.endswith(".lock")] == []


def test_truncated_images_are_skipped_in_both_pipelines(image_folder_factory):
    """A truncated PNG or JPEG opens (its header is whole) but cannot be decoded: the scan decodes every
    image, so both pipelines leave it out with a warning instead of failing mid-training."""
    root = image_folder_factory(size=(32, 32), n=4)
    for split in ("train", "valid"):
        p = root / split / "a" / "0001.png"
        p.write_bytes(p.read_bytes()[:200])
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(root / "valid" / "b" / "cut.jpg")
    p = root / "valid" / "b" / "cut.jpg"
    p.write_bytes(p.read_bytes()[:300])
    for pipeline in ("pil", "fast"):
        with pytest.warns(UserWarning, match="skipped 3 unreadable image file"):
            dls = dataloaders(root, bs=4, device="cpu", pipeline=pipeline)
        assert dls.data_info.source.counts == {"train": 7, "valid": 7}
        for dl in (dls.train, dls.valid):
            assert sum(len(y) for _, y in dl.new(shuffle=False, drop_last=False)) == 7


def _write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


@pytest.mark.parametrize("kind", ["16-bit PNG", "float TIFF in [0, 1]", "32-bit integer TIFF"])
def test_high_bit_depth_images_are_scaled_not_clipped(kind, tmp_path):
    """16-bit, 32-bit integer and float images keep their contrast: scaled to 8 bits by their type's range,
    the same in both pipelines (PIL's convert("L") would clip them to white or black)."""
    root, levels = tmp_path / "hb", {"a": 0.2, "b": 0.7}  # class brightness as a fraction of full scale
    for split in ("train", "valid"):
        for c, level in levels.items():
            for i in range(3):
                v = level + 0.01 * i
                if kind == "16-bit PNG":
                    _write(root / split / c / f"{i}.png", np.full((6, 6), round(v * 65535), np.uint16))
                elif kind == "float TIFF in [0, 1]":
                    _write(root / split / c / f"{i}.tif", np.full((6, 6), v, np.float32))
                else:
                    _write(root / split / c / f"{i}.tif", np.full((6, 6), round(v * 65535), np.int32))
    assert Image.open(next(root.rglob("0.*"))).mode == {"16-bit PNG": "I;16", "float TIFF in [0, 1]": "F",
                                                        "32-bit integer TIFF": "I"}[kind]
    fast = dataloaders(root, bs=6, device="cpu")
    pil = dataloaders(root, bs=6, device="cpu", pipeline="pil")
    assert fast.data_info.n_in == 1
    images = fast.train.images[fast.train.index]
    classes = [p.parent.name for p in fast.train_ds.items]
    for img, c, p in zip(images, classes, fast.train_ds.items):
        expected = round((levels[c] + 0.01 * int(p.stem)) * 255)
        assert abs(int(img.float().mean()) - expected) <= 1, (p, int(img.float().mean()), expected)
    (xf, _), (xp, _) = (next(iter(d.valid.new(shuffle=False))) for d in (fast, pil))
    assert torch.allclose(xf, xp, atol=1e-6)


def test_values_that_cannot_be_scaled_are_one_line(tmp_path, image_folder_factory):
    root = image_folder_factory(mode="L")
    _write(root / "train" / "a" / "hdr.tif", np.full((12, 12), 300.0, np.float32))
    with pytest.raises(CnnDepthError, match=r"hdr.tif is a float image with values 300\.\.300, outside \[0, 1\]") as e:
        image_folder(root)
    assert "\n" not in str(e.value)


def test_only_regular_files_are_images(image_folder_factory):
    """A FIFO named like an image, a dangling link, a link to itself and a folder link loop are left out
    with a warning (never a hang or a traceback); a link to a real image counts."""
    root = image_folder_factory(n=4)
    a, b = root / "train" / "a", root / "train" / "b"
    os.mkfifo(a / "fifo.png")
    os.symlink(root / "nowhere.png", a / "dangling.png")
    os.symlink("self.png", b / "self.png")
    os.symlink("..", b / "loop")
    os.symlink(root, root / "train" / "c")  # a class folder that loops back to the root: holds no images
    os.symlink(a / "0000.png", b / "linked.png")
    for pipeline in ("fast", "pil"):
        with pytest.warns(UserWarning, match="skipped 3 entries .* not regular files"):
            dls = dataloaders(root, bs=4, device="cpu", pipeline=pipeline)
        assert dls.data_info.source.counts == {"train": 9, "valid": 8}
        assert len(dls.train_ds) == 9
    with pytest.raises(CnnDepthError, match="fifo.png is not a regular file"):  # e.g. explain --image x.png
        data_mod.load_image(a / "fifo.png", 3)
