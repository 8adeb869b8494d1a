"""Transfer-learning baselines: fastai's vision models with named stages, ImageNet weights from the hub cache
(a fake cache made here: nothing is downloaded), the offline message, the sweep options and rows."""
import re
from urllib.error import URLError

import pandas as pd
import pytest
import torch
import torchvision
from fastai.vision.learner import create_vision_model
from typer.testing import CliRunner

from cnn_depth import CnnDepthError, SweepConfig, count_params, depth_cnn, load_run_model, report, run_sweep
from cnn_depth.cli import app
from cnn_depth.explain import activation_stats, cam_stage, feature_maps, fixed_valid_batch, grad_cam
from cnn_depth.transfer import weights_file

SHAPES = [(3, 32, 32), (1, 28, 28)]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A torch hub folder of our own with downloads refused (as offline); ``hub.tried`` lists the URLs tried."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    class Hub:
        tried = []

        @staticmethod
        def put(arch: str, state: dict):
            path = weights_file(arch)[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, path)
            return path

    def no_network(url, *a, **k):
        Hub.tried.append(url)
        raise URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return Hub


def resnet18_weights(seed=0) -> dict:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


# ---------------------------------------------------------------------------------------------------------
# The models


@pytest.mark.parametrize("arch,tv,shape", [("resnet18", torchvision.models.resnet18, SHAPES[0]),
                                           ("resnet18", torchvision.models.resnet18, SHAPES[1]),
                                           ("resnet50", torchvision.models.resnet50, SHAPES[0]),
                                           ("vgg16", torchvision.models.vgg16, SHAPES[0])])
def test_the_model_is_fastais_vision_model_with_named_stages(arch, tv, shape):
    ours = depth_cnn(arch=arch, n_in=shape[0], n_out=7, img_size=shape[1:])
    theirs = create_vision_model(tv, 7, pretrained=False, n_in=shape[0], cut=-2)  # what vision_learner builds
    mine, ref = ours.state_dict(), theirs.state_dict()
    assert [v.shape for v in mine.values()] == [v.shape for v in ref.values()]
    assert count_params(ours) == count_params(theirs)
    theirs.load_state_dict(dict(zip(ref, mine.values())))
    x = torch.randn(3, *shape)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), theirs.eval()(x), atol=1e-5)
    assert ours.config == dict(arch=arch, depth=int(arch[-2:]), n_in=shape[0], n_out=7, img_size=list(shape[1:]), ndim=2)


def test_stage_names_and_shapes():
    r = depth_cnn(arch="resnet18")
    assert list(dict(r.named_children())) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    v = depth_cnn(arch="vgg16", n_in=1, img_size=28)
    assert list(dict(v.named_children())) == ["block1", "block2", "block3", "block4", "block5", "head"]
    assert all(isinstance(b[-1], torch.nn.MaxPool2d) and b[-1].ceil_mode for _, b in list(v.named_children())[:-1])
    maps = feature_maps(v, torch.randn(1, 1, 28, 28))  # ceil-mode pools: 28 px goes 14-7-4-2-1, never 0
    assert [tuple(m.shape[1:]) for _, m in maps] == [(64, 14, 14), (128, 7, 7), (256, 4, 4), (512, 2, 2), (512, 1, 1)]
    maps = feature_maps(r, torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape[1:]) for _, m in maps] == [(64, 8, 8), (64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]


@pytest.mark.parametrize("arch,rows", [("resnet18", 9), ("vgg16", 13)])
def test_activation_stats_and_grad_cam_work(arch, rows):
    model = depth_cnn(arch=arch)
    stats = activation_stats(model, torch.randn(4, 3, 32, 32))
    assert len(stats) == rows  # one per ReLU module: the stem's and one per block (ResNet), one per conv (VGG)
    assert all(0 <= r["frac_zero"] <= 1 for r in stats)
    x = torch.randn(3, 32, 32)
    assert cam_stage(model, x) == {"resnet18": "layer3", "vgg16": "block4"}[arch]  # the last stage is 1×1 at 32 px
    cam = grad_cam(model, x, target=2)
    assert torch.equal(cam, grad_cam(model, x, target=2, stage=cam_stage(model, x)))
    assert cam.shape == (32, 32) and 0 <= float(cam.min()) and float(cam.max()) <= 1
    last = grad_cam(model, x, target=2, stage="layer4" if arch == "resnet18" else "block5")
    assert float(last.max() - last.min()) < 1e-5  # a 1×1 map upsamples to one value: why it is not the default


# ---------------------------------------------------------------------------------------------------------
# ImageNet weights: from the hub cache, or one line naming the file


@pytest.mark.parametrize("n_in", [3, 1])
def test_pretrained_weights_come_from_the_hub_cache(hub, n_in):
    state = resnet18_weights()
    hub.put("resnet18", state)
    model = depth_cnn(arch="resnet18", n_in=n_in, pretrained=True)
    assert hub.tried == []  # the file was there: nothing downloaded
    conv1 = state["conv1.weight"] if n_in == 3 else state["conv1.weight"].sum(1, keepdim=True)  # fastai's gray rule
    assert torch.equal(model.stem[0].weight, conv1)
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(model.stem[1].running_var, state["bn1.running_var"])
    assert model.config == dict(arch="resnet18", depth=18, n_in=n_in, n_out=10, img_size=[32, 32], ndim=2)


def test_pretrained_vgg16_loads_its_conv_weights(hub):
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"]).state_dict()
    hub.put("vgg16", {f"features.{k}": v for k, v in features.items()})  # the classifier's keys are never read
    model = depth_cnn(arch="vgg16", pretrained=True)
    assert torch.equal(model.block1[0].weight, features["0.weight"]) and torch.equal(model.block5[4].bias,
                                                                                      features["28.bias"])
    assert hub.tried == []


def test_pretrained_offline_names_the_file_and_folder(hub):
    path, url = weights_file("resnet50")
    with pytest.raises(CnnDepthError) as e:
        depth_cnn(arch="resnet50", pretrained=True)
    msg = str(e.value)
    assert hub.tried == [url] and "\n" not in msg
    assert msg.startswith(f"no pretrained resnet50 weights: resnet50-11ad3fa6.pth is not in {path.parent} and the "
                          f"download failed (URLError")
    assert f"offline, copy resnet50-11ad3fa6.pth (from {url}) into {path.parent}, or leave out --pretrained" in msg


def test_damaged_weights_file_is_one_line(hub):
    path = hub.put("resnet18", {})
    path.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(CnnDepthError, match=re.escape(f"cannot read the pretrained resnet18 weights {path}")):
        depth_cnn(arch="resnet18", pretrained=True)


# ---------------------------------------------------------------------------------------------------------
# Sweep options


def test_config_resolves_and_names_the_transfer_mode():
    cfg = SweepConfig(arch="resnet18", pretrained=True)
    assert cfg.depths == [18] and cfg.transfer == "fine-tune"
    assert cfg.default_out_name() == "cifar10-sample-resnet18-d18-s0-e5-pretrained-ft"
    cfg = SweepConfig(arch="vgg16", pretrained=True, transfer="feature-extraction", epochs=1)
    assert cfg.default_out_name().endswith("-vgg16-d16-s0-e1-pretrained-fe")
    cfg = SweepConfig(arch="resnet50")
    assert cfg.transfer is None and cfg.default_out_name() == "cifar10-sample-resnet50-d50-s0-e5"


@pytest.mark.parametrize("kwargs,message", [
    (dict(arch="bn", pretrained=True), "--pretrained needs a pretrained net (resnet18, resnet50, vgg16); arch bn has "
                                       "no ImageNet weights"),
    (dict(arch="resnet18", transfer="fine-tune"), "--transfer fine-tune needs --pretrained"),
    (dict(arch="resnet18", pretrained=True, epochs=1), "--transfer fine-tune (the default with --pretrained) needs "
                                                       "--epochs 2 or more"),
    (dict(arch="resnet18", pretrained=True, transfer="finetune"), "transfer must be one of feature-extraction, "
                                                                  "fine-tune, got 'finetune'"),
    (dict(arch="resnet18", pretrained="yes"), "pretrained must be true or false, got 'yes'"),
    (dict(arch="resnet18", depths=[34]), "preset resnet18 has a fixed depth of 18"),
])
def test_bad_transfer_options_are_one_line(kwargs, message):
    with pytest.raises(CnnDepthError, match=re.escape(message)) as e:
        SweepConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_sweep_without_weights_offline_is_one_line_before_any_work(hub, tmp_path):
    r = CliRunner().invoke(app, ["sweep", "--arch", "vgg16", "--pretrained", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and r.output.startswith("error: no pretrained vgg16 weights: vgg16-397923af.pth is not in")
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    assert hub.tried == [weights_file("vgg16")[1]]  # tried once, by the driver, not once per run


def test_cli_refuses_pretrained_for_the_family(tmp_path):
    r = CliRunner().invoke(app, ["sweep", "--arch", "mlp", "--pretrained", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and r.output.startswith("error: --pretrained needs a pretrained net")
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------------
# Sweeps: rows beside the family's, in one report


@pytest.mark.slow
def test_resnet_and_mlp_sweeps_report_beside_bn(hub, tmp_path):
    common = dict(max_per_class=4, bs=16, device="cpu", quiet=True)
    hub.put("resnet18", resnet18_weights())
    ft = run_sweep(arch="resnet18", pretrained=True, epochs=2, save_models=True, out=str(tmp_path / "ft"), **common)
    scratch = run_sweep(arch="resnet18", epochs=1, out=str(tmp_path / "scratch"), **common)
    mlp = run_sweep(arch="mlp", depths=[1, 2], epochs=1, out=str(tmp_path / "mlp"), **common)
    assert hub.tried == []
    row = ft.iloc[0]
    assert (row["run_id"], row["depth"], row["status"], row["epochs_done"]) == ("resnet18-d18-s0", 18, "ok", 2)
    assert bool(row["pretrained"]) and row["transfer"] == "fine-tune" and row["params"] == 11_708_992  # full model
    assert row["train_images"] == 2 * 32  # fine-tune: 1 frozen epoch + 1 of everything; 2 full batches of 16 each
    assert not bool(scratch.iloc[0]["pretrained"]) and scratch.iloc[0]["transfer"] == ""
    history = pd.read_csv(tmp_path / "ft" / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    acts = pd.read_csv(tmp_path / "ft" / "activations.csv")
    assert len(acts) == 9 and acts["stage"].iloc[0] == "stem"
    assert set(mlp["depth"]) == {1, 2} and (mlp["status"] == "ok").all()

    summary = report([tmp_path / "ft", tmp_path / "scratch", tmp_path / "mlp"], tmp_path / "report")
    # pretrained and transfer are group settings: the fine-tuned net is never pooled with the one from scratch
    assert summary[["arch", "depth", "pretrained", "transfer"]].values.tolist() == [
        ["resnet18", 18, True, "fine-tune"], ["resnet18", 18, False, ""], ["mlp", 1, False, ""], ["mlp", 2, False, ""]]
    assert summary["group"].str.contains("pretrained · fine-tune").tolist() == [True, False, False, False]
    assert summary["group"].str.contains("from scratch · no transfer").tolist() == [False, True, True, True]

    # a saved model rebuilds from its config and scores what its row says
    model, info = load_run_model(tmp_path / "ft")
    from cnn_depth import dataloaders
    dls = dataloaders("cifar10-sample", bs=16, max_per_class=4, device="cpu")
    with torch.no_grad():
        xb = fixed_valid_batch(dls, len(dls.valid_ds))
        preds = model(xb).argmax(1)
    ys = torch.tensor([dls.vocab.o2i[p.parent.name] for p in dls.valid_ds.items])
    assert float((preds == ys).float().mean()) == pytest.approx(row["accuracy"], abs=1e-6)
