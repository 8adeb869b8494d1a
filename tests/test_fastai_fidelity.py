"""fastai fidelity: what a fastai user does with stock DataLoaders and a Learner works the same on ours.

Every test runs on both pipelines (``fast``, ``pil``) and on an RGB and a grayscale folder (real CIFAR-10
images from the embedded sample, and the same images in grayscale), and compares with the stock reference:
fastai's ``ImageDataLoaders.from_folder`` over the same folder, normalised with the same statistics, and a
fastai ``Learner`` around the very same model object. So wherever fastai is deterministic the two must agree
to float precision: predictions on every input type fastai's ``PILImage.create`` takes, ``test_dl``,
``get_preds``, ``tta``, ``ClassificationInterpretation``; pickling and ``export``/``load_learner`` (in a
fresh process) must give back the same batches and probabilities.
"""
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastai.data.transforms import Normalize
from fastai.interpret import ClassificationInterpretation
from fastai.learner import Learner, load_learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from fastai.vision.all import ImageDataLoaders, PILImage, PILImageBW, vision_learner
from fastai.vision.models import resnet18
from fastcore.foundation import first
from PIL import Image

from cnn_depth import dataloaders, depth_learner
from cnn_depth.data import image_folder

PIPELINES = ["fast", "pil"]
KINDS = ["rgb", "gray"]
N_PER_CLASS = 6  # images per class and split: 3 classes -> 18 train, 18 valid
CLASSES = ("airplane", "cat", "ship")
INPUTS = ["Path", "str", "bytes", "ndarray", "Tensor", "PIL.Image", "PILImage"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two folders of the same real CIFAR-10 images: as they are (RGB) and converted to grayscale."""
    sample = image_folder("cifar10-sample").root
    out = {}
    for kind in KINDS:
        root = tmp_path_factory.mktemp(kind)
        for split_from, split_to in (("train", "train"), ("test", "valid")):
            for c in CLASSES:
                d = root / split_to / c
                d.mkdir(parents=True)
                for f in sorted((sample / split_from / c).iterdir())[:N_PER_CLASS]:
                    im = Image.open(f)
                    (im.convert("L") if kind == "gray" else im).save(d / f"{f.stem}.png")
        out[kind] = root
    return out


@pytest.fixture(scope="module")
def pair(folders):
    """(ours, stock) Learners per (pipeline, kind), sharing one trained model."""
    made = {}

    def get(pipeline, kind):
        if (pipeline, kind) not in made:
            dls = dataloaders(folders[kind], bs=8, pipeline=pipeline, device="cpu")
            set_seed(0, reproducible=True)
            learn = depth_learner(dls, depth=2, arch="bn")
            with learn.no_bar(), learn.no_logging():
                learn.fit_one_cycle(1, 3e-3)
            stock_dls = ImageDataLoaders.from_folder(
                folders[kind], train="train", valid="valid", bs=8, num_workers=0, device="cpu",
                img_cls=PILImageBW if kind == "gray" else PILImage,
                batch_tfms=Normalize.from_stats(*dls.data_info.stats))
            stock = Learner(stock_dls, learn.model, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
            made[pipeline, kind] = learn, stock
        return made[pipeline, kind]
    return get


def _input(kind: str, path, gray: bool = False):
    """An image in each form fastai's ``PILImage.create`` takes (a ``PILImageBW`` for a grayscale Learner)."""
    if kind == "Path":
        return path
    if kind == "str":
        return str(path)
    if kind == "bytes":
        return path.read_bytes()
    a = np.asarray(Image.open(path))
    if kind == "ndarray":
        return a
    if kind == "Tensor":
        return torch.from_numpy(a.copy())
    if kind == "PIL.Image":
        return Image.open(path)
    return (PILImageBW if gray else PILImage).create(path)


def _predict(learn, x):
    with learn.no_bar():
        label, idx, probs = learn.predict(x)
    return label, int(idx), probs


both = pytest.mark.parametrize("pipeline,kind", [(p, k) for p in PIPELINES for k in KINDS])


@both
@pytest.mark.parametrize("form", INPUTS)
def test_predict_on_every_input_type_fastai_takes(pair, pipeline, kind, form):
    learn, stock = pair(pipeline, kind)
    path = learn.dls.valid_ds.items[4]
    label, idx, probs = _predict(learn, _input(form, path, kind == "gray"))
    # stock fastai re-classes a lazily opened PIL image without its data (PIL's AssertionError): give it a loaded one
    s_input = _input(form, path, kind == "gray")
    s_input = s_input.copy() if form == "PIL.Image" else s_input
    s_label, s_idx, s_probs = _predict(stock, s_input)
    assert label == s_label and idx == s_idx
    assert probs.shape == (len(CLASSES),) and torch.allclose(probs, s_probs, atol=ATOL)
    # every form of the same file is the same image
    assert torch.allclose(probs, _predict(learn, path)[2], atol=ATOL)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_inputs_of_other_channels_are_converted_as_files_are(pair, pipeline):
    """Beyond stock fastai (which passes them on unconverted, and the model then fails on the channel count):
    a grayscale image or array given to an RGB Learner, and an RGB one to a grayscale Learner, are converted
    to the Learner's mode as a file of them would be."""
    for kind, other in (("rgb", "L"), ("gray", "RGB")):
        learn, _ = pair(pipeline, kind)
        path = learn.dls.valid_ds.items[2]
        converted = Image.open(path).convert(other)
        expected = _predict(learn, PILImage.create(converted.convert("RGB" if kind == "rgb" else "L")))[2]
        for x in (converted, np.asarray(converted)):
            assert torch.allclose(_predict(learn, x)[2], expected, atol=ATOL)


@both
@pytest.mark.parametrize("as_str", [True, False])
def test_test_dl_on_paths_and_strings_gives_stock_batches_and_preds(pair, pipeline, kind, as_str):
    learn, stock = pair(pipeline, kind)
    items = [str(p) if as_str else p for p in learn.dls.valid_ds.items[:5]]
    dl, s_dl = learn.dls.test_dl(items), stock.dls.test_dl(items)
    xb, s_xb = first(dl)[0], first(s_dl)[0]
    assert xb.shape == s_xb.shape == (5, 1 if kind == "gray" else 3, 32, 32)
    assert torch.allclose(xb, s_xb, atol=ATOL)
    with learn.no_bar(), stock.no_bar():
        preds, s_preds = learn.get_preds(dl=dl)[0], stock.get_preds(dl=s_dl)[0]
    assert torch.allclose(preds, s_preds, atol=ATOL)


@pytest.mark.slow
@both
def test_get_preds_tta_and_interpretation_match_stock(pair, pipeline, kind):
    learn, stock = pair(pipeline, kind)
    # stock fastai lists files in the file system's order, ours sorted by path: compare item by item
    order = [list(stock.dls.valid_ds.items).index(p) for p in learn.dls.valid_ds.items]
    with learn.no_bar(), stock.no_bar():
        preds, targs = learn.get_preds()
        s_preds, s_targs = stock.get_preds()
        assert torch.equal(targs, s_targs[order]) and torch.allclose(preds, s_preds[order], atol=ATOL)
        # tta without augmentation: the mean of training-transform passes and the plain pass equals the plain one
        tta, _ = learn.tta(n=2)
        s_tta, _ = stock.tta(n=2)
        assert torch.allclose(tta, s_tta[order], atol=ATOL) and torch.allclose(tta, preds, atol=1e-4)
        interp, s_interp = (ClassificationInterpretation.from_learner(x) for x in (learn, stock))
    assert np.array_equal(interp.confusion_matrix(), s_interp.confusion_matrix())
    assert interp.confusion_matrix().sum() == len(learn.dls.valid_ds)
    assert interp.most_confused() == s_interp.most_confused()


@both
def test_show_results_show_batch_and_lr_find(pair, pipeline, kind):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learn, _ = pair(pipeline, kind)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with learn.no_bar(), learn.no_logging():
        learn.show_results(max_n=4)
        learn.dls.show_batch(max_n=4)
        suggestion = learn.lr_find(num_it=8, show_plot=False)
    plt.close("all")
    assert np.isfinite(suggestion.valley) and suggestion.valley > 0
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # lr_find restores the weights


def _same_batches(a, b) -> None:
    for dl_a, dl_b in zip(a.loaders, b.loaders):
        xa, ya = first(dl_a.new(shuffle=False))
        xb, yb = first(dl_b.new(shuffle=False))
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@both
def test_pickling_dls_and_learner_round_trips_before_and_after_predict(pair, pipeline, kind):
    learn, _ = pair(pipeline, kind)
    path = str(learn.dls.valid_ds.items[0])
    for when in ("before predict", "after predict"):
        dls2 = pickle.loads(pickle.dumps(learn.dls))
        _same_batches(learn.dls, dls2)
        a, b = dls2.data_info, learn.dls.data_info
        assert (a.source.items, a.source.vocab, a.img_size, a.stats, a.pipeline, a.n_in) == \
            (b.source.items, b.source.vocab, b.img_size, b.stats, b.pipeline, b.n_in), when
        learn2 = pickle.loads(pickle.dumps(learn))
        assert torch.allclose(_predict(learn2, path)[2], _predict(learn, path)[2], atol=ATOL), when
    with learn2.no_bar(), learn2.no_logging():
        learn2.fit(1, 1e-4)  # the round-tripped Learner still trains


EXPORTED = """
import json, sys
from fastai.learner import load_learner
learn = load_learner(sys.argv[1])
with learn.no_bar():
    out = {form: learn.predict(x)[2].tolist() for form, x in (("str", sys.argv[2]), ("bytes", open(sys.argv[2], "rb").read()))}
import pickle
pickle.dumps(learn.dls)  # after predict, too
print(json.dumps(dict(out, vocab=list(learn.dls.vocab))))
"""


@pytest.mark.slow
@both
def test_export_then_load_learner_in_a_fresh_process_predicts_the_same(pair, pipeline, kind, tmp_path):
    learn, _ = pair(pipeline, kind)
    path = str(learn.dls.valid_ds.items[3])
    expected = _predict(learn, path)[2]
    learn.export(tmp_path / "export.pkl")
    assert (tmp_path / "export.pkl").stat().st_size < 2e6  # no decoded images inside
    proc = subprocess.run([sys.executable, "-c", EXPORTED, str(tmp_path / "export.pkl"), path],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["vocab"] == list(learn.dls.vocab)
    for form in ("str", "bytes"):
        assert torch.allclose(torch.tensor(got[form]), expected, atol=ATOL), form
    # and in this process, as fastai users do in a notebook
    loaded = load_learner(tmp_path / "export.pkl")
    assert torch.allclose(_predict(loaded, path)[2], expected, atol=ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_vision_learner_trains_and_predicts_on_our_dataloaders(folders, pipeline):
    dls = dataloaders(folders["rgb"], bs=8, pipeline=pipeline, device="cpu")
    learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-3)
        label, _, probs = learn.predict(str(dls.valid_ds.items[0]))
    assert label in CLASSES and torch.isclose(probs.sum(), torch.tensor(1.0), atol=1e-5)
