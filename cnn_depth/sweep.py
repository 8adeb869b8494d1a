"""The depth sweep: one fastai run per (depth, seed), each written as one row the moment it ends.

What a sweep writes, and how, is :mod:`cnn_depth.records`; the summary and plots are
:mod:`cnn_depth.reports`. Resume: finished (``ok``) runs are skipped; ``diverged`` and ``failed`` ones are run
again and their new row replaces the old one, so results.csv always holds one row per run_id. An interrupt
(Ctrl-C, SIGTERM) leaves the finished rows and no row for the run it cut short.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import gc
import math
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import pandas as pd
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.tracker import TerminateOnNaNCallback
from fastai.torch_core import find_bs, set_seed

from .checkpoint import checkpoint_dict, write_checkpoint
from .config import RESULT_FIELDS, SweepConfig
from .errors import CnnDepthError
from .explain import activation_stats, fixed_valid_batch
from .learner import depth_learner, fit_learner
from .data import list_datasets
from .loaders import data_info, dataloaders
from .models import count_params
from .records import (ACTIVATION_CSV_COLUMNS, HISTORY_COLUMNS, RESULT_COLUMNS, check_folder, claim_folder,
                      environment, model_path, read_results, run_fields, run_id, write_rows, write_sweep_json)
from .transfer import fetch_weights


# ---------------------------------------------------------------------------------------------------------
# Device and environment


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
# Interrupts


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a sweep; its message says what was kept and how to resume."""


class _Interrupts:
    """SIGINT and SIGTERM raise KeyboardInterrupt, except inside ``critical()`` (writing a run's rows),
    where they wait until the rows are on disk."""

    def __init__(self):
        self.old, self.pending, self.writing = {}, None, False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. `cnn-depth sweep &` ignores SIGINT
                    self.old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame):
        if self.writing:
            self.pending = signum
        else:
            raise KeyboardInterrupt(signal.Signals(signum).name)

    @contextmanager
    def critical(self):
        self.writing = True
        try:
            yield
        finally:
            self.writing = False
        if self.pending:
            signum, self.pending = self.pending, None
            raise KeyboardInterrupt(signal.Signals(signum).name)


# ---------------------------------------------------------------------------------------------------------
# One run


class RunStats(Callback):
    """Training images processed and wall seconds per epoch (the epoch's validation pass included), a copy
    of the Recorder's per-epoch values, taken before ``validate()`` (which resets the Recorder), and the
    validation images and correct predictions of the final ``validate()`` (fastai's ``accuracy``: the argmax
    equals the label), counted as whole numbers rather than read back from a float32 mean."""

    order = 55  # after Recorder (50), so an epoch's values are there when its seconds are stored

    def __init__(self):
        self.train_images, self.epoch_seconds, self.values, self.fitting = 0, [], [], False
        self.valid_images = self.correct = 0

    def before_fit(self):
        self.fitting = False  # until before_train: learn.validate() calls before_fit too, but never trains
        self.valid_images = self.correct = 0

    def before_train(self):
        self.fitting = True  # every fit of the run counts (fine_tune fits twice)

    def after_fit(self):
        self.fitting = False

    def before_epoch(self):
        self.t0 = time.perf_counter()

    def after_batch(self):
        if self.fitting and self.training:
            self.train_images += find_bs(self.yb)
        elif not self.fitting and not self.training:  # the final validate()
            y = self.yb[0]
            self.valid_images += len(y)
            self.correct += int((self.pred.argmax(dim=-1) == y).sum())

    def after_epoch(self):
        if self.fitting:
            self.epoch_seconds.append(time.perf_counter() - self.t0)
            self.values.append([float(v) for v in self.recorder.values[-1]])


class StopOnNaN(TerminateOnNaNCallback):
    """fastai's TerminateOnNaNCallback, remembering where the loss stopped being finite; training batches
    only (its CancelFitException would escape from ``learn.validate()``, which is not inside a fit)."""

    where, run_valid = None, False

    def after_batch(self):
        try:
            super().after_batch()
        except CancelFitException:
            self.where = f"loss became {float(self.loss.detach())} at epoch {self.epoch + 1}, batch {self.iter + 1}"
            raise


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
    learn = depth_learner(dls, depth, cfg.arch, pretrained=cfg.pretrained, path=out, cbs=list(cbs))
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


def check_loaders(dls, cfg: SweepConfig) -> None:
    """Refuse, before any run, DataLoaders a sweep cannot train on: a training split smaller than the batch
    size gives no full batch (fastai drops the last partial one), so every run would train on nothing; an
    empty validation split gives no accuracy. One line naming the fix."""
    n_train, n_valid = len(dls.train_ds), len(dls.valid_ds)
    if n_train < cfg.bs:
        more = f"more images (--max-per-class {cfg.max_per_class} keeps {n_train})" if cfg.max_per_class else \
            "a dataset with more images"
        raise CnnDepthError(f"the training split has {n_train} images, fewer than --bs {cfg.bs}, so there is no "
                            f"full batch to train on; use --bs {max(n_train, 1)} or less, or {more}")
    if n_valid == 0:
        raise CnnDepthError("the validation split has no images, so there is no accuracy to report; give a "
                            "dataset with validation images")


def finished_runs(results: pd.DataFrame, cfg: SweepConfig, out: Path) -> set:
    """The run_ids a sweep may skip: its ``ok`` runs; with ``save_models``, only those whose model file is
    there, so that rerunning a sweep with ``--save-models`` trains again (same seed, same settings) the runs
    that were finished without one, and ``explain`` can use them."""
    ok = results[results["status"] == "ok"]
    if not cfg.save_models:
        return set(ok["run_id"])
    return {rid for rid, depth, seed in zip(ok["run_id"], ok["depth"], ok["seed"])
            if model_path(out, cfg.arch, int(depth), int(seed)).exists()}


@functools.lru_cache(maxsize=None)
def _macs(arch: str, depth: int, n_in: int, n_out: int, img_size: tuple) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from .models import depth_cnn

    with torch.random.fork_rng(devices=[]):  # building a model draws weights: leave the run's RNG untouched
        model = depth_cnn(depth, n_in=n_in, n_out=n_out, arch=arch, img_size=img_size).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, n_in, *img_size))
    return counter.get_total_flops() // 2  # torch counts 2 FLOPs per multiply-accumulate


def macs_per_image(config: dict) -> int:
    """Multiply-accumulates of one image's forward pass through a model built from ``config`` (``model.config``).

    torch's ``FlopCounterMode`` on a batch of one, on the CPU, in eval mode, halved: the convolutions and
    linear layers (each output element: inputs × kernel area MACs; biases, batch norm, ReLU, pooling and the
    residual adds are not counted, a few per cent at most). Computed once per (arch, depth, input shape).
    """
    h, w = config["img_size"]
    return _macs(config["arch"], int(config["depth"]), int(config["n_in"]), int(config["n_out"]), (int(h), int(w)))


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


def _f32(x: float) -> float:
    """A float32 value as the number it holds: 7 significant digits (1.8123457, not 1.812345743179321)."""
    return float(f"{x:.7g}") if math.isfinite(x) else x


def new_row(cfg: SweepConfig, depth: int, seed: int, threads, device: str = "", precision: str = "") -> dict:
    """A results.csv row with what is known before a run trains: its identity and settings."""
    row = dict.fromkeys(RESULT_COLUMNS, "")
    row.update(run_fields(cfg.dataset_label, cfg.arch, depth, seed), source=cfg.dataset, epochs=cfg.epochs,
               lr_setting=cfg.lr, lr="", bs=cfg.bs, max_per_class="" if cfg.max_per_class is None else cfg.max_per_class,
               pipeline=cfg.pipeline, augment=cfg.augment, threads=threads, device=device, precision=precision,
               epochs_done=0, pretrained=cfg.pretrained, transfer=cfg.transfer or "")
    return row


@dataclass
class RunResult:
    """What one run gives: plain data only, so that it can come back from another process."""

    row: dict  # one row of results.csv
    history: list = field(default_factory=list)  # rows of history.csv, one per finished epoch
    activations: list = field(default_factory=list)  # rows of activations.csv, one per conv layer
    checkpoint: Optional[dict] = None  # the trained model (see checkpoint.checkpoint_dict) with save_models


def train_run(dls, cfg: SweepConfig, depth: int, seed: int, lr: Union[float, Callable[[], float]], device: Device,
              out: Path, cbs: Sequence[Callback] = ()) -> RunResult:
    """Seed, build, train (``fit_learner``: ``fit_one_cycle(epochs, lr)``, or the transfer schedule),
    ``validate()``: one row, whatever happens in between; then
    the per-layer activation statistics and (with ``save_models``) the model.

    ``lr`` is a number, or a function that finds one (``lr_find``; its failure is the run's failure).

    A loss that becomes NaN/inf stops the run (``diverged``); an exception makes it ``failed`` with the
    error text. KeyboardInterrupt is not caught: the sweep stops and writes nothing for this run.
    """
    ident = run_fields(cfg.dataset_label, cfg.arch, depth, seed)
    row = new_row(cfg, depth, seed, torch.get_num_threads(), device.name, device.precision)
    row.update(classes=dls.c)
    stats, nan = RunStats(), StopOnNaN()
    memory = PeakMemory(device.torch)
    learn = None
    try:
        lr = lr() if callable(lr) else lr
        row["lr"] = lr
        seed_run(seed, dls)
        learn = _learner(dls, cfg, depth, device, out, cbs=[stats, nan, *cbs])
        row.update(params=count_params(learn.model), macs=macs_per_image(learn.model.config))
        memory.start()
        with _quiet(learn, cfg.quiet, ident["run_id"]):
            t0 = time.perf_counter()
            fit_learner(learn, cfg.epochs, lr, cfg.transfer)
            train_s = round(time.perf_counter() - t0, 3)  # as stored, so images_per_second is reproducible
            t0 = time.perf_counter()
            valid_loss = learn.validate()[0]
            valid_s = time.perf_counter() - t0
        train_loss = stats.values[-1][0] if stats.values else math.nan
        acc = stats.correct / stats.valid_images if stats.valid_images else math.nan
        row.update(train_images=stats.train_images, train_seconds=train_s,
                   images_per_second=round(stats.train_images / train_s, 1), valid_seconds=round(valid_s, 3),
                   peak_memory_mb=memory.mib(), train_loss=_f32(train_loss), valid_loss=_f32(float(valid_loss)),
                   valid_images=stats.valid_images, correct=stats.correct, accuracy=acc,
                   error_rate=(stats.valid_images - stats.correct) / stats.valid_images if stats.valid_images else "")
        finite = all(math.isfinite(v) for v in (train_loss, float(valid_loss)))
        if stats.train_images == 0:  # not a diverged loss: nothing was trained (check_loaders refuses this first)
            row.update(status="failed", error=f"no training batch: the training split has {len(dls.train_ds)} "
                                              f"images, fewer than bs {cfg.bs}; use a smaller bs or more images")
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
        result.activations = [{**ident, **r} for r in activation_stats(learn.model, fixed_valid_batch(dls))]
        if cfg.save_models:
            result.checkpoint = checkpoint_dict(learn, run_id=ident["run_id"], seed=seed, dataset=cfg.dataset_label)
    return result


class Progress:
    """The sweep's progress lines: one when a run starts and one when it ends, with the sweep's elapsed time
    and an ETA (the mean wall time of the runs finished so far, times the runs left, over the runs at once)."""

    def __init__(self, say: Callable[[str], None], n: int, todo: int, at_once: int = 1):
        self.say, self.n, self.todo, self.at_once = say, n, todo, at_once
        self.t0, self.done, self.busy = time.monotonic(), 0, 0.0

    @staticmethod
    def clock(seconds: float) -> str:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"

    def start(self, i: int, depth: int, seed: int, where: str = "") -> None:
        self.say(f"start {i}/{self.n}  depth={depth} seed={seed}{where}")

    def end(self, i: int, row: dict, seconds: float) -> None:
        """``seconds``: the run's wall time, lr_find and measuring included."""
        self.done += 1
        self.busy += seconds
        elapsed = time.monotonic() - self.t0
        left = self.todo - self.done
        eta = f", ETA {self.clock(self.busy / self.done * left / self.at_once)}" if left else ""
        head = f"done  {i}/{self.n}  depth={row['depth']} seed={row['seed']}"
        if row["status"] == "failed":
            text = f"{head}  failed: {row['error']}"
        else:
            text = (f"{head}  lr={float(row['lr']):.3g}  acc={float(row['accuracy']):.4f}  "
                    f"valid_loss={float(row['valid_loss']):.4f}  {float(row['train_seconds']):.1f} s "
                    f"({float(row['images_per_second']):.0f} img/s)  "
                    + (f"diverged: {row['error']}" if row["status"] == "diverged" else "ok"))
        self.say(f"{text}  [elapsed {self.clock(elapsed)}{eta}]")


def record_run(out: Path, cfg: SweepConfig, result: RunResult) -> None:
    """Write one finished run: its model (with ``save_models``) first, then its history and activation rows,
    then its results.csv row last, so a row on disk means everything of that run is there.

    An interrupt between the model and the row leaves a model without a row, which the rerun retrains and
    overwrites.
    """
    row = result.row
    if result.checkpoint is not None:
        write_checkpoint(model_path(out, cfg.arch, row["depth"], row["seed"]), result.checkpoint)
    row["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rid = row["run_id"]
    write_rows(out / "history.csv", HISTORY_COLUMNS, result.history, replace=[rid])
    write_rows(out / "activations.csv", ACTIVATION_CSV_COLUMNS, result.activations, replace=[rid])
    write_rows(out / "results.csv", RESULT_COLUMNS, [row])


# ---------------------------------------------------------------------------------------------------------
# Where runs go: in this process, on local worker processes, or on Ray


@dataclass(frozen=True)
class Engine:
    """How a sweep's runs are spread: the executor kind, runs at once, torch threads per run, GPUs."""

    kind: str  # "inline" (one after another in this process), "local" (worker processes) or "ray"
    workers: int  # runs at once (Ray: at most; the cluster's capacity may be smaller)
    threads: int  # torch threads per run
    gpus: tuple = ()  # local GPU indices the workers are spread over
    runs_per_gpu: int = 1
    ray: Optional[str] = None  # "local", "auto" or an address
    why: str = ""  # what auto weighed, when it chose

    def describe(self) -> str:
        why = f" ({self.why})" if self.why else ""
        if self.kind == "inline":
            return f"in this process, {self.threads} torch thread(s){why}"
        where = "on Ray" + ("" if self.ray == "local" else f" at {self.ray}") if self.kind == "ray" else "at once"
        gpus = f", {self.runs_per_gpu} per GPU on {len(self.gpus)} GPU(s)" if self.gpus else ""
        return f"{self.workers} {where}{gpus}, {self.threads} torch thread(s) each{why}"

    def executor(self):
        from .executors import InlineExecutor, LocalExecutor, RayExecutor

        if self.kind == "inline":
            return InlineExecutor(self.threads)
        if self.kind == "local":
            return LocalExecutor(self.workers, self.threads, self.gpus, self.runs_per_gpu, preload=[__name__])
        return RayExecutor(self.ray, self.threads, self.runs_per_gpu, max_slots=self.workers)


WORKER_MEMORY = 2 * 1024**3  # bytes to budget per worker process (torch, fastai, a decoded dataset, a model)


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity: a container or taskset may give fewer)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# How auto chooses between training the runs one after another in this process (every free core as torch
# threads) and on worker processes (one thread each). A run's one-thread training time is about
# (images seen) x (SECONDS_PER_IMAGE + SECONDS_PER_MAC_IMAGE x its MACs per image), validation passes counted
# at a third of an image: fitted on the quiet 2-core development VM (bn depths 2, 8 and 16, 1 thread; within
# 6% of each). Serially, T threads run it THREAD_EXPONENT-power faster (T**0.42: 1.34x for 2 threads, as
# measured there; an assumption beyond 2 cores). Workers add WORKER_START_SECONDS (importing torch and
# fastai, building their DataLoaders) and finish when their busiest one does (the longest runs first).
# Measured by experiments/bench_sweep.py (docs/cli.md).
SECONDS_PER_IMAGE = 0.42e-3
SECONDS_PER_MAC_IMAGE = 1.0e-10
THREAD_EXPONENT = 0.42
WORKER_START_SECONDS = 13.0
LR_FIND_IMAGES = 100 * 64  # lr_find: at most 100 batches (fastai's num_it), of bs 64 in the estimate


def estimated_seconds(cfg: SweepConfig, jobs: Sequence["Job"], dls) -> Optional[float]:
    """Rough one-thread seconds of training ``jobs`` (runs and lr finds) on ``dls``, on a quiet core of the
    machine the constants were fitted on: what auto weighs. None when a model's size cannot be computed."""
    info = data_info(dls)
    if info is None:
        return None
    n_out, train, valid = len(dls.vocab), len(dls.train_ds), len(dls.valid_ds)
    total, macs = 0.0, {}
    try:
        for job in jobs:
            if job.depth not in macs:
                macs[job.depth] = _macs(cfg.arch, job.depth, info.n_in, n_out, tuple(info.img_size))
            images = LR_FIND_IMAGES if job.kind == "find" else cfg.epochs * (train + valid / 3) + valid / 3
            total += images * (SECONDS_PER_IMAGE + SECONDS_PER_MAC_IMAGE * macs[job.depth])
    except Exception:  # a model that cannot be built here fails its run with its own message: no estimate
        return None
    return total


def busy_cores(interval: float = 0.25) -> float:
    """Cores of ours (this process's affinity) kept busy by other processes now: Linux's per-core /proc/stat
    over ``interval`` seconds, this process's own CPU time taken out; 0.0 where it cannot be read."""
    mine = {f"cpu{i}" for i in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None

    def ticks():
        total = idle = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if name.startswith("cpu") and name != "cpu" and (mine is None or name in mine):
                    v = [int(x) for x in values[:8]]
                    total, idle = total + sum(v), idle + v[3] + v[4]  # all, idle + iowait
        return total, idle

    try:
        (all0, idle0), own0 = ticks(), time.process_time()
        time.sleep(interval)
        (all1, idle1), own1 = ticks(), time.process_time()
    except (OSError, ValueError, IndexError):
        return 0.0
    cpus = len(mine) if mine else os.cpu_count() or 1
    if all1 <= all0:
        return 0.0
    seconds = (all1 - all0) / os.sysconf("SC_CLK_TCK") / cpus  # wall time the ticks span
    used = (all1 - all0 - (idle1 - idle0)) / (all1 - all0) * cpus
    return max(0.0, used - (own1 - own0) / max(seconds, 1e-9))


def _ray_address(cfg: SweepConfig) -> Optional[str]:
    """Where runs go on Ray: ``--ray``, else ``RAY_ADDRESS``; None for this machine."""
    return cfg.ray or os.environ.get("RAY_ADDRESS") or None


def needs_estimate(cfg: SweepConfig) -> bool:
    """Whether :func:`choose_engine` wants the work estimate and the host's load (auto on CPUs): the
    driver then builds its DataLoaders before starting any worker."""
    return cfg.workers == "auto" and not _ray_address(cfg) and resolve_device(cfg.device).torch.type != "cuda"


def _cores(n: int, cpus: int, busy: float) -> float:
    """The cores ``n`` busy threads of ours get next to ``busy`` cores' worth of other work (a fair share)."""
    return n if n + busy <= cpus else cpus * n / (n + busy)


def expected_seconds(work: Sequence[float], workers: int, threads: int, cpus: int, busy: float = 0.0) -> float:
    """Rough wall seconds of runs of one-thread seconds ``work``: serially with ``threads`` threads
    (``workers`` 1), or on ``workers`` worker processes of one thread each, started first and given the
    longest runs first."""
    if workers <= 1:
        cores = _cores(threads, cpus, busy)
        return sum(work) / (cores ** THREAD_EXPONENT if cores >= 1 else cores)
    loads = [0.0] * workers
    for w in sorted(work, reverse=True):
        loads[loads.index(min(loads))] += w
    share = _cores(workers, cpus, busy) / workers
    return WORKER_START_SECONDS + max(loads) / share


def choose_engine(cfg: SweepConfig, todo: int, cpus: Optional[int] = None, recorded_threads: Optional[int] = None,
                  work: Optional[Sequence[float]] = None, busy: float = 0.0) -> Engine:
    """The engine for ``cfg``'s ``workers``, ``threads``, ``runs_per_gpu`` and ``ray`` with ``todo`` runs to do.

    ``auto`` on a CPU machine: one worker per core (at most one per run, and as many as the memory holds at
    ``WORKER_MEMORY`` each), each with one thread, when that is expected to finish sooner than training the
    runs one after another in this process with every core other processes leave free (``work``: each job's
    :func:`estimated_seconds`; ``busy``: :func:`busy_cores`; see :func:`expected_seconds`); else serially.
    Without ``work``: workers whenever there are several runs. With CUDA: ``runs_per_gpu`` workers on each
    visible GPU. Why one thread per worker on CPUs: small CNNs use extra threads poorly, and torch's thread
    pools collapse on shared cores (``experiments/bench_sweep.py``, docs/cli.md).

    ``recorded_threads``: the one thread count the folder's finished runs used, if they agree. ``--threads
    auto`` then keeps it (and the workers follow from it), so that a resumed or extended sweep stays one
    group in the reports: the thread count can change a result's last digits.
    """
    cpus = cpus or available_cpus()
    ray = _ray_address(cfg)
    threads = cfg.threads if cfg.threads != "auto" else recorded_threads
    if ray:
        workers = cfg.workers if cfg.workers != "auto" else max(1, todo)
        return Engine("ray", max(1, min(workers, todo)), threads or 1, runs_per_gpu=cfg.runs_per_gpu, ray=ray)
    cuda = resolve_device(cfg.device).torch.type == "cuda"
    if not cuda and cfg.runs_per_gpu != 1:
        raise CnnDepthError(f"--runs-per-gpu {cfg.runs_per_gpu} needs CUDA GPUs, and torch sees none here "
                            f"(--device {cfg.device}); leave --runs-per-gpu out")
    gpus = tuple(range(torch.cuda.device_count())) if cuda else ()
    free = max(1, round(cpus - min(busy, cpus - 1)))  # cores other processes leave us
    auto = cfg.workers == "auto" and not gpus
    loaded = f"; {cpus - free} of {cpus} cores busy with other processes" if free < cpus else ""
    why = ""
    if cfg.workers != "auto":
        workers = cfg.workers
    elif gpus:
        workers = len(gpus) * cfg.runs_per_gpu
    else:
        memory = _available_memory()
        workers = min(cpus // (threads or 1) or 1, max(1, memory // WORKER_MEMORY) if memory else cpus, todo)
        if work is not None and workers > 1:
            serial = expected_seconds(work, 1, threads or free, cpus, busy)
            parallel = expected_seconds(work, workers, threads or 1, cpus, busy)
            why = f"auto: expected about {serial:.0f} s serially, {parallel:.0f} s on {workers} workers" + loaded
            if serial <= parallel:
                workers = 1
    workers = max(1, min(workers, todo))
    if workers == 1:
        if auto and not why and loaded and threads is None:
            why = "auto" + loaded
        return Engine("inline", 1, threads or (free if auto else cpus), why=why)
    return Engine("local", workers, threads or max(1, cpus // workers), gpus, cfg.runs_per_gpu, why=why)


def longest_first(jobs: list["Job"], seconds: Callable[["Job"], float]) -> list["Job"]:
    """``jobs`` with the runs in order of decreasing ``seconds`` (ties in grid order), each depth's lr find
    just before its first run: on parallel workers the last runs to start are then the short ones, so the
    workers finish close together."""
    runs = sorted((j for j in jobs if j.kind == "run"), key=lambda j: -seconds(j))
    finds = {j.depth: j for j in jobs if j.kind == "find"}
    out = []
    for j in runs:
        if j.depth in finds:
            out.append(finds.pop(j.depth))
        out.append(j)
    return out


def _available_memory() -> Optional[int]:
    """Bytes of memory available now (Linux's MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class Job:
    """One task of a sweep: train the run (depth, seed) (``kind="run"``), or find a depth's lr with its
    first seed (``kind="find"``)."""

    kind: str
    depth: int
    seed: int
    index: int = 0  # the run's place in the grid, 1-based (0 for a find)


def worker_dataloaders(cfg: SweepConfig, device: "Device"):
    """The sweep's DataLoaders in this process, built once and kept for the next job (``worker_cache``):
    every run sees the same items, statistics and transforms, decoded once per machine (the disk cache)."""
    from .executors import worker_cache

    key = ("dls", cfg.dataset, cfg.bs, cfg.max_per_class, cfg.pipeline, cfg.augment, str(device.torch))
    cache = worker_cache()
    if key not in cache:
        cache.clear()  # one dataset per worker at a time: never two decoded copies
        try:
            cache[key] = dataloaders(cfg.dataset, bs=cfg.bs, max_per_class=cfg.max_per_class, device=device.torch,
                                     pipeline=cfg.pipeline, augment=cfg.augment)
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
    return train_run(dls, cfg, job.depth, job.seed, lr, device, out, cbs=cbs)


def failed_result(cfg: SweepConfig, job: Job, lr, error: str, threads) -> RunResult:
    """The row of a run that never came back (its worker died, its lr_find failed): status ``failed``."""
    row = new_row(cfg, job.depth, job.seed, threads)
    row.update(lr="" if lr is None else lr, status="failed", error=error.replace("\n", " ")[:500])
    return RunResult(row)


def _jobs(cfg: SweepConfig, finished: set, found_lrs: dict) -> list[Job]:
    """The jobs of a sweep in grid order: each run not finished, after its depth's lr_find when needed."""
    jobs, finding = [], set()
    for i, (depth, seed) in enumerate(((d, s) for d in cfg.depths for s in cfg.seeds), start=1):
        if run_id(cfg.arch, depth, seed) in finished:
            continue
        if cfg.lr == "find" and depth not in found_lrs and depth not in finding:
            jobs.append(Job("find", depth, cfg.seeds[0]))
            finding.add(depth)
        jobs.append(Job("run", depth, seed, i))
    return jobs


# ---------------------------------------------------------------------------------------------------------
# The sweep


def run_sweep(config: Optional[SweepConfig] = None, *, cbs: Sequence[Callback] = (),
              log: Callable[[str], None] = print, **kw) -> pd.DataFrame:
    """Train one model per (depth, seed) and write the reports; return every row of the sweep's results.csv.

    This process (the driver) plans the runs, hands them to an engine (this process, local worker processes
    or Ray: see :func:`choose_engine`) and alone writes the files as runs come back, so resume, extending a
    sweep and "one row per run_id" hold whatever the engine.

    Args:
        config: a :class:`SweepConfig`; or give its fields as keywords (they override ``config``'s), e.g.
            ``run_sweep(depths=[2, 3, 4], seeds=[0], epochs=1, max_per_class=50, out="runs/x")``.
        cbs: extra fastai callbacks added to every run's Learner (pickled to the workers when there are
            several: define them at module level).
        log: where the progress lines go (nothing when ``quiet``).
        **kw: SweepConfig fields.

    Returns:
        results.csv as a DataFrame (every run in the folder, this call's and earlier ones'), with
        ``df.attrs["out"]`` the folder and ``df.attrs["summary"]`` the summary table.

    Raises:
        CnnDepthError: bad options, a folder holding another config or in use by another sweep, an
            unreadable dataset.
        SweepInterrupted: Ctrl-C or SIGTERM; finished runs are saved, rerun to resume.
    """
    from .reports import write_reports

    cfg = dataclasses.replace(config, **kw) if config is not None else SweepConfig(**kw)
    say = (lambda s: None) if cfg.quiet else log
    if cfg.pretrained:  # once, before any folder or worker: offline without the file, one line and exit 2
        fetch_weights(cfg.arch)
    made = _first_missing(cfg.out_dir)  # what claim_folder will create, removed again if no row is written
    with claim_folder(cfg.out_dir) as out, _removed_if_unused(out, made), ExitStack() as stack:
        check_folder(out, cfg.as_dict(), RESULT_FIELDS, save_models=cfg.save_models)
        done = read_results(out)
        ok = done[done["status"] == "ok"]
        finished = finished_runs(done, cfg, out)
        found_lrs = {int(d): float(lr) for d, lr in zip(ok["depth"], ok["lr"])}  # --lr find: one lr per depth
        jobs = _jobs(cfg, finished, found_lrs)
        todo = sum(job.kind == "run" for job in jobs)
        threads_used = set(pd.to_numeric(ok.get("threads", pd.Series(dtype=float)), errors="coerce").dropna())
        plan = functools.partial(choose_engine, cfg, todo,
                                 recorded_threads=int(threads_used.pop()) if len(threads_used) == 1 else None)
        device = resolve_device(cfg.device)
        if needs_estimate(cfg):  # auto on CPUs: the data first, then workers only if the work pays for them
            dls = _driver_dataloaders(cfg, device.torch)
            seconds = {j: estimated_seconds(cfg, [j], dls) for j in jobs}
            engine = plan(work=None if None in seconds.values() else list(seconds.values()), busy=busy_cores())
            starting = stack.enter_context(_starting(engine))
        else:  # workers start while the driver gets the data ready
            engine = plan()
            starting = stack.enter_context(_starting(engine))
            dls = _driver_dataloaders(cfg, device.torch if engine.kind == "inline" else "cpu")
            seconds = None
        check_loaders(dls, cfg)
        if engine.kind != "inline":
            _check_picklable(cbs)
            if seconds is None:
                seconds = {j: estimated_seconds(cfg, [j], dls) for j in jobs}
            jobs = longest_first(jobs, lambda j: seconds[j] or 0.0)
        write_sweep_json(out, dict(cfg.as_dict(), out=str(out)), environment(device.name, device.precision),
                         dict(started=datetime.now(timezone.utc).isoformat(timespec="seconds"), argv=sys.argv,
                              depths=cfg.depths, seeds=cfg.seeds, device=device.name, engine=engine.describe()))
        n = len(cfg.depths) * len(cfg.seeds)
        say(f"sweep: {n} runs ({todo} to do) on {device.name}, {engine.describe()}; {len(dls.train_ds)} train / "
            f"{len(dls.valid_ds)} valid images; writing to {out}")
        if engine.kind == "inline":  # the driver is the worker: it reuses these DataLoaders
            from .executors import worker_cache

            worker_cache()[("dls", cfg.dataset, cfg.bs, cfg.max_per_class, cfg.pipeline, cfg.augment,
                            str(device.torch))] = dls
        else:
            del dls
        _drive(cfg, engine, starting, jobs, found_lrs, out, cbs, Progress(say, n, todo, engine.workers), say)
    results = read_results(out)
    results.attrs["out"] = str(out)
    results.attrs["summary"] = write_reports(out)
    return results


def _driver_dataloaders(cfg: SweepConfig, device):
    """The driver's DataLoaders: built before any run, so the dataset is checked (and decoded into the disk
    cache, for the workers) first."""
    return dataloaders(cfg.dataset, bs=cfg.bs, max_per_class=cfg.max_per_class, device=device,
                       pipeline=cfg.pipeline, augment=cfg.augment)


def _first_missing(path: Path) -> Optional[Path]:
    """The outermost folder of ``path`` that does not exist yet (None when ``path`` exists)."""
    path, missing = Path(path).absolute(), None
    while not path.exists():
        path, missing = path.parent, path
    return missing


@contextmanager
def _removed_if_unused(out: Path, made: Optional[Path]):
    """The folders this sweep made are removed again when it stops before writing a row (bad options, a
    dataset that cannot be read), so a mistyped command leaves nothing behind."""
    try:
        yield
    except BaseException:
        if made is not None and not (out / "results.csv").exists():
            shutil.rmtree(made, ignore_errors=True)
        raise


def _check_picklable(cbs: Sequence[Callback]) -> None:
    import pickle

    for cb in cbs:
        try:
            pickle.dumps(cb)
        except Exception as e:
            raise CnnDepthError(f"callback {type(cb).__name__} cannot be sent to worker processes ({type(e).__name__}:"
                                f" {e}); define it at module level, or run with workers=1") from e


@contextmanager
def _starting(engine: Engine):
    """The engine's executor, made in a thread (worker processes take seconds to start: importing torch
    and fastai), so that the driver builds its DataLoaders meanwhile. Yields a future of the executor; the
    executor is shut down on the way out, however the sweep ends."""
    pool = cf.ThreadPoolExecutor(1, thread_name_prefix="cnn-depth-start")
    fut = pool.submit(engine.executor)
    try:
        yield fut
    finally:
        pool.shutdown(wait=True)
        if not fut.cancelled() and fut.exception() is None:
            fut.result().shutdown(cancel=True)  # a no-op after _drive's own shutdown


def _drive(cfg: SweepConfig, engine: Engine, starting: cf.Future, jobs: list[Job], lrs: dict, out: Path, cbs,
           progress: "Progress", say: Callable[[str], None]) -> None:
    """The driver loop, the same for every engine: submit jobs into free slots (a run once its depth's lr is
    known), write each run's files as it comes back, stop everything on Ctrl-C/SIGTERM."""
    from .executors import WorkerDied

    pending, running, started, submitting = list(jobs), {}, {}, None
    failed_finds: dict[int, str] = {}
    try:
        with _Interrupts() as interrupts, starting.result() as ex:
            while pending or running:
                while pending and ex.free_slots():
                    job = next((j for j in pending if j.kind == "find" or j.depth in lrs or j.depth in failed_finds
                                or cfg.lr != "find"), None)
                    if job is None:  # every waiting run needs an lr that is being found
                        break
                    pending.remove(job)
                    if job.kind == "run" and job.depth in failed_finds:
                        result = failed_result(cfg, job, None, failed_finds[job.depth], engine.threads)
                        _record(out, cfg, result, interrupts)
                        progress.end(job.index, result.row, 0.0)
                        continue
                    lr = cfg.lr if cfg.lr != "find" else lrs.get(job.depth)
                    t0, inline, submitting = time.monotonic(), engine.kind == "inline", job
                    if inline:  # the job runs inside submit: announce it first
                        _announce(job, "", progress, say)
                    fut = ex.submit(run_job, cfg, job, lr, out, tuple(cbs))
                    submitting = None
                    if not inline:
                        _announce(job, f" on worker {fut.slot + 1}", progress, say)
                    running[fut], started[fut] = job, t0
                    if fut.done():  # it ran in this process (inline): record it before starting another
                        break
                if not running:
                    continue
                done, _ = cf.wait(list(running), timeout=1.0, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    job, t0 = running.pop(fut), started.pop(fut)
                    try:
                        value = fut.result()
                    except WorkerDied as e:
                        value = e
                    except CnnDepthError:
                        raise  # the same for every run (say, the dataset is not readable there): stop the sweep
                    except Exception as e:  # a job's own failure; train_run records its errors itself
                        value = e
                    if job.kind == "find":
                        if isinstance(value, BaseException):
                            failed_finds[job.depth] = f"lr_find failed: {type(value).__name__}: {value}"
                            say(f"lr_find depth={job.depth}: failed ({type(value).__name__}: {value})")
                        else:
                            lrs[job.depth] = value
                            say(f"lr_find depth={job.depth}: lr={value:.3g}")
                        continue
                    if isinstance(value, BaseException):
                        value = failed_result(cfg, job, cfg.lr if cfg.lr != "find" else lrs.get(job.depth),
                                              f"{type(value).__name__}: {value}", engine.threads)
                    _record(out, cfg, value, interrupts)
                    progress.end(job.index, value.row, time.monotonic() - t0)
    except KeyboardInterrupt as e:
        n_ok = int((read_results(out)["status"] == "ok").sum())
        why = f" ({e.args[0]})" if e.args else ""
        cut = sorted((j for j in [*running.values(), submitting] if j is not None and j.kind == "run"),
                     key=lambda j: j.index)
        where = (f"during run{'s' if len(cut) > 1 else ''} " + ", ".join(f"{j.index}/{progress.n} "
                 f"({run_id(cfg.arch, j.depth, j.seed)})" for j in cut)) if cut else "between runs"
        raise SweepInterrupted(f"interrupted{why} {where}; {n_ok} finished run(s) are saved in {out}; rerun the "
                               f"same command to resume") from e


def _announce(job: Job, where: str, progress: "Progress", say: Callable[[str], None]) -> None:
    if job.kind == "find":
        say(f"lr_find depth={job.depth} (seed {job.seed}; its valley is this depth's lr for every seed){where}")
    else:
        progress.start(job.index, job.depth, job.seed, where)


def _record(out: Path, cfg: SweepConfig, result: RunResult, interrupts: "_Interrupts") -> None:
    with interrupts.critical():
        record_run(out, cfg, result)
