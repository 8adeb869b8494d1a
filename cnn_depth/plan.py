"""The plan of a sweep: which jobs are left, what each is expected to cost, and the engine that runs them
(this process, local worker processes or Ray), with the reason ``auto`` chose it."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd
import torch

from .config import SweepConfig
from .errors import CnnDepthError
from .loaders import data_info
from .records import model_path, run_id
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
    return {rid for rid, depth, seed in zip(ok["run_id"], ok["depth"], ok["seed"])
            if model_path(out, cfg.arch, int(depth), int(seed)).exists()}


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
        return f"{self.workers} runs {where}{gpus}, {threads} each{why}"

    def executor(self):
        from .executors import InlineExecutor, LocalExecutor, RayExecutor

        if self.kind == "inline":
            return InlineExecutor(self.threads)
        if self.kind == "local":
            return LocalExecutor(self.workers, self.threads, self.gpus, self.runs_per_gpu, preload=["cnn_depth.run"])
        return RayExecutor(self.ray, self.threads, self.runs_per_gpu, max_slots=self.workers)


WORKER_MEMORY = 2 * 1024**3  # bytes to budget per worker process (torch, fastai, a decoded dataset, a model)


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


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity: a container or taskset may give fewer)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def free_cores(cpus: Optional[int] = None, busy: Optional[float] = None) -> int:
    """The cores other processes leave us: ``cpus`` (default :func:`available_cpus`) minus the cores they keep
    busy (default: :func:`busy_cores`, measured now over a quarter of a second), at least 1. The thread count
    of ``threads="auto"`` when training one run at a time: a sweep's serial engine, :func:`depth_learner`."""
    cpus = cpus or available_cpus()
    busy = busy_cores() if busy is None else busy
    return max(1, round(cpus - min(busy, cpus - 1)))


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
                  work: Optional[Sequence[float]] = None, busy: float = 0.0, inline_why: str = "") -> Engine:
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
        return Engine("ray", max(1, min(workers, todo)), threads or 1, runs_per_gpu=cfg.runs_per_gpu, ray=ray)
    cuda = resolve_device(cfg.device).torch.type == "cuda"
    if not cuda and cfg.runs_per_gpu != 1:
        raise CnnDepthError(f"--runs-per-gpu {cfg.runs_per_gpu} needs CUDA GPUs, and torch sees none here "
                            f"(--device {cfg.device}); leave --runs-per-gpu out")
    gpus = tuple(range(torch.cuda.device_count())) if cuda else ()
    free = free_cores(cpus, busy)  # cores other processes leave us
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
    if inline_why and workers > 1:
        workers, why = 1, inline_why
    if workers == 1:
        if not why and loaded and threads is None:
            why = "threads auto" + loaded
        return Engine("inline", 1, threads or free, why=why)
    return Engine("local", workers, threads or max(1, cpus // workers), gpus, cfg.runs_per_gpu, why=why)
