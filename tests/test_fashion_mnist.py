"""Fashion-MNIST: the idx parser against hand-written bytes, conversion of tiny idx files to the folder layout,
and the offline message. Nothing here touches the network: the download is made to fail where it is tried."""
import gzip
import re
import struct
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

import torchvision.datasets.mnist as tv_mnist
from cnn_depth import CnnDepthError, dataloaders, depth_learner, image_folder
from cnn_depth.fashion_mnist import CLASSES, IDX_FILES, idx_to_folder, raw_dir, read_idx

N_TRAIN, N_TEST = 3, 2  # images per class


def idx_bytes(a: np.ndarray, type_byte: int = 0x08) -> bytes:
    """An idx file written the way the format's description says (independently of the parser)."""
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0C: ">i4"}[type_byte]
    return (bytes([0, 0, type_byte, a.ndim]) + struct.pack(f">{a.ndim}i", *a.shape)
            + np.asarray(a).astype(dtype).tobytes())


def fake_split(n_per_class: int, seed: int):
    """Images whose brightness says the class, labels in a shuffled order (as in the real files)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10), n_per_class)).astype(np.uint8)
    images = np.clip(rng.normal(20 + 22 * labels[:, None, None], 8, (len(labels), 28, 28)), 0, 255).astype(np.uint8)
    return images, labels


def write_fashion(folder, gz=True, seed=0):
    """The four files, as published (.gz) or unpacked; returns {file name: array}."""
    folder.mkdir(parents=True, exist_ok=True)
    (tr_x, tr_y), (te_x, te_y) = fake_split(N_TRAIN, seed), fake_split(N_TEST, seed + 1)
    arrays = dict(zip(IDX_FILES, (tr_x, tr_y, te_x, te_y)))
    for name, a in arrays.items():
        data = idx_bytes(a)
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(data)
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """A fresh cache, and a torchvision whose every download fails as it does without a network."""
    monkeypatch.setenv("CNN_DEPTH_CACHE", str(tmp_path / "cache"))
    tried = []

    def no_network(url, *a, **k):
        tried.append(url)
        raise URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", no_network)
    return tried


# ---------------------------------------------------------------------------------------------------------
# The idx format


def test_read_idx_hand_written_bytes(tmp_path):
    p = tmp_path / "a-idx1-ubyte"
    p.write_bytes(b"\0\0\x08\x01" + b"\0\0\0\x03" + b"\x05\x06\xff")
    assert read_idx(p).tolist() == [5, 6, 255] and read_idx(p).dtype == np.uint8
    p.write_bytes(b"\0\0\x0b\x01" + b"\0\0\0\x02" + b"\x01\x02\xff\xfe")  # int16, big-endian: 0x0102, 0xfffe
    assert read_idx(p).tolist() == [258, -2]
    p.write_bytes(b"\0\0\x08\x02" + b"\0\0\0\x02\0\0\0\x03" + bytes(range(6)))
    assert read_idx(p).tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    a = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    big = np.array([1, 70000, -5], dtype=np.int64)
    for name, arr, t in (("x", a, 0x08), ("y", big, 0x0C)):
        p = tmp_path / (name + (".gz" if gz else ""))
        data = idx_bytes(arr, t)
        p.write_bytes(gzip.compress(data) if gz else data)
        assert np.array_equal(read_idx(p), arr) and read_idx(p).shape == arr.shape


@pytest.mark.parametrize("content,message", [
    (b"\x50\x4b\x03\x04 not idx", "is not an idx file (its first 4 bytes are 504b0304"),
    (b"", "is not an idx file (its first 4 bytes are missing"),
    (b"\0\0\x08\x03\0\0\0\x02", "is truncated (its header needs 16 bytes)"),
    (b"\0\0\x08\x01\0\0\0\x05\x01\x02", "holds 2 data bytes, not the 5 its dimensions 5 need"),
    (b"\0\0\x08\x01\0\0\0\x01\x01\x02", "holds 2 data bytes, not the 1"),
])
def test_bad_idx_files_are_one_line(tmp_path, content, message):
    p = tmp_path / "bad-idx"
    p.write_bytes(content)
    with pytest.raises(CnnDepthError, match=re.escape(message)) as e:
        read_idx(p)
    assert "\n" not in str(e.value) and "replace it with the original file" in str(e.value)


def test_damaged_gz_is_one_line(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 2), np.uint8)))[:-6])
    with pytest.raises(CnnDepthError, match=r"cannot read .*x\.gz \(EOFError") as e:
        read_idx(p)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------------
# The registered dataset


@pytest.mark.parametrize("gz", [True, False])
def test_placed_files_are_converted_once_without_a_download(offline, gz):
    arrays = write_fashion(raw_dir(), gz=gz)
    folder = image_folder("fashion-mnist")
    assert offline == []  # all four files were there: nothing was downloaded
    assert folder.root == raw_dir().parents[2] / "datasets" / "fashion-mnist"
    assert (folder.train_name, folder.valid_name) == ("training", "testing")
    assert folder.vocab == sorted(CLASSES) and folder.n_in == 1 and folder.sizes == {"28x28": 10 * (N_TRAIN + N_TEST)}
    assert folder.counts == {"training": 10 * N_TRAIN, "testing": 10 * N_TEST}
    images, labels = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    for i in (0, len(labels) - 1):  # file NNNNN.png is image NNNNN of its idx file, in its label's folder
        png = folder.root / "testing" / CLASSES[labels[i]] / f"{i:05d}.png"
        assert np.array_equal(np.asarray(Image.open(png)), images[i])
    for p in raw_dir().iterdir():  # converted once: the raw files are no longer needed
        p.unlink()
    assert image_folder("fashion-mnist").counts == folder.counts and offline == []


def test_offline_without_files_names_the_folder_and_files(offline):
    with pytest.raises(CnnDepthError) as e:
        image_folder("fashion-mnist")
    msg = str(e.value)
    assert "\n" not in msg and len(offline) == 1  # torchvision tried its mirror, which failed
    assert msg.startswith("cannot download Fashion-MNIST (<urlopen error [Errno -2] Name or service not known>)")
    assert (f"copy the four original files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into {raw_dir()} and rerun") in msg
    assert not (raw_dir().parents[2] / "datasets" / "fashion-mnist").exists()


def test_mismatched_files_are_refused_and_leave_nothing(offline):
    write_fashion(raw_dir())
    (raw_dir() / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(3, np.uint8))))
    with pytest.raises(CnnDepthError, match="are not one set of uint8 images and their labels"):
        image_folder("fashion-mnist")
    datasets = raw_dir().parents[2] / "datasets"
    assert not any(datasets.iterdir())  # the temporary folder is gone, no half dataset in place


def test_idx_to_folder_lists_missing_files_and_keeps_an_existing_folder(tmp_path):
    write_fashion(tmp_path / "src")
    (tmp_path / "src" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(CnnDepthError, match="lacks train-labels-idx1-ubyte"):
        idx_to_folder(tmp_path / "src", tmp_path / "out")
    (tmp_path / "done").mkdir()  # converted already (or by another process): returned as it is
    assert idx_to_folder(tmp_path / "src", tmp_path / "done") == tmp_path / "done"


def test_dataloaders_and_fashiondnn_on_fashion_mnist(offline):
    write_fashion(raw_dir())
    dls = dataloaders("fashion-mnist", bs=8, device="cpu")
    xb, yb = dls.one_batch()
    assert xb.shape == (8, 1, 28, 28) and dls.c == 10 and list(dls.vocab) == sorted(CLASSES)
    learn = depth_learner(dls, arch="fashiondnn")
    assert learn.model.hidden1[0].in_features == 784  # the chapter's 784-256
    assert learn.model(xb).shape == (8, 10) and torch.isfinite(learn.model(xb)).all()
