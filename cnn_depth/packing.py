"""How many runs share one GPU: ``--runs-per-gpu auto`` (the default with CUDA).

A small CNN's training step costs about 2 ms of host work whatever its batch, so one run leaves a big GPU
mostly idle and is bound by its one CPU core; several runs at once fill it (issue 20: on one H200, bn
depths 2-8 on CIFAR-10 took 165.7 s one run at a time and 75.8 s seven at a time, with identical rows).
``auto`` packs as many runs on each GPU as

(a) the free CPU cores allow: one core, one torch thread per run;
(b) the GPU's free memory allows: each run at its peak (:data:`GPU_MARGIN` times the peak the runs record,
    ``peak_memory_mb``, or before any run has ended an estimate from the model: :func:`estimate_peak_bytes`)
    plus a CUDA context per process (:data:`CUDA_CONTEXT_BYTES`);
(c) the runs to do allow (and the host memory, at ``plan.WORKER_MEMORY`` a worker process).

:func:`gpu_packing` is the decision, a pure function of those numbers. :class:`Packing` is the driver's
side of it while the sweep runs: the runs it keeps on the GPUs at once, raised or lowered as runs report
their peak (``auto`` only), and lowered after a CUDA out-of-memory failure (any value), whose run is then
retried once. An explicit ``--runs-per-gpu N`` is never second-guessed up front; a value above what the
memory estimate holds gets a warning line.

Measured on one H200 (docs/cli.md#gpus): the reference sweep's estimate was 1.08-1.12x the recorded peaks;
an extreme run (bn depth 300, bs 16384) was estimated at 3.0x its real peak: cautious, never under.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

MIB = 2**20
GIB = 2**30
GPU_MARGIN = 1.3  # a run's GPU memory at most, over its recorded peak (allocator cache, fragmentation)
CUDA_CONTEXT_BYTES = 500 * MIB  # the CUDA context (and cuBLAS/cuDNN handles) of each worker process
CUDNN_WORKSPACE_BYTES = 64 * MIB  # in an estimate: convolution workspaces, not visible from the model
BYTES_PER_PARAM = 18  # fp32 weights, gradients and Adam's two moments (16), the bf16 copies of autocast (2)
BYTES_PER_ACTIVATION = 4  # each layer output kept for the backward pass, counted as fp32 (bf16 is 2)


def run_bytes(peak_bytes: Optional[float]) -> int:
    """GPU memory to budget for one run of peak ``peak_bytes``: its peak with :data:`GPU_MARGIN`, plus the
    CUDA context of its process; with no peak known, the context alone."""
    return int((peak_bytes or 0) * GPU_MARGIN) + CUDA_CONTEXT_BYTES


def memory_bound(gpu_free_bytes: Sequence[int], peak_bytes: Optional[float]) -> int:
    """Runs at once that the tightest of the GPUs holds at ``peak_bytes`` each (0: not even one)."""
    return min(int(free // run_bytes(peak_bytes)) for free in gpu_free_bytes)


def _size(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB else f"{nbytes / MIB:.0f} MiB"


def gpu_packing(free_cores: int, gpu_free_bytes: Sequence[int], peak_bytes_per_run: Optional[float],
                runs_to_do: int, host_memory: Optional[int] = None, worker_memory: int = 2 * GIB,
                measured: bool = False) -> tuple[int, str]:
    """Runs at once per GPU, and why: the fewest of what the free cores, the GPUs' memory, the host's memory
    and the runs to do allow, at least 1.

    Args:
        free_cores: CPU cores other processes leave free (``machine.free_cores``): one run each, shared by the GPUs.
        gpu_free_bytes: free memory of each GPU the runs go to (``torch.cuda.mem_get_info``); the tightest
            one bounds every GPU (runs are spread round-robin).
        peak_bytes_per_run: a run's peak GPU memory (the largest recorded so far, or an estimate); None
            before anything is known: the CUDA context alone is counted.
        runs_to_do: runs left in the sweep (at most that many at once over all the GPUs).
        host_memory: bytes of host memory available (None: not a bound), at ``worker_memory`` a process.
        measured: whether the peak was measured (said in the reason) rather than estimated.
    """
    n = max(1, len(gpu_free_bytes))
    per_run = run_bytes(peak_bytes_per_run)
    bounds = {"free cores": max(1, free_cores // n), "runs to do": max(1, math.ceil(runs_to_do / n)),
              "GPU memory": memory_bound(gpu_free_bytes, peak_bytes_per_run) if gpu_free_bytes else 1}
    if host_memory is not None:
        bounds["host memory"] = max(1, host_memory // worker_memory // n)
    per_gpu = max(1, min(bounds.values()))
    by = [name for name, v in bounds.items() if v == per_gpu] or ["GPU memory"]
    peak = ("no peak known yet" if not peak_bytes_per_run else
            f"{'measured' if measured else 'estimated'} peak {_size(peak_bytes_per_run)} x {GPU_MARGIN:g} + "
            f"{_size(CUDA_CONTEXT_BYTES)} CUDA context")
    parts = [f"{free_cores} free core{'s' if free_cores != 1 else ''}" + (f" over {n} GPUs" if n > 1 else ""),
             f"{runs_to_do} run{'s' if runs_to_do != 1 else ''} to do",
             f"{_size(min(gpu_free_bytes)) if gpu_free_bytes else '?'} free GPU memory holds "
             f"{bounds['GPU memory']} at {_size(per_run)} a run ({peak})"]
    if host_memory is not None:
        parts.append(f"{_size(host_memory)} host memory holds {bounds['host memory'] * n} worker processes")
    why = f"auto packing: {per_gpu} per GPU, set by the {' and the '.join(by)}; " + ", ".join(parts)
    if bounds["GPU memory"] == 0:
        why += "; one run may not fit in the free GPU memory: a smaller --bs needs less"
    return per_gpu, why


def over_memory_warning(runs_per_gpu: int, gpu_free_bytes: Sequence[int], peak_bytes: Optional[float]) -> str:
    """A one-line warning when an explicit ``--runs-per-gpu`` is more than the memory estimate holds ('' when
    it is not): the number stands (it is never second-guessed), and runs out of memory are retried."""
    if not gpu_free_bytes or not peak_bytes:
        return ""
    holds = memory_bound(gpu_free_bytes, peak_bytes)
    if runs_per_gpu <= holds:
        return ""
    return (f"warning: --runs-per-gpu {runs_per_gpu} is more than the {holds} runs the free GPU memory "
            f"({_size(min(gpu_free_bytes))}) holds at about {_size(run_bytes(peak_bytes))} a run (estimated peak "
            f"{_size(peak_bytes)} x {GPU_MARGIN:g} + CUDA context); a run out of memory lowers the packing and is "
            f"retried once; --runs-per-gpu auto picks it for you")


def is_out_of_memory(error: str) -> bool:
    """Whether a run's error text is the GPU running out of memory (torch's OutOfMemoryError, or a cuDNN or
    cuBLAS allocation failure)."""
    text = str(error)
    return "CUDA out of memory" in text or "OutOfMemoryError" in text or "_STATUS_ALLOC_FAILED" in text


@dataclass
class Packing:
    """The runs a sweep's driver keeps on its GPUs at once, as the sweep goes.

    ``per_gpu`` starts at the decision; ``slots_per_gpu`` is what the executor was started with (never
    more). With ``auto``, each run's recorded peak re-decides the memory bound (:meth:`measured`); with any
    value, a CUDA out-of-memory failure lowers it below the runs that were then on the GPU
    (:meth:`out_of_memory`), and it is never raised above that again.

    ``estimates`` (depth: bytes, :func:`estimate_peak_bytes`) calibrate the measurements: the run that ends
    first is often a small one, so the peak that bounds the packing is the largest estimate scaled by the
    largest recorded/estimated ratio so far, and never less than the largest peak recorded."""

    per_gpu: int
    slots_per_gpu: int
    gpus: int
    auto: bool
    gpu_free_bytes: Sequence[int] = ()
    estimates: dict = field(default_factory=dict)  # depth: estimated peak bytes
    ceiling: Optional[int] = None  # set by an out-of-memory failure
    peak: float = 0.0  # the largest peak recorded so far, bytes
    ratio: float = 0.0  # the largest recorded/estimated peak so far
    retried: set = field(default_factory=set)  # jobs retried after running out of memory

    @property
    def limit(self) -> int:
        """Runs at once over all the GPUs now."""
        return self.per_gpu * self.gpus

    def predicted_peak(self) -> float:
        """The peak a run is budgeted at now, bytes (0 before any run recorded one)."""
        scaled = max(self.estimates.values()) * self.ratio if self.estimates and self.ratio else 0.0
        return max(self.peak, scaled)

    def measured(self, depth: int, peak_mib) -> str:
        """A run of ``depth`` recorded ``peak_mib``: with ``auto``, the memory bound at
        :meth:`predicted_peak` sets the packing again (at most the slots, never above an out-of-memory
        ceiling). A line saying so when it changes, else ''."""
        try:
            peak = float(peak_mib) * MIB
        except (TypeError, ValueError):
            return ""
        if not self.auto or not math.isfinite(peak) or peak <= 0 or not self.gpu_free_bytes:
            return ""
        self.peak = max(self.peak, peak)
        if self.estimates.get(depth):
            self.ratio = max(self.ratio, peak / self.estimates[depth])
        budget = self.predicted_peak()
        new = max(1, min(self.slots_per_gpu, self.ceiling or self.slots_per_gpu,
                         memory_bound(self.gpu_free_bytes, budget)))
        if new == self.per_gpu:
            return ""
        old, self.per_gpu = self.per_gpu, new
        return (f"packing: {'raised' if new > old else 'lowered'} from {old} to {new} run{'s' if new != 1 else ''} "
                f"per GPU: runs recorded peaks up to {_size(self.peak)}, which puts the largest run at about "
                f"{_size(budget)}, {_size(run_bytes(budget))} with margin and CUDA context")

    def out_of_memory(self, others_running: int) -> tuple[int, int]:
        """A run ran out of GPU memory while ``others_running`` runs ran beside it (over all GPUs): the
        packing goes below what was then on its GPU, at least 1, and stays there. Returns (before, now)."""
        before = self.per_gpu
        on_gpu = math.ceil(others_running / self.gpus)  # the others on one GPU, spread round-robin
        self.per_gpu = max(1, min(self.per_gpu - 1, on_gpu))
        self.ceiling = self.per_gpu
        return before, self.per_gpu

    def retry(self, key, others_running: int) -> bool:
        """Whether a job that ran out of memory is retried: once, and only when something shared its GPU or
        the packing was above 1 (a run alone on its GPU would fail the same way again)."""
        if key in self.retried or (others_running == 0 and self.per_gpu <= 1):
            return False
        self.retried.add(key)
        return True


# ---------------------------------------------------------------------------------------------------------
# What the driver measures and estimates (torch, on the CPU; CUDA only in gpu_free_bytes)


def gpu_free_bytes(gpus: Sequence[int]) -> list[int]:
    """Free memory of each GPU now (``torch.cuda.mem_get_info``). It gives the calling process a CUDA context
    on each GPU; the driver's workers are never forked from it (a fork server or spawn), so that is safe."""
    import torch

    return [int(torch.cuda.mem_get_info(g)[0]) for g in gpus]


def estimate_peak_bytes(arch: str, depth: int, n_in: int, n_out: int, img_size: tuple, bs: int,
                        dataset_bytes: int = 0) -> int:
    """A run's peak GPU memory before one has run, from its model (built on the CPU): the weights, gradients,
    Adam state and autocast copies (:data:`BYTES_PER_PARAM` a parameter), every layer's output for ``bs``
    images at :data:`BYTES_PER_ACTIVATION` a value, a cuDNN workspace, and ``dataset_bytes`` (the fast
    pipeline keeps the decoded images on the GPU, which the recorded peak counts too). Meant to be high
    rather than low; the runs' recorded peaks replace it."""
    import torch

    from .models import depth_cnn

    with torch.random.fork_rng(devices=[]):  # building a model draws weights: leave the RNG untouched
        model = depth_cnn(depth, n_in=n_in, n_out=n_out, arch=arch, img_size=tuple(img_size), ndim=len(img_size)).eval()
    values = [0]

    def count(module, inputs, output):
        for o in (output if isinstance(output, (tuple, list)) else [output]):
            if isinstance(o, torch.Tensor):
                values[0] += o.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(1, n_in, *img_size))
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return int(params * BYTES_PER_PARAM + values[0] * bs * BYTES_PER_ACTIVATION + CUDNN_WORKSPACE_BYTES
               + dataset_bytes)


def sweep_peak_estimates(cfg, dls, depths) -> dict:
    """:func:`estimate_peak_bytes` of each of ``depths`` for the sweep ``cfg`` on its DataLoaders ``dls``
    (depth: bytes); empty when it cannot be computed (DataLoaders not built by cnn-depth, a model that cannot
    be built here: that run fails with its own message)."""
    from .loaders import data_info

    info = data_info(dls)
    if info is None:
        return {}
    images = len(dls.train_ds) + len(dls.valid_ds)
    sides = tuple(info.img_size)  # (h, w), (length,) or (d, h, w)
    per_value = 4 if getattr(info.source, "spec", None) is not None else 1  # arrays float32, images uint8
    dataset = images * (info.n_in * math.prod(sides) * per_value + 16) if info.pipeline == "fast" else 0  # + targets
    try:  # a grid: the largest of its combinations at each depth
        return {d: max(estimate_peak_bytes(c.arch, d, info.n_in, len(dls.vocab), sides, c.bs, dataset)
                       for c in cfg.combinations()) for d in sorted(set(depths))}
    except Exception:
        return {}


def start_packing(cfg, engine, dls, depths, todo: int, busy: Optional[float]):
    """The driver's :class:`Packing` for a sweep on local GPU workers, once its DataLoaders are built (the
    workers start meanwhile), and the engine as it is then described (the ``sweep:`` line, sweep.json).

    ``auto`` (``workers`` and ``runs_per_gpu`` both): :func:`gpu_packing` again, now with the peak
    estimated for the largest model (:func:`sweep_peak_estimates`), at most the workers already started.
    An explicit ``--runs-per-gpu`` (or ``--workers``) stands; one above what the estimate holds gets a
    warning, also kept in the engine's reason. Returns (packing, engine, warning line or '')."""
    from dataclasses import replace

    from .machine import available_cpus, available_memory, free_cores
    from .plan import WORKER_MEMORY

    gpus, slots = len(engine.gpus), engine.runs_per_gpu
    free_memory = gpu_free_bytes(engine.gpus)
    estimates = sweep_peak_estimates(cfg, dls, depths)
    peak = max(estimates.values()) if estimates else None
    auto = cfg.runs_per_gpu == "auto" and cfg.workers == "auto"
    packing = Packing(per_gpu=slots, slots_per_gpu=slots, gpus=gpus, auto=auto, gpu_free_bytes=free_memory,
                      estimates=estimates)
    if not auto:
        warning = over_memory_warning(slots, free_memory, peak) if cfg.runs_per_gpu != "auto" else ""
        if warning:
            engine = replace(engine, why="; ".join(w for w in (engine.why, warning[len("warning: "):]) if w))
        return packing, engine, warning
    cores = free_cores(available_cpus(), busy or 0.0)
    per_gpu, why = gpu_packing(cores, free_memory, peak, todo, available_memory(), WORKER_MEMORY)
    packing.per_gpu = min(per_gpu, slots)
    if per_gpu > slots:
        why += f"; {slots} started before the estimate"
    engine = replace(engine, workers=min(engine.workers, packing.limit), runs_per_gpu=packing.per_gpu, why=why)
    return packing, engine, ""


def run_packed(*args, **kwargs):
    """``run.run_job`` on a GPU worker, then the allocator's cached blocks handed back to the GPU: a worker
    left idle when the packing is lowered then holds only its CUDA context and its data, not its last run's
    peak. What comes back is run_job's, unchanged."""
    import gc

    import torch

    from .run import run_job

    try:
        return run_job(*args, **kwargs)
    finally:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            gc.collect()
            torch.cuda.empty_cache()
