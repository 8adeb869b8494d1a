"""Benchmark the data pipelines: what a fastai epoch costs with a PIL decode per item versus decoded tensors.

With the same model, seed, batch size and one process (no loader workers), times one fit (train + validate
per epoch) through
  (a) the stock fastai DataBlock pipeline (``dataloaders(pipeline="pil")``: a PIL decode per item per epoch),
  (b) the fast path through the same fastai ``Learner`` (``dataloaders(pipeline="fast")``),
  (c) a hand-written PyTorch loop over the very same in-memory uint8 tensors, with the same per-batch work
      (index, flip/crop when ``--augment``, to float, normalise) and an equivalent optimiser and schedule
      (AdamW β=(0.9, 0.99), eps 1e-5, wd 0.01 off norm/bias, one-cycle as ``fit_one_cycle``),
  (d) (b) through a stock fastai ``Learner`` (``depth_learner`` as it is) instead of the sweep's;
plus the decode cache build cold (decode every image, write the .npy) and warm (load it), and the peak
resident memory of each phase (Linux: VmHWM, reset per phase; "+" is the growth within the phase, loaders
included). On CUDA the model runs channels_last under bf16 autocast in (a), (b) and (c), and the images/s
column is the one to read.

(a) and (b) use the Learner a sweep's run uses (``cnn_depth.lean.lean_learner``: fastai's Learner with less
host work per batch, the same numbers, and the run's ``RunStats`` and ``StopOnNaN`` callbacks); (d) is the
same as (b) through the stock fastai ``Learner``, so b/d is what the sweep's Learner saves, and (b) and (d)
must reach the very same accuracy (the table says whether they do).

The seed is set before each path builds its DataLoaders and its model, so without ``--augment`` (a) and (b)
train on identical batches in identical order and should reach the same accuracy to float noise; (c)
shuffles with torch's RNG, so it agrees only statistically. ``--accuracy`` trains 2 epochs per path and
checks |a - b| ≤ 1.5 points.

    python experiments/bench_pipeline.py                         # full ../shared/data/cifar10.tgz, 1 epoch
    python experiments/bench_pipeline.py --max-per-class 100     # a quick look
    python experiments/bench_pipeline.py --accuracy              # 2 seeded epochs per path: do accuracies agree?
    python experiments/bench_pipeline.py --repeats 5             # median of 5 interleaved runs per path
    python experiments/bench_pipeline.py --paths bcd --overhead  # what each path costs beyond the model

``--overhead`` swaps the CNN for a model that costs next to nothing (global average pool and one linear
layer) in every path, so an epoch's time is the per-batch cost of the loader and the training loop itself
(fastai's callbacks, recorder, metrics and optimiser in (a) and (b), a bare loop in (c)); the table then
shows milliseconds per batch.

Timings on a shared VM are noisy (a neighbour's load can slow one epoch by 20 % and 2 torch threads competing
with another process for 2 cores can run 10x slower; ``--threads 1`` degrades more gracefully). Repeats run
interleaved, in alternating order (abc, cba, ...), so a slow spell hits every path; the table shows each
path's median and range, and the ratios are given both as ratios of medians and as the median of the
per-repeat ratios (each repeat's paths ran minutes apart). On the CPU each path also reports its median train
step (from one training step's end to the next's, loader included), which a busy spell that covers part of an
epoch hardly moves, and the ratios by it. A machine check (a train step of the CNN on random data) at the
start and the end says how busy the machine was. Compare runs from one quiet machine.
"""
from __future__ import annotations

import argparse
import gc
import math
import platform
import resource
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastai.callback.core import Callback  # noqa: E402
from fastai.torch_core import default_device, set_seed  # noqa: E402

from cnn_depth import dataloaders, depth_cnn, depth_learner  # noqa: E402
from cnn_depth.data import _image_size, image_datablock, image_folder  # noqa: E402
from cnn_depth.fastpath import decoded_images, flip_pad_crop  # noqa: E402
from cnn_depth.lean import lean_learner  # noqa: E402
from cnn_depth.run import RunStats, StopOnNaN  # noqa: E402

ACCURACY_TOLERANCE = 1.5  # points: (a) and (b) must agree within this after 2 seeded epochs


# ---------------------------------------------------------------------------------------------------------
# Measuring


class Peak:
    """Peak memory over a ``with`` block: resident set (MB, Linux VmHWM reset on entry) and CUDA allocated."""

    def __init__(self, device: torch.device):
        self.device, self.rss_mb, self.start_mb, self.cuda_mb = device, float("nan"), float("nan"), float("nan")

    @staticmethod
    def _status(field: str) -> float:
        """A /proc/self/status memory field in MB (Linux), NaN elsewhere."""
        try:
            line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
            return int(line.split()[1]) / 1024
        except (OSError, StopIteration):
            return float("nan")

    def __enter__(self):
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        self.start_mb = self._status("VmRSS")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.seconds = time.perf_counter() - self.t0
        self.rss_mb = self._status("VmHWM")
        if math.isnan(self.rss_mb):  # not Linux: the process-wide peak
            self.rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def middle(values, key=None):
    """The middle value of ``values`` once sorted (the lower of the two middles for an even count)."""
    ordered = sorted(values, key=key)
    return ordered[(len(ordered) - 1) // 2]


def step_ms(model_args: dict, device: torch.device, bs: int, use_amp: bool, steps: int = 20) -> float:
    """Median ms of a train step (forward, backward, AdamW) of the CNN on random data, after 3 untimed ones.

    The untimed steps keep kernel selection and allocator growth out of the timed paths; the median is a
    machine check printed at the start and the end of a benchmark: a shared VM's slow spell shows as a
    higher number, and then every path's time (and a/b) moves with it.
    """
    model = depth_cnn(**model_args).to(device)
    if use_amp:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(bs, model_args["n_in"], *model_args["img_size"], device=device)
    y = torch.randint(0, model_args["n_out"], (bs,), device=device)
    times = []
    for i in range(3 + steps):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return middle(times) * 1000


def probe_model(n_in: int, n_out: int) -> nn.Module:
    """``--overhead``: a model that costs next to nothing, so a path's time is its per-batch overhead.

    Its children are named as the registered models' are (a body, then ``head``), so the Learner's splitter
    (:func:`cnn_depth.learner.body_head_split`) gives the same two parameter groups as for the CNN: a body
    without parameters (pool, flatten) and the linear head.
    """
    return nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                     head=nn.Linear(n_in, n_out)))


def median_step_ms(stamps: list) -> float:
    """Median ms between consecutive training-step ends (``stamps``: one list of times per epoch).

    One step is everything the loop does per batch (fetch, transfer, forward, backward, optimiser,
    callbacks). A median over ~800 steps barely moves when the machine is busy for part of an epoch,
    where the epoch time does: the robust number to compare paths by on a shared VM.
    """
    steps = [t1 - t0 for epoch in stamps for t0, t1 in zip(epoch, epoch[1:])]
    return middle(steps) * 1000 if steps else float("nan")


class StepClock(Callback):
    """Time-stamps the end of every training batch of a fastai fit, one list per epoch."""

    def before_fit(self):
        self.stamps = []

    def before_epoch(self):
        self.stamps.append([])

    def after_batch(self):
        if self.training:
            self.stamps[-1].append(time.perf_counter())


# ---------------------------------------------------------------------------------------------------------
# The three paths


def fit_learner(dls, a, use_amp: bool, lean: bool = True) -> tuple[float, list]:
    """(a)/(b)/(d): ``fit_one_cycle`` through a fastai Learner, the sweep's (``lean``: as a sweep's run makes
    it, with its callbacks) or stock fastai's; returns the final validation accuracy and the step time
    stamps (:class:`StepClock`)."""
    set_seed(a.seed, reproducible=True)
    if lean:
        learn = lean_learner(depth_learner(dls, a.depth, arch=a.arch, cbs=[RunStats(), StopOnNaN()], threads=None))
    else:  # threads=None: the thread count set here, as a sweep's run does (auto would sample the load per fit)
        learn = depth_learner(dls, a.depth, arch=a.arch, threads=None)
    if a.overhead:  # the same Learner (loss, metrics, callbacks, optimiser) around the probe model
        learn.model = probe_model(dls.data_info.n_in, dls.c).to(dls.device)
    if use_amp:
        learn.to_channelslast(amp_mode="bf16")
    clock = StepClock()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(a.epochs, a.lr, cbs=clock)
    return float(learn.recorder.values[-1][2]), clock.stamps


def hand_loop(dls, a, use_amp: bool) -> tuple[float, list]:
    """(c): the same model trained and validated by a plain PyTorch loop over ``dls``' uint8 tensors;
    returns the final validation accuracy and the step time stamps, as :func:`fit_learner`."""
    tr, va = dls.train, dls.valid
    images, targets, dev = tr.images, tr.targets, tr.images.device
    mean, std = (torch.tensor(s, device=dev).view(1, -1, 1, 1) for s in dls.data_info.stats)
    set_seed(a.seed, reproducible=True)
    model = (probe_model(dls.data_info.n_in, dls.c) if a.overhead else
             depth_cnn(a.depth, n_in=dls.data_info.n_in, n_out=dls.c, arch=a.arch, img_size=dls.data_info.img_size)).to(dev)
    if use_amp:
        model = model.to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]  # fastai: no weight decay on norm and bias
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([dict(params=decay), dict(params=no_decay, weight_decay=0.0)], lr=a.lr,
                            betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
    steps = len(tr.index) // a.bs
    # OneCycleLR divides by zero below 4 warm-up steps; tiny --max-per-class runs get a truncated cycle
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=max(a.epochs * steps, 8), pct_start=0.25,
                                                div_factor=25, final_div_factor=1e5 / 25,
                                                base_momentum=0.85, max_momentum=0.95)

    def batch(g):
        x = images.index_select(0, g)
        if a.augment:
            x = flip_pad_crop(x)
        return (x.float().div_(255) - mean) / std, targets.index_select(0, g)

    stamps = []
    for _ in range(a.epochs):
        model.train()
        stamps.append([])
        perm = tr.index[torch.randperm(len(tr.index), device=dev)]
        for i in range(steps):
            x, y = batch(perm[i * a.bs:(i + 1) * a.bs])
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            stamps[-1].append(time.perf_counter())
        model.eval()
        correct = total = loss_sum = 0
        with torch.no_grad():
            for i in range(0, len(va.index), a.bs):
                x, y = batch(va.index[i:i + a.bs])
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                    out = model(x)
                    loss_sum += F.cross_entropy(out, y, reduction="sum")  # as fastai's valid_loss
                correct += (out.argmax(1) == y).sum()  # summed on the device: no sync per batch
                total += len(y)
    return int(correct) / total, stamps


# ---------------------------------------------------------------------------------------------------------


def main(a):
    device = torch.device(a.device) if a.device else default_device()
    use_amp = device.type == "cuda"
    kw = dict(bs=a.bs, max_per_class=a.max_per_class, device=device, augment=a.augment)
    folder = image_folder(a.src, a.max_per_class)
    size = _image_size(folder, None)
    items = image_datablock(folder, size).datasets(folder.root).items

    print(f"# bench_pipeline: {a.src.name}, max_per_class={a.max_per_class}, {folder.counts}, depth {a.depth} "
          f"{a.arch}, bs {a.bs}, {a.epochs} epoch(s), augment={a.augment}, seed {a.seed}")
    print(f"# {platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, device "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}, "
          f"{torch.get_num_threads()} torch threads" + (", channels_last + bf16 autocast" if use_amp else ""),
          flush=True)
    model_args = dict(depth=a.depth, arch=a.arch, n_in=folder.n_in, n_out=len(folder.vocab),
                      img_size=size or folder.uniform_size)
    check_start = step_ms(model_args, device, a.bs, use_amp)

    rows = []  # (phase, setup s, s/epoch or None, accuracy or None, Peak, s/epoch range, train step ms or None)
    with Peak(device) as p:
        decoded_images(folder.root, items, folder.n_in, size, workers=a.workers, rebuild=True)
    rows.append(("cache build, cold: decode all, write .npy", p.seconds, None, None, p, "", None))
    with Peak(device) as p:
        decoded_images(folder.root, items, folder.n_in, size)
    rows.append(("cache build, warm: load .npy", p.seconds, None, None, p, "", None))

    paths = [("a", "(a) stock fastai DataBlock, PIL per item", "pil"),
             ("b", "(b) fast path, fastai Learner (the sweep's)", "fast"),
             ("c", "(c) hand-written PyTorch loop, same tensors", "fast"),
             ("d", "(d) fast path, stock fastai Learner", "fast")]
    paths = [p for p in paths if p[0] in a.paths]
    n_images = n_batches = None
    runs = {key: [] for key, *_ in paths}
    for r in range(a.repeats):  # interleaved, alternating order: a slow spell on a shared VM hits every path
        for key, label, pipeline in (paths if r % 2 == 0 else paths[::-1]):
            with Peak(device) as p:  # memory: the DataLoaders (and their decoded tensors) and the fit
                set_seed(a.seed, reproducible=True)  # the loaders' shuffling RNGs are drawn here
                dls = dataloaders(a.src, pipeline=pipeline, **kw)
                setup = time.perf_counter() - p.t0
                n_images = (len(dls.train_ds) // a.bs) * a.bs + len(dls.valid_ds)  # drop_last on training
                n_batches = len(dls.train_ds) // a.bs + math.ceil(len(dls.valid_ds) / a.bs)
                t0 = time.perf_counter()
                acc, stamps = (hand_loop(dls, a, use_amp) if key == "c" else
                               fit_learner(dls, a, use_amp, lean=key != "d"))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                per_epoch = (time.perf_counter() - t0) / a.epochs
            step = median_step_ms(stamps) if device.type == "cpu" else float("nan")  # CUDA: steps are async
            runs[key].append((setup, per_epoch, acc, p, step))
            print(f"  run {r + 1}/{a.repeats} {label}: {per_epoch:.2f} s/epoch, median train step {step:.2f} ms, "
                  f"accuracy {acc:.4f}", flush=True)
            del dls
            gc.collect()
    times, accs, steps = {}, {}, {}
    for key, label, _ in paths:  # the median run by epoch time (the only run when --repeats 1)
        setup, times[key], accs[key], p, *_ = middle(runs[key], key=lambda run: run[1])
        steps[key] = middle(r[4] for r in runs[key])
        spread = f"{min(r[1] for r in runs[key]):.2f}–{max(r[1] for r in runs[key]):.2f}" if a.repeats > 1 else ""
        rows.append((label, setup, times[key], accs[key], p, spread, steps[key]))

    cuda = device.type == "cuda"
    print()
    print("| phase | setup s | s/epoch | range | ms/batch | train step ms | images/s | valid accuracy "
          "| peak RSS MB (+ in phase)" + (" | peak CUDA MB |" if cuda else " |"))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:" + ("|---:|" if cuda else "|"))
    for label, setup, per_epoch, acc, p, spread, step in rows:
        timed = per_epoch is not None
        cells = [label, f"{setup:.2f}", f"{per_epoch:.2f}" if timed else "", spread,
                 f"{per_epoch / n_batches * 1000:.2f}" if timed else "",
                 f"{step:.2f}" if step is not None and not math.isnan(step) else "",
                 f"{n_images / per_epoch:,.0f}" if timed else "", "" if acc is None else f"{acc:.4f}",
                 f"{p.rss_mb:,.0f} (+{p.rss_mb - p.start_mb:,.0f})"] + ([f"{p.cuda_mb:,.0f}"] if cuda else [])
        print("| " + " | ".join(cells) + " |")
    print()
    print(f"setup: dataloaders() or the cache call; s/epoch: fit (train + validate) / epochs, the median of "
          f"{a.repeats} run(s); range: fastest–slowest run; ms/batch: s/epoch over the {n_batches} training "
          f"and validation batches; train step ms: median time from one training step's end to the next's "
          f"(median over runs); images/s: training (whole batches) + validation images per second"
          + ("; model: the --overhead probe (pool + linear), not the CNN" if a.overhead else ""))

    check_end = step_ms(model_args, device, a.bs, use_amp)
    print(f"machine check: a train step of the depth-{a.depth} {a.arch} CNN on random data, median of 20: "
          f"{check_start:.1f} ms at the start, {check_end:.1f} ms at the end")

    def ratio(x, y, target):
        line = f"{x}/{y} = {times[x] / times[y]:.2f} (ratio of medians" + ("" if a.overhead else f"; target {target}") + ")"
        if a.repeats > 1:
            per = [rx[1] / ry[1] for rx, ry in zip(runs[x], runs[y])]
            line += f"; per repeat: median {middle(per):.2f}, range {min(per):.2f}–{max(per):.2f}"
        if not math.isnan(steps[x] / steps[y]):
            line += f"; by median train step: {steps[x] / steps[y]:.2f}"
        print(line)

    if "a" in times and "b" in times:
        ratio("a", "b", "≥ 2.3")
    if "b" in times and "c" in times:
        ratio("b", "c", "≤ 1.10")
    if "b" in times and "d" in times:
        ratio("b", "d", "< 1")
        same = accs["b"] == accs["d"]
        print(f"(b) and (d) accuracy: {accs['b']:.6f} and {accs['d']:.6f}: "
              + ("the same, as they must be" if same else "DIFFERENT: the sweep's Learner changed a number"))
    if a.accuracy and "a" in accs and "b" in accs:
        gap = abs(accs["a"] - accs["b"]) * 100
        print(f"accuracy after {a.epochs} epochs: a {accs['a']:.2%}, b {accs['b']:.2%}"
              + (f", c {accs['c']:.2%}" if "c" in accs else "")
              + f"; |a - b| = {gap:.2f} points ({'within' if gap <= ACCURACY_TOLERANCE else 'OUTSIDE'} "
              f"{ACCURACY_TOLERANCE})")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10.tgz",
                   help="dataset archive or folder (default: ../shared/data/cifar10.tgz from the project root)")
    p.add_argument("--max-per-class", type=int, default=None, help="first N images per class and split")
    p.add_argument("--depth", type=int, default=4, help="conv layers")
    p.add_argument("--arch", default="bn", help="model family")
    p.add_argument("--bs", type=int, default=64, help="batch size")
    p.add_argument("--epochs", type=int, default=None, help="epochs per path (default 1; 2 with --accuracy)")
    p.add_argument("--lr", type=float, default=3e-3, help="one-cycle peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", action="store_true", help="random flip + pad-4 crop on training batches")
    p.add_argument("--accuracy", action="store_true", help="2 seeded epochs; check (a) and (b) agree")
    p.add_argument("--paths", default="abc", help="which paths to run, e.g. 'bc' or 'bcd' (d: (b) through a stock "
                                                  "fastai Learner)")
    p.add_argument("--repeats", type=int, default=1, help="runs per path, interleaved; the table shows the median")
    p.add_argument("--overhead", action="store_true",
                   help="a near-free model (pool + linear) in every path: time the loader and loop, not the CNN")
    p.add_argument("--workers", type=int, default=None, help="decode processes for the cold cache build")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: fastai's default device)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    a = p.parse_args()
    if a.epochs is None:
        a.epochs = 2 if a.accuracy else 1
    if a.epochs < 1 or a.repeats < 1:
        p.error("--epochs and --repeats must be ≥ 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    if not a.src.exists():
        p.error(f"no such file or folder: {a.src}; pass --src path/to/cifar10.tgz")
    main(a)
