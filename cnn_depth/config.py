"""The one config object of a depth sweep: what to train, for how long, on what, and where to write.

``asdict(SweepConfig)`` goes into every ``sweep.json`` next to the results, together with the environment
(versions, device, git commit), so every number in the reports can be traced to how it was made.
"""
from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Union

from .data import ARCHIVE_SUFFIXES, DEFAULT_SOURCE, PIPELINES, list_datasets
from .errors import CnnDepthError
from .models import check_depth, model_spec

DEFAULT_DEPTHS = [2, 3, 4]  # the README's main job; a preset arch defaults to its own depth
DEFAULT_EPOCHS = 5  # ≈ 40 s per depth (2-4) on 2 busy CPU cores over the embedded sample (5,000 train images)
# Peak lr of fit_one_cycle. Safe for the plain nets too; on the sample, bn depths 3 and 4 gained 2-3 points of
# accuracy with 1e-2 (one seed, within noise of ±1.6 points on 1,000 images): try --lr find or --lr 1e-2.
DEFAULT_LR = 3e-3
DEVICES = ("auto", "cpu", "cuda")

# The fields that decide what a run's numbers are. A sweep folder holds runs of one setting of these;
# resuming into a folder made with other values is refused. depths and seeds only pick which runs exist
# (a sweep may be extended with more of them); device is recorded per row; out and quiet change nothing.
RESULT_FIELDS = ("dataset", "arch", "epochs", "lr", "bs", "max_per_class", "pipeline", "augment")


@dataclass
class SweepConfig:
    """A depth sweep: one run per (depth, seed). Build it with keywords or from a TOML file (``from_toml``)."""

    depths: Optional[list[int]] = None  # conv layers per model; None: [2, 3, 4] (a preset: its own depth)
    seeds: list[int] = field(default_factory=lambda: [0])  # one run per seed and depth; set_seed(seed)
    epochs: int = DEFAULT_EPOCHS  # fit_one_cycle epochs per run
    lr: Union[float, str] = DEFAULT_LR  # peak learning rate, or "find": lr_find's valley, once per depth
    bs: int = 64  # batch size
    arch: str = "bn"  # a name from list_models(): plain, bn, residual or a tutorial preset
    dataset: str = DEFAULT_SOURCE  # a name from list_datasets(), or the path of a folder or archive
    max_per_class: Optional[int] = None  # keep the first N images per class and split (None: all)
    pipeline: str = "fast"  # fast: images decoded once, batches from memory; pil: fastai's per-item PIL decode
    augment: bool = False  # random flip + pad-4-and-crop of training batches
    out: Optional[str] = None  # where the reports go; None: runs/<default_out_name()>
    device: str = "auto"  # auto (CUDA when available, else CPU), cpu or cuda; bf16 mixed precision on CUDA
    quiet: bool = False  # no progress bars and no per-run lines
    save_models: bool = False  # keep each trained model in <out>/models/{run_id}.pt (state dict + plain data)

    def __post_init__(self):
        self.arch = str(self.arch)
        model_spec(self.arch)  # raises: unknown arch, lists the known ones
        spec_depth = model_spec(self.arch).depth
        if self.depths is None or (isinstance(self.depths, (list, tuple)) and not self.depths):
            self.depths = [spec_depth] if spec_depth else list(DEFAULT_DEPTHS)
        self.depths = [check_depth(d, self.arch) for d in parse_int_list(self.depths, "depths")]
        self.seeds = parse_int_list(self.seeds, "seeds")
        if any(s < 0 for s in self.seeds):
            raise CnnDepthError(f"seeds must be whole numbers ≥ 0, got {self.seeds}")
        self.epochs = _whole(self.epochs, "epochs")
        self.bs = _whole(self.bs, "bs")
        if self.max_per_class is not None:
            self.max_per_class = _whole(self.max_per_class, "max_per_class")
        self.lr = parse_lr(self.lr)
        self.dataset = resolve_dataset(self.dataset)
        if self.device not in DEVICES:
            raise CnnDepthError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.out is not None:
            self.out = str(self.out)
        self.quiet = bool(self.quiet)
        if self.pipeline not in PIPELINES:
            raise CnnDepthError(f"pipeline must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}")
        self.augment = bool(self.augment)
        self.save_models = bool(self.save_models)

    @property
    def dataset_label(self) -> str:
        """The dataset's short name for tables and folder names: a registry name or the path's file name."""
        return dataset_label(self.dataset)

    def default_out_name(self) -> str:
        """Folder name under ``runs/`` from the config, e.g. ``cifar10-sample-bn-d2-4-s0-e5``.

        Non-default lr, bs and max_per_class are appended (``-lr0.01``, ``-lrfind``, ``-bs32``, ``-m50``),
        so two commands that differ in a result-defining option never share a folder by default.
        """
        name = f"{self.dataset_label}-{self.arch}-d{compact_ints(self.depths)}-s{compact_ints(self.seeds)}-e{self.epochs}"
        if self.lr != DEFAULT_LR:
            name += f"-lr{self.lr:g}" if isinstance(self.lr, float) else f"-lr{self.lr}"
        if self.bs != 64:
            name += f"-bs{self.bs}"
        if self.max_per_class is not None:
            name += f"-m{self.max_per_class}"
        if self.pipeline != "fast":
            name += f"-{self.pipeline}"
        if self.augment:
            name += "-aug"
        return name

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.default_out_name()

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_toml(cls, path: Union[str, os.PathLike], **overrides) -> "SweepConfig":
        """Read a TOML file of SweepConfig fields (``max-per-class`` or ``max_per_class``); ``overrides`` win."""
        return cls(**{**read_toml(path), **{k: v for k, v in overrides.items() if v is not None}})


def config_keys() -> list[str]:
    return [f.name for f in fields(SweepConfig)]


def read_toml(path: Union[str, os.PathLike]) -> dict:
    """The SweepConfig fields in a TOML file; unknown keys are a one-line error listing the valid ones."""
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CnnDepthError(f"no such config file: {path}; check the path given to --config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CnnDepthError(f"cannot read config file {path} ({e}); check the path given to --config") from None
    except tomllib.TOMLDecodeError as e:
        raise CnnDepthError(f"{path} is not valid TOML ({e}); fix the file, e.g. depths = [2, 3, 4]") from None
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(config_keys()))
    if unknown:
        raise CnnDepthError(f"unknown key(s) {', '.join(unknown)} in {path}; valid keys: {', '.join(config_keys())}")
    return data


def _whole(value, name: str) -> int:
    """A whole number ≥ 1 (ints and integral floats or strings), else a one-line error."""
    try:
        ok = not isinstance(value, bool) and float(value) == int(float(value))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or int(float(value)) < 1:
        raise CnnDepthError(f"{name} must be a whole number ≥ 1, got {value!r}")
    return int(float(value))


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_int_list(value, name: str = "depths") -> list[int]:
    """``[2, 3, 4]``, ``"2 3 4"``, ``"2,3,4"``, ``"2-8"`` or mixes (``"1,3-5 8"``) -> ints, duplicates dropped."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    out: list[int] = []
    for item in value:
        if isinstance(item, bool):
            raise CnnDepthError(f"{name}: {item!r} is not a whole number; e.g. --{name} 2 3 4")
        if isinstance(item, int):
            out.append(item)
            continue
        if isinstance(item, float) and item.is_integer():
            out.append(int(item))
            continue
        for tok in re.split(r"[,\s]+", str(item).strip()):
            if not tok:
                continue
            m = _RANGE.match(tok)
            if not m:
                if re.fullmatch(r"-\d+", tok):
                    raise CnnDepthError(f"{name} must be ≥ {0 if name == 'seeds' else 1}, got {tok}")
                raise CnnDepthError(f"{name}: {tok!r} is not a whole number or a range; write e.g. --{name} 2 3 4, "
                                    f"--{name} 2,3,4 or --{name} 2-8")
            lo, hi = int(m[1]), int(m[2] or m[1])
            if hi < lo:
                raise CnnDepthError(f"{name}: range {tok} goes down; write it low-high, e.g. {hi}-{lo}")
            out.extend(range(lo, hi + 1))
    if not out:
        raise CnnDepthError(f"{name}: give at least one, e.g. --{name} 2 3 4")
    return list(dict.fromkeys(out))


def parse_lr(value) -> Union[float, str]:
    """A positive finite learning rate, or the string ``"find"``."""
    if isinstance(value, str) and value.strip().lower() == "find":
        return "find"
    try:
        lr = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        lr = math.nan
    if not (lr > 0 and math.isfinite(lr)):
        raise CnnDepthError(f"lr must be a positive number (e.g. 3e-3) or 'find', got {value!r}")
    return lr


def resolve_dataset(dataset) -> str:
    """A registry name as it is; a path made absolute (it must exist), else a one-line error."""
    name = str(dataset)
    if name in list_datasets():
        return name
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if "/" not in name and "." not in name:
        raise CnnDepthError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}, "
                            f"or give a folder or archive with --data PATH")
    raise CnnDepthError(f"no such file or folder: {path}; check the path given to --data")


def dataset_label(dataset: str) -> str:
    if dataset in list_datasets():
        return dataset
    name = Path(dataset).name
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def compact_ints(values: list[int]) -> str:
    """``[2, 3, 4]`` -> ``2-4``; ``[2, 4, 8]`` -> ``2_4_8``; ``[1, 2, 3, 8]`` -> ``1-3_8`` (folder-name safe)."""
    parts, start = [], None
    vals = list(values)
    for i, v in enumerate(vals):
        if start is None:
            start = v
        if i + 1 == len(vals) or vals[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return "_".join(parts)
