"""The plan of a sweep: which jobs are left, what each is expected to cost, and the engine that runs them
(this process, local worker processes or Ray), with the reason ``auto`` chose it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd
import torch

from .config import SweepConfig
from .errors import CnnDepthError
from .loaders import data_info
from .machine import available_cpus, available_memory, busy_cores, free_cores  # noqa: F401 (plan.free_cores etc. are public)
from .records import MODELS_DIR, run_id
from .run import Job, _macs, resolve_device


# ---------------------------------------------------------------------------------------------------------
# Jobs


def finished_runs(results: pd.DataFrame, cfg: SweepConfig, out: Path) -> set:
    """The run_ids a sweep may skip: its ``ok`` runs; with ``save_models``, only those whose model file is
    there, so that rerunning a sweep with ``--save-models`` trains again (same seed, same settings) the runs
    that were finished without one, and ``explain`` can use them."""
    ok = results[results["status"] == "ok"]
    if not cfg.save_models:
        return set(ok["run_id"])
    return {rid for rid in ok["run_id"] if (Path(out) / MODELS_DIR / f"{rid}.pt").exists()}


def _jobs(cfg: SweepConfig, finished: set, found_lrs: dict, varying: Sequence[str] = ()) -> list[Job]:
    """The jobs of a sweep in grid order (each combination of the settings, then depths, then seeds): each
    run not finished, after its lr_find when needed (one per combination and depth: ``found_lrs`` is keyed
    by ``Job.key``). ``varying``: the settings that vary in the sweep's folder, which its run ids name."""
    jobs, finding = [], set()
    runs = ((c, combo, d, s) for c, combo in enumerate(cfg.combinations()) for d in cfg.depths for s in cfg.seeds)
    for i, (c, combo, depth, seed) in enumerate(runs, start=1):
        tag = combo.run_tag(varying)
        if run_id(combo.arch, depth, seed, tag) in finished:
            continue
        if combo.lr == "find" and (c, depth) not in found_lrs and (c, depth) not in finding:
            jobs.append(Job("find", depth, cfg.seeds[0], combo=c, tag=tag))
            finding.add((c, depth))
        jobs.append(Job("run", depth, seed, i, c, tag))
    return jobs


def longest_first(jobs: list["Job"], seconds: Callable[["Job"], float]) -> list["Job"]:
    """``jobs`` with the runs in order of decreasing ``seconds`` (ties in grid order), each depth's lr find
    just before its first run: on parallel workers the last runs to start are then the short ones, so the
    workers finish close together."""
    runs = sorted((j for j in jobs if j.kind == "run"), key=lambda j: -seconds(j))
    finds = {j.key: j for j in jobs if j.kind == "find"}
    out = []
    for j in runs:
        if j.key in finds:
            out.append(finds.pop(j.key))
        out.append(j)
    return out


# ---------------------------------------------------------------------------------------------------------
# Engines and the cost model


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
        threads = f"{self.threads} torch thread{'s' if self.threads != 1 else ''}"
        if self.kind == "inline":
            return f"in this process, {threads}{why}"
        where = "on Ray" + ("" if self.ray == "local" else f" at {self.ray}") if self.kind == "ray" else "at once"
        gpus = (f", {self.runs_per_gpu} per GPU on {len(self.gpus)} GPU{'s' if len(self.gpus) != 1 else ''}"
                if self.gpus else "")
        runs = "1 run" if self.workers == 1 else f"{self.workers} runs"
        return f"{runs} {where}{gpus}, {threads} each{why}"

    def executor(self):
        from .executors import InlineExecutor, LocalExecutor, RayExecutor

        if self.kind == "inline":
            return InlineExecutor(self.threads)
        if self.kind == "local":
            return LocalExecutor(self.workers, self.threads, self.gpus, self.runs_per_gpu, preload=["cnn_depth.run"])
        return RayExecutor(self.ray, self.threads, self.runs_per_gpu, max_slots=self.workers)


WORKER_MEMORY = 2 * 1024**3  # bytes to budget per worker process (torch, fastai, a decoded dataset, a model)


# How auto chooses between training the runs one after another in this process (every free core as torch
# threads) and on worker processes (one thread each): from a short calibration on this machine
# (cnn_depth/calibrate.py: a few real training steps of the sweep's smallest and largest model at 1 thread and
# at the free cores, and the start-up of a worker, each measured once per machine and kept in the cache). A
# run's time is (images seen) x (its measured seconds per training image), validation passes counted at a
# third of an image. Workers add their measured start-up and finish when their busiest one does (the longest
# runs first). Checked by experiments/bench_sweep.py (docs/cli.md).
VALID_IMAGE = 1 / 3  # a validation image's cost in training images (forward only)
LR_FIND_IMAGES = 100 * 64  # lr_find: at most 100 batches (fastai's num_it), of bs 64 in the estimate


def estimated_seconds(cfg: SweepConfig, jobs: Sequence["Job"], dls, calibration=None,
                      threads: int = 1) -> Optional[float]:
    """Seconds of training ``jobs`` (runs and lr finds) on ``dls`` with ``threads`` torch threads on quiet
    cores, from ``calibration`` (:func:`cnn_depth.calibrate.calibrate`: measured on this machine). Without
    one, a relative figure (MACs per image times images seen) that only orders jobs (longest first). None
    when a model's size cannot be computed."""
    info = data_info(dls)
    if info is None:
        return None
    n_out, train, valid = len(dls.vocab), len(dls.train_ds), len(dls.valid_ds)
    total, macs, combos = 0.0, {}, cfg.combinations()
    try:
        for job in jobs:
            c = combos[job.combo]  # a grid's: its arch and epochs (its data as dls's)
            if (c.arch, job.depth) not in macs:
                macs[c.arch, job.depth] = _macs(c.arch, job.depth, info.n_in, n_out, tuple(info.img_size))
            images = (LR_FIND_IMAGES if job.kind == "find" else
                      c.epochs * (train + valid * VALID_IMAGE) + valid * VALID_IMAGE)
            m = macs[c.arch, job.depth]
            per_image = calibration.per_image(m, threads) if calibration else m * 1e-10
            total += images * per_image
    except Exception:  # a model that cannot be built here fails its run with its own message: no estimate
        return None
    return total


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


def expected_seconds(work: Sequence[float], workers: int, threads: int, cpus: int, busy: float = 0.0,
                     start: float = 0.0) -> float:
    """Rough wall seconds of runs of quiet-core seconds ``work``: serially with ``threads`` threads
    (``workers`` 1; ``work`` measured at ``threads`` threads), or on ``workers`` worker processes of one
    thread each (``work`` at 1 thread), started first (``start`` seconds) and given the longest runs first.
    Next to ``busy`` cores of other work, our threads get a fair share of the cores."""
    if workers <= 1:
        return sum(work) * threads / _cores(threads, cpus, busy)
    loads = [0.0] * workers
    for w in sorted(work, reverse=True):
        loads[loads.index(min(loads))] += w
    share = _cores(workers, cpus, busy) / workers
    return start + max(loads) / share


@dataclass(frozen=True)
class Work:
    """What auto weighs on CPUs, measured on this machine: each job's seconds at 1 thread (``one``) and at
    ``threads`` threads in one process (``serial``), the workers' start-up, and the calibration's own line."""

    one: tuple  # each job's seconds at 1 thread
    serial: tuple  # each job's seconds at `threads` threads
    threads: int
    start: float  # seconds to start the workers (fork server, imports, their DataLoaders, a first step)
    note: str = ""  # "measured 0.21 ms/img at 1 thread, 0.13 at 2, ..."

    def at(self, threads: int) -> tuple:
        """Each job's seconds serially with ``threads`` threads (measured counts as measured; others scaled
        as :meth:`cnn_depth.calibrate.Calibration.per_image` does)."""
        if threads == self.threads:
            return self.serial
        if threads == 1 or self.threads == 1:
            return self.one
        import math

        power = math.log(threads) / math.log(self.threads)
        return tuple(o * (s / o) ** power if o > 0 else s for o, s in zip(self.one, self.serial))


def auto_workers(cpus: int, threads: Optional[int], todo: int) -> int:
    """The workers auto would start on CPUs: one per ``threads`` cores (one per core), at most one per run
    and as many as the memory holds at ``WORKER_MEMORY`` each."""
    memory = available_memory()
    return max(1, min(cpus // (threads or 1) or 1, max(1, memory // WORKER_MEMORY) if memory else cpus, todo))


def measured_work(cfg: SweepConfig, jobs: Sequence["Job"], dls, todo: int, busy: float = 0.0,
                  recorded_threads: Optional[int] = None, cpus: Optional[int] = None) -> Optional[Work]:
    """:class:`Work` for auto on CPUs, from a calibration on this machine (:mod:`cnn_depth.calibrate`): None
    when there is nothing to decide (explicit ``--workers``, Ray, CUDA: :func:`needs_estimate`; one run; room
    for one worker only) or a model's size cannot be computed."""
    from .calibrate import calibrate

    cpus = cpus or available_cpus()
    threads = cfg.threads if cfg.threads != "auto" else recorded_threads
    if not needs_estimate(cfg) or todo <= 1 or auto_workers(cpus, threads, todo) <= 1 or data_info(dls) is None:
        return None
    serial = threads or free_cores(cpus, busy)
    try:
        cal = calibrate(cfg.combinations()[0], dls, sorted({j.depth for j in jobs}), sorted({1, threads or 1, serial}),
                        busy)  # a grid: its first combination's, other archs by their MACs per image
    except CnnDepthError:
        raise
    except Exception:  # a model that cannot be built or trained here fails its run with its own message
        return None
    one = [estimated_seconds(cfg, [j], dls, cal, 1) for j in jobs]
    many = [estimated_seconds(cfg, [j], dls, cal, serial) for j in jobs]
    if None in one or None in many:
        return None
    return Work(tuple(one), tuple(many), serial, cal.start, cal.describe(serial))


def choose_engine(cfg: SweepConfig, todo: int, cpus: Optional[int] = None, recorded_threads: Optional[int] = None,
                  work: Optional[Work] = None, busy: float = 0.0, inline_why: str = "") -> Engine:
    """The engine for ``cfg``'s ``workers``, ``threads``, ``runs_per_gpu`` and ``ray`` with ``todo`` runs to do.

    ``auto`` on a CPU machine: one worker per core (at most one per run, and as many as the memory holds at
    ``WORKER_MEMORY`` each), each with one thread, when that is expected to finish sooner than training the
    runs one after another in this process with every core other processes leave free (``work``: each job's
    seconds as measured on this machine, :func:`measured_work`; ``busy``: :func:`busy_cores`; see
    :func:`expected_seconds`); else serially. ``Engine.why`` says what was measured and expected.
    Without ``work``: workers whenever there are several runs. With CUDA: ``runs_per_gpu`` workers on each
    visible GPU. Why one thread per worker on CPUs: small CNNs use extra threads poorly, and torch's thread
    pools collapse on shared cores (``experiments/bench_sweep.py``, docs/cli.md).

    ``recorded_threads``: the one thread count the folder's finished runs used, if they agree. ``--threads
    auto`` then keeps it (and the workers follow from it), so that a resumed or extended sweep stays one
    group in the reports: the thread count can change a result's last digits.

    ``inline_why``: why the runs cannot go to local worker processes (e.g. callbacks defined in ``__main__``,
    which a worker cannot import): they then run in this process, with that reason in ``Engine.why``.
    Ray is not affected (it sends such classes by value).

    Run serially with ``threads`` auto, a run gets :func:`free_cores` threads (``busy``: what other processes
    keep busy), the same rule as :func:`cnn_depth.depth_learner`'s ``threads="auto"``.
    """
    cpus = cpus or available_cpus()
    ray = _ray_address(cfg)
    threads = cfg.threads if cfg.threads != "auto" else recorded_threads
    if ray:
        workers = cfg.workers if cfg.workers != "auto" else max(1, todo)
        return Engine("ray", max(1, min(workers, todo)), threads or 1, ray=ray,
                      runs_per_gpu=cfg.runs_per_gpu if cfg.runs_per_gpu != "auto" else 1)  # Ray: a GPU share
    cuda = resolve_device(cfg.device).torch.type == "cuda"
    if not cuda and cfg.runs_per_gpu not in (1, "auto"):  # auto without CUDA: nothing to pack
        raise CnnDepthError(f"--runs-per-gpu {cfg.runs_per_gpu} needs CUDA GPUs, and torch sees none here "
                            f"(--device {cfg.device}); leave --runs-per-gpu out")
    gpus = tuple(range(torch.cuda.device_count())) if cuda else ()
    runs_per_gpu = cfg.runs_per_gpu if cfg.runs_per_gpu != "auto" else 1
    free = free_cores(cpus, busy)  # cores other processes leave us
    loaded = f"; {cpus - free} of {cpus} cores busy with other processes" if free < cpus else ""
    why = ""
    if cfg.workers != "auto":
        workers = cfg.workers
        if gpus and cfg.runs_per_gpu == "auto":  # the workers given, spread over the GPUs
            runs_per_gpu = -(-workers // len(gpus))
    elif gpus:
        if cfg.runs_per_gpu == "auto":  # cores, GPU memory, runs to do: packing.py (the driver refines it)
            from .packing import gpu_free_bytes, gpu_packing

            runs_per_gpu, why = gpu_packing(free, gpu_free_bytes(gpus), None, todo, available_memory(),
                                            WORKER_MEMORY)
            threads = threads or (1 if len(gpus) * runs_per_gpu > 1 else None)  # one core, one thread a run
        workers = len(gpus) * runs_per_gpu
    else:
        workers = auto_workers(cpus, threads, todo)
        if work is not None and workers > 1:
            serial = expected_seconds(work.at(threads or free), 1, threads or free, cpus, busy)
            parallel = expected_seconds(work.at(threads or 1), workers, threads or 1, cpus, busy, work.start)
            note = f"{work.note}; " if work.note else ""
            why = (f"auto: {note}expected about {serial:.0f} s serially, {parallel:.0f} s on {workers} workers"
                   + loaded)
            if serial <= parallel:
                workers = 1
    workers = max(1, min(workers, todo))
    if inline_why and workers > 1:
        workers, why = 1, inline_why
    if workers == 1:
        if not why and loaded and threads is None:
            why = "threads auto" + loaded
        return Engine("inline", 1, threads or free, why=why)
    return Engine("local", workers, threads or max(1, cpus // workers), gpus, runs_per_gpu, why=why)
