"""Transfer-learning baselines: torchvision ResNet18, ResNet50 and VGG16 as fastai builds them for
``vision_learner``, with ImageNet weights from the torch hub cache when asked for.

A model is fastai's ``create_body`` of the torchvision net (the first conv adapted to ``n_in`` channels, its
pretrained filters summed for grayscale) and fastai's ``create_head`` (concat pooling, BN, dropout, linear
512, linear ``n_out``), exactly the model ``vision_learner(dls, resnet18, n_out=dls.c)`` trains. Only the
children are named, like the depth family's: ``stem``, ``layer1``..``layer4`` for ResNets, ``block1``..``block5``
(one per max-pool) for VGG16, then ``head``; so freezing (body vs head), feature maps, Grad-CAM and activation
statistics treat them like any registered model.

What ``depth`` means here: the number in the name, the weight layers of the original ImageNet net (ResNet18:
17 convs + fc; ResNet50: 49 convs + fc; VGG16: 13 convs + 3 fc). fastai replaces the ImageNet classifier with
its own two-linear head, so the layers counted are not the layers trained one for one; the name is kept so
rows read as the nets are known.

Small images: 32 px CIFAR maps shrink to 1×1 after ResNet's five halvings (adaptive pooling takes any size).
VGG16's five 2×2 max-pools floor 28 px to 0 px, so its pools use ``ceil_mode`` (28→14→7→4→2→1); on any size
that is a multiple of 32 that is identical to torchvision's. (VGG16 is built from torchvision's
``make_layers`` without the classifier fastai cuts off anyway: initialising its 120 M weights took 5-10 s.)
ImageNet weights were learned on 224 px images; how much they help at 32 or 28 px is for a sweep to show.

Pretrained weights are looked up where torchvision keeps them, ``<torch hub dir>/checkpoints/<file>``
(``~/.cache/torch/hub/checkpoints`` unless ``$TORCH_HOME`` moves it); a missing file is downloaded, and a
download that fails gives one line naming the file and the folder to place it in.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .errors import CnnDepthError

if TYPE_CHECKING:  # torch is imported where a model is built, so that reports can read TRANSFER_TAGS without it
    from torch import nn


@dataclass(frozen=True)
class TransferArch:
    """A torchvision net: its builder's name in ``torchvision.models``, its weights enum, its named depth."""

    name: str
    weights: str  # e.g. "ResNet18_Weights": its DEFAULT member is what --pretrained loads
    depth: int
    description: str


TRANSFER_ARCHS = {a.name: a for a in [
    TransferArch("resnet18", "ResNet18_Weights", 18, "torchvision ResNet18 body, fastai head; ImageNet weights "
                                                     "with --pretrained"),
    TransferArch("resnet50", "ResNet50_Weights", 50, "torchvision ResNet50 body, fastai head; ImageNet weights "
                                                     "with --pretrained"),
    TransferArch("vgg16", "VGG16_Weights", 16, "torchvision VGG16 conv body (ceil-mode pools), fastai head; "
                                               "ImageNet weights with --pretrained"),
]}
TRANSFER_MODES = ("feature-extraction", "fine-tune")
TRANSFER_TAGS = {"feature-extraction": "fe", "fine-tune": "ft"}  # in folder names and report labels


def check_transfer(transfer: Optional[str], epochs: int) -> Optional[str]:
    """``transfer`` (None, feature-extraction or fine-tune) checked against ``epochs``; one-line errors."""
    if transfer is not None and transfer not in TRANSFER_MODES:
        raise CnnDepthError(f"transfer must be one of {', '.join(TRANSFER_MODES)}, got {transfer!r}")
    if transfer == "fine-tune" and epochs < 2:
        raise CnnDepthError(f"--transfer fine-tune (the default with --pretrained) needs --epochs 2 or more: 1 "
                            f"epoch with the body frozen, then epochs - 1 with all of it; got {epochs}")
    return transfer


def weights_file(arch: str) -> tuple[Path, str]:
    """(path, url) of the ImageNet weights ``--pretrained`` loads for ``arch``: where torchvision caches them."""
    import torch.hub
    import torchvision.models

    url = getattr(torchvision.models, TRANSFER_ARCHS[arch].weights).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


def fetch_weights(arch: str) -> Path:
    """The ImageNet weights file of ``arch`` in the torch hub cache, downloaded there first when missing (as
    torchvision does, hash-checked); offline, one line naming the file and the folder to place it in."""
    import torch.hub

    path, url = weights_file(arch)
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        m = torch.hub.HASH_REGEX.search(path.name)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=m.group(1) if m else None, progress=True)
    except Exception as e:  # URLError, HTTP errors, timeouts, a hash mismatch
        why = " ".join(f"{type(e).__name__}: {e}".split())[:100]
        raise CnnDepthError(f"no pretrained {arch} weights: {path.name} is not in {path.parent} and the download "
                            f"failed ({why}); offline, copy {path.name} (from {url}) into {path.parent}, or leave "
                            f"out --pretrained to train from scratch") from e
    return path


def torchvision_model(arch: str, pretrained: bool = False) -> nn.Module:
    """The torchvision net, with its ImageNet weights when ``pretrained`` (:func:`fetch_weights`); a damaged
    weights file is a one-line error too."""
    import torchvision.models

    fn = _vgg16 if arch == "vgg16" else getattr(torchvision.models, arch)
    if not pretrained:
        return fn(weights=None)
    path = fetch_weights(arch)
    try:  # torchvision reads the file from the cache now
        return fn(weights=getattr(torchvision.models, TRANSFER_ARCHS[arch].weights).DEFAULT)
    except Exception as e:  # unpickling or zip errors, keys that do not match
        why = " ".join(f"{type(e).__name__}: {e}".split())[:100]
        raise CnnDepthError(f"cannot read the pretrained {arch} weights {path} ({why}); delete the file and rerun "
                            f"to download it again, or copy a good one from {weights_file(arch)[1]}") from e


def _vgg16(weights=None) -> nn.Module:
    """torchvision's VGG16 without its classifier (fastai cuts it off, and initialising its 120 M weights takes
    seconds): the same ``features`` (torchvision's ``make_layers``, its init, its weights), max-pools in ceil
    mode (see the module docstring)."""
    from torch import nn
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"])
    for m in features:
        if isinstance(m, nn.Conv2d):  # torchvision's VGG init
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True  # 28 px: 14-7-4-2-1, not 14-7-3-1-0; the same as floor on multiples of 32
    if weights is not None:
        state = weights.get_state_dict(progress=True, check_hash=True)
        features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    # the children fastai's cut (-2) expects: it keeps features, drops avgpool and classifier
    return nn.Sequential(OrderedDict(features=features, avgpool=nn.AdaptiveAvgPool2d(7), classifier=nn.Identity()))


def _named_stages(arch: str, children: dict) -> list[tuple[str, nn.Module]]:
    """fastai's body as named stages: ResNet ``stem`` + ``layer1..4``; VGG ``block1..5`` (one per max-pool)."""
    from torch import nn

    if arch.startswith("resnet"):
        stem = nn.Sequential(*[children[n] for n in ("conv1", "bn1", "relu", "maxpool")])
        return [("stem", stem)] + [(n, children[n]) for n in ("layer1", "layer2", "layer3", "layer4")]
    blocks, current = [], []
    for m in children["features"].children():
        current.append(m)
        if isinstance(m, nn.MaxPool2d):
            blocks.append((f"block{len(blocks) + 1}", nn.Sequential(*current)))
            current = []
    return blocks


def transfer_model(arch: str, n_in: int = 3, n_out: int = 10, pretrained: bool = False) -> nn.Module:
    """The model ``vision_learner(dls, <arch>, n_out=n_out, n_in=n_in, pretrained=pretrained)`` builds, with
    named stages and ``head`` (see the module docstring).

    Args:
        arch: resnet18, resnet50 or vgg16.
        n_in: input channels: 3, or 1 (fastai sums the pretrained first-layer filters over RGB).
        n_out: number of classes.
        pretrained: load the ImageNet weights (see :func:`torchvision_model`); the head is new either way.
    """
    from fastai.torch_core import apply_init
    from fastai.vision.learner import create_body, create_head
    from torch import nn

    if arch not in TRANSFER_ARCHS:
        raise CnnDepthError(f"unknown transfer arch {arch!r}; choose one of: {', '.join(TRANSFER_ARCHS)}")
    tv = torchvision_model(arch, pretrained)
    names = [n for n, _ in tv.named_children()]
    body = create_body(tv, n_in, pretrained, cut=-2)  # fastai's cut: ResNet drops avgpool, fc; VGG avgpool, classifier
    children = dict(zip(names, body.children()))
    nf = [m for m in body.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    head = create_head(nf, n_out)
    apply_init(head, nn.init.kaiming_normal_)  # as fastai's add_head does
    return nn.Sequential(OrderedDict(_named_stages(arch, children) + [("head", head)]))
