"""The one config object of a depth sweep: what to train, for how long, on what, and where to write.

``asdict(SweepConfig)`` goes into every ``sweep.json`` next to the results, together with the environment
(versions, device, git commit), so every number in the reports can be traced to how it was made.

This module is also the one source of truth for the sweep's options: each field's default and help text
are read by the CLI (``cnn-depth sweep --help``) and by the TOML reader, and a test checks the options table
in ``docs/cli.md`` against them. Strings from a command line or a TOML file are turned into typed values
once, by :func:`coerce_options`; ``SweepConfig`` itself takes typed values only.
"""
from __future__ import annotations

import datetime
import math
import os
import re
import tomllib
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from .errors import CnnDepthError, check_int
from .transfer import TRANSFER_TAGS, check_transfer

# .data and .models import fastai and torch (seconds): they are imported where they are used, so that the CLI
# reads these fields for `cnn-depth sweep --help` without them (tests/test_cli_startup.py checks both).
DEFAULT_SOURCE = "cifar10-sample"  # the same as data.DEFAULT_SOURCE (tests/test_cli_startup.py checks it)

DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**32 - 1  # numpy's seed range, which fastai's set_seed feeds
MAX_RUNS = 10_000  # depths × seeds: a guard against typos such as --seeds 0-30000000
TRACKERS = ("tensorboard", "mlflow", "wandb")  # --track (cnn_depth.tracking)


def _field(default, help: str, shown: Optional[str] = None, factory=None, setting: Optional["Setting"] = None) -> Field:
    """A config field with its help text (for ``--help`` and the docs), how its default is shown, and, for a
    field that decides a run's numbers, its :class:`Setting`."""
    meta = dict(help=help, shown=shown, setting=setting)
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


def _plain(v) -> Any:
    return v


@dataclass(frozen=True)
class Setting:
    """A SweepConfig field that decides a run's numbers, marked once on the field (``_field(setting=...)``).

    Every list of the settings is read from these marks: :data:`RESULT_FIELDS` (a folder holds runs of one
    value or one grid of them), the results.csv columns (``records.RESULT_COLUMNS``, ``SETTING_COLUMNS``),
    the reports' groups (``reports.GROUP``) and their labels, a run's row (``run.new_row``), the data
    settings (:func:`data_settings`: ``dataloaders``' keywords and the worker cache key), the default folder
    name (:meth:`SweepConfig.default_out_name`), a grid's run ids (:meth:`SweepConfig.run_tag`), the command
    that remakes a sweep (:func:`sweep_flags`, ``checkpoint.resave_command``) and sweep.json's check. Each
    takes a list (a grid: one run per combination, depth and seed).
    """

    column: str  # its results.csv column (summary.csv's too, and the reports' group key)
    words: str  # how notes name it ("batch size")
    tag: Callable[[Any], str]  # a value in a folder name or run id: "lr0.003", "aug"/"noaug"
    shown: Callable[[str], str] = _plain  # a value (as a group key) in a label: "lr 0.003", "no augment"
    cell: Callable[[Any], Any] = _plain  # a value as its results.csv cell
    data: bool = False  # decides the DataLoaders (a dataloaders() keyword of the same name)
    always: bool = False  # in the default folder name at its default value too
    identity: Optional[str] = None  # the run-identity column (records.RUN_FIELDS) naming it, where not `column`
    kind: str = "text"  # how its column reads back (records.Column: text, int, bool, lr_setting)
    low: float = -math.inf  # ... and its lowest value
    after: Optional[str] = None  # results.csv: the column it follows (None: last before status)
    rank: float = math.inf  # its place among SETTING_COLUMNS and reports.GROUP (inf: last)
    empty: str = "?"  # what an empty cell means in a group key (rows from before the column existed)
    keyword: Optional[str] = None  # data: its dataloaders() keyword, where not the field's name
    unsaid: tuple = ()  # group-key texts the reports' shared line leaves out (what every run had before it existed)


def _onoff(word: str, off: str, on_label: str, off_label: str) -> dict:
    return dict(tag=lambda v: word if v else off, kind="bool",
                shown=lambda v: {"True": on_label, "False": off_label}.get(v, f"{on_label} ?"))


@dataclass
class SweepConfig:
    """A depth sweep: one run per (depth, seed). Build it with keywords or from a TOML file (``from_toml``)."""

    depths: Optional[list[int]] = _field(
        None, "Depths to train (conv layers per model; hidden layers for mlp): 2 3 4, 2,3,4 or 2-8.",
        shown="2 3 4; a preset: its own depth")
    seeds: Union[list[int], str] = _field(None, "Seeds, one run each per depth: 0 1 2 or 0-2; or auto: seeds until "
                                                "the answer is clear (--min-seeds, --max-seeds, --margin, --compare).",
                                          shown="0", factory=lambda: [0])
    # --seeds auto (cnn_depth.sequential): which seeds run, not what a run's numbers are (see RESULT_FIELDS)
    min_seeds: int = _field(3, "With --seeds auto: seeds every depth (of every combination) runs before any stops "
                               "(2 at least).")
    max_seeds: int = _field(10, "With --seeds auto: no depth runs more seeds than this (the rule's last planned look).")
    margin: Optional[float] = _field(None, "With --seeds auto: accuracy points within which two depths count as "
                                           "equivalent (stop adding seeds), e.g. 0.5; off: only separation or "
                                           "--max-seeds stops.", shown="off")
    compare: Optional[list[str]] = _field(None, "With --seeds auto: the pair to settle, ARCH:DEPTH ARCH:DEPTH or "
                                                "DEPTH DEPTH (e.g. 20 8); in a grid two cells VALUES:DEPTH (e.g. "
                                                "residual:20 bn:20, residual,lr=0.001:20 ...), instead of each depth "
                                                "with the best.",
                                          shown="each depth with the best")
    # ≈ 13 s per depth (2-4) on 2 CPU cores, sample
    epochs: int = _field(5, "Epochs per run (fit_one_cycle; --transfer modes count every epoch).",
                         setting=Setting("epochs", "epochs", lambda v: f"e{v}", lambda v: f"{v} ep", always=True,
                                         kind="int", low=1, after="source", rank=1))
    # Peak lr of fit_one_cycle: safe for the plain nets too; on the sample, bn depths 3 and 4 gained 2-3 points
    # of accuracy with 1e-2 (one seed, within noise of ±1.6 points on 1,000 images).
    lr: Union[float, str] = _field(3e-3, "Peak learning rate, or 'find': lr_find's valley, once per depth.",
                                   setting=Setting("lr_setting", "lr", lambda v: f"lr{v:g}" if isinstance(v, float)
                                                   else f"lr{v}", lambda v: f"lr {v}", kind="lr_setting",
                                                   low=math.ulp(0.0), after="epochs", rank=2))
    bs: int = _field(64, "Batch size.", setting=Setting("bs", "batch size", lambda v: f"bs{v}", lambda v: f"bs {v}",
                                                        data=True, kind="int", low=1, after="lr", rank=3))
    arch: str = _field("bn", "Model: a name from cnn-depth models (plain, bn, residual, mlp, a preset, resnet18, "
                             "resnet50 or vgg16).", setting=Setting("arch", "arch", str, always=True, rank=0.5))
    pretrained: bool = _field(False, "resnet18/resnet50/vgg16 from ImageNet weights (torch hub cache, else "
                                     "downloaded); off: from scratch.",
                              setting=Setting("pretrained", "pretrained weights", after="precision", rank=10,
                                              **_onoff("pretrained", "scratch", "pretrained", "from scratch")))
    transfer: Optional[str] = _field(None, "With --pretrained: feature-extraction (body frozen, head trained) or "
                                           "fine-tune (fastai's fine_tune: 1 frozen epoch, then all).",
                                     shown="fine-tune with --pretrained",
                                     setting=Setting("transfer", "transfer", lambda v: TRANSFER_TAGS.get(v, "scratch"),
                                                     lambda v: "no transfer" if v == "none" else v,
                                                     lambda v: v or "", after="pretrained", rank=11, empty="none"))
    dataset: str = _field(DEFAULT_SOURCE, "A registered dataset (cnn-depth datasets), or the path of a folder or "
                                          "archive (--data).",
                          setting=Setting("source", "data source", lambda v: dataset_label(v), lambda v: f"from {v}",
                                          data=True, always=True, identity="dataset", after="seed", rank=0,
                                          keyword="source"))
    max_per_class: Optional[int] = _field(None, "Keep the first N images (series, volumes) per class and split.",
                                          shown="all",
                                          setting=Setting("max_per_class", "images per class",
                                                          lambda v: "mall" if v is None else f"m{v}",
                                                          lambda v: "all images" if v == "all" else f"{v}/class",
                                                          lambda v: "" if v is None else v, data=True, kind="int",
                                                          low=1, after="bs", rank=4, empty="all"))
    pipeline: str = _field("fast", "Data pipeline: fast (images decoded once, batches from memory) or pil "
                                   "(fastai's per-item PIL decode).",
                           setting=Setting("pipeline", "pipeline", str, lambda v: f"{v} pipeline", data=True,
                                           after="max_per_class", rank=5))
    augment: bool = _field(False, "Random flip + pad-4-and-crop of training batches (series: a random shift in "
                                  "time, up to 1/8 of the length; volumes: random flips along each axis).",
                           setting=Setting("augment", "augmentation", data=True, after="pipeline", rank=6,
                                           **_onoff("aug", "noaug", "augment", "no augment")))
    # Off: on 2 CPU cores a tiny sweep was slower compiled, compile time included (experiments/README.md).
    compile: bool = _field(False, "torch.compile each run's model (recorded per row; a model that cannot be "
                                  "compiled trains eagerly, with one line).",
                           setting=Setting("compile", "torch.compile", lambda v: "compile" if v else "eager",
                                           lambda v: {"off": "eager", "on": "compiled"}.get(v, f"compile {v}"),
                                           lambda v: "on" if v else "off", after="augment", rank=12, empty="off",
                                           unsaid=("off",)))  # eager, as every run before --compile
    # Arrays (series, volumes: cnn_depth.arrays): how the files are read and split. Each is a dataloaders()
    # keyword; images refuse dims, pad and fill in one line, and a split of their own makes split_seed moot.
    dims: Optional[int] = _field(None, "Arrays: read each file as 1 (series), 2 (images) or 3 (volumes) spatial "
                                       "dimensions; default: the data decides (a file of 1-2 dims is a series, of 3-4 "
                                       "a volume).", shown="the data's",
                                 setting=Setting("dims", "dims", lambda v: f"dims{v or 'auto'}",
                                                 lambda v: "dims auto" if v == "auto" else f"dims {v}",
                                                 lambda v: "" if v is None else v, data=True, kind="int", low=1,
                                                 after="kind", rank=14, empty="auto", unsaid=("auto",)))
    pad: bool = _field(False, "Series: zero-pad series shorter than the longest at the end (off: different lengths "
                              "are one line naming a file).",
                       setting=Setting("pad", "padding", data=True, after="dims", rank=15, empty="False",
                                       unsaid=("False",), **_onoff("pad", "nopad", "padded", "no pad")))
    fill: Optional[float] = _field(None, "Arrays: the value that replaces missing values (NaN), e.g. 0; off: a "
                                         "NaN is one line naming the file.", shown="off",
                                   setting=Setting("fill", "NaN fill",
                                                   lambda v: "nofill" if v is None else f"fill{v:g}",
                                                   lambda v: "NaN refused" if v == "none" else f"NaN→{v}",
                                                   lambda v: "" if v is None else v, data=True, kind="number",
                                                   after="pad", rank=16, empty="none", unsaid=("none",)))
    # Not --seeds: every run of a sweep validates on the same split, whatever its seed.
    split_seed: int = _field(0, "Arrays in one folder of classes (no train/valid folders): the seed of the random "
                                "validation split (20% of each class), the same for every run and seed of the "
                                "sweep.",
                             setting=Setting("split_seed", "validation split seed", lambda v: f"split{v}",
                                             lambda v: f"split seed {v}", data=True, kind="int", low=0,
                                             after="fill", rank=17, empty="0", keyword="seed", unsaid=("0",)))
    out: Optional[str] = _field(None, "Folder for the reports; rerun with it to resume.",
                                shown="runs/<dataset>-<arch>-d<depths>-s<seeds>-e<epochs>[...]")
    device: str = _field("auto", "auto (CUDA when available), cpu or cuda; bf16 mixed precision on CUDA.")
    quiet: bool = _field(False, "No progress bars or per-run lines; just the summary.")
    save_models: bool = _field(False, "Keep each trained model in OUT/models/ (for cnn-depth explain).")
    # How runs are spread over the machine (or a Ray cluster). None of these changes a run's numbers, except
    # threads in the last digits, so each row records its threads.
    workers: Union[int, str] = _field("auto", "Runs at once on this machine, each in its own process: a number, "
                                              "or auto (one per core when the sweep has enough work to pay for "
                                              "starting them, else 1; see docs/cli.md).")
    threads: Union[int, str] = _field("auto", "torch threads per run: a number, or auto (the cores divided "
                                              "among the workers; run serially, the cores other processes "
                                              "leave free).")
    runs_per_gpu: Union[int, str] = _field("auto", "Runs at once on each visible GPU (CUDA only): a number, or auto "
                                                   "(as many as the free cores, the GPU's free memory and the runs "
                                                   "allow; see docs/cli.md).")
    ray: Optional[str] = _field(None, "Run each run as a Ray task: local (start Ray here), auto (the running "
                                      "cluster) or ADDRESS; RAY_ADDRESS in the environment counts too.",
                                shown="off")
    # Where the runs are also logged (cnn_depth.tracking); like quiet and workers, it changes no result.
    track: list[str] = _field(None, "Also log each run to tensorboard, mlflow or wandb (several: --track tensorboard "
                                    "mlflow); offline, under OUT, unless MLFLOW_TRACKING_URI or WANDB_MODE=online "
                                    "(docs/tracking.md).", shown="off", factory=list)
    yes: bool = _field(False, f"Go on with a sweep of more than {MAX_RUNS:,} runs (a large grid).")

    def __post_init__(self):
        from .data import PIPELINES, resolve_source
        from .models import check_depth, model_spec

        for name in settings():  # a list is a grid (one run per combination); a list of one is that value
            if isinstance(getattr(self, name), (list, tuple)):
                values = _grid_values(getattr(self, name), name)
                setattr(self, name, values[0] if len(values) == 1 else values)
        if self.varying():
            return self._check_grid()
        self._combos = [self]
        self.arch = _typed(self.arch, str, "arch")
        spec_depth = model_spec(self.arch).depth  # raises: unknown arch, lists the known ones
        if self.depths is None:
            self.depths = [spec_depth] if spec_depth else [2, 3, 4]
        self.depths = [check_depth(d, self.arch) for d in _int_list(self.depths, "depths")]
        if self.seeds == "auto":
            _check_auto_seeds(self)
            self.compare = _check_compare(self, [self], [])
        else:
            self.seeds = [check_int(s, "seeds", 0, MAX_SEED) for s in _int_list(self.seeds, "seeds")]
            _no_auto_options(self)
        if len(self.depths) * (self.max_seeds if self.seeds == "auto" else len(self.seeds)) > MAX_RUNS and not self.yes:
            raise CnnDepthError(f"{len(self.depths)} depths × {self.max_seeds if self.seeds == 'auto' else len(self.seeds)}"
                                f" seeds is over {MAX_RUNS:,} runs; give fewer depths or seeds (or --yes to go on)")
        self.epochs = check_int(self.epochs, "epochs")
        self.transfer = _transfer(self.arch, _typed(self.pretrained, bool, "pretrained"), self.transfer, self.epochs)
        self.bs = check_int(self.bs, "bs")
        if self.max_per_class is not None:
            self.max_per_class = check_int(self.max_per_class, "max_per_class")
        self.lr = self.lr if self.lr == "find" else _positive(self.lr, "lr")
        from .arrays import check_dims, check_fill

        self.dims, self.fill = check_dims(self.dims), check_fill(self.fill)
        self.split_seed = check_int(self.split_seed, "split_seed", 0, MAX_SEED)
        self.dataset = str(resolve_source(_typed(self.dataset, (str, os.PathLike), "dataset")))
        for name, choices in (("device", DEVICES), ("pipeline", PIPELINES)):
            if getattr(self, name) not in choices:
                raise CnnDepthError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.out is not None:
            self.out = str(_typed(self.out, (str, os.PathLike), "out"))
            if not self.out.strip():  # "" would silently mean the default folder
                raise CnnDepthError("out is empty; give a folder (e.g. --out runs/x), or leave out --out for the "
                                    "default")
        for name in ("augment", "compile", "pad", "quiet", "save_models", "yes"):
            _typed(getattr(self, name), bool, name)
        for name in ("workers", "threads", "runs_per_gpu"):
            if getattr(self, name) != "auto":
                setattr(self, name, check_int(getattr(self, name), name, hint=f"; or {name}='auto'"))
        if self.ray is not None:
            self.ray = _typed(self.ray, str, "ray").strip() or None
        self.track = parse_track(self.track)

    @property
    def dataset_label(self) -> str:
        """The dataset's short name for tables and folder names: a registry name or the path's file name."""
        return dataset_label(self.dataset)

    def varying(self) -> list[str]:
        """The settings that take several values (a grid), in field order; empty for one combination."""
        return [name for name in settings() if isinstance(getattr(self, name), list)]

    def combinations(self) -> list["SweepConfig"]:
        """One config per combination of the grid's values (each setting one value), in grid order (the
        first varying setting slowest); ``[self]`` when nothing varies."""
        return list(self._combos)

    def _check_grid(self) -> None:
        """A grid: its size (at most ``MAX_RUNS`` runs without ``yes``), then every combination checked as a
        config of its own (so a bad value, or a pair that cannot go together, is the same one line as without
        a grid); the shared fields and each setting's values as the combinations normalised them."""
        import itertools

        from .models import model_spec

        varying = self.varying()
        if self.seeds == "auto":  # seeds until the answer is clear, per combination (its depths with its top)
            _check_auto_seeds(self)
        if self.depths is None:  # the archs' own depth where they agree, else the families' default
            archs = self.arch if isinstance(self.arch, list) else [self.arch]
            own = {model_spec(_typed(a, str, "arch")).depth for a in archs}
            if len(own) > 1:
                raise CnnDepthError(f"the archs {', '.join(archs)} have no depth in common (presets have their own); "
                                    f"give --depths")
            self.depths = [own.pop() or 2] if own != {None} else [2, 3, 4]
        depths = _int_list(self.depths, "depths")
        n_seeds = self.max_seeds if self.seeds == "auto" else len(_int_list(self.seeds, "seeds"))
        sizes = [len(getattr(self, n)) for n in varying]
        runs = math.prod(sizes) * len(depths) * n_seeds
        if runs > MAX_RUNS and not self.yes:
            grid = " × ".join(f"{k} {n if n.endswith('s') else n + 's'}" for n, k in zip(varying, sizes))
            seeds = f"{n_seeds} seeds (--max-seeds)" if self.seeds == "auto" else f"{n_seeds} seeds"
            raise CnnDepthError(f"{grid} × {len(depths)} depths × {seeds} is {runs:,} runs, over "
                                f"{MAX_RUNS:,}; give fewer values, or --yes to go on")
        given = {f.name: getattr(self, f.name) for f in fields(self)}
        compare = given["compare"]
        if self.seeds == "auto":
            given["compare"] = None  # cells of the grid: checked against every combination below
        combos = [SweepConfig(**dict(given, **dict(zip(varying, values)), yes=True))
                  for values in itertools.product(*(getattr(self, n) for n in varying))]
        for c in combos:
            c.yes = self.yes
        for f in fields(self):
            if f.name not in settings():  # checked and shared: as every combination made it
                setattr(self, f.name, getattr(combos[0], f.name))
                continue
            values = list(dict.fromkeys(_key(getattr(c, f.name)) for c in combos))
            if f.name in varying:
                setattr(self, f.name, [_unkey(v) for v in values])
            elif len(values) == 1:  # shared, as each combination made it (a dataset's path resolved, ...)
                setattr(self, f.name, getattr(combos[0], f.name))
            # else: derived per combination (transfer with and without --pretrained): kept as given
        self._combos = combos
        if self.seeds == "auto":
            self.compare = compare
            self.compare = _check_compare(self, combos, varying)

    def run_tag(self, varying: Sequence[str]) -> str:
        """The part of a run id after ``{arch}-d{depth}-s{seed}`` for this combination, when the settings
        ``varying`` vary in its folder: ``-lr0.003-bs128-aug``; empty when only arch (or nothing) varies, so a
        one-combination sweep keeps the run ids it always had."""
        return "".join(f"-{setting(n).tag(getattr(self, n))}" for n in ordered_settings() if n in varying
                       and n != "arch")

    def default_out_name(self) -> str:
        """Folder name under ``runs/`` from the config, e.g. ``cifar10-sample-bn-d2-4-s0-e5``.

        Non-default settings are appended (``-lr0.01``, ``-lrfind``, ``-bs32``, ``-m50``, ``-aug``), so two
        commands that differ in a result-defining option never share a folder by default. A grid says what
        varies, with its values (``-bn_residual``, ``-lr0.001_0.003``), or their number where that would be
        long (``-6lrs``).
        """
        parts = []
        for name in ordered_settings():
            s, value = setting(name), getattr(self, name)
            if isinstance(value, list):
                parts.append(_grid_tag(name, [s.tag(v) for v in value]))
            elif s.always or value != default(name):
                parts.append(s.tag(value))
            if name == "arch":  # the runs: after what names them (seeds auto: one folder whatever --max-seeds)
                seeds = "auto" if self.seeds == "auto" else compact_ints(self.seeds)
                parts += [f"d{compact_ints(self.depths)}", f"s{seeds}"]
        return "-".join(p for p in parts if p)

    def plan(self):
        """The :class:`cnn_depth.sequential.Plan` of ``--seeds auto`` (None for a fixed list of seeds). Without a
        grid its combinations are the depths (``--compare``'s pair as ``(depth, depth)``); in a grid the cells
        ``(combination name, depth)`` (:func:`combination_name`), each combination's depths compared with its
        own top, and ``Plan.grid`` names the settings that vary."""
        if self.seeds != "auto":
            return None
        from .sequential import Plan

        grid = tuple(self.varying())
        cells = [c.rpartition(":") for c in self.compare or []]
        pairs = (tuple((n, int(d)) if grid else int(d) for n, _, d in cells),) if cells else None
        return Plan(min_seeds=self.min_seeds, max_seeds=self.max_seeds, margin=self.margin, pairs=pairs, grid=grid)

    def cell_names(self) -> list[str]:
        """Each combination's name in the rule's cells (:func:`combination_name`), in grid order; a sweep of one
        combination has none (its cells are depths)."""
        return [combination_name(_texts(c, self.varying())) for c in self.combinations()] if self.varying() else []

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.default_out_name()

    def as_dict(self) -> dict:
        """The config as sweep.json keeps it: every field but ``yes`` (this command's consent to a large
        sweep, not a property of it)."""
        d = asdict(self)
        d.pop("yes")
        return d

    @classmethod
    def from_toml(cls, path: Optional[Union[str, os.PathLike]] = None, **overrides) -> "SweepConfig":
        """The fields in a TOML file (``max-per-class`` or ``max_per_class``), overridden by ``overrides``
        (None values are left out), each turned into its type by :func:`coerce_options`.

        This is how the CLI merges ``--config`` with the flags given on the command line; ``path`` may be None.
        """
        options = coerce_options(read_toml(path), f"in {path}") if path is not None else {}
        options.update(coerce_options({k: v for k, v in overrides.items() if v is not None}))
        return cls(**options)


def settings() -> dict[str, Setting]:
    """The fields that decide a run's numbers (marked with a :class:`Setting`), in field order."""
    return {f.name: f.metadata["setting"] for f in fields(SweepConfig) if f.metadata.get("setting")}


def setting(name: str) -> Setting:
    return settings()[name]


# The fields that decide what a run's numbers are, by their rank (the reports' order). A sweep folder holds runs
# of one value of each, or of one grid of them; resuming into a folder made with another value is refused (a
# grid may gain values). depths and seeds only pick which runs exist (a sweep may be extended with more of
# them); device and threads are recorded per row; out and quiet change nothing.
RESULT_FIELDS = tuple(sorted(settings(), key=lambda n: setting(n).rank))


def ordered_settings() -> list[str]:
    """The settings in the order of their results.csv columns: the order of a folder name's parts and of a
    run id's tags."""
    from .records import RESULT_COLUMNS

    return sorted(settings(), key=lambda n: RESULT_COLUMNS.index(setting(n).identity or setting(n).column))


def data_settings(cfg: "SweepConfig") -> dict:
    """The data settings of one combination as ``dataloaders``' keywords (``dataset`` as its ``source``): what
    the DataLoaders depend on, and so the key of the worker's and the calibration's caches."""
    return {(s.keyword or n): getattr(cfg, n) for n, s in settings().items() if s.data}


def data_key(cfg: "SweepConfig", device) -> tuple:
    """The worker cache's key of a combination's DataLoaders on ``device``."""
    return ("dls", *data_settings(cfg).values(), str(device))


def setting_cells(cfg: "SweepConfig") -> dict:
    """A combination's settings as results.csv cells: ``{column: cell}``."""
    return {s.column: s.cell(getattr(cfg, n)) for n, s in settings().items()}


def sweep_flags(name: str, value) -> list[str]:
    """The command-line words that give the field ``name`` its ``value`` (a list: a grid): ``--lr 0.003``,
    ``--augment``/``--no-augment``/``--augment on off``, ``--data PATH``/``--dataset NAME``."""
    values = value if isinstance(value, list) else [value]
    if name == "dataset":
        return ["--data" if any("/" in str(v) or "\\" in str(v) for v in values) else "--dataset", *map(str, values)]
    flag = f"--{name.replace('_', '-')}"
    if all(isinstance(v, bool) for v in values):
        return [flag, *("on" if v else "off" for v in values)] if len(values) > 1 else \
            [f"--{'' if values[0] else 'no-'}{name.replace('_', '-')}"]
    return [flag, *(f"{v:g}" if isinstance(v, float) else str(v) for v in values)]


def _grid_tag(name: str, tags: list[str]) -> str:
    """A grid's values in a folder name: ``bn_residual``, ``lr0.001_0.003`` (the tags' shared letters once),
    ``aug_noaug``; their number where that is long (``6lrs``)."""
    import os.path

    prefix = re.match(r"[a-z]*", os.path.commonprefix(tags))[0] if len(tags) > 1 else ""
    prefix = prefix if all(t[len(prefix):] for t in tags) else ""
    text = prefix + "_".join(t[len(prefix):] for t in tags)
    return text if len(text) <= 24 else f"{len(tags)}{name if name.endswith('s') else name + 's'}"


def _grid_values(value, name: str) -> list:
    """A setting's list of values: at least one, duplicates dropped."""
    values = list(dict.fromkeys(_key(v) for v in value))
    if not values:
        raise CnnDepthError(f"{name} is an empty list; give at least one value, e.g. --{name.replace('_', '-')} "
                            f"{shown_default(name)}")
    return [_unkey(v) for v in values]


def _key(v):
    """A value as a dict key (a path as its text), telling True from 1."""
    return (type(v).__name__, str(v) if isinstance(v, os.PathLike) else v) if isinstance(v, (bool, os.PathLike)) \
        else v


def _unkey(v):
    return v[1] if isinstance(v, tuple) else v


def config_keys() -> list[str]:
    """The names of SweepConfig's fields: the TOML keys and (with ``-`` for ``_``) the CLI options."""
    return [f.name for f in fields(SweepConfig)]


def config_field(name: str) -> Field:
    return next(f for f in fields(SweepConfig) if f.name == name)


def default(name: str) -> Any:
    """The default value of a SweepConfig field."""
    f = config_field(name)
    return f.default_factory() if f.default is MISSING else f.default


def shown_default(name: str) -> str:
    """A field's default as ``--help`` and the docs show it (``3e-3``, ``off``, ``2 3 4 (a preset: its own)``)."""
    f = config_field(name)
    if f.metadata.get("shown"):
        return f.metadata["shown"]
    value = default(name)
    return "off" if value is False else "on" if value is True else f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------------------
# The boundary: command-line strings and TOML values into typed fields


def read_toml(path: Union[str, os.PathLike]) -> dict:
    """The SweepConfig fields in a TOML file as written; unknown keys are a one-line error listing the valid
    ones."""
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CnnDepthError(f"no such config file: {path}; check the path given to --config") from e
    except (OSError, UnicodeDecodeError) as e:
        raise CnnDepthError(f"cannot read config file {path} ({type(e).__name__}: {e}); check the path given to "
                            f"--config") from e
    except tomllib.TOMLDecodeError as e:
        raise CnnDepthError(f"{path} is not valid TOML ({e}); fix the file, e.g. depths = [2, 3, 4]") from e
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(config_keys()))
    if unknown:
        raise CnnDepthError(f"unknown key(s) {', '.join(unknown)} in {path}; valid keys: {', '.join(config_keys())}")
    return data


def coerce_options(options: dict, where: str = "") -> dict:
    """Options from a command line or a TOML file as SweepConfig's types, strictly; one-line errors.

    ``depths`` and ``seeds`` take a list of whole numbers or a string (``"2 3 4"``, ``"2,3,4"``, ``"2-8"``);
    ``lr`` a number or ``"find"`` (or a string holding a number, from the command line); booleans must be
    booleans (``augment = "false"`` is refused, not taken as true); numbers must be whole where the field is.
    ``where`` names the source in messages (``"in sweep.toml"``; empty for the command line).

    The settings that decide a run's numbers (:func:`settings`) also take a list, a grid: a TOML list
    (``arch = ["bn", "residual"]``), the command line's values (joined by :data:`GRID_SEP`), ``"a,b"`` for
    numbers and names, and ``"both"`` (or ``on off``) for a switch such as ``augment``.
    """
    out = {}
    for name, value in options.items():
        items = _grid_items(name, value, where)
        if items is not None:  # several values of a setting: a grid
            out[name] = [coerce_options({name: v}, where)[name] for v in items]
            continue
        if name == "seeds" and isinstance(value, str) and value.strip().lower() == "auto":
            out[name] = "auto"
        elif name in ("depths", "seeds"):
            out[name] = parse_int_list(value, name, where)
        elif name == "margin":
            out[name] = _typed(float(value) if isinstance(value, int) and not isinstance(value, bool) else value,
                               float, name, where)
        elif name == "compare":
            out[name] = parse_compare(value, where)
        elif name == "lr":
            out[name] = parse_lr(value, where)
        elif name in ("workers", "threads", "runs_per_gpu"):
            out[name] = _auto_or_int(value, name, where)
        elif name == "track":
            out[name] = parse_track(value, where)
        elif name == "dims" and isinstance(value, str) and value.strip().lower() == "auto":
            out[name] = None
        elif name == "fill":
            if not where and isinstance(value, str):  # from the command line (a grid's value), as typed
                try:
                    value = float(value)
                except ValueError:
                    pass
            out[name] = _typed(float(value) if isinstance(value, int) and not isinstance(value, bool) else value,
                               float, name, where)
        elif name in ("epochs", "bs", "max_per_class", "min_seeds", "max_seeds", "dims", "split_seed"):
            if not where and isinstance(value, str) and value.strip().isdigit():  # a grid's value, as typed
                value = int(value)
            out[name] = _typed(value, int, name, where)
        elif name in ("augment", "compile", "pad", "quiet", "save_models", "pretrained", "yes"):
            out[name] = _typed(value, bool, name, where)
        else:
            out[name] = _typed(value, str, name, where)
    return out


GRID_SEP = "\x1f"  # between the values of a setting given several times on the command line (cli.py)
_SWITCH = {"on": True, "off": False, "true": True, "false": False}


def _grid_items(name: str, value, where: str) -> Optional[list]:
    """The values of a setting given as a list (None: one value, as it is)."""
    if name not in settings():
        return None
    switch = isinstance(default(name), bool)
    if isinstance(value, str):
        if switch and value.strip().lower() == "both":
            return [True, False]
        seps = GRID_SEP if name == "dataset" else GRID_SEP + ","  # a path may hold a comma
        parts = [p.strip() for p in re.split(f"[{seps}]", value) if p.strip()]
        if GRID_SEP not in value and len(parts) < 2:
            return None
        value = parts
    elif not isinstance(value, (list, tuple)):
        return None
    if not value:
        raise CnnDepthError(f"{_named(name, where)} is an empty list; give at least one value, e.g. "
                            f"{name} = [{default(name)!r}]".replace("True", "true").replace("False", "false"))
    out = []
    for v in value:
        if switch and isinstance(v, str) and not where and v.strip().lower() in _SWITCH:  # --augment on off
            v = _SWITCH[v.strip().lower()]
        elif switch and isinstance(v, str) and v.strip().lower() == "both":
            out += [True, False]
            continue
        out.append(v)
    return out


_TYPE_NAMES = {int: "a whole number", bool: "true or false", str: "a string", float: "a number"}


def _typed(value, types, name: str, where: str = ""):
    """``value`` if it is of ``types`` (a bool is not an int), else a one-line error naming the type wanted."""
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return value
    wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types if t in _TYPE_NAMES) or "a path"
    got = type(value).__name__ if isinstance(value, (datetime.date, datetime.time, dict, list)) else repr(value)
    raise CnnDepthError(f"{_named(name, where)} must be {wanted}, got {got}")


def _auto_or_int(value, name: str, where: str = ""):
    """``"auto"`` or a whole number (a string holding one, from the command line)."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        if value.strip().isdigit():
            return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise CnnDepthError(f"{_named(name, where)} must be a whole number ≥ 1 or auto, got {value!r}")


def _named(name: str, where: str) -> str:
    return f"{name} {where}" if where else name


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_int_list(value, name: str = "depths", where: str = "") -> list[int]:
    """``[2, 3, 4]``, ``"2 3 4"``, ``"2,3,4"``, ``"2-8"`` or mixes (``"1,3-5 8"``) -> ints, duplicates dropped.

    Floats, booleans and dates are refused; a range may not hold more than ``MAX_RUNS`` numbers (so a typo
    such as ``0-300000000`` is an error, not a list that fills the memory).
    """
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        got = type(value).__name__ if isinstance(value, (datetime.date, datetime.time, dict)) else repr(value)
        raise CnnDepthError(f"{_named(name, where)} must be whole numbers: a list such as [2, 3, 4] or a string such "
                            f"as \"2-8\", got {got}")
    out: list[int] = []
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
            continue
        if not isinstance(item, str):
            raise CnnDepthError(f"{_named(name, where)}: {item!r} is not a whole number; e.g. --{name} 2 3 4 or "
                                f"{name} = [2, 3, 4]")
        for tok in re.split(r"[,\s]+", item.strip()):
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
            if name == "depths":
                from .models import MAX_DEPTH as limit
            else:
                limit = MAX_SEED
            if hi > limit or hi - lo >= MAX_RUNS:
                raise CnnDepthError(f"{name}: range {tok} is too large (at most {min(limit, MAX_RUNS):,} values, "
                                    f"up to {limit:,}); give a smaller range")
            out.extend(range(lo, hi + 1))
    if not out:
        raise CnnDepthError(f"{name}: give at least one, e.g. --{name} 2 3 4")
    return list(dict.fromkeys(out))


def parse_track(value, where: str = "") -> list[str]:
    """Tracker names: a list, or a string (``"tensorboard mlflow"``, ``"tensorboard,mlflow"``); each one of
    ``TRACKERS``, duplicates dropped; None or empty: none."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise CnnDepthError(f"{_named('track', where)} must be tracker names, e.g. track = [\"tensorboard\", "
                            f"\"mlflow\"], got {value!r}")
    names = [n.lower() for v in value for n in re.split(r"[,\s]+", v.strip()) if n]
    for n in names:
        if n not in TRACKERS:
            raise CnnDepthError(f"unknown tracker {n!r}{' ' + where if where else ''}; --track takes "
                                f"{', '.join(TRACKERS)}")
    return list(dict.fromkeys(names))


def parse_compare(value, where: str = "") -> Optional[list[str]]:
    """``--compare``'s cells as given: ``["bn:20", "bn:8"]``, ``"20 8"``, ``"bn:20,bn:8"``, ``[20, 8]`` (TOML),
    or a grid's cells ``"residual,lr=0.001:20 bn,lr=0.001:20"`` -> one string per cell, ``[VALUES:]DEPTH``
    (checked against the sweep by :class:`SweepConfig`). A comma joins the values of one cell
    (``residual,lr=0.001``) and also separates cells (``bn:20,bn:8``, as the command line gathers them): a
    cell ends at its ``:DEPTH``, or is a depth alone."""
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                       for v in value):
        raise CnnDepthError(f"{_named('compare', where)} must name two depths, e.g. --compare 20 8 or compare = "
                            f"[\"bn:20\", \"bn:8\"], got {value!r}")
    cells = []
    for token in (t for v in value for t in str(v).split() if t):
        spec = []
        for part in (p.strip() for p in token.split(",") if p.strip()):
            if ":" in part or (part.isdigit() and not spec):
                cells.append(",".join(spec + [part]))
                spec = []
            else:
                spec.append(part)
        if spec:
            cells.append(",".join(spec))
    return cells


def _check_auto_seeds(cfg: "SweepConfig") -> None:
    """``--seeds auto``'s numbers checked (one line each, before anything is written): ``min_seeds``,
    ``max_seeds`` and ``margin``."""
    cfg.min_seeds = check_int(cfg.min_seeds, "min_seeds", 2, MAX_SEED,
                              hint=" (one seed has no spread to compare); e.g. --min-seeds 3")
    cfg.max_seeds = check_int(cfg.max_seeds, "max_seeds", 1, MAX_SEED)
    if cfg.max_seeds < cfg.min_seeds:
        raise CnnDepthError(f"--max-seeds {cfg.max_seeds} is below --min-seeds {cfg.min_seeds}; give --max-seeds "
                            f"{cfg.min_seeds} or more")
    if cfg.margin is not None:
        m = cfg.margin
        if not (isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) and m > 0):
            raise CnnDepthError(f"margin is in accuracy points and must be above 0, e.g. --margin 0.5; got {m!r}")
        cfg.margin = float(m)


# --seeds auto in a grid names its cells (a combination and a depth) by their settings: the arch as it is,
# the other settings that vary as name=value (``residual,lr=0.001:20``), in --compare, the rule's lines,
# summary.csv's stopped column and sweep.json's plan. The reports rebuild the names from the rows.


def setting_text(name: str, value) -> str:
    """A setting's value as the reports read it back from results.csv (``reports._canon``): ``0.001``,
    ``find``, ``True``, ``all``, ``none``, the dataset's short name."""
    s = setting(name)
    if name == "dataset":
        return dataset_label(value)
    cell = s.cell(value)
    if cell is None or cell == "":
        return s.empty
    if isinstance(cell, bool):
        return str(cell)
    if isinstance(cell, float):
        return f"{cell:.10g}"
    return str(cell)


def setting_word(name: str, text: str) -> str:
    """A setting's value (its :func:`setting_text`) as a cell's name shows it and --compare takes it: a
    switch as on/off, anything else as it reads."""
    return {"True": "on", "False": "off"}.get(text, text) if setting(name).kind == "bool" else text


def combination_name(texts: dict) -> str:
    """A grid's combination from its settings' texts (``{name: text}``): the arch alone, then each other
    setting as name=value in results.csv's column order, e.g. ``residual,lr=0.001``."""
    words = [setting_word("arch", texts["arch"])] if "arch" in texts else []
    words += [f"{n}={setting_word(n, texts[n])}" for n in ordered_settings() if n in texts and n != "arch"]
    return ",".join(words)


def key_column(name: str) -> str:
    """The results.csv column whose text names a setting's value in a cell's name (the dataset: its short
    name)."""
    return setting(name).identity or setting(name).column


def _check_compare(cfg: "SweepConfig", combos: list, varying: Sequence[str]) -> Optional[list[str]]:
    """``--compare``'s two cells checked against the sweep: each names a depth of the sweep and (in a grid)
    one combination, by its values (``residual:20``; ``residual,lr=0.001:20``; a value alone where only one
    setting has it, else ``name=value``). Returns them as the rule names them (``bn:20`` without a grid;
    :func:`combination_name` ``:DEPTH`` in one); None: each depth with the best."""
    if not cfg.compare:
        return None
    names = parse_compare(cfg.compare)
    example = f"{combination_name(_texts(combos[-1], varying))}:{cfg.depths[-1]}"
    if len(names) != 2:
        raise CnnDepthError(f"--compare names a pair, two of ARCH:DEPTH or DEPTH (in a grid: VALUES:DEPTH, e.g. "
                            f"--compare {example} {combination_name(_texts(combos[0], varying))}:{cfg.depths[-1]}); "
                            f"got {len(names)}: {' '.join(names)}")
    out = [_compare_cell(name, combos, varying, cfg.depths, example) for name in names]
    if out[0] == out[1]:
        raise CnnDepthError(f"--compare names {out[0]} twice; name two different cells (depths, or combinations)")
    return out


def _texts(combo: "SweepConfig", varying: Sequence[str]) -> dict:
    """A combination's texts of arch and the settings that vary (what its cells' names are made of)."""
    return {n: setting_text(n, getattr(combo, n)) for n in ["arch", *[v for v in varying if v != "arch"]]}


def _parse_word(name: str, word: str):
    """A setting's value as --compare names it: on/off (or true/false) for a switch, else as the option takes it."""
    if setting(name).kind == "bool":
        if word.strip().lower() not in _SWITCH:
            raise CnnDepthError(f"{name} is on or off, got {word!r}")
        return _SWITCH[word.strip().lower()]
    return coerce_options({name: word})[name]


def _compare_cell(name: str, combos: list, varying: Sequence[str], depths: list, example: str) -> str:
    """One --compare cell as :func:`combination_name` ``:DEPTH``; a one-line error for a cell not in the sweep."""
    spec, _, depth = name.rpartition(":")
    if not depth.isdigit():
        raise CnnDepthError(f"--compare {name}: not ARCH:DEPTH or DEPTH (in a grid VALUES:DEPTH); e.g. --compare "
                            f"{example}")
    texts = [_texts(c, varying) for c in combos]
    left = list(range(len(combos)))
    for value in (v for v in spec.split(",") if v):
        key, eq, word = value.partition("=")
        key = key.strip().replace("-", "_")
        if eq and key not in settings():
            raise CnnDepthError(f"--compare {name}: {key} is not a setting of a run; name the values of "
                                f"{', '.join(['arch', *[v for v in varying if v != 'arch']])}")
        candidates = [key] if eq else ["arch", *[v for v in varying if v != "arch"]]
        matches = {}
        for n in candidates:
            try:
                text = setting_text(n, _parse_word(n, word if eq else value))
            except CnnDepthError:
                continue
            if isinstance(text, str) and any(t.get(n) == text for t in texts):
                matches[n] = text
        if not matches:
            if eq:
                have = " ".join(dict.fromkeys(setting_word(key, t[key]) for t in texts if key in t))
                flag = "--" + key.replace("_", "-")
                raise CnnDepthError(f"--compare {name}: {key} {word} is not in this sweep ({flag} "
                                    f"{have or 'does not vary here'}); name a cell of the grid, e.g. {example}")
            archs = " ".join(dict.fromkeys(t["arch"] for t in texts))
            raise CnnDepthError(f"--compare {name}: arch {value} is not in this sweep (--arch {archs}); name "
                                f"{example.rpartition(':')[0]}:DEPTH" + ("" if varying else " or just DEPTH"))
        if len(matches) > 1:
            raise CnnDepthError(f"--compare {name}: {value} is a value of {' and '.join(matches)}; say which, e.g. "
                                f"{next(iter(matches))}={value}")
        (n, text), = matches.items()
        left = [i for i in left if texts[i][n] == text]
    if not left:
        raise CnnDepthError(f"--compare {name}: no combination of the grid has all of {spec}; name a cell of the "
                            f"grid, e.g. {example}")
    if len(left) > 1:
        differ = [n for n in texts[left[0]] if len({texts[i][n] for i in left}) > 1]
        raise CnnDepthError(f"--compare {name} names {len(left)} combinations of the grid; add the value of "
                            f"{' and '.join(differ)}, e.g. --compare {combination_name(texts[left[0]])}:{depth}")
    if int(depth) not in depths:
        raise CnnDepthError(f"--compare {name}: depth {int(depth)} is not in this sweep (--depths "
                            f"{' '.join(map(str, depths))}); name two of its depths")
    return f"{combination_name(texts[left[0]])}:{int(depth)}"


def _no_auto_options(cfg: "SweepConfig") -> None:
    """``--min-seeds``, ``--max-seeds``, ``--margin`` and ``--compare`` mean something with ``--seeds auto``
    only: given with a list of seeds, one line rather than an option silently ignored."""
    for name in ("min_seeds", "max_seeds", "margin", "compare"):
        if getattr(cfg, name) not in (default(name), None, []):
            raise CnnDepthError(f"--{name.replace('_', '-')} works with --seeds auto only; add --seeds auto, or "
                                f"leave out --{name.replace('_', '-')} to run seeds {compact_ints(cfg.seeds)}")


def parse_lr(value, where: str = "") -> Union[float, str]:
    """A positive finite learning rate (a number, or a string holding one), or ``"find"``."""
    if isinstance(value, str) and value.strip().lower() == "find":
        return "find"
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    return _positive(number, "lr", where, given=value)


def _positive(value, name: str, where: str = "", given=None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        given = value if given is None else given
        raise CnnDepthError(f"{_named(name, where)} must be a positive number (e.g. 3e-3) or 'find', got {given!r}")
    return float(value)


def _transfer(arch: str, pretrained: bool, transfer, epochs: int) -> Optional[str]:
    """The transfer mode of a sweep: None from scratch; with ``pretrained``, as given or ``fine-tune``."""
    from .models import list_models, model_spec

    if transfer is not None:
        _typed(transfer, str, "transfer")
    kind = model_spec(arch).kind
    if pretrained and kind != "transfer":
        nets = ", ".join(n for n in list_models() if model_spec(n).kind == "transfer")
        raise CnnDepthError(f"--pretrained needs a pretrained net ({nets}); arch {arch} has no ImageNet weights: "
                            f"leave out --pretrained")
    if transfer is not None and not pretrained:
        raise CnnDepthError(f"--transfer {transfer} needs --pretrained (a frozen random body learns nothing); add "
                            f"--pretrained, or leave out --transfer to train {arch} from scratch")
    return check_transfer(transfer or "fine-tune", epochs) if pretrained else None


def _int_list(value, name: str) -> list[int]:
    """A list (or tuple) of values for ``depths``/``seeds``, as given to SweepConfig from Python."""
    if isinstance(value, (list, tuple)) and value:
        return list(dict.fromkeys(value))
    raise CnnDepthError(f"{name} must be a non-empty list of whole numbers, e.g. {name}=[2, 3, 4], got {value!r}")


def dataset_label(dataset: str) -> str:
    from .archives import ARCHIVE_SUFFIXES
    from .data import list_datasets

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
