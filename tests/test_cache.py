"""The shared cache: many processes on one cache, killed builds, stale temporaries, keys that follow content,
hashes checked on load."""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import warnings

import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image

from cnn_depth import CnnDepthError, dataloaders, image_folder
from cnn_depth import data as data_mod
from cnn_depth.cache import LEGACY_TMP_AGE_S, clean_stale
from cnn_depth.data import load_image
from cnn_depth.fastpath import decode_key, decoded_path
from conftest import ROOT, make_image_folder

# A child process: import first, wait for the starting gun (a file), then build DataLoaders from the archive
# on the shared cache and report what it got.
CHILD = """
import json, sys, time
from pathlib import Path
from cnn_depth.loaders import dataloaders
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.002)
dls = dataloaders(sys.argv[1], bs=8, device="cpu")
src = dls.data_info.source
print(json.dumps(dict(counts=src.counts, n_bad=src.n_bad, root=str(src.root), items=len(src.items),
                      checksum=int(dls.train.images.double().sum()))))
"""


def _tgz(folder, out):
    with tarfile.open(out, "w:gz") as t:
        t.add(folder, arcname="shared")
    return out


def _temporaries(cache):
    return [p for p in cache.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".extract-")]


@pytest.mark.slow
@pytest.mark.parametrize("round_", [0, 1])
def test_processes_started_at_once_on_a_fresh_cache_all_succeed(tmp_path, round_):
    """Three processes released at the same instant on an empty cache: one extracts, scans and decodes, the
    others wait and use its entries; every one sees all 600 images, none unreadable, the same pixels."""
    archive = _tgz(make_image_folder(tmp_path / "src", n=150, size=(16, 16), seed=round_), tmp_path / "shared.tgz")
    cache, go = tmp_path / "cache", tmp_path / "go"
    env = {**os.environ, "CNN_DEPTH_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(archive), str(go)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    time.sleep(0.5)  # let them import; those still importing join the race a little late, which races too
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert all(r == reports[0] for r in reports)
    assert reports[0]["counts"] == {"train": 300, "valid": 300} and reports[0]["n_bad"] == 0
    entries = [p for p in (cache / "archives").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / ".complete").is_file()
    umask = os.umask(0o022)
    os.umask(umask)
    assert entries[0].stat().st_mode & 0o777 == 0o777 & ~umask  # like any folder the user makes (was 0700)
    assert len(list((cache / "decoded").glob("*.npy"))) == 1 and len(list((cache / "scans").glob("*.json"))) == 1
    assert not _temporaries(cache)


KILLED = """
import sys, time
from pathlib import Path
import cnn_depth.archives as archives
copy = archives._Writer.copy
def slow_copy(*args):  # the real copy, then a pause: the parent kills this process mid-extraction
    copy(*args)
    Path(sys.argv[2]).touch()
    time.sleep(0.05)
archives._Writer.copy = slow_copy
from cnn_depth.data import image_folder
image_folder(sys.argv[1])
"""


@pytest.mark.slow
def test_extraction_killed_midway_leaves_nothing_that_breaks_the_next_run(tmp_path, monkeypatch):
    archive = _tgz(make_image_folder(tmp_path / "src", n=40, size=(8, 8)), tmp_path / "shared.tgz")
    cache, started = tmp_path / "cache", tmp_path / "started"
    env = {**os.environ, "CNN_DEPTH_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", KILLED, str(archive), str(started)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not started.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    leftover = _temporaries(cache)
    assert leftover and not [e for e in (cache / "archives").iterdir() if not e.name.startswith(".")]
    monkeypatch.setenv("CNN_DEPTH_CACHE", str(cache))
    f = image_folder(archive)
    assert f.counts == {"train": 80, "valid": 80} and f.n_bad == 0
    assert not any(t.exists() for t in leftover)  # the dead process's half extraction was removed


def test_stale_temporaries_are_removed_unless_their_builder_holds_the_lock(tmp_path):
    (tmp_path / ".abc.123.tmp").mkdir()  # a build of entry "abc" whose process is gone
    (tmp_path / ".def.npy.456.tmp").write_bytes(b"half a file")  # a build of "def" still running
    (tmp_path / ".extract-old01").mkdir()  # an older version's leftover, hours old
    (tmp_path / ".extract-new01").mkdir()  # ... and one that may still be in use
    hours_ago = time.time() - LEGACY_TMP_AGE_S - 60
    os.utime(tmp_path / ".extract-old01", (hours_ago, hours_ago))
    (tmp_path / "abc").mkdir()  # complete entries are never touched
    with FileLock(str(tmp_path / ".def.lock")):
        removed = clean_stale(tmp_path)
    assert sorted(p.name for p in removed) == [".abc.123.tmp", ".extract-old01"]
    kept = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))  # lock files stay: tiny
    assert kept == [".def.npy.456.tmp", ".extract-new01", "abc"]
    assert [p.name for p in clean_stale(tmp_path)] == [".def.npy.456.tmp"]  # lock released: stale now


def _same_size_new_pixels(path, value):
    """Rewrite an image with other pixels, the same byte size (BMP) and the same mtime."""
    st = path.stat()
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_keys_follow_the_source_and_the_content_not_just_sizes_and_mtimes(tmp_path):
    """Two datasets of one layout, byte sizes and mtimes (BMP) never share cached pixels, and new content
    in a file with its old size and mtime is decoded again."""
    a = make_image_folder(tmp_path / "a", ext="bmp", n=3, seed=0)
    b = make_image_folder(tmp_path / "b", ext="bmp", n=3, seed=1)
    for pa in a.rglob("*.bmp"):  # b's files get a's mtimes
        pb = b / pa.relative_to(a)
        os.utime(pb, ns=(pa.stat().st_atime_ns, pa.stat().st_mtime_ns))
    da, db = dataloaders(a, bs=4, device="cpu"), dataloaders(b, bs=4, device="cpu")
    for dls, root in ((da, a), (db, b)):
        expected = np.stack([load_image(p, 3).transpose(2, 0, 1) for p in dls.train_ds.items])
        assert np.array_equal(dls.train.images[dls.train.index].numpy(), expected), root
    changed = a / "train" / "a" / "0001.bmp"
    _same_size_new_pixels(changed, 255)
    d2 = dataloaders(a, bs=4, device="cpu")
    i = list(d2.train_ds.items).index(changed)
    assert int(d2.train.images[d2.train.index[i]].min()) == 255  # not the old pixels from the cache


def test_scan_cache_follows_content_and_a_vanishing_file_is_an_error_not_cached(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "d", ext="bmp", n=3)
    assert image_folder(root).n_bad == 0
    victim = root / "train" / "b" / "0002.bmp"
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)  # damaged in place: same size, same mtime
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        assert image_folder(root).n_bad == 1
    fresh = make_image_folder(tmp_path / "e", ext="bmp", n=3, seed=2)  # never scanned
    scans = set((data_mod.cache_dir() / "scans").glob("*.json"))
    open_ = Image.open

    def vanishing(fp, *a, **k):  # another program deletes a file while it is being scanned
        if str(fp).endswith("0001.bmp"):
            os.unlink(fp)
        return open_(fp, *a, **k)
    monkeypatch.setattr(data_mod.Image, "open", vanishing)
    with pytest.raises(CnnDepthError, match="vanished while it was being read") as e:
        image_folder(fresh)
    assert "\n" not in str(e.value)
    assert set((data_mod.cache_dir() / "scans").glob("*.json")) == scans  # nothing cached from that scan


def test_damaged_decoded_cache_is_detected_by_its_hash_and_rebuilt(image_folder_factory):
    root = image_folder_factory()
    dls = dataloaders(root, bs=4, device="cpu")
    src = dls.data_info.source
    path = decoded_path(decode_key(src.root, src.items, src.n_in, None))
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["sha256"] and meta["n"] == len(src.items)
    good = dls.train.images.clone()
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one pixel's bits rot; the shape is still right
    path.write_bytes(bytes(raw))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        again = dataloaders(root, bs=4, device="cpu")
    assert any("do not match the hash" in str(x.message) for x in w)
    assert torch.equal(again.train.images, good)  # decoded again, not trained on the damaged copy
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == meta["sha256"]


def test_mmap_shares_the_file_and_writes_stay_private(image_folder_factory):
    root = image_folder_factory()
    mapped = dataloaders(root, bs=4, device="cpu").train.images
    read = dataloaders(root, bs=4, device="cpu", mmap=False).train.images
    assert torch.equal(mapped, read)
    mapped[0] = 0  # copy-on-write: this process's page only
    assert torch.equal(dataloaders(root, bs=4, device="cpu").train.images, read)


def test_cache_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, image_folder_factory):
    root = image_folder_factory()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache should be")
    monkeypatch.setenv("CNN_DEPTH_CACHE", str(blocker))
    with pytest.raises(CnnDepthError, match="set CNN_DEPTH_CACHE to a writable folder") as e:
        dataloaders(root, bs=4, device="cpu")
    assert "\n" not in str(e.value)
