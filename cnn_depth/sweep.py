"""The depth sweep: one fastai run per (depth, seed), each written as one row the moment it ends.

Under the sweep's folder (``SweepConfig.out``):

- ``sweep.json``: the config (``asdict(SweepConfig)``) and the environment (versions, device, git commit);
- ``results.csv``: one row per run (``RESULT_COLUMNS``), appended, flushed and fsync'd as each run ends;
- ``history.csv``: one row per run and epoch (``HISTORY_COLUMNS``);
- ``summary.csv``, ``accuracy_vs_depth.png``, ``curves.png``: from :func:`cnn_depth.reports.write_reports`.

Resume: finished (``ok``) runs are skipped; ``diverged`` and ``failed`` ones are run again and their new row
replaces the old one, so results.csv always holds one row per run_id. An interrupt (Ctrl-C, SIGTERM) leaves
the finished rows and no row for the run it cut short.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import gc
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import pandas as pd
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.tracker import TerminateOnNaNCallback
from fastai.torch_core import find_bs, set_seed

from .checkpoint import model_path, run_id, save_run_model
from .config import RESULT_FIELDS, SweepConfig
from .data import dataloaders
from .errors import CnnDepthError
from .explain import ACTIVATION_COLUMNS, activation_stats, fixed_valid_batch
from .learner import depth_learner
from .models import count_params

RESULT_COLUMNS = [
    "run_id", "dataset", "arch", "depth", "seed", "epochs", "lr", "bs", "params",
    "train_images",       # training images processed by fit_one_cycle (all epochs; fewer if it diverged)
    "train_seconds",      # wall time of fit_one_cycle, its per-epoch validation passes included
    "images_per_second",  # train_images / train_seconds
    "valid_seconds",      # wall time of the final validate()
    "train_loss",         # fastai's smoothed training loss at the end of the last epoch (as printed)
    "valid_loss", "accuracy", "error_rate",  # from the final validate(); error_rate = 1 - accuracy
    "epochs_done", "device", "precision", "pipeline", "augment", "status", "error", "finished",
]
ACTIVATION_CSV_COLUMNS = ["run_id", "dataset", "arch", "depth", "seed", *ACTIVATION_COLUMNS]
HISTORY_COLUMNS = ["run_id", "dataset", "arch", "depth", "seed", "epochs", "epoch", "train_loss", "valid_loss", "accuracy",
                   "seconds"]
STATUSES = ("ok", "diverged", "failed")


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


def _git(*args: str) -> Optional[str]:
    src = Path(__file__).resolve().parent.parent
    if not (src / "pyproject.toml").exists():  # an installed copy: a git repo around it says nothing about it
        return None
    try:
        r = subprocess.run(["git", *args], cwd=src, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def environment(device: Device) -> dict:
    """Versions, hardware and the git commit of the code (when it runs from a checkout)."""
    import fastai
    import torchvision

    from . import __version__

    commit = _git("rev-parse", "HEAD")
    return dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                fastai=fastai.__version__, cnn_depth=__version__, device=device.name, precision=device.precision,
                platform=platform.platform(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                git_commit=commit, git_dirty=bool(_git("status", "--porcelain", "--untracked-files=no"))
                if commit else None)


# ---------------------------------------------------------------------------------------------------------
# Files: rows that survive interrupts


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_rows(path: Path) -> tuple[Optional[list[str]], list[dict]]:
    """Header and rows of a CSV as strings (exactly as written); (None, []) when it does not exist."""
    if not path.exists():
        return None, []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def write_rows(path: Path, columns: Sequence[str], rows: list[dict], key: str = "run_id",
               replace: Sequence[str] = ()) -> None:
    """Add ``rows`` to a CSV, dropping old rows whose ``key`` is in ``replace`` or in ``rows``; durable when
    it returns.

    The common case appends (then flush and fsync). A retried run, a changed header or a damaged last line
    rewrites the file to a temporary one that atomically replaces it, so a crash leaves the old or the new
    file, never half of one.
    """
    header, old = read_rows(path)
    keys = {str(r[key]) for r in rows} | set(replace)
    clean_end = not path.exists() or path.stat().st_size == 0 or path.read_bytes()[-1:] == b"\n"
    if header == list(columns) and clean_end and not any(r.get(key) in keys for r in old):
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, columns, extrasaction="ignore").writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        return
    cols = list(columns) + [c for c in (header or []) if c not in columns]
    keep = [r for r in old if r.get(key) not in keys and None not in r.values()]  # None: a truncated line
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(keep + rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-12)
    return a == b


def check_out(cfg: SweepConfig) -> Path:
    """The sweep folder, made and writable; an existing one must hold a sweep of the same config."""
    out = cfg.out_dir
    meta = out / "sweep.json"
    if meta.exists():
        try:
            old = json.loads(meta.read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CnnDepthError(f"cannot read {meta} ({type(e).__name__}); use another --out, or delete the "
                                f"folder to start over") from None
        for name in RESULT_FIELDS:
            new = getattr(cfg, name)
            if name in old and not _same(old[name], new):
                flag = "--data" if name == "dataset" and "/" in str(old[name]) else f"--{name.replace('_', '-')}"
                same = (f"leave out {flag}" if old[name] is None else
                        f"--{'' if old[name] else 'no-'}{name}" if isinstance(old[name], bool) else f"{flag} {old[name]}")
                raise CnnDepthError(f"{out} holds a sweep with {name}={old[name]!r}, not {new!r}; use another "
                                    f"--out (or {same} to resume that sweep)")
    elif (out / "results.csv").exists():
        raise CnnDepthError(f"{out} has a results.csv but no sweep.json, so it cannot be resumed safely; "
                            f"use another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise CnnDepthError(f"cannot write to {out} ({e.strerror or e}); pick a folder you can write to "
                            f"with --out") from None
    return out


def write_sweep_json(out: Path, cfg: SweepConfig, device: Device) -> dict:
    """Write (or update) ``sweep.json``: the config, with depths and seeds grown to every run in the folder."""
    path = out / "sweep.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    config = cfg.as_dict()
    config["out"] = str(out)
    for name in ("depths", "seeds"):
        config[name] = list(dict.fromkeys(old.get("config", {}).get(name, []) + config[name]))
    env = environment(device)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    invocations = old.get("invocations", []) + [dict(started=now, argv=sys.argv, depths=cfg.depths,
                                                     seeds=cfg.seeds, device=device.name)]
    data = dict(config=config, environment=env, invocations=invocations)
    _write_json(path, data)
    return data


def read_results(out: Path) -> pd.DataFrame:
    """``results.csv`` of a sweep folder as a DataFrame (empty, with the columns, when there is none yet)."""
    path = Path(out) / "results.csv"
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    df = pd.read_csv(path, keep_default_na=True)
    return df[df["status"].isin(STATUSES)].reset_index(drop=True)


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
    """Training images processed and wall seconds per epoch (the epoch's validation pass included), and
    a copy of the Recorder's per-epoch values, taken before ``validate()`` (which resets the Recorder)."""

    order = 55  # after Recorder (50), so an epoch's values are there when its seconds are stored

    def __init__(self):
        self.train_images, self.epoch_seconds, self.values, self.fits, self.fitting = 0, [], [], 0, False

    def before_fit(self):
        self.fits += 1
        self.fitting = self.fits == 1  # one fit per run; learn.validate() calls before_fit too

    def after_fit(self):
        self.fitting = False

    def before_epoch(self):
        self.t0 = time.perf_counter()

    def after_batch(self):
        if self.fitting and self.training:
            self.train_images += find_bs(self.yb)

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


def _learner(dls, cfg: SweepConfig, depth: int, device: Device, out: Path, cbs=()):
    learn = depth_learner(dls, depth, cfg.arch, path=out, cbs=list(cbs))
    if device.precision == "bf16":
        learn.to_bf16()
    if cfg.quiet:
        if hasattr(learn, "progress"):
            learn.remove_cb(learn.progress)
        learn.logger = lambda *a, **k: None
    return learn


def find_lr(dls, cfg: SweepConfig, depth: int, seed: int, device: Device, out: Path) -> float:
    """``lr_find`` on a fresh model of ``depth`` (seeded with ``seed``): fastai's ``valley`` suggestion."""
    seed_run(seed, dls)
    learn = _learner(dls, cfg, depth, device, out)
    with tempfile.TemporaryDirectory(prefix=".lr_find-", dir=out) as tmp:
        learn.model_dir = Path(tmp).resolve()  # lr_find saves and restores the weights there
        lr = float(learn.lr_find(show_plot=False).valley)
    return lr


def _found_lr(cache: dict, dls, cfg: SweepConfig, depth: int, device: Device, out: Path) -> float:
    """--lr find: one lr per depth, found with the sweep's first seed and reused for its other seeds."""
    if depth not in cache:
        cache[depth] = find_lr(dls, cfg, depth, cfg.seeds[0], device, out)
    return cache[depth]


@dataclass
class RunResult:
    learn: object  # the trained fastai Learner (None when it could not be built)
    row: dict  # one row of results.csv
    history: list  # rows of history.csv, one per finished epoch


def train_run(dls, cfg: SweepConfig, depth: int, seed: int, lr: Union[float, Callable[[], float]], device: Device,
              out: Path, cbs: Sequence[Callback] = ()) -> RunResult:
    """Seed, build, ``fit_one_cycle(epochs, lr)``, ``validate()``: one row, whatever happens in between.

    ``lr`` is a number, or a function that finds one (``lr_find``; its failure is the run's failure).

    A loss that becomes NaN/inf stops the run (``diverged``); an exception makes it ``failed`` with the
    error text. KeyboardInterrupt is not caught: the sweep stops and writes nothing for this run.
    """
    rid = run_id(cfg.arch, depth, seed)
    row = dict.fromkeys(RESULT_COLUMNS, "")
    row.update(run_id=rid, dataset=cfg.dataset_label, arch=cfg.arch, depth=depth, seed=seed, epochs=cfg.epochs,
               lr="", bs=cfg.bs, device=device.name, precision=device.precision, epochs_done=0,
               pipeline=cfg.pipeline, augment=cfg.augment)
    stats, nan = RunStats(), StopOnNaN()
    learn = None
    try:
        lr = lr() if callable(lr) else lr
        row["lr"] = lr
        seed_run(seed, dls)
        learn = _learner(dls, cfg, depth, device, out, cbs=[stats, nan, *cbs])
        row["params"] = count_params(learn.model)
        t0 = time.perf_counter()
        learn.fit_one_cycle(cfg.epochs, lr)
        train_s = round(time.perf_counter() - t0, 3)  # as stored, so images_per_second is reproducible from it
        t0 = time.perf_counter()
        valid_loss, acc = learn.validate()[:2]
        valid_s = time.perf_counter() - t0
        train_loss = stats.values[-1][0] if stats.values else math.nan
        row.update(train_images=stats.train_images, train_seconds=train_s,
                   images_per_second=round(stats.train_images / train_s, 1), valid_seconds=round(valid_s, 3),
                   train_loss=train_loss, valid_loss=float(valid_loss), accuracy=float(acc),
                   error_rate=1 - float(acc))
        finite = all(math.isfinite(v) for v in (train_loss, float(valid_loss)))
        if nan.where or not finite:
            row.update(status="diverged", error=nan.where or "loss is not finite after training")
        else:
            row["status"] = "ok"
    except Exception as e:  # a run's failure (say, out of memory) is recorded and the sweep goes on
        row.update(status="failed", error=f"{type(e).__name__}: {e}".replace("\n", " ")[:500])
        if device.torch.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
    history = []
    if learn is not None:
        for epoch, (vals, secs) in enumerate(zip(stats.values, stats.epoch_seconds), start=1):
            vals = vals + [math.nan] * (3 - len(vals))
            history.append(dict(run_id=rid, dataset=cfg.dataset_label, arch=cfg.arch, depth=depth, seed=seed,
                                epochs=cfg.epochs, epoch=epoch, train_loss=vals[0], valid_loss=vals[1], accuracy=vals[2],
                                seconds=round(secs, 3)))
    row["epochs_done"] = len(history)
    return RunResult(learn, row, history)


def _run_line(i: int, n: int, row: dict) -> str:
    head = f"run {i}/{n}  depth={row['depth']} seed={row['seed']}"
    if row["status"] == "failed":
        return f"{head}  failed: {row['error']}"
    lr = row["lr"]
    text = (f"{head}  lr={float(lr):.3g}  acc={float(row['accuracy']):.4f}  valid_loss={float(row['valid_loss']):.4f}"
            f"  {float(row['train_seconds']):.1f} s ({float(row['images_per_second']):.0f} img/s)")
    return text + (f"  diverged: {row['error']}" if row["status"] == "diverged" else "  ok")


def run_extras(result: RunResult, dls, cfg: SweepConfig, out: Path) -> list[dict]:
    """After a run trains, before its row is written: save the model (``--save-models``) and return its
    per-layer activation statistics on the fixed validation batch (rows of activations.csv).

    A run that failed has nothing to save or measure. The model file is written before the row, so an
    interrupt in between leaves a model without a row, which the rerun retrains and overwrites.
    """
    if result.learn is None or result.row["status"] == "failed":
        return []
    rid, depth, seed = result.row["run_id"], result.row["depth"], result.row["seed"]
    if cfg.save_models:
        save_run_model(model_path(out, cfg.arch, depth, seed), result.learn, run_id=rid, seed=seed,
                       dataset=cfg.dataset_label)
    run = dict(run_id=rid, dataset=cfg.dataset_label, arch=cfg.arch, depth=depth, seed=seed)
    return [{**run, **r} for r in activation_stats(result.learn.model, fixed_valid_batch(dls))]


# ---------------------------------------------------------------------------------------------------------
# The sweep


def run_sweep(config: Optional[SweepConfig] = None, *, cbs: Sequence[Callback] = (),
              log: Callable[[str], None] = print, **kw) -> pd.DataFrame:
    """Train one model per (depth, seed) and write the reports; return every row of the sweep's results.csv.

    Args:
        config: a :class:`SweepConfig`; or give its fields as keywords (they override ``config``'s), e.g.
            ``run_sweep(depths=[2, 3, 4], seeds=[0], epochs=1, max_per_class=50, out="runs/x")``.
        cbs: extra fastai callbacks added to every run's Learner.
        log: where the one-line-per-run progress goes (nothing when ``quiet``).
        **kw: SweepConfig fields.

    Returns:
        results.csv as a DataFrame (every run in the folder, this call's and earlier ones'), with
        ``df.attrs["out"]`` the folder and ``df.attrs["summary"]`` the summary table.

    Raises:
        CnnDepthError: bad options, a folder holding another config, an unreadable dataset.
        SweepInterrupted: Ctrl-C or SIGTERM; finished runs are saved, rerun to resume.
    """
    from .reports import write_reports

    cfg = dataclasses.replace(config, **kw) if config is not None else SweepConfig(**kw)
    say = (lambda s: None) if cfg.quiet else log
    device = resolve_device(cfg.device)
    fresh = not cfg.out_dir.exists()
    out = check_out(cfg)
    try:  # built once: every run sees the same items, statistics and transforms
        dls = dataloaders(cfg.dataset, bs=cfg.bs, max_per_class=cfg.max_per_class, device=device.torch,
                          pipeline=cfg.pipeline, augment=cfg.augment)
    except BaseException:
        if fresh:  # leave no empty folder behind for a dataset that cannot be read
            shutil.rmtree(out, ignore_errors=True)
        raise
    write_sweep_json(out, cfg, device)
    done = read_results(out)
    ok = done[done["status"] == "ok"]
    finished = set(ok["run_id"])
    found_lrs = {int(d): float(lr) for d, lr in zip(ok["depth"], ok["lr"])}  # --lr find: one lr per depth
    grid = [(d, s) for d in cfg.depths for s in cfg.seeds]
    say(f"sweep: {len(grid)} runs ({len(grid) - sum(run_id(cfg.arch, d, s) in finished for d, s in grid)} to do) "
        f"on {device.name}, {len(dls.train_ds)} train / {len(dls.valid_ds)} valid images, writing to {out}")
    i, rid = 0, None
    try:
        with _Interrupts() as interrupts:
            for i, (depth, seed) in enumerate(grid, start=1):
                rid = run_id(cfg.arch, depth, seed)
                if rid in finished:
                    acc = float(ok.loc[ok["run_id"] == rid, "accuracy"].iloc[0])
                    say(f"run {i}/{len(grid)}  depth={depth} seed={seed}  done earlier (acc={acc:.4f}), skipped")
                    continue
                lr = cfg.lr if cfg.lr != "find" else functools.partial(_found_lr, found_lrs, dls, cfg, depth,
                                                                                   device, out)
                result = train_run(dls, cfg, depth, seed, lr, device, out, cbs=cbs)
                activations = run_extras(result, dls, cfg, out)
                result.row["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                with interrupts.critical():
                    write_rows(out / "history.csv", HISTORY_COLUMNS, result.history, replace=[rid])
                    write_rows(out / "activations.csv", ACTIVATION_CSV_COLUMNS, activations, replace=[rid])
                    write_rows(out / "results.csv", RESULT_COLUMNS, [result.row])
                say(_run_line(i, len(grid), result.row))
                del result
    except KeyboardInterrupt as e:
        n_ok = int((read_results(out)["status"] == "ok").sum())
        why = f" ({e.args[0]})" if e.args else ""
        raise SweepInterrupted(f"interrupted{why} during run {i}/{len(grid)} ({rid}); {n_ok} finished run(s) "
                               f"are saved in {out}; rerun the same command to resume") from None
    results = read_results(out)
    results.attrs["out"] = str(out)
    results.attrs["summary"] = write_reports(out)
    return results
