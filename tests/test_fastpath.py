"""The fast data path: same items, labels, split and batches as the stock pipeline; the decode cache;
device-side augmentation; fastai Learner integration."""
import os

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from cnn_depth import CnnDepthError, dataloaders, depth_learner, image_folder
from cnn_depth import fastpath
from cnn_depth.data import PIPELINES, _image_size, image_datablock, load_image
from cnn_depth.fastpath import TensorDL, decode_key, decoded_images, decoded_path, flip_pad_crop

matplotlib.use("Agg")

SAMPLE = dict(source="cifar10-sample", bs=32, max_per_class=20, device="cpu")


@pytest.fixture(scope="module")
def both():
    """The stock and the fast DataLoaders over the same 20-per-class subset of the embedded sample."""
    return dataloaders(pipeline="pil", **SAMPLE), dataloaders(pipeline="fast", **SAMPLE)


def epoch(dl):
    """Every batch of ``dl`` in order, concatenated: (inputs, targets)."""
    xs, ys = zip(*dl.new(shuffle=False, drop_last=False))
    return torch.cat(xs), torch.cat(ys)


def test_fast_is_the_default_and_records_its_pipeline(both, sample_dls):
    pil, fast = both
    assert (pil.data_info.pipeline, fast.data_info.pipeline, sample_dls.data_info.pipeline) == ("pil", "fast", "fast")
    assert isinstance(fast.train, TensorDL) and not isinstance(pil.train, TensorDL)


def test_same_items_split_vocab_and_stats(both):
    pil, fast = both
    assert list(fast.train_ds.items) == list(pil.train_ds.items)
    assert list(fast.valid_ds.items) == list(pil.valid_ds.items)
    assert list(fast.vocab) == list(pil.vocab) and fast.c == pil.c == 10
    fi, pi = fast.data_info, pil.data_info
    assert fi.stats == pi.stats and fi.n_in == pi.n_in and fi.img_size == pi.img_size
    assert fast.data_info.source.root == pil.data_info.source.root


@pytest.mark.parametrize("split", ["train", "valid"])
def test_fast_batches_equal_stock_batches(both, split):
    """Same normalised floats and the same targets, batch for batch, on the whole split."""
    (xp, yp), (xf, yf) = epoch(getattr(both[0], split)), epoch(getattr(both[1], split))
    assert type(xf).__name__ == "TensorImage" and type(yf).__name__ == "TensorCategory"
    assert xf.shape == xp.shape == (200, 3, 32, 32) and xf.dtype == torch.float32
    assert torch.equal(yf, yp)
    assert float((xf - xp).abs().max()) < 1e-6
    items = getattr(both[1], f"{split}_ds").items
    assert [both[1].vocab[int(y)] for y in yf] == [p.parent.name for p in items]
    dp, df = (getattr(d, split).decode((x[:8], y[:8])) for d, x, y in ((both[0], xp, yp), (both[1], xf, yf)))
    assert torch.equal(dp[0], df[0]) and df[0].dtype == torch.long  # decoded back to the same 0-255 pixels


def test_seeded_shuffles_match_the_stock_pipeline():
    """With one seed, both pipelines draw the same shuffled training batches (so seeded fits match)."""
    from fastai.torch_core import set_seed
    set_seed(3)
    pil = dataloaders(pipeline="pil", **SAMPLE)
    set_seed(3)
    fast = dataloaders(pipeline="fast", **SAMPLE)
    for (xp, yp), (xf, yf), _ in zip(pil.train, fast.train, range(2)):
        assert torch.equal(yp, yf) and float((xp - xf).abs().max()) < 1e-6
    assert not torch.equal(yf, epoch(fast.train)[1][32:64])  # really shuffled


@pytest.mark.parametrize("kind", ["rgb", "gray", "resized"])
def test_cached_tensor_equals_decoded_images_and_stock_batches(image_folder_factory, kind):
    """Cached tensors equal load_image exactly (one process and a process pool), for RGB, grayscale and
    resized images, and the fast batches equal the stock ones."""
    if kind == "gray":
        root = image_folder_factory(size=(28, 28), mode="L", n=5)
    else:
        root = image_folder_factory(size=(12, 10), n=5)
    if kind == "resized":  # mixed sizes: everything is squished to size=16
        extra = image_folder_factory("extra", size=(20, 14), n=2, seed=1)
        for p in extra.rglob("*.png"):
            p.rename(root / p.relative_to(extra).parent / f"big-{p.name}")
    folder = image_folder(root)
    size = _image_size(folder, 16 if kind == "resized" else None)
    items = image_datablock(folder, size).datasets(folder.root).items
    expected = np.stack([load_image(p, folder.n_in, size).transpose(2, 0, 1) for p in items])
    one = decoded_images(folder.root, items, folder.n_in, size, workers=1, rebuild=True)
    pool = decoded_images(folder.root, items, folder.n_in, size, workers=2, rebuild=True)
    assert one.dtype == torch.uint8 and np.array_equal(one.numpy(), expected)
    assert np.array_equal(pool.numpy(), expected)
    kw = dict(bs=4, size=16 if kind == "resized" else None, device="cpu")
    pil, fast = dataloaders(root, pipeline="pil", **kw), dataloaders(root, pipeline="fast", **kw)
    for split in ("train", "valid"):
        (xp, yp), (xf, yf) = epoch(getattr(pil, split)), epoch(getattr(fast, split))
        assert torch.equal(yp, yf) and float((xp - xf).abs().max()) < 1e-6


def test_warm_cache_is_loaded_not_decoded(image_folder_factory, monkeypatch):
    root = image_folder_factory()
    folder = image_folder(root)
    first = decoded_images(folder.root, folder.items, folder.n_in, None)
    key = decode_key(folder.root, folder.items, folder.n_in, None)
    assert decoded_path(key).exists() and decoded_path(key).with_suffix(".json").exists()
    assert not list(decoded_path(key).parent.glob(".*.tmp"))  # written aside, then renamed

    def no_decoding(*a, **k):
        raise AssertionError("decoded again although the cache is warm")
    monkeypatch.setattr(fastpath, "_decode_all", no_decoding)
    assert torch.equal(decoded_images(folder.root, folder.items, folder.n_in, None), first)
    dataloaders(root, bs=4, device="cpu")  # the DataLoaders read the same cache


def test_changed_file_invalidates_the_cache(image_folder_factory):
    root = image_folder_factory()
    dls = dataloaders(root, bs=4, device="cpu")
    folder = dls.data_info.source
    key = decode_key(folder.root, folder.items, folder.n_in, None)
    changed = root / "train" / "b" / "0002.png"
    idx = list(dls.train_ds.items).index(changed)
    before = dls.train.images[dls.train.index[idx]].clone()

    Image.fromarray(np.full((12, 12, 3), 7, np.uint8)).save(changed)  # new content ...
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # ... and a surely different mtime
    key2 = decode_key(folder.root, folder.items, folder.n_in, None)
    assert key2 != key
    dls2 = dataloaders(root, bs=4, device="cpu")
    after = dls2.train.images[dls2.train.index[idx]]
    assert not torch.equal(before, after)
    assert torch.equal(after, torch.from_numpy(load_image(changed, 3).transpose(2, 0, 1).copy()))

    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))  # touched only: a new key too
    assert decode_key(folder.root, folder.items, folder.n_in, None) not in (key, key2)


def test_flip_pad_crop_is_a_flipped_shifted_crop():
    """Every output is one of the (2·pad+1)² crops of the zero-padded image, flipped or not; shapes kept."""
    torch.manual_seed(0)
    x = torch.randint(1, 256, (16, 3, 8, 6), dtype=torch.uint8)
    out = flip_pad_crop(x, pad=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    seen_flip = seen_shift = False
    for i in range(len(x)):
        found = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                 if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, dy:dy + 8, dx:dx + 6]))]
        assert found, i
        seen_flip |= any(f for *_, f in found) and not any(not f for *_, f in found)
        seen_shift |= (2, 2) not in [(dy, dx) for dy, dx, _ in found]
    assert seen_flip and seen_shift
    assert torch.equal(flip_pad_crop(x, pad=0, flip=False), x)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_augment_changes_training_batches_only(pipeline):
    plain = dataloaders(pipeline=pipeline, **SAMPLE)
    aug = dataloaders(pipeline=pipeline, augment=True, **SAMPLE)
    assert aug.data_info.augment and not plain.data_info.augment
    (xa, ya), (xp, yp) = epoch(aug.train), epoch(plain.train)
    assert xa.shape == xp.shape and torch.equal(ya, yp)
    assert (xa != xp).float().mean() > 0.5  # most pixels move
    (va, vya), (vp, vyp) = epoch(aug.valid), epoch(plain.valid)
    assert torch.equal(va, vp) and torch.equal(vya, vyp)


@pytest.mark.slow
def test_learner_fit_validate_lr_find_show_and_predict(sample_dls, tmp_path):
    dls = sample_dls
    learn = depth_learner(dls, 3)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 3e-3)
        loss, acc = learn.validate()
        assert np.isfinite(loss) and 0 <= acc <= 1
        suggestion = learn.lr_find(num_it=5, show_plot=False)
        assert suggestion.valley > 0
        label, idx, probs = learn.predict(dls.valid_ds.items[0])
        assert label in dls.vocab and probs.shape == (10,)
        test = dls.test_dl(dls.valid_ds.items[:7])  # another dataset: the per-item fallback
        assert test.images is None and test.one_batch()[0].shape == (7, 3, 32, 32)
        assert torch.allclose(test.one_batch()[0], epoch(dls.valid)[0][:7], atol=1e-6)
    dls.show_batch(max_n=4)
    learn.show_results(max_n=4)
    x, y, samples = dls.valid.show_batch(max_n=2, show=False)
    assert samples[0][1] == dls.valid_ds.items[0].parent.name  # decoded to the class name
    img = samples[0][0]
    assert img.min() >= 0 and img.max() <= 255 and img.max() > 1  # denormalised back to pixels
    learn.export(tmp_path / "learn.pkl")
    assert (tmp_path / "learn.pkl").stat().st_size < 2e6  # the decoded images are not pickled


def test_unknown_pipeline_is_one_line_listing_choices():
    with pytest.raises(CnnDepthError, match=r"unknown pipeline 'tf'; choose one of: fast, pil") as e:
        dataloaders(pipeline="tf", **SAMPLE)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches():
    cpu, gpu = dataloaders(**SAMPLE), dataloaders(**{**SAMPLE, "device": "cuda"})
    assert gpu.train.images.is_cuda
    xg, yg = epoch(gpu.valid)
    assert xg.is_cuda and torch.allclose(xg.cpu(), epoch(cpu.valid)[0], atol=1e-6)
    assert epoch(gpu.train)[0].is_cuda and gpu.train.new(shuffle=True).one_batch()[0].is_cuda


# ---------------------------------------------------------------------------------------------------------
# What a fastai user does with ImageDataLoaders gives the stock pipeline's result on the fast one, or one line


@pytest.mark.parametrize("how", ["add_tfms", "batch_tfms"])
def test_fastai_batch_augmentations_match_the_stock_pipeline_batch_for_batch(how):
    """``dls.add_tfms(aug_transforms(), 'after_batch')`` or ``batch_tfms=aug_transforms()``: the augmentations
    run between the float conversion (10) and the normalisation (99) in both pipelines, so under one seed
    the fast pipeline's training batches equal the stock ones exactly, normalised."""
    from fastai.torch_core import set_seed
    from fastai.vision.augment import aug_transforms
    got = {}
    for pipeline in PIPELINES:
        set_seed(5)
        if how == "add_tfms":
            dls = dataloaders(pipeline=pipeline, **SAMPLE)
            dls.add_tfms(aug_transforms(), "after_batch")
        else:
            dls = dataloaders(pipeline=pipeline, batch_tfms=aug_transforms(), **SAMPLE)
        orders = [t.order for t in dls.train.after_batch.fs]
        assert orders == sorted(orders) and orders[0] == 10 and orders[-1] == 99 and len(orders) > 2
        set_seed(7)
        got[pipeline] = [b for b, _ in zip(dls.train, range(3))]
        if pipeline == "fast":
            plain = next(iter(dls.train.new(shuffle=False)))[0]
    for (xp, yp), (xf, yf) in zip(got["pil"], got["fast"]):
        assert torch.equal(yp, yf) and float((xp - xf).abs().max()) < 1e-5
        assert abs(float(xf.mean())) < 0.3 and 0.7 < float(xf.std()) < 1.3  # still normalised
    assert not torch.equal(got["fast"][0][0], plain)  # really augmented


def test_show_batch_unique_returns_one_item_augmented():
    """fastai's ``show_batch(unique=True)`` feeds an endless stream of index 0; it returns one batch."""
    from fastai.vision.augment import aug_transforms
    dls = dataloaders(batch_tfms=aug_transforms(), **SAMPLE)
    x, y, samples = dls.train.show_batch(unique=True, show=False, max_n=4)
    assert len({int(t) for t in y}) == 1 and len(x) == SAMPLE["bs"]  # one image, bs times ...
    assert not torch.equal(x[0], x[1])  # ... augmented differently


@pytest.mark.parametrize("kw,message", [
    (dict(foo=1), "unknown keyword 'foo'; besides its own arguments it takes fastai's loader options: .*val_bs"),
    (dict(after_batch=[]), "pass your transforms as batch_tfms="),
    (dict(item_tfms="RandomResizedCrop"), r"item transform RandomResizedCrop cannot run on the fast pipeline.*pipeline='pil'"),
    (dict(item_tfms="Resize"), r"item transform Resize\(method='crop'\) cannot run on the fast pipeline"),
    (dict(batch_tfms="Normalize"), "leave Normalize out of batch_tfms"),
    (dict(size=10, item_tfms="Resize squish 8"), r"size=10 and item_tfms \(which resize to 8×8\) disagree"),
])
def test_loader_options_fastai_takes_or_one_line(kw, message):
    from fastai.vision.augment import Normalize, RandomResizedCrop, Resize
    made = {"RandomResizedCrop": RandomResizedCrop(16), "Resize": Resize(16), "Normalize": Normalize(),
            "Resize squish 8": Resize(8, method="squish")}
    kw = {k: made.get(v, v) if isinstance(v, str) else v for k, v in kw.items()}
    with pytest.raises(CnnDepthError, match=message) as e:
        dataloaders(**SAMPLE, **kw)
    assert "\n" not in str(e.value)


def test_item_tfms_apply_as_in_fastai():
    """A squish Resize in item_tfms is the fast pipeline's decode size (same batches as size=); the pil
    pipeline applies any item transform, and one that sets a size replaces the automatic resize."""
    from fastai.vision.augment import RandomResizedCrop, Resize
    by_tfm = dataloaders(item_tfms=Resize(16, method="squish"), **SAMPLE)
    by_size = dataloaders(size=16, **SAMPLE)
    assert torch.equal(epoch(by_tfm.valid)[0], epoch(by_size.valid)[0]) and by_tfm.data_info.img_size == (16, 16)
    pil = dataloaders(pipeline="pil", item_tfms=RandomResizedCrop((12, 20)), **SAMPLE)
    assert pil.one_batch()[0].shape[-2:] == (12, 20) and pil.data_info.img_size == (12, 20)
    assert any(isinstance(t, RandomResizedCrop) for t in pil.train.after_item.fs)
    assert not any(isinstance(t, Resize) for t in pil.train.after_item.fs)
    ok = dataloaders(val_bs=7, shuffle=False, **SAMPLE)  # fastai's own options still pass through
    assert ok.valid.bs == 7 and not ok.train.shuffle
