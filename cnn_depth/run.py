"""One run of a sweep: seed it, build its Learner, train it, measure it, and give back its row.

Everything here runs where the run runs (the driver, a local worker process or a Ray task), from plain
arguments: :func:`run_job` is what an engine calls. The driver (:mod:`cnn_depth.sweep`) writes what comes back.
"""
from __future__ import annotations

import functools
import gc
import math
import platform
import random
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.tracker import TerminateOnNaNCallback
from fastai.torch_core import find_bs, set_seed

from .checkpoint import checkpoint_dict
from .config import SweepConfig, data_key, data_settings, setting_cells
from .data import list_datasets
from .errors import CnnDepthError
from .lean import lean_learner
from .learner import depth_learner, fit_learner
from .loaders import data_info, dataloaders
from .models import count_params
from .probes import activation_stats, fixed_valid_batch
from .records import RESULT_COLUMNS, run_fields


# ---------------------------------------------------------------------------------------------------------
# Device



@dataclass(frozen=True)
class Device:
    """Where a sweep trains: the torch device, its name for the reports, and the precision used there."""

    torch: torch.device
    name: str  # "cpu" or "cuda:<GPU name>"
    precision: str  # "bf16" (mixed precision, CUDA only) or "fp32"


def resolve_device(name: str = "auto") -> Device:
    """``auto``: CUDA when torch sees a GPU, else CPU. ``cuda`` without a GPU is a one-line error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise CnnDepthError(f"--device cuda, but torch {torch.__version__} sees no CUDA GPU; "
                            f"use --device cpu (or auto)")
    if name == "cpu" or not torch.cuda.is_available():
        return Device(torch.device("cpu"), "cpu", "fp32")
    bf16 = torch.cuda.is_bf16_supported()
    return Device(torch.device("cuda"), f"cuda:{torch.cuda.get_device_name()}", "bf16" if bf16 else "fp32")


# ---------------------------------------------------------------------------------------------------------
# Training one run


class RunStats(Callback):
    """Training images processed and wall seconds per epoch (the epoch's validation pass included), a copy
    of the Recorder's per-epoch values, taken before ``validate()`` (which resets the Recorder), and the
    validation images and correct predictions of the final ``validate()`` (fastai's ``accuracy``: the argmax
    equals the label), counted as whole numbers rather than read back from a float32 mean. The correct
    predictions are summed on the device and read once, after the pass (``correct`` is then an int)."""

    order = 55  # after Recorder (50), so an epoch's values are there when its seconds are stored

    def __init__(self):
        self.train_images, self.epoch_seconds, self.values, self.fitting = 0, [], [], False
        self.valid_images = self.correct = 0
        self._correct = None  # the device-side sum during the final validate()

    def before_fit(self):
        self.fitting = False  # until before_train: learn.validate() calls before_fit too, but never trains
        self.valid_images = self.correct = 0
        self._correct = None

    def before_train(self):
        self.fitting = True  # every fit of the run counts (fine_tune fits twice)

    def after_fit(self):
        self.fitting = False

    def before_epoch(self):
        self.t0 = time.perf_counter()

    def after_batch(self):
        learn = self.learn
        if learn.training:
            if self.fitting:
                self.train_images += find_bs(learn.yb)
        elif not self.fitting:  # the final validate()
            y = learn.yb[0]
            self.valid_images += len(y)
            hits = (learn.pred.argmax(dim=-1) == y).sum()
            self._correct = hits if self._correct is None else self._correct + hits

    def after_validate(self):
        if not self.fitting and self._correct is not None:
            self.correct, self._correct = int(self._correct), None

    def after_epoch(self):
        if self.fitting:
            self.epoch_seconds.append(time.perf_counter() - self.t0)
            self.values.append([float(v) for v in self.recorder.values[-1]])


class StopOnNaN(TerminateOnNaNCallback):
    """fastai's TerminateOnNaNCallback, remembering where the loss stopped being finite; training batches
    only (its CancelFitException would escape from ``learn.validate()``, which is not inside a fit).

    Every training batch is checked, as fastai does, so a diverged run stops at the batch where it diverged
    and says which; one ``isfinite`` instead of fastai's ``isinf`` and ``isnan`` (one read of the flag, a
    host sync on a GPU, instead of up to two)."""

    where, run_valid = None, False

    def after_batch(self):
        learn = self.learn
        if not bool(torch.isfinite(learn.loss)):
            self.where = f"loss became {float(learn.loss.detach())} at epoch {learn.epoch + 1}, batch {learn.iter + 1}"
            raise CancelFitException


def seed_run(seed: int, dls) -> None:
    """``set_seed`` and re-seed the loaders' shuffling, so a run depends on its seed alone, not on the runs
    before it in the sweep (fastai's DataLoader keeps its own RNG from one epoch to the next)."""
    set_seed(seed, reproducible=True)
    for dl in dls.loaders:
        dl.rng = random.Random(seed)


def progress_bars() -> bool:
    """fastai's progress bars only where they redraw in place: a terminal or a notebook. In a log file or a
    pipe, their carriage-return updates are noise (a 3-run sweep once wrote 88 KB of it)."""
    from fastprogress.fastprogress import IN_NOTEBOOK

    return IN_NOTEBOOK or sys.stdout.isatty()


@contextmanager
def _quiet(learn, quiet: bool, label: str = ""):
    """fastai's own switches: no progress bar when quiet, off a terminal or in a worker process (several
    would draw over each other); no epoch table when quiet.

    Without the bar (which draws the epoch table's header and aligns it), each epoch is one plain line,
    prefixed in a worker with which worker and run it is (``[worker 2 bn-d4-s1]``).
    """
    from .executors import worker_info

    info = worker_info()
    plain = not progress_bars() or info is not None
    with ExitStack() as stack:
        if quiet or plain:
            stack.enter_context(learn.no_bar())
        if quiet:
            stack.enter_context(learn.no_logging())
        elif plain:
            prefix = f"[worker {info.slot + 1} {label}] " if info is not None else ""
            old, learn.logger = learn.logger, functools.partial(_epoch_line, learn, prefix)
            stack.callback(setattr, learn, "logger", old)
        yield learn


def _epoch_line(learn, prefix: str, values: list) -> None:
    """One epoch of fastai's table as a plain line: ``epoch 2  train_loss 1.8123  valid_loss ...  time 00:03``."""
    names = learn.recorder.metric_names
    cells = [f"{n} {v:.4f}" if isinstance(v, float) else f"{n} {v + 1 if n == 'epoch' else v}"
             for n, v in zip(names, values)]
    print(f"  {prefix}" + "  ".join(cells), flush=True)  # flushed: a worker's stdout is a pipe, block-buffered


def _learner(dls, cfg: SweepConfig, depth: int, device: Device, out: Path, cbs=()):
    # threads=None: the engine has set this run's threads (recorded in its row), the Learner keeps them
    learn = lean_learner(depth_learner(dls, depth, cfg.arch, pretrained=cfg.pretrained, path=out, cbs=list(cbs),
                                       threads=None))
    if device.precision == "bf16":
        learn.to_bf16()
    return learn


def find_lr(dls, cfg: SweepConfig, depth: int, seed: int, device: Device, out: Path) -> float:
    """``lr_find`` on a fresh model of ``depth`` (seeded with ``seed``): fastai's ``valley`` suggestion."""
    seed_run(seed, dls)
    learn = _learner(dls, cfg, depth, device, out)
    with tempfile.TemporaryDirectory(prefix="cnn-depth-lr_find-") as tmp, \
            _quiet(learn, cfg.quiet, f"lr_find d{depth}"):
        learn.model_dir = Path(tmp).resolve()  # lr_find saves and restores the weights there
        return float(learn.lr_find(show_plot=False).valley)


@functools.lru_cache(maxsize=None)
def _macs(arch: str, depth: int, n_in: int, n_out: int, img_size: tuple) -> int:
    """MACs of one input of ``img_size``: one side per dimension, so its length is the model's ``ndim``."""
    from .models import count_macs, depth_cnn

    with torch.random.fork_rng(devices=[]):  # building a model draws weights: leave the run's RNG untouched
        model = depth_cnn(depth, n_in=n_in, n_out=n_out, arch=arch, img_size=img_size, ndim=len(img_size))
    return count_macs(model, (n_in, *img_size))


def macs_per_image(config: dict) -> int:
    """Multiply-accumulates of one input's forward pass (an image, a series or a volume) through a model built
    from ``config`` (``model.config``; without ``ndim``, as written before 1D/3D models, it is 2).

    torch's ``FlopCounterMode`` on a batch of one, on the CPU, in eval mode, halved: the convolutions and
    linear layers (each output element: inputs × kernel size MACs, 3 taps in 1D, 3×3 in 2D, 3×3×3 in 3D;
    biases, batch norm, ReLU, pooling and the residual adds are not counted, a few per cent at most). Computed
    once per (arch, depth, input shape).
    """
    ndim, size = int(config.get("ndim", 2)), config["img_size"]
    sides = (size,) * ndim if isinstance(size, int) else size
    return _macs(config["arch"], int(config["depth"]), int(config["n_in"]), int(config["n_out"]),
                 tuple(int(v) for v in sides))


class PeakMemory:
    """The peak memory of one run, in MiB (2**20 bytes).

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting it when the run starts: what the run's tensors
    held at most (weights, gradients, optimizer state, activations, the batches), not the CUDA context nor
    the allocator's cache. CPU: the process's peak resident memory (VmHWM) during the run, reset when it starts
    (Linux's ``/proc/self/clear_refs``): everything the process holds (Python, torch, the decoded images) plus
    what the run adds; where that reset is not available, ``getrusage``'s peak since the process started.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.since_start = False

    def start(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
        except OSError:
            self.since_start = True
        return self

    def mib(self) -> float:
        if self.cuda:
            return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        if not self.since_start:
            try:
                with open("/proc/self/status") as f:
                    kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
                return round(kib / 1024, 1)
            except (OSError, StopIteration, ValueError):
                pass
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` the model in place (``nn.Module.compile``: the same module, parameters and
    ``state_dict`` keys, so saved models and the probes see the plain model), default mode.

    Compiling happens at the first batch and again for each new input shape and for eval mode (the
    validation passes). Not CUDA graphs (``mode="reduce-overhead"``): the training batches are whole
    (the training loader drops the last partial one), but the last validation batch is not, and fastai keeps
    outputs (``learn.pred``, ``learn.loss``) past the next call, which CUDA graphs overwrite; not measured
    on a GPU yet.
    """
    model.compile()
    return model


def compile_error(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it came from) is torch.compile's (TorchDynamo, TorchInductor, or the
    C++ compiler Inductor runs), rather than the run's own."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (type(e).__module__ or "").startswith(("torch._dynamo", "torch._inductor")):
            return True
        e = e.__cause__ or e.__context__
    return False


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _f32(x: float) -> float:
    """A float32 value as the number it holds: 7 significant digits (1.8123457, not 1.812345743179321)."""
    return float(f"{x:.7g}") if math.isfinite(x) else x


def samples_word(info) -> str:
    """What the data's samples are called in messages: ``images``, ``series`` or ``volumes`` (a
    :class:`~cnn_depth.loaders.DataInfo`; None: images)."""
    return {"series": "series", "volume": "volumes"}.get(getattr(info, "kind", "image"), "images")


def new_row(cfg: SweepConfig, depth: int, seed: int, threads, device: str = "", precision: str = "",
            tag: str = "") -> dict:
    """A results.csv row with what is known before a run trains: its identity and settings (``cfg``: one
    combination; ``tag``: its run id's grid part, :meth:`SweepConfig.run_tag`)."""
    row = dict.fromkeys(RESULT_COLUMNS, "")
    row.update(run_fields(cfg.dataset_label, cfg.arch, depth, seed, tag), **setting_cells(cfg), lr="",
               threads=threads, device=device, precision=precision, epochs_done=0)
    return row


@dataclass
class RunResult:
    """What one run gives: plain data only, so that it can come back from another process."""

    row: dict  # one row of results.csv
    history: list = field(default_factory=list)  # rows of history.csv, one per finished epoch
    activations: list = field(default_factory=list)  # rows of activations.csv, one per conv layer
    checkpoint: Optional[dict] = None  # the trained model (see checkpoint.checkpoint_dict) with save_models


def train_run(dls, cfg: SweepConfig, depth: int, seed: int, lr: Union[float, Callable[[], float]], device: Device,
              out: Path, cbs: Sequence[Callback] = (), tag: str = "") -> RunResult:
    """Seed, build, train (``fit_learner``: ``fit_one_cycle(epochs, lr)``, or the transfer schedule),
    ``validate()``: one row, whatever happens in between; then
    the per-layer activation statistics and (with ``save_models``) the model.

    ``lr`` is a number, or a function that finds one (``lr_find``; its failure is the run's failure).

    A loss that becomes NaN/inf stops the run (``diverged``); an exception makes it ``failed`` with the
    error text. KeyboardInterrupt is not caught: the sweep stops and writes nothing for this run.

    With ``cfg.compile`` the model is compiled (:func:`compile_model`; its row says ``compile`` ``on``); if
    torch cannot compile it (no C++ compiler, an op it does not support), one line says so and the run
    starts again from its seed, eagerly: the numbers of an uncompiled run, ``compile`` ``failed→eager``.
    """
    ident = run_fields(cfg.dataset_label, cfg.arch, depth, seed, tag)
    row = new_row(cfg, depth, seed, torch.get_num_threads(), device.name, device.precision, tag)
    info = data_info(dls)
    row.update(classes=dls.c, kind=info.kind if info is not None else "")
    memory = PeakMemory(device.torch)
    learn = None
    try:
        lr = lr() if callable(lr) else lr
        row["lr"] = lr

        def attempt(compiled: bool):
            nonlocal learn, stats, nan
            stats, nan = RunStats(), StopOnNaN()
            seed_run(seed, dls)
            learn = _learner(dls, cfg, depth, device, out, cbs=[stats, nan, *cbs])
            row.update(params=count_params(learn.model), macs=macs_per_image(learn.model.config))
            if compiled:
                compile_model(learn.model)
            memory.start()
            with _quiet(learn, cfg.quiet, ident["run_id"]):
                t0 = time.perf_counter()
                fit_learner(learn, cfg.epochs, lr, cfg.transfer, threads=None)
                train_s = round(time.perf_counter() - t0, 3)  # as stored, so images_per_second is reproducible
                t0 = time.perf_counter()
                valid_loss = learn.validate()[0]
                return train_s, valid_loss, time.perf_counter() - t0

        stats = nan = None
        try:
            train_s, valid_loss, valid_s = attempt(cfg.compile)
        except Exception as e:
            if not (cfg.compile and compile_error(e)):
                raise
            print(f"  {ident['run_id']}: torch.compile failed ({_first_line(e)}); training it eagerly", flush=True)
            row["compile"] = "failed→eager"
            train_s, valid_loss, valid_s = attempt(False)
        train_loss = stats.values[-1][0] if stats.values else math.nan
        acc = stats.correct / stats.valid_images if stats.valid_images else math.nan
        row.update(train_images=stats.train_images, train_seconds=train_s,
                   images_per_second=round(stats.train_images / train_s, 1), valid_seconds=round(valid_s, 3),
                   peak_memory_mb=memory.mib(), train_loss=_f32(train_loss), valid_loss=_f32(float(valid_loss)),
                   valid_images=stats.valid_images, correct=stats.correct, accuracy=acc,
                   error_rate=(stats.valid_images - stats.correct) / stats.valid_images if stats.valid_images else "")
        finite = all(math.isfinite(v) for v in (train_loss, float(valid_loss)))
        if stats.train_images == 0:  # not a diverged loss: nothing was trained (check_loaders refuses this first)
            what = samples_word(info)
            row.update(status="failed", error=f"no training batch: the training split has {len(dls.train_ds)} "
                                              f"{what}, fewer than bs {cfg.bs}; use a smaller bs or more {what}")
        elif nan.where or not finite:
            row.update(status="diverged", error=nan.where or "loss is not finite after training")
        else:
            row["status"] = "ok"
    except Exception as e:  # a run's failure (say, out of memory) is recorded and the sweep goes on
        row.update(status="failed", error=f"{type(e).__name__}: {e}".replace("\n", " ")[:500])
        if device.torch.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
    result = RunResult(row)
    if learn is not None:
        for epoch, (vals, secs) in enumerate(zip(stats.values, stats.epoch_seconds), start=1):
            vals = vals + [math.nan] * (3 - len(vals))
            result.history.append(dict(ident, epochs=cfg.epochs, epoch=epoch, train_loss=_f32(vals[0]),
                                       valid_loss=_f32(vals[1]), accuracy=_f32(vals[2]), seconds=round(secs, 3)))
    row["epochs_done"] = len(result.history)
    if learn is not None and row["status"] != "failed":  # a failed run has nothing to measure or keep
        with torch.compiler.set_stance("force_eager"):  # a compiled model's probes: no compile for their hooks
            result.activations = [{**ident, **r} for r in activation_stats(learn.model, fixed_valid_batch(dls))]
        if cfg.save_models:
            result.checkpoint = checkpoint_dict(learn, run_id=ident["run_id"], seed=seed, dataset=cfg.dataset_label)
    return result


# ---------------------------------------------------------------------------------------------------------
# A job, as an engine runs it


@dataclass(frozen=True)
class Job:
    """One task of a sweep: train the run (depth, seed) (``kind="run"``), or find a depth's lr with its
    first seed (``kind="find"``)."""

    kind: str
    depth: int
    seed: int
    index: int = 0  # the run's place in the grid, 1-based (0 for a find)
    combo: int = 0  # its combination of the settings (SweepConfig.combinations()), in a grid
    tag: str = ""  # its run id's grid part (SweepConfig.run_tag)

    @property
    def key(self) -> tuple:
        """(combination, depth): what shares an lr_find's valley."""
        return self.combo, self.depth


def worker_dataloaders(cfg: SweepConfig, device: "Device"):
    """The sweep's DataLoaders in this process, built once and kept for the next job (``worker_cache``):
    every run sees the same items, statistics and transforms, decoded once per machine (the disk cache)."""
    from .executors import worker_cache

    key = data_key(cfg, device.torch)
    cache = worker_cache()
    if key not in cache:
        cache.clear()  # one dataset per worker at a time: never two decoded copies
        try:
            cache[key] = dataloaders(**data_settings(cfg), device=device.torch)
        except CnnDepthError as e:
            if cfg.dataset in list_datasets() or Path(cfg.dataset).exists():
                raise
            raise CnnDepthError(f"{cfg.dataset} is not readable on {platform.node()}: a dataset given by path "
                                f"must be at the same path on every machine that runs a run ({e})") from e
    return cache[key]


def run_job(cfg: SweepConfig, job: Job, lr: Optional[float], out: Path, cbs: Sequence[Callback] = ()):
    """What a worker does with one job: a :class:`RunResult` for a run, the lr (a float) for a find.

    It runs in worker processes and Ray tasks as well as in the driver, so it takes plain arguments and
    builds what it needs where it runs (CUDA sees only the worker's own GPU there).
    """
    device = resolve_device(cfg.device)
    dls = worker_dataloaders(cfg, device)
    if job.kind == "find":
        return find_lr(dls, cfg, job.depth, job.seed, device, out)
    return train_run(dls, cfg, job.depth, job.seed, lr, device, out, cbs=cbs, tag=job.tag)


def failed_result(cfg: SweepConfig, job: Job, lr, error: str, threads) -> RunResult:
    """The row of a run that never came back (its worker died, its lr_find failed): status ``failed``."""
    row = new_row(cfg, job.depth, job.seed, threads, tag=job.tag)
    row.update(lr="" if lr is None else lr, status="failed", error=error.replace("\n", " ")[:500])
    return RunResult(row)
