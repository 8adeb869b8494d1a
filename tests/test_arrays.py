"""Array folders (cnn_depth.arrays): layout, dims, the checks of bad input, normalisation, augmentation, and
what a fastai user does with the DataLoaders and a Learner (batches, predict, test_dl, get_preds, tta,
show_batch, pickling, export/load_learner in a fresh process), each checked against fastai's own per-item
pipeline over the same items."""
import json
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from fastai.data.core import Datasets
from fastai.data.transforms import Categorize, parent_label
from fastai.learner import Learner, load_learner
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import set_seed
from fastcore.foundation import first
from typer.testing import CliRunner

from cnn_depth import dataloaders, depth_learner
from cnn_depth.arrays import (ClassSplitter, LoadArray, NormalizeArray, TensorSeries, TensorVolume,
                              flip3d, load_array, read_array, shift_crop, valid_arrays)
from cnn_depth.errors import CnnDepthError

ATOL = 1e-5


def series(k: int, i: int, length: int = 40, channels: int = 0, rng=None) -> np.ndarray:
    """A noisy sine of class-dependent frequency: (length,) or (channels, length)."""
    rng = rng or np.random.default_rng(100 * k + i)
    t = np.linspace(0, 2 * np.pi, length)
    one = np.sin((k + 1) * t + rng.uniform(0, 1)) + rng.normal(0, 0.2, length)
    return (np.stack([one * (c + 1) for c in range(channels)]) if channels else one).astype(np.float32)


def write(root, make=series, splits=("train", "valid"), classes=("a", "b"), n=5, ext="npy"):
    """``n`` samples per class and split, ``make(k, i)`` for class k; returns root."""
    for split in splits:
        for k, c in enumerate(classes):
            d = root / split / c if split else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = make(k, i + (1000 if split == "valid" else 0))
                if ext == "npz":
                    np.savez(d / f"{i:03d}.npz", a)
                else:
                    np.save(d / f"{i:03d}.npy", a)
    return root


@pytest.fixture
def folder(tmp_path):
    return write(tmp_path / "data")


# ---------------------------------------------------------------------------------------------------------
# Layout and dims


def test_split_folders_give_items_vocab_counts_and_a_series_spec(folder):
    dls = dataloaders(folder, bs=4, device="cpu")
    info = dls.data_info
    assert (info.ndim, info.kind, info.n_in, info.img_size, info.input_shape) == (1, "series", 1, (40,), (1, 40))
    assert dls.vocab == ["a", "b"] and dls.c == 2
    assert info.source.counts == {"train": 10, "valid": 10} and len(dls.train_ds) == 10 and len(dls.valid_ds) == 10
    assert all(p.parent.parent.name == "valid" for p in dls.valid_ds.items)
    xb, yb = dls.one_batch()
    assert type(xb) is TensorSeries and xb.shape == (4, 1, 40) and xb.dtype == torch.float32


@pytest.mark.parametrize("shape,dims,n_in,size,kind", [
    ((40,), 1, 1, (40,), "series"), ((3, 40), 1, 3, (40,), "series"),
    ((6, 7, 8), 3, 1, (6, 7, 8), "volume"), ((2, 6, 7, 8), 3, 2, (6, 7, 8), "volume"),
])
def test_dims_are_inferred_from_the_files(tmp_path, shape, dims, n_in, size, kind):
    rng = np.random.default_rng(0)
    root = write(tmp_path / "d", make=lambda k, i: (rng.normal(size=shape) + k).astype(np.float32))
    info = dataloaders(root, bs=4, device="cpu").data_info
    assert (info.ndim, info.n_in, info.img_size, info.kind) == (dims, n_in, size, kind)


def test_dims_can_be_forced_and_a_wrong_force_is_one_line(tmp_path):
    rng = np.random.default_rng(0)
    root = write(tmp_path / "d", make=lambda k, i: (rng.normal(size=(8, 9)) + k).astype(np.float32))
    assert dataloaders(root, bs=4, device="cpu").data_info.input_shape == (8, 9)  # a series of 8 channels
    dls = dataloaders(root, bs=4, device="cpu", dims=2)  # an 8×9 image
    assert (dls.data_info.ndim, dls.data_info.input_shape, dls.data_info.kind) == (2, (1, 8, 9), "image")
    assert dls.one_batch()[0].shape == (4, 1, 8, 9)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dls.show_batch(max_n=3)
    assert sum(bool(ax.images) for ax in plt.gcf().axes) == 3
    plt.close("all")
    aug = dataloaders(root, bs=4, device="cpu", dims=2, augment=True)  # the images' flip and pad-4 crop
    torch.manual_seed(0)
    xa, xb = first(dls.train.new(shuffle=False))[0], first(aug.train.new(shuffle=False))[0]
    assert xa.shape == xb.shape and not torch.equal(xa, xb)
    with pytest.raises(CnnDepthError, match=r"is a 2-dim array \(8, 9\), not a volume.*\(D, H, W\)"):
        dataloaders(root, bs=4, device="cpu", dims=3)
    with pytest.raises(CnnDepthError, match="dims must be 1"):
        dataloaders(root, dims=4)


def test_one_folder_of_classes_is_split_per_class_by_seed(tmp_path):
    root = write(tmp_path / "d", splits=("",), classes=("a", "b", "c"), n=10)
    dls = dataloaders(root, bs=4, device="cpu")
    src = dls.data_info.source
    valid = [p for p in dls.valid_ds.items]
    assert len(valid) == 6 and {p.parent.name for p in valid} == {"a", "b", "c"}  # 20 % of each class
    assert (src.train_name, src.valid_name, src.valid_pct, src.seed) == ("train", "valid", 0.2, 0)
    again = dataloaders(root, bs=4, device="cpu")
    assert list(again.valid_ds.items) == valid  # the same seed, the same split
    other = dataloaders(root, bs=4, device="cpu", seed=1)
    assert list(other.valid_ds.items) != valid and len(other.valid_ds) == 6
    assert len(dataloaders(root, bs=4, device="cpu", valid_pct=0.5).valid_ds) == 15
    for bad in (0, 1, 1.5, "x"):
        with pytest.raises(CnnDepthError, match="valid_pct must be a fraction"):
            dataloaders(root, valid_pct=bad)


def test_class_splitter_keeps_singletons_in_training():
    items = [f"/r/a/{i}.npy" for i in range(4)] + ["/r/b/0.npy"]
    train, valid = ClassSplitter(0.5, 0)(items)
    assert 4 in train and len(valid) == 2 and sorted(train + valid) == list(range(5))


def test_max_per_class_keeps_the_first_files_by_name(folder):
    dls = dataloaders(folder, bs=2, max_per_class=2, device="cpu")
    assert [p.name for p in dls.train_ds.items] == ["000.npy", "001.npy"] * 2


def test_npz_samples_read_as_npy(tmp_path):
    a = dataloaders(write(tmp_path / "npy"), bs=4, device="cpu")
    b = dataloaders(write(tmp_path / "npz", ext="npz"), bs=4, device="cpu")
    assert torch.equal(first(a.valid.new(shuffle=False))[0], first(b.valid.new(shuffle=False))[0])
    np.savez(tmp_path / "named.npz", x=np.arange(5.0), meta=np.array([1]))
    assert read_array(tmp_path / "named.npz").tolist() == [0, 1, 2, 3, 4]


def test_an_archive_of_an_array_folder(tmp_path, folder):
    with tarfile.open(tmp_path / "arrays.tgz", "w:gz") as tar:
        tar.add(folder, arcname="arrays")
    a, b = dataloaders(folder, bs=4, device="cpu"), dataloaders(tmp_path / "arrays.tgz", bs=4, device="cpu")
    assert torch.equal(first(a.valid.new(shuffle=False))[0], first(b.valid.new(shuffle=False))[0])


def test_image_options_with_arrays_and_array_options_with_images_are_one_line(folder, image_folder_factory):
    for kw, match in [(dict(size=8), "size= is for images"), (dict(pipeline="pil"), "pipeline= is for images")]:
        with pytest.raises(CnnDepthError, match=match):
            dataloaders(folder, **kw)
    images = image_folder_factory("images")
    for kw, match in [(dict(dims=1), "dims=1 is for arrays"), (dict(pad=True), "pad= is for series"),
                      (dict(fill=0), "fill= is for series")]:
        with pytest.raises(CnnDepthError, match=match):
            dataloaders(images, **kw)


def test_load_array_is_float32_channels_first(folder):
    path = folder / "train" / "a" / "000.npy"
    a = load_array(path)
    assert a.dtype == np.float32 and a.shape == (1, 40) and np.array_equal(a[0], np.load(path))


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the fix


def _bad(tmp_path, name: str, value, how="npy"):
    """A good folder with one bad sample ``train/b/<name>`` written ``how``."""
    root = write(tmp_path / "d")
    path = root / "train" / "b" / name
    if how == "npy":
        np.save(path, value, allow_pickle=True)
    elif how == "pickle":
        path.write_bytes(pickle.dumps(value))
    else:
        path.write_bytes(value)
    return root, path


BAD = [
    ("ragged.npy", series(0, 0, length=30), "npy", r"ragged\.npy has 30 time steps, .* has 40: the series differ in "
                                                  r"length; pad them .*pad=True"),
    ("nan.npy", np.where(np.arange(40) == 7, np.nan, 1.0), "npy", r"nan\.npy has 1 missing values \(NaN; the first at "
                                                                    r"index \(0, 7\)\); replace them .*fill="),
    ("inf.npy", np.where(np.arange(40) == 3, np.inf, 1.0), "npy", r"inf\.npy has infinite values"),
    ("channels.npy", np.zeros((2, 40)), "npy", r"channels\.npy has 2 channel\(s\) \(2, 40\), .* has 1"),
    ("pickle.npy", {"a": 1}, "pickle", r"pickle\.npy is a pickle, which is not loaded .*np\.save"),
    ("object.npy", np.array([1, "x", None], dtype=object), "npy", r"object\.npy holds an object array, which is not "
                                                                   r"loaded"),
    ("text.npy", b"1,2,3\n", "bytes", r"text\.npy is not a NumPy \.npy file"),
    ("truncated.npy", None, "truncated", r"truncated\.npy .*truncated or damaged"),
    ("strings.npy", np.array(["a", "b"]), "npy", r"strings\.npy holds <U1 values, not real numbers"),
    ("complex.npy", np.ones(40, dtype=complex), "npy", r"complex\.npy holds complex numbers"),
    ("five.npy", np.zeros((1, 1, 1, 1, 2)), "npy", r"five\.npy is a 5-dim array"),
    ("empty.npy", np.zeros((1, 0)), "npy", r"empty\.npy is empty"),
]


@pytest.mark.parametrize("name,value,how,match", BAD, ids=[b[0] for b in BAD])
def test_bad_samples_are_one_line_naming_the_file(tmp_path, name, value, how, match):
    if how == "truncated":
        root, path = _bad(tmp_path, name, b"")
        full = tmp_path / "full.npy"
        np.save(full, np.zeros(400))
        path.write_bytes(full.read_bytes()[:200])
    else:
        root, path = _bad(tmp_path, name, value, how)
    with pytest.raises(CnnDepthError, match=match) as e:
        dataloaders(root, device="cpu")
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_pad_pads_series_with_zeros_at_the_end_to_the_longest(tmp_path):
    root, path = _bad(tmp_path, "long.npy", series(1, 0, length=50))
    dls = dataloaders(root, bs=4, device="cpu", pad=True)
    src = dls.data_info.source
    assert dls.data_info.img_size == (50,) and src.spec.pad
    x = torch.stack([dls.train_ds[i][0] for i in range(len(dls.train_ds))])  # the per-item path
    short = [i for i, p in enumerate(dls.train_ds.items) if p.name != "long.npy"]
    assert (x[short, :, 40:] == 0).all() and x.shape == (11, 1, 50)
    assert np.array_equal(x[short[0], 0, :40].numpy(), np.load(dls.train_ds.items[short[0]]))


def test_fill_replaces_missing_values(tmp_path):
    root, path = _bad(tmp_path, "nan.npy", np.where(np.arange(40) == 7, np.nan, 1.0))
    dls = dataloaders(root, bs=4, device="cpu", fill=-2.5)
    i = [p.name for p in dls.train_ds.items].index("nan.npy")
    x = dls.train_ds[i][0]
    assert x[0, 7] == -2.5 and (x[0, :7] == 1).all()
    with pytest.raises(CnnDepthError, match="fill must be a finite number"):
        dataloaders(root, fill=float("nan"))


def test_mixed_volume_shapes_in_a_class_folder(tmp_path):
    root = write(tmp_path / "d", make=lambda k, i: np.zeros((4, 4, 4), dtype=np.float32) + k)
    np.save(root / "valid" / "a" / "odd.npy", np.zeros((4, 5, 4)))
    with pytest.raises(CnnDepthError, match=r"odd\.npy has shape \(4, 5, 4\), .* has \(4, 4, 4\): samples need one "
                                            r"shape; resample"):
        dataloaders(root)


def test_folder_problems(tmp_path):
    root = write(tmp_path / "d")
    (root / "train" / "empty").mkdir()
    with pytest.raises(CnnDepthError, match=r"class folder .*empty has no \.npy or \.npz files"):
        dataloaders(root)
    one = write(tmp_path / "one", classes=("a",))
    with pytest.raises(CnnDepthError, match="only one class"):
        dataloaders(one)
    extra = write(tmp_path / "extra")
    write(extra, splits=("valid",), classes=("z",), n=2)
    with pytest.raises(CnnDepthError, match=r"classes \['z'\] are in valid/ but not in train/"):
        dataloaders(extra)
    wide = write(tmp_path / "wide", make=lambda k, i: np.zeros((50, 6), dtype=np.float32) + k)
    with pytest.warns(UserWarning, match=r"read as 50 channels of 6 time steps .*transposed"):
        dataloaders(wide, device="cpu")


# ---------------------------------------------------------------------------------------------------------
# Normalisation and augmentation


def test_stats_are_the_training_splits_per_channel(tmp_path):
    root = write(tmp_path / "d", make=lambda k, i: series(k, i, channels=3))
    dls = dataloaders(root, bs=10, device="cpu")
    x = np.stack([np.load(p) for p in dls.train_ds.items]).astype(np.float64)
    mean, std = dls.data_info.stats
    assert np.allclose(mean, x.mean(axis=(0, 2))) and np.allclose(std, x.std(axis=(0, 2)))
    xb = first(dls.train.new(shuffle=False))[0]
    assert torch.allclose(xb.mean((0, 2)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(xb.std((0, 2), unbiased=False), torch.ones(3), atol=1e-4)


def test_shift_crop_shifts_each_series_with_zeros_shifted_in():
    torch.manual_seed(0)
    x = torch.arange(1, 11, dtype=torch.float32).repeat(64, 2, 1)  # (64, 2, 10), values 1..10
    y = shift_crop(x, 3)
    shifts = set()
    for row, out in zip(x, y):
        s = next(s for s in range(-3, 4) if torch.equal(out, _shifted(row, s)))
        shifts.add(s)
    assert shifts == set(range(-3, 4))  # every shift in -3..3 drawn


def _shifted(row, s):
    out = torch.zeros_like(row)
    if s >= 0:
        out[:, s:] = row[:, :row.shape[1] - s]
    else:
        out[:, :s] = row[:, -s:]
    return out


def test_flip3d_gives_one_of_the_eight_flips_per_volume():
    torch.manual_seed(0)
    x = torch.randn(32, 1, 3, 4, 5)
    y = flip3d(x)
    seen = set()
    for a, b in zip(x, y):
        flips = [f for f in _flips() if torch.equal(a.flip(f) if f else a, b)]
        assert len(flips) == 1
        seen.add(flips[0])
    assert len(seen) == 8


def _flips():
    return [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]


def test_augment_changes_training_batches_only(tmp_path):
    series_root = write(tmp_path / "s", n=8)
    volumes = write(tmp_path / "v", make=lambda k, i: np.random.default_rng(i).normal(size=(4, 5, 6)).astype("f4"), n=8)
    for root in (series_root, volumes):
        plain, aug = (dataloaders(root, bs=16, device="cpu", augment=a) for a in (False, True))
        torch.manual_seed(0)
        xa, xb = first(plain.train.new(shuffle=False))[0], first(aug.train.new(shuffle=False))[0]
        assert xa.shape == xb.shape and not torch.equal(xa, xb)
        assert torch.equal(first(plain.valid)[0], first(aug.valid)[0])


# ---------------------------------------------------------------------------------------------------------
# fastai fidelity: our fast batches against fastai's own per-item pipeline over the same Datasets


KINDS = {
    "series": dict(make=lambda k, i: series(k, i, channels=2), dims=1),
    "volume": dict(make=lambda k, i: (np.random.default_rng(i).normal(size=(5, 6, 7)) + 0.5 * k).astype("f4"), dims=3),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(ours, stock) Learners per kind, sharing one trained model; stock: the same Datasets through fastai's
    TfmdDL, one item at a time."""
    made = {}

    def get(kind):
        if kind not in made:
            root = write(tmp_path_factory.mktemp(kind), make=KINDS[kind]["make"], classes=("a", "b", "c"), n=6)
            dls = dataloaders(root, bs=8, device="cpu")
            set_seed(0, reproducible=True)
            learn = depth_learner(dls, depth=2, arch="bn", threads=1)
            with learn.no_bar(), learn.no_logging():
                learn.fit_one_cycle(2, 1e-2)
            src = dls.data_info.source
            stock_dsets = Datasets(src.items, tfms=[[LoadArray(src.spec)], [parent_label, Categorize()]],
                                   splits=[list(s) for s in src.splits])
            stock_dls = stock_dsets.dataloaders(bs=8, device="cpu", after_batch=[NormalizeArray(*dls.data_info.stats)])
            stock = Learner(stock_dls, learn.model, loss_func=CrossEntropyLossFlat())
            made[kind] = learn, stock
        return made[kind]
    return get


kinds = pytest.mark.parametrize("kind", list(KINDS))


def _predict(learn, x):
    with learn.no_bar():
        label, idx, probs = learn.predict(x)
    return label, int(idx), probs


@kinds
def test_batches_equal_the_stock_per_item_pipeline(pair, kind):
    learn, stock = pair(kind)
    for ours, theirs in zip(learn.dls.loaders, stock.dls.loaders):
        xa, ya = first(ours.new(shuffle=False))
        xb, yb = first(theirs.new(shuffle=False))
        assert type(xa) is type(xb) and torch.allclose(xa, xb, atol=ATOL) and torch.equal(ya, yb)
    assert learn.dls.vocab == stock.dls.vocab


@kinds
def test_predict_on_a_path_a_str_an_array_and_a_tensor(pair, kind):
    learn, stock = pair(kind)
    path = learn.dls.valid_ds.items[4]
    label, idx, probs = _predict(learn, path)
    assert label == learn.dls.vocab[idx] and probs.shape == (3,)
    assert torch.allclose(probs, _predict(stock, path)[2], atol=ATOL)
    raw = np.load(path)
    for x in (str(path), raw, raw[None] if raw.ndim == KINDS[kind]["dims"] else raw, torch.from_numpy(raw)):
        assert torch.allclose(_predict(learn, x)[2], probs, atol=ATOL)


def test_predict_refuses_an_array_of_another_shape_in_one_line(pair):
    learn, _ = pair("series")
    with pytest.raises(CnnDepthError, match=r"the array given has 1 channel\(s\) \(1, 40\), the data 2: give "
                                            r"\(2, 40\), channels first"):
        _predict(learn, np.zeros(40, dtype=np.float32))
    with pytest.raises(CnnDepthError, match=r"the array given has 30 time steps, the data's series 40; pad them"):
        _predict(learn, np.zeros((2, 30), dtype=np.float32))


@kinds
def test_test_dl_get_preds_and_tta_match_stock(pair, kind):
    learn, stock = pair(kind)
    items = learn.dls.valid_ds.items[:5]
    dl, s_dl = learn.dls.test_dl(items), stock.dls.test_dl(items)
    assert torch.allclose(first(dl)[0], first(s_dl)[0], atol=ATOL)
    with learn.no_bar(), stock.no_bar():
        assert torch.allclose(learn.get_preds(dl=dl)[0], stock.get_preds(dl=s_dl)[0], atol=ATOL)
        preds, targs = learn.get_preds()
        s_preds, s_targs = stock.get_preds()
        assert torch.equal(targs, s_targs) and torch.allclose(preds, s_preds, atol=ATOL)
        tta, _ = learn.tta(n=2)  # no augmentation: the mean of the passes is the plain prediction
        assert torch.allclose(tta, preds, atol=1e-4)


@kinds
def test_show_batch_and_show_results_draw_each_sample_with_its_label(pair, kind):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learn, _ = pair(kind)
    learn.dls.show_batch(max_n=4)
    axes = [ax for ax in plt.gcf().axes if ax.get_title()]
    assert len(axes) == 4 and {ax.get_title() for ax in axes} <= {"a", "b", "c"}
    assert all(ax.lines if kind == "series" else ax.images for ax in axes)
    if kind == "series":
        assert len(axes[0].lines) == 2  # one line per channel
    plt.close("all")
    with learn.no_bar():
        learn.show_results(max_n=4)
    titles = [ax.get_title() for ax in plt.gcf().axes if ax.get_title()]
    assert len(titles) == 4 and all(t.count("/") == 1 for t in titles)  # target/prediction
    plt.close("all")


@kinds
def test_pickling_dls_and_learner_round_trips(pair, kind):
    learn, _ = pair(kind)
    path = learn.dls.valid_ds.items[0]
    dls2 = pickle.loads(pickle.dumps(learn.dls))
    for a, b in zip(learn.dls.loaders, dls2.loaders):
        assert torch.equal(first(a.new(shuffle=False))[0], first(b.new(shuffle=False))[0])
    assert dls2.data_info.input_shape == learn.dls.data_info.input_shape
    learn2 = pickle.loads(pickle.dumps(learn))
    assert torch.allclose(_predict(learn2, path)[2], _predict(learn, path)[2], atol=ATOL)


EXPORTED = """
import json, sys
import numpy as np
from fastai.learner import load_learner
learn = load_learner(sys.argv[1])
with learn.no_bar():
    out = {"path": learn.predict(sys.argv[2])[2].tolist(), "array": learn.predict(np.load(sys.argv[2]))[2].tolist()}
print(json.dumps(dict(out, vocab=list(learn.dls.vocab), label=learn.predict(sys.argv[2])[0])))
"""


@pytest.mark.slow
@kinds
def test_export_then_load_learner_in_a_fresh_process_predicts_the_same(pair, kind, tmp_path):
    learn, _ = pair(kind)
    path = str(learn.dls.valid_ds.items[3])
    label, _, expected = _predict(learn, path)
    learn.export(tmp_path / "export.pkl")
    assert (tmp_path / "export.pkl").stat().st_size < 2e6  # no samples inside
    proc = subprocess.run([sys.executable, "-c", EXPORTED, str(tmp_path / "export.pkl"), path],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["vocab"] == list(learn.dls.vocab) and got["label"] == label
    for form in ("path", "array"):
        assert torch.allclose(torch.tensor(got[form]), expected, atol=ATOL), form
    loaded = load_learner(tmp_path / "export.pkl")
    assert torch.allclose(_predict(loaded, path)[2], expected, atol=ATOL)


def test_the_learner_trains_on_volumes_and_a_2d_preset_is_refused(pair):
    learn, _ = pair("volume")
    assert learn.model.config["ndim"] == 3 and type(first(learn.dls.train)[0]) is TensorVolume
    with learn.no_bar():
        assert learn.validate()[1] > 0.5  # 3 classes shifted by 0.5 each: chance is 1/3
    with pytest.raises(CnnDepthError, match="simplecnn takes 2D"):
        depth_learner(learn.dls, arch="simplecnn")


def test_valid_arrays_rebuilds_the_validation_samples_of_a_source(tmp_path):
    root = write(tmp_path / "d", splits=("",), classes=("a", "b"), n=6)
    dls = dataloaders(root, bs=4, device="cpu", seed=3)
    src = dls.data_info.source
    record = dict(name=str(root), root=str(root), max_per_class=None, train_name=src.train_name,
                  valid_name=src.valid_name, seed=3)
    got = valid_arrays(record)
    assert [c for _, c in got] == [p.parent.name for p in dls.valid_ds.items]
    for (a, _), p in zip(got, dls.valid_ds.items):
        assert np.array_equal(a, load_array(p))


def test_the_datasets_command_lists_kinds_shapes_and_sizes():
    from cnn_depth.cli import app

    r = CliRunner().invoke(app, ["datasets"])
    assert r.exit_code == 0, r.output
    lines = {line.split()[0]: line.split() for line in r.output.splitlines() if line.strip()}
    assert lines["GunPoint"][1:5] == ["series", "1×150", "50/150", "2"]
    assert lines["BasicMotions"][1:5] == ["series", "6×100", "40/40", "4"]
    assert lines["shapes3d"][1:5] == ["volume", "1×16×16×16", "192/192", "3"]
    assert lines["cifar10"][1:5] == ["image", "3×32×32", "50,000/10,000", "10"]
