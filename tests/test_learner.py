"""The Learner factory: inferred shapes, fastai defaults, and a seeded fit that really learns."""
import pytest
import torch
from fastai.callback.core import Callback
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import set_seed

from cnn_depth import dataloaders, depth_learner


def test_learner_infers_channels_and_classes(sample_dls):
    learn = depth_learner(sample_dls, depth=3, arch="residual")
    assert isinstance(learn.loss_func, CrossEntropyLossFlat)
    assert [m.name for m in learn.metrics] == ["accuracy"]
    assert learn.model.config == dict(arch="residual", depth=3, n_in=3, n_out=10, img_size=[32, 32], ndim=2)


def test_preset_learner_gets_flatten_size_from_data(image_folder_factory):
    dls = dataloaders(image_folder_factory(splits=("training", "testing"), size=(28, 28), mode="L"), bs=4,
                      device="cpu")
    learn = depth_learner(dls, arch="customcnn")
    assert learn.model.config["n_in"] == 1 and learn.model.config["img_size"] == [28, 28]
    xb, _ = dls.one_batch()
    assert learn.model(xb).shape == (4, 2)


@pytest.mark.slow
@pytest.mark.parametrize("arch,depth", [("bn", 3), ("plain", 2), ("residual", 5), ("simplecnn", None)])
def test_seeded_fit_one_cycle_lowers_training_loss(sample_dls, arch, depth):
    set_seed(0, reproducible=True)
    learn = depth_learner(sample_dls, depth=depth, arch=arch)
    train_eval = sample_dls.train.new(shuffle=False, drop_last=False)
    before = learn.validate(dl=train_eval)[0]
    learn.fit_one_cycle(4, 3e-3)
    after = learn.validate(dl=train_eval)[0]
    assert after < before - 0.1, (before, after)
    assert torch.isfinite(torch.tensor(after))


@pytest.mark.parametrize("arch,depth", [("bn", 4), ("residual", 5), ("plain", 3), ("mlp", 3), ("simplecnn", None),
                                        ("fashiondnn", None), ("resnet18", None)])
def test_freeze_trains_the_head_and_batchnorm_only(sample_dls, arch, depth):
    learn = depth_learner(sample_dls, depth=depth, arch=arch)
    assert all(p.requires_grad for p in learn.model.parameters())  # from scratch: nothing frozen
    learn.freeze()
    assert len(learn.opt.param_groups) == 2  # body, head
    body = [m for name, m in learn.model.named_children() if name != "head"]
    bn = {id(p) for m in body for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
          for p in mod.parameters()}
    head = {id(p) for p in learn.model.head.parameters()}
    trainable = {id(p) for p in learn.model.parameters() if p.requires_grad}
    assert trainable == head | bn  # fastai's train_bn=True keeps the body's BatchNorm trainable
    assert head and len(trainable) < len(list(learn.model.parameters()))
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("transfer", ["feature-extraction", "fine-tune"])
def test_fit_learner_transfer_modes(transfer):
    from cnn_depth.learner import fit_learner

    dls = dataloaders("cifar10-sample", bs=16, max_per_class=4, device="cpu")  # 40 images: 2 batches an epoch
    set_seed(0, reproducible=True)
    learn = depth_learner(dls, arch="resnet18")
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with learn.no_bar(), learn.no_logging():
        fit_learner(learn, 2, 1e-3, transfer)
    after = learn.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    convs = [k for k in before if k.endswith(".weight") and before[k].ndim == 4]
    assert any(k.startswith("head.") for k in changed)
    assert any(k.startswith("stem.1.") for k in changed)  # BatchNorm trains either way (train_bn)
    if transfer == "feature-extraction":
        assert not changed & set(convs)  # the body's convs stay as loaded
    else:
        assert set(convs) <= changed  # fine_tune's second cycle trains everything
    assert len(learn.recorder.values) == (2 if transfer == "feature-extraction" else 1)  # the last fit's epochs


def test_fit_learner_refuses_bad_modes(sample_dls):
    from cnn_depth import CnnDepthError
    from cnn_depth.learner import fit_learner

    learn = depth_learner(sample_dls, depth=2)
    with pytest.raises(CnnDepthError, match="needs --epochs 2 or more"):
        fit_learner(learn, 1, 1e-3, "fine-tune")
    with pytest.raises(CnnDepthError, match="transfer must be one of feature-extraction, fine-tune"):
        fit_learner(learn, 2, 1e-3, "fine_tune")


class SeeThreads(Callback):
    """Which torch thread count each batch ran with."""

    order = 50

    def before_fit(self):
        self.seen = set()

    def after_batch(self):
        self.seen.add(torch.get_num_threads())


@pytest.mark.slow
def test_depth_learner_fits_with_its_threads_and_restores_torchs(sample_dls):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    see = SeeThreads()
    learn = depth_learner(sample_dls, depth=1, threads=wanted, cbs=[see])
    learn.fit_one_cycle(1, 3e-3)
    assert see.seen == {wanted} and learn.set_threads.used == wanted
    assert torch.get_num_threads() == before  # restored after the fit
    learn.validate()  # fastai runs validate as a fit too: the same threads, restored again
    assert see.seen == {wanted} and torch.get_num_threads() == before
    assert not hasattr(depth_learner(sample_dls, depth=1, threads=None), "set_threads")


def test_auto_threads_are_the_free_cores_measured_once_for_many_predictions(sample_dls, monkeypatch):
    import cnn_depth.machine as machine

    calls = []
    real = machine.free_cores
    monkeypatch.setattr(machine, "free_cores", lambda: calls.append(1) or real())
    learn = depth_learner(sample_dls, depth=1)  # threads="auto" by default
    before = torch.get_num_threads()
    for _ in range(3):
        learn.get_preds(dl=[sample_dls.valid.one_batch()])
    assert len(calls) == 1, "the host is measured once, not on every prediction"
    assert 1 <= learn.set_threads.used <= machine.available_cpus() and torch.get_num_threads() == before


@pytest.mark.slow
def test_fit_learner_gives_other_learners_the_same_choice(sample_dls):
    from fastai.learner import Learner

    from cnn_depth import fit_learner
    from cnn_depth.models import depth_cnn

    see = SeeThreads()
    learn = Learner(sample_dls, depth_cnn(1), loss_func=CrossEntropyLossFlat(), cbs=[see])
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    fit_learner(learn, 1, 3e-3, threads=wanted)
    assert see.seen == {wanted} and torch.get_num_threads() == before
    assert not any(type(cb).__name__ == "SetThreads" for cb in learn.cbs)  # only for that fit


@pytest.mark.parametrize("threads", [0, "all", 1.5])
def test_bad_threads_are_one_line(sample_dls, threads):
    from cnn_depth import CnnDepthError

    with pytest.raises(CnnDepthError, match="threads must be a whole number"):
        depth_learner(sample_dls, depth=1, threads=threads)
