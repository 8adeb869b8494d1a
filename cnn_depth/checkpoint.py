"""Saved models that load safely: weights as a state dict next to plain data, never pickled code.

A run folder written by ``cnn-depth sweep --save-models`` keeps one file per trained model at
``<run_dir>/models/{arch}-d{depth}-s{seed}.pt``. Each file is a dict of plain Python types and tensors, so
``torch.load(path, weights_only=True)`` reads it::

    format        "cnn-depth-model"
    version       1
    state_dict    {name: tensor}  (on CPU)
    config        dict(arch, depth, n_in, n_out, img_size, ndim): the arguments of ``depth_cnn``;
                  img_size one side per dimension ([length], [h, w] or [d, h, w]); files written before
                  1D/3D models existed have no ndim, which means 2
    vocab         [class name, ...] in output order, or None
    stats         dict(mean=[...], std=[...]) per channel (images: on the 0-1 scale), or None
    source        dict(name, root, max_per_class, train_name, valid_name): enough to rebuild the
                  dataset with ``image_folder`` and pick a validation image by index, or None; an array
                  source (series, volumes) adds what ``arrays.valid_arrays`` rebuilds it with: kind
                  ("series", "volume", "image"), format, dims, pad, fill, valid_pct and seed
    meta          anything else the caller passed (run_id, seed, dataset, ...), plain types only
    versions      dict(cnn_depth, torch, fastai)

A file is anyone's to edit, so :func:`read_run_model` checks every field (:func:`check_checkpoint`) before
the model is rebuilt: a wrong or missing one is one line naming the file and the field, and how to save the
model again.
"""
from __future__ import annotations

import math
import os
import re
import shlex
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .errors import CnnDepthError
from .files import PathLike, atomic_write, writing
from .loaders import data_info
from .models import depth_cnn
from .records import MODELS_DIR, model_path, read_sweep_json, run_id  # noqa: F401  (model_path, run_id: part of this API)

FORMAT = "cnn-depth-model"
VERSION = 1
_FILE_RE = re.compile(r"^(?P<arch>.+?)-d(?P<depth>\d+)-s(?P<seed>-?\d+)(?P<tag>-.+)?\.pt$")  # tag: a grid's


def _plain(obj, where: str):
    """``obj`` as types ``torch.load(weights_only=True)`` accepts (Paths become str, tuples lists)."""
    if obj is None or isinstance(obj, torch.Tensor):
        return obj
    for t in (bool, int, float, str):  # exact builtins: subclasses (TorchVersion, IntEnum) need a pickled class
        if isinstance(obj, t):
            return t(obj)
    if isinstance(obj, os.PathLike):
        return str(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy scalars
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ in ("L", "CategoryMap"):
        return [_plain(v, where) for v in obj]
    raise TypeError(f"{where} holds a {type(obj).__name__}; saved models keep plain data only "
                    f"(str, numbers, lists, dicts, tensors)")


def _stats(dls) -> Optional[dict]:
    """Per-channel mean and std: our DataLoaders' ``data_info`` or the ``Normalize`` in ``after_batch``."""
    info = data_info(dls)
    if info is not None:
        return dict(mean=[float(v) for v in info.stats[0]], std=[float(v) for v in info.stats[1]])
    from fastai.vision.augment import Normalize
    for t in getattr(getattr(dls, "after_batch", None), "fs", []):
        if isinstance(t, Normalize):
            return dict(mean=t.mean.flatten().tolist(), std=t.std.flatten().tolist())
    return None


def _source(dls) -> Optional[dict]:
    info = data_info(dls)
    if info is None:
        return None
    src = info.source
    root = getattr(src, "root", None)  # getattr: array sources (series, volumes) need not have every field
    out = dict(name=str(src.name), root=str(Path(root).resolve()) if root is not None else None,
               max_per_class=getattr(src, "max_per_class", None), train_name=getattr(src, "train_name", None),
               valid_name=getattr(src, "valid_name", None))
    spec = getattr(src, "spec", None)
    if spec is not None:  # an array source (image sources have no spec: their files stay as they were)
        out.update(kind=str(src.kind), format=str(getattr(src, "format", "arrays")), dims=int(spec.dims),
                   pad=bool(spec.pad), fill=None if spec.fill is None else float(spec.fill),
                   valid_pct=getattr(src, "valid_pct", None), seed=getattr(src, "seed", None))
    return out


def checkpoint_dict(learn_or_model, dls=None, **meta) -> dict:
    """A trained model as the plain data :func:`save_run_model` writes (see the module docstring).

    Args:
        learn_or_model: a fastai ``Learner`` (its ``dls`` is used when ``dls`` is None) or a model built by
            ``depth_cnn`` (it carries ``model.config``).
        dls: the DataLoaders it was trained on: gives the vocab, normalisation stats and data source.
        **meta: plain data kept under ``meta`` (run_id, seed, dataset, ...). ``vocab=``, ``stats=`` (a
            (mean, std) pair) and ``max_per_class=`` override what ``dls`` says.
    """
    model = getattr(learn_or_model, "model", learn_or_model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_run_model needs a Learner or an nn.Module, got {type(learn_or_model).__name__}")
    if dls is None:
        dls = getattr(learn_or_model, "dls", None)
    config = getattr(model, "config", None)
    if config is None:
        raise CnnDepthError("this model has no .config (constructor arguments); build it with depth_cnn() "
                            "or depth_learner() so that it can be rebuilt when loaded")
    vocab = meta.pop("vocab", None)
    if vocab is None and dls is not None and getattr(dls, "vocab", None) is not None:
        vocab = dls.vocab
    stats = meta.pop("stats", None)
    stats = dict(mean=list(stats[0]), std=list(stats[1])) if stats is not None else (_stats(dls) if dls else None)
    source = _source(dls) if dls is not None else None
    if "max_per_class" in meta:
        mpc = meta.pop("max_per_class")
        if source is not None:
            source["max_per_class"] = mpc
    import fastai

    from . import __version__
    return dict(format=FORMAT, version=VERSION,
                state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                config=_plain(dict(config), "config"),
                vocab=[str(v) for v in vocab] if vocab is not None else None,
                stats=_plain(stats, "stats"), source=_plain(source, "source"), meta=_plain(meta, "meta"),
                versions=dict(cnn_depth=str(__version__), torch=str(torch.__version__),
                              fastai=str(fastai.__version__)))


def write_checkpoint(path: PathLike, ckpt: dict) -> Path:
    """Write a :func:`checkpoint_dict` to ``path``, aside then renamed: a killed run leaves no half file, and a
    full disk is one line (:class:`~cnn_depth.files.DiskFull`), the old file untouched."""
    path = Path(path)
    with writing(path, "the model"):
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda f: torch.save(ckpt, f))


def save_run_model(path: PathLike, learn_or_model, dls=None, **meta) -> Path:
    """Save a trained model as a state dict plus the plain data needed to rebuild and explain it.

    Args:
        path: the file to write, by convention ``model_path(run_dir, arch, depth, seed)``.
        learn_or_model, dls, **meta: see :func:`checkpoint_dict`.

    Returns:
        the path written. The file is written to a temporary name first, so a killed run leaves no
        half-written model behind.
    """
    return write_checkpoint(path, checkpoint_dict(learn_or_model, dls, **meta))


def resave_command(run_dir: PathLike) -> str:
    """The command that gives a sweep folder its saved models: the sweep's own settings (from its sweep.json),
    ``--out`` the folder and ``--save-models``. A rerun with ``--save-models`` trains again (same seeds, same
    settings) every finished run whose model file is missing, and keeps the others' rows as they are."""
    from .config import RESULT_FIELDS, sweep_flags

    run_dir = Path(run_dir)
    try:
        config = read_sweep_json(run_dir / "sweep.json")["config"]
    except (CnnDepthError, KeyError):  # none, or damaged: the options cannot be read from it
        return f"cnn-depth sweep <the options that made it> --out {shlex.quote(str(run_dir))} --save-models"
    args = ["cnn-depth", "sweep"]
    for name in ("depths", "seeds", *RESULT_FIELDS):
        value = config.get(name)
        if value is None:
            continue
        if name in ("depths", "seeds"):
            args += [f"--{name}", *(str(v) for v in value)]
        else:  # a setting, as the command line gives it (a grid: its values)
            args += sweep_flags(name, value)
    return shlex.join(args + ["--out", str(run_dir), "--save-models"])


def _resave(run_dir: PathLike, what: str = "") -> str:
    return (f"{what}run `{resave_command(run_dir)}` (it trains again the finished runs whose model is missing, "
            f"same seeds and settings)")


def _replace(path: PathLike) -> str:
    """The fix for a damaged model file ``<run_dir>/models/x.pt``: delete it, then save it again."""
    path = Path(path)
    return _resave(path.parent.parent, "delete it, then ")


def saved_models(run_dir: PathLike) -> list[dict]:
    """The models saved in a run folder: one dict (arch, depth, seed, run_id, path) per file, sorted."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnDepthError(f"no such run folder: {run_dir}; give the --out folder of a sweep run with "
                            f"--save-models")
    found = []
    models = run_dir / MODELS_DIR
    if models.is_dir():
        for p in models.glob("*.pt"):
            m = _FILE_RE.match(p.name)
            if m and p.is_file():  # regular files only: a FIFO or a folder named *.pt is not a model
                found.append(dict(arch=m["arch"], depth=int(m["depth"]), seed=int(m["seed"]), run_id=p.stem,
                                  path=p))
    if not found:
        raise CnnDepthError(f"{run_dir} has no saved models ({MODELS_DIR}/{{arch}}-d{{depth}}-s{{seed}}.pt); to save "
                            f"them, {_resave(run_dir)}")
    return sorted(found, key=lambda r: (r["arch"], r["depth"], r["seed"]))


def _join(values) -> str:
    return ", ".join(str(v) for v in sorted(set(values)))


def _one_line(e: BaseException, limit: int = 100) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split()) or type(e).__name__
    return text[:limit] + ("..." if len(text) > limit else "")


def pick_arch(run_dir: PathLike, arch: Optional[str] = None) -> tuple[str, list[dict]]:
    """(the arch, its entries from :func:`saved_models`) of a run folder; ``arch`` may be left out when the
    folder holds models of one arch only. One-line errors: several archs and none chosen, an arch not saved."""
    runs = saved_models(run_dir)
    archs = sorted({r["arch"] for r in runs})
    if arch is None:
        if len(archs) > 1:
            raise CnnDepthError(f"{run_dir} holds models of several archs ({', '.join(archs)}); pick one with "
                                f"--arch")
        arch = archs[0]
    runs = [r for r in runs if r["arch"] == arch]
    if not runs:
        raise CnnDepthError(f"arch {arch!r} is not in {run_dir}; saved archs: {', '.join(archs)}")
    return arch, runs


def find_run_model(run_dir: PathLike, depth: Optional[int] = None, seed: Optional[int] = None,
                   arch: Optional[str] = None) -> tuple[dict, Optional[str]]:
    """Pick one saved model of a run folder: (its entry from ``saved_models``, a note or None).

    ``arch`` and ``depth`` may be left out when the run holds only one; ``seed`` defaults to the lowest.
    """
    arch, runs = pick_arch(run_dir, arch)
    depths = [r["depth"] for r in runs]
    if depth is None:
        if len(set(depths)) > 1:
            raise CnnDepthError(f"{run_dir} holds {arch} models of depths {_join(depths)}; pick one with --depth")
        depth = depths[0]
    runs_d = [r for r in runs if r["depth"] == depth]
    if not runs_d:
        raise CnnDepthError(f"no saved model of depth {depth} in {run_dir} (arch {arch}); saved depths: "
                            f"{_join(depths)}; to save it, {_resave(run_dir)}")
    seeds = [r["seed"] for r in runs_d]
    note = None
    if seed is None:
        chosen = runs_d[0]  # sorted: the lowest seed
        if len(seeds) > 1:
            note = (f"{len(seeds)} seeds saved for {arch} depth {depth} ({_join(seeds)}); using seed "
                    f"{chosen['seed']}, the lowest (pass --seed to pick another)")
    else:
        match = [r for r in runs_d if r["seed"] == seed]
        if not match:
            raise CnnDepthError(f"seed {seed} is not saved for {arch} depth {depth} in {run_dir}; saved seeds: "
                                f"{_join(seeds)} (a run with --save-models and that seed saves it)")
        chosen = match[0]
    return chosen, note


def read_run_model(path: PathLike) -> dict:
    """Read one saved model file with ``weights_only=True`` and check its format; one-line errors."""
    path = Path(path)
    if not path.is_file():  # a FIFO would block torch.load forever; a folder or a dangling link cannot load
        raise CnnDepthError(f"{path} is not a regular file; remove it and rerun the sweep with --save-models")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, or pickled code weights_only refuses
        raise CnnDepthError(f"cannot read saved model {path} ({type(e).__name__}: {_one_line(e)}); the file is "
                            f"damaged or not a cnn-depth model: {_replace(path)}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "state_dict" not in ckpt:
        raise CnnDepthError(f"{path} is not a cnn-depth model file (no {FORMAT!r} format tag); {_replace(path)}")
    return check_checkpoint(ckpt, path)


def _shown(v) -> str:
    """A value from a checkpoint in a message: its type and the start of its text."""
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {tuple(v.shape)}"
    text = repr(v)
    kind = {dict: "a dict ", list: "a list ", str: "a string ", tuple: "a tuple "}.get(type(v), "")
    return f"{kind}{text[:40]}{'...' if len(text) > 40 else ''}"


def _int_in(v, low: int, high: Optional[int] = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)


def _numbers(v, n: int, positive: bool = False) -> bool:
    return (isinstance(v, list) and len(v) == n and
            all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
                for x in v))


MAX_IMG_SIZE = 16384  # px per side: a guard against a damaged img_size that would resize an image to gigabytes
MAX_SIDES = {1: 2 ** 22, 2: MAX_IMG_SIZE, 3: 2048}  # per side and ndim: a series may be long (4 M samples)
MAX_CHANNELS = 4096  # of a series or volume (images: 1 or 3)
CONFIG_KEYS = ("arch", "depth", "n_in", "n_out", "img_size")  # required; ndim is optional (missing: 2)


def check_checkpoint(ckpt: dict, path: PathLike = "checkpoint") -> dict:
    """``ckpt`` (as ``torch.load(weights_only=True)`` read it) if every field holds what
    :func:`checkpoint_dict` writes (see the module docstring), else a one-line :class:`CnnDepthError` naming
    the file, the field and the fix. Checked before the model is rebuilt, so that a damaged field is named
    as such, not blamed later on an image or a class."""
    from .models import AXES, MAX_DEPTH, list_models, model_spec

    def refuse(field: str, value, what: str):
        raise CnnDepthError(f"{path}: {field} is {_shown(value)}, not {what}; the file is damaged or was changed: "
                            f"{_replace(path)}")

    if "version" not in ckpt:
        raise CnnDepthError(f"{path} has no format version; the file is damaged or was changed: {_replace(path)}")
    version = ckpt["version"]
    if not _int_in(version, 1):
        refuse("version", version, "a whole number ≥ 1")
    if version > VERSION:
        raise CnnDepthError(f"{path} was saved by a newer cnn-depth (format version {version}); upgrade cnn-depth")
    sd = ckpt["state_dict"]
    if not isinstance(sd, dict) or not sd:
        refuse("state_dict", sd, "a dict of weight tensors")
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            refuse(f"state_dict[{k!r}]", v, "a tensor")
    config = ckpt.get("config")
    if not isinstance(config, dict):
        refuse("config", config, "a dict (arch, depth, n_in, n_out, img_size, ndim)")
    for key in CONFIG_KEYS:
        if key not in config:
            raise CnnDepthError(f"{path}: config has no {key}, so the model cannot be rebuilt; the file is damaged "
                                f"or was changed: {_replace(path)}")
    unknown = sorted(set(config) - {*CONFIG_KEYS, "ndim"})
    if unknown:
        refuse(f"config.{unknown[0]}", config[unknown[0]], "a field of a cnn-depth model (there is none)")
    if not isinstance(config["arch"], str) or config["arch"] not in list_models():
        refuse("config.arch", config["arch"], f"a registered model ({', '.join(list_models())})")
    ndims = model_spec(config["arch"]).ndims
    ndim = config.get("ndim", 2)  # saved before 1D/3D models existed: images
    if not (_int_in(ndim, 1, 3) and ndim in ndims):
        refuse("config.ndim", ndim, f"a dimension {config['arch']} takes ({' or '.join(map(str, ndims))})")
    if not (config["depth"] is None or _int_in(config["depth"], 1, MAX_DEPTH)):
        refuse("config.depth", config["depth"], f"a whole number from 1 to {MAX_DEPTH}")
    arrays = isinstance(ckpt.get("source"), dict) and ckpt["source"].get("dims") is not None  # an array source
    if ndim == 2 and not arrays and (config["n_in"] not in (1, 3) or isinstance(config["n_in"], bool)):
        refuse("config.n_in", config["n_in"], "1 (grayscale) or 3 (RGB) channels")
    if not _int_in(config["n_in"], 1, MAX_CHANNELS):
        refuse("config.n_in", config["n_in"], f"a whole number of channels from 1 to {MAX_CHANNELS}")
    if not _int_in(config["n_out"], 1):
        refuse("config.n_out", config["n_out"], "a whole number of classes ≥ 1")
    size, top = config["img_size"], MAX_SIDES[ndim]
    if not (_int_in(size, 1, top) or (isinstance(size, list) and len(size) == ndim and
                                      all(_int_in(v, 1, top) for v in size))):
        refuse("config.img_size", size, f"[{AXES[ndim]}]{' in px' * (ndim == 2)}, each from 1 to {top}")
    n_out, n_in = config["n_out"], config["n_in"]
    vocab = ckpt.get("vocab")
    if vocab is not None and not (isinstance(vocab, list) and all(isinstance(v, str) for v in vocab)):
        refuse("vocab", vocab, "a list of class names")
    if vocab is not None and len(vocab) != n_out:
        raise CnnDepthError(f"{path}: vocab has {len(vocab)} class names but the model's head has {n_out} outputs "
                            f"(config.n_out); the file is damaged or was changed: {_replace(path)}")
    stats = ckpt.get("stats")
    if stats is not None:
        if not isinstance(stats, dict) or set(stats) != {"mean", "std"}:
            refuse("stats", stats, "a dict of mean and std per channel")
        if not _numbers(stats["mean"], n_in):
            refuse("stats.mean", stats["mean"], f"{n_in} finite number(s), one per channel")
        if not _numbers(stats["std"], n_in, positive=True):
            refuse("stats.std", stats["std"], f"{n_in} positive number(s), one per channel")
    source = ckpt.get("source")
    if source is not None:
        if not isinstance(source, dict):
            refuse("source", source, "a dict (name, root, max_per_class, train_name, valid_name)")
        if not isinstance(source.get("name"), str) or not source["name"].strip():
            refuse("source.name", source.get("name"), "the dataset's name or path")
        for key in ("root", "train_name", "valid_name", "kind", "format"):
            if source.get(key) is not None and not isinstance(source[key], str):
                refuse(f"source.{key}", source[key], "a string or None")
        if source.get("max_per_class") is not None and not _int_in(source["max_per_class"], 1):
            refuse("source.max_per_class", source["max_per_class"], "a whole number ≥ 1 or None")
        if source.get("dims") is not None and not _int_in(source["dims"], 1, 3):
            refuse("source.dims", source["dims"], "1, 2 or 3 (series, images, volumes) or None")
        if not isinstance(source.get("pad", False), bool):
            refuse("source.pad", source["pad"], "true or false")
        if source.get("fill") is not None and not _numbers([source["fill"]], 1):
            refuse("source.fill", source["fill"], "a finite number or None")
        if source.get("valid_pct") is not None and not (_numbers([source["valid_pct"]], 1) and
                                                        0 < source["valid_pct"] < 1):
            refuse("source.valid_pct", source["valid_pct"], "a fraction between 0 and 1 or None")
        if source.get("seed") is not None and not _int_in(source["seed"], -2 ** 63):
            refuse("source.seed", source["seed"], "a whole number or None")
    for key in ("meta", "versions"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            refuse(key, ckpt[key], "a dict")
    return ckpt


def model_from_checkpoint(ckpt: dict, path: PathLike = "checkpoint") -> nn.Module:
    """Rebuild the model with ``depth_cnn(**config)`` and load its weights strictly; in eval mode."""
    config = ckpt.get("config") or {}
    try:
        model = depth_cnn(**config)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (CnnDepthError, TypeError, RuntimeError, KeyError) as e:
        raise CnnDepthError(f"{path} does not rebuild: its weights do not match its config {config} "
                            f"({_one_line(e)}); {_replace(path)}") from e
    vocab = ckpt.get("vocab")
    model.vocab = list(vocab) if vocab is not None else [str(i) for i in range(config["n_out"])]
    return model.eval()


def load_run_model(run_dir: PathLike, depth: Optional[int] = None, seed: Optional[int] = None,
                   arch: Optional[str] = None) -> tuple[nn.Module, dict]:
    """Load one trained model of a sweep run folder, on the CPU and in eval mode.

    Args:
        run_dir: the folder a sweep wrote with ``--save-models`` (it holds ``models/*.pt``).
        depth: which depth; may be left out when the run holds one depth only.
        seed: which seed; the lowest saved one when None (``info["note"]`` says so when there were several).
        arch: which arch; may be left out when the run holds one arch only.

    Returns:
        ``(model, info)``: the model (with ``model.config`` and ``model.vocab``) and a dict with
        ``run_id``, ``arch``, ``depth``, ``seed``, ``seeds`` (all saved for that arch and depth), ``path``,
        ``config``, ``vocab``, ``stats``, ``source``, ``meta`` and ``note`` (None unless a seed was picked).
    """
    entry, note = find_run_model(run_dir, depth, seed, arch)
    ckpt = read_run_model(entry["path"])
    model = model_from_checkpoint(ckpt, entry["path"])
    if (model.config["arch"], model.config["depth"]) != (entry["arch"], entry["depth"]):
        raise CnnDepthError(f"{entry['path']} holds a {model.config['arch']} model of depth "
                            f"{model.config['depth']}, not what its name says; {_replace(entry['path'])}")
    seeds = sorted(r["seed"] for r in saved_models(run_dir)
                   if r["arch"] == entry["arch"] and r["depth"] == entry["depth"])
    info = dict(run_id=entry["run_id"], arch=entry["arch"], depth=entry["depth"], seed=entry["seed"], seeds=seeds,
                path=entry["path"], config=ckpt["config"], vocab=model.vocab, stats=ckpt.get("stats"),
                source=ckpt.get("source"), meta=ckpt.get("meta") or {}, note=note)
    return model, info
