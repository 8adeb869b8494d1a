"""What a training step costs on this machine, measured rather than assumed: what ``--workers auto`` weighs.

Constants fitted on one machine were wrong by 2.4x on the next (issue 20), so auto measures instead:

- **A step.** A few real training steps (a real fastai ``Learner`` on the sweep's own DataLoaders: one
  warm-up batch, then ``STEPS`` timed ones) of a model at 1 thread and at N threads (the cores other
  processes leave free), in ``ROUNDS`` rounds that alternate the thread counts; the fastest step of each count
  is its seconds per training image. (On the 2-core VMs a slow phase of a second or more, the VM's neighbours,
  made one round's fastest step 1.5-2.5x the usual, and that one figure was kept for the machine; a slow phase
  now has to last the whole calibration, and it slows both counts alike.) A sweep measures its smallest and largest
  model and interpolates the others by their MACs per image.
- **Starting workers.** Starting one worker process from the fork server, building its DataLoaders and
  running its first training step, timed from the driver: what local workers pay before their first run.

Both are kept in the cache (``cache_dir()/calibration``), keyed by the machine (CPU model name, cores, torch
version) and by what they measured (the model and input shape, batch size and pipeline; the dataset for the
start-up), so a machine measures each once. Entries follow :mod:`cnn_depth.cache`'s protocol (one process
measures, the others wait for its entry; written atomically). A measurement taken while other processes
kept cores busy is used for that decision but not kept, so a later quiet sweep measures again.
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

STEPS = 5  # timed training batches per measurement, after one warm-up batch (the fastest one counts)
MIN_SECONDS = 0.1  # ... or more, until the timed batches took this long (a small model's batch: ~10-20 ms here)
ROUNDS = 3  # measurements per thread count, alternating the counts (the fastest one counts)
QUIET_BUSY = 0.5  # cores kept busy by other processes below which a measurement is kept in the cache
VERSION = 2  # of the entries' format and of what they measure (2: ROUNDS rounds)


# ---------------------------------------------------------------------------------------------------------
# Keys


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_key() -> dict:
    """What a measurement holds for: the CPU model, the cores this process may use, torch's version."""
    import torch

    from .machine import available_cpus

    return dict(cpu=cpu_name(), cores=available_cpus(), torch=torch.__version__, version=VERSION)


def _entry(kind: str, key: dict) -> Path:
    from .files import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "calibration" / f"{kind}-{digest}.json"


def _read(path: Path, key: dict) -> Optional[dict]:
    """An entry's values, or None when it is missing, unreadable or for another key."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("values"), dict):
        return None
    return data["values"]


def _write(path: Path, key: dict, values: dict) -> None:
    from .cache import write_entry

    write_entry(path, json.dumps(dict(key=key, values=values), indent=1, sort_keys=True), "write a calibration")


# ---------------------------------------------------------------------------------------------------------
# Measuring


def measure_step(dls, arch: str, depth: int, threads: int, steps: int = STEPS, seconds: float = MIN_SECONDS) -> float:
    """Seconds per training image of a fresh ``arch`` model of ``depth`` on ``dls`` with ``threads`` torch
    threads: the fastest of ``steps`` training batches, or more until they took ``seconds``, after one warm-up
    batch (other processes only ever slow a batch down), in a real fastai fit (the
    batches come from ``dls.train``, the optimiser steps). torch's RNG and thread count are left as they were."""
    import torch
    from fastai.callback.core import Callback, CancelFitException, CancelValidException

    from .learner import depth_learner

    class Steps(Callback):
        order = 100

        def __init__(self):
            self.times, self.t0, self.spent = [], 0.0, 0.0

        def before_batch(self):
            self.t0 = time.perf_counter()

        def after_batch(self):
            if self.training:
                took = time.perf_counter() - self.t0
                self.times.append(took / max(1, len(self.yb[0])))
                self.spent += took if len(self.times) > 1 else 0.0
                if len(self.times) > steps and (self.spent >= seconds or not steps):
                    raise CancelFitException()

        def before_validate(self):  # a small dataset: more epochs' batches, never a validation pass
            if not self.times:  # an epoch without a training batch: another would have none either
                raise CancelFitException()
            raise CancelValidException()

    old = torch.get_num_threads()
    rngs = [dl.rng.getstate() for dl in dls.loaders if hasattr(dl, "rng")]
    steps_cb = Steps()
    try:
        torch.set_num_threads(threads)
        with torch.random.fork_rng(devices=[]):
            learn = depth_learner(dls, depth, arch, threads=None)
            with learn.no_bar(), learn.no_logging():
                learn.fit(1000, 1e-3, cbs=[steps_cb])  # stopped by Steps
    finally:
        torch.set_num_threads(old)
        for dl, state in zip((dl for dl in dls.loaders if hasattr(dl, "rng")), rngs):
            dl.rng.setstate(state)
    timed = steps_cb.times[1:] or steps_cb.times
    if not timed:
        raise RuntimeError("no training batch to time")
    return min(timed)


def step_seconds(dls, arch: str, depth: int, threads: Sequence[int], bs: int, cacheable: bool = True) -> dict:
    """{threads: seconds per training image} of ``arch`` at ``depth`` on ``dls``, for each of ``threads``:
    from the cache, else measured (and kept when ``cacheable``)."""
    from .cache import shared_entry
    from .loaders import data_info

    info = data_info(dls)
    key = dict(machine_key(), arch=arch, depth=int(depth), n_in=info.n_in, n_out=len(dls.vocab),
               img_size=list(info.img_size), bs=bs, pipeline=info.pipeline, augment=info.augment)
    path = _entry("step", key)
    wanted = sorted(set(int(t) for t in threads))

    def load(p):
        values = _read(p, key)
        if values is None or any(str(t) not in values for t in wanted):
            return None
        return {t: float(values[str(t)]) for t in wanted}

    disturbed = []

    def measure(old: dict) -> dict:
        values = dict(old)
        missing = [t for t in sorted(set(wanted) | {1}) if str(t) not in values]
        for _ in range(ROUNDS):  # 1, N, 1, N, ...: a slow phase of the host slows both counts alike
            for t in missing:
                s = measure_step(dls, arch, depth, t)
                values[str(t)] = min(values.get(str(t), s), s)
        one = values["1"]
        for t in wanted:  # more threads never slower, nor more than t times faster, on quiet cores
            s = values[str(t)]
            if s > one * 1.05:  # torch's thread pool met another process on our cores: used now, not kept
                disturbed.append(t)
            values[str(t)] = min(max(s, one / t), one)
        return values

    found = load(path)
    if found is not None:
        return found
    if not cacheable:
        values = measure(_read(path, key) or {})
        return {t: values[str(t)] for t in wanted}

    def build(p):
        values = measure(_read(p, key) or {})
        if not disturbed:
            _write(p, key, values)
        return {t: values[str(t)] for t in wanted}

    return shared_entry(path, load, build, "to calibrate a training step")


def _probe(cfg, arch: str, depth: int) -> float:
    """In a fresh worker: build the sweep's DataLoaders and train one batch (what a worker does before its
    first run); return the seconds of that batch's own timing, taken out of the start-up."""
    from .run import resolve_device, worker_dataloaders

    dls = worker_dataloaders(cfg, resolve_device(cfg.device))
    t0 = time.perf_counter()
    measure_step(dls, arch, depth, 1, steps=0)
    return time.perf_counter() - t0


def start_seconds(cfg, arch: str, depth: int, cacheable: bool = True) -> float:
    """Seconds from asking for a local worker to its first training batch: the fork server importing torch,
    fastai and cnn-depth, the worker building the sweep's DataLoaders, the first step's lazy set-up. Measured
    once per machine and data (a real :class:`~cnn_depth.executors.LocalExecutor` of one worker)."""
    from .cache import shared_entry

    from .config import data_settings

    data = data_settings(cfg)
    key = dict(machine_key(), dataset=data.pop("source"), **data)  # the cache's key as it always was
    path = _entry("start", key)

    def load(p):
        values = _read(p, key)
        return float(values["seconds"]) if values and isinstance(values.get("seconds"), (int, float)) else None

    def measure() -> float:
        from .executors import LocalExecutor

        t0 = time.perf_counter()
        ex = LocalExecutor(1, 1, preload=["cnn_depth.run"])
        try:
            step = ex.submit(_probe, cfg, arch, depth).result()
            return time.perf_counter() - t0 - step
        finally:
            ex.shutdown(cancel=True)

    found = load(path)
    if found is not None:
        return found
    if not cacheable:
        return measure()

    def build(p):
        seconds = measure()
        _write(p, key, dict(seconds=seconds))
        return seconds

    return shared_entry(path, load, build, "to time a worker's start")


# ---------------------------------------------------------------------------------------------------------
# What a sweep gets


@dataclass(frozen=True)
class Calibration:
    """Seconds per training image of measured models (``points``: (MACs per image, {threads: seconds})),
    interpolated linearly in MACs between them, and the seconds to start local workers."""

    points: tuple  # ((macs, {threads: seconds per image}), ...) sorted by MACs
    start: float  # seconds to start the workers and build their DataLoaders
    cost: float = 0.0  # seconds this calibration took here (0: all from the cache)
    kept: bool = True  # from or into the cache (False: measured on a busy host, used once)
    threads: tuple = field(default=(1,))  # the thread counts measured

    def per_image(self, macs: float, threads: int) -> float:
        """Seconds per training image of a model of ``macs`` MACs per image with ``threads`` threads: measured
        thread counts as measured; others on the power law through 1 and the largest measured count."""
        pts = [(m, self._at(v, threads)) for m, v in self.points]
        if len(pts) == 1 or pts[-1][0] == pts[0][0]:
            return pts[0][1]
        (m0, s0), (m1, s1) = pts[0], pts[-1]
        return max(min(s0, s1) * 0.5, s0 + (s1 - s0) * (macs - m0) / (m1 - m0))

    @staticmethod
    def _at(values: dict, threads: int) -> float:
        if threads in values:
            return values[threads]
        top = max(values)
        if top <= 1:
            return values[1]
        import math

        return values[1] * (values[top] / values[1]) ** (math.log(threads) / math.log(top))

    def describe(self, threads: int) -> str:
        """``measured 0.21 ms/img at 1 thread, 0.13 at 2`` (the smallest model; the largest after ``..``)."""
        def at(t):
            ms = [self._at(v, t) * 1e3 for _, v in self.points]
            return f"{ms[0]:.2f}" + (f"-{ms[-1]:.2f}" if len(ms) > 1 else "")

        head = f"measured {at(1)} ms/img at 1 thread"
        if threads != 1:
            head += f", {at(threads)} at {threads}"
        start = f", {self.start:.1f} s to start a worker"
        kept = "" if self.kept else ", busy host: not kept"
        how = "" if self.cost < 0.05 else f" (calibrated in {self.cost:.1f} s{kept})"
        return head + start + how


def calibrate(cfg, dls, depths: Sequence[int], threads: Sequence[int], busy: float = 0.0,
              workers: bool = True) -> Calibration:
    """The :class:`Calibration` of a sweep on ``dls``: its smallest and largest model of ``depths`` (by MACs)
    at each of ``threads``, and (with ``workers``) the start-up of a worker."""
    from .loaders import data_info
    from .run import _macs

    t0 = time.perf_counter()
    kept = busy < QUIET_BUSY
    info = data_info(dls)
    macs = {d: _macs(cfg.arch, d, info.n_in, len(dls.vocab), tuple(info.img_size)) for d in set(depths)}
    ends = sorted(set([min(macs, key=lambda d: (macs[d], d)), max(macs, key=lambda d: (macs[d], d))]))
    points = tuple(sorted((macs[d], step_seconds(dls, cfg.arch, d, threads, cfg.bs, kept)) for d in ends))
    start = start_seconds(cfg, cfg.arch, ends[0], kept) if workers else 0.0
    return Calibration(points, start, time.perf_counter() - t0, kept, tuple(sorted(set(threads))))
