"""The Learner factory: inferred shapes, fastai defaults, and a seeded fit that really learns."""
import pytest
import torch
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import set_seed

from cnn_depth import dataloaders, depth_learner


def test_learner_infers_channels_and_classes(sample_dls):
    learn = depth_learner(sample_dls, depth=3, arch="residual")
    assert isinstance(learn.loss_func, CrossEntropyLossFlat)
    assert [m.name for m in learn.metrics] == ["accuracy"]
    assert learn.model.config == dict(arch="residual", depth=3, n_in=3, n_out=10, img_size=[32, 32])


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
