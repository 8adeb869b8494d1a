"""Benchmark the sweep engines: the same sweep, one run after another versus on worker processes.

Each configuration is a real ``cnn-depth sweep`` command in its own process, timed from start to exit (start-up,
data and worker start-up included: what a user waits for), on a fresh ``--out`` and a warm data cache:

  serial, default threads   ``--workers 1``               (every core in one process: the old behaviour)
  serial, 1 thread          ``--workers 1 --threads 1``
  W workers, 1 thread each  ``--workers W --threads 1``   for W = 2 (and 4, 8 ... up to the cores)
  auto                      ``--workers auto``            (the default: what it picks is printed)

over several sweep sizes (1, 2, 4 and 12 runs by default: depths 2-7 × 2 seeds for 12), on a quiet machine and
with one CPU-bound competing process that the script starts itself (a shared host). Repeats run interleaved in
alternating order, and the table gives each configuration's median wall time, runs per minute, the speed-up
over the serial default, and the peak resident memory of the driver and of each worker process (sampled every
0.2 s with psutil). It checks that configurations with the same thread count wrote the same rows (timing
columns aside).

    python experiments/bench_sweep.py                          # 1, 2, 4, 12 runs; quiet and busy; 2 epochs
    python experiments/bench_sweep.py --sizes 12 --repeats 3   # the headline number, 3 repeats
    python experiments/bench_sweep.py --quick                  # 20 images per class, 1 epoch: a smoke test
    python experiments/bench_sweep.py --gpu                    # on CUDA: runs per hour at --runs-per-gpu 1, 2, 4, 8

Each cell also records the machine's load (/proc/loadavg's 1-minute figure when it started) and, for auto,
its ``sweep:`` reason (what it measured, expected and chose) and its ratio to the better of the serial default
and the fastest worker configuration. The warm-up sweep (2 runs of depth 1, auto) leaves the machine's
calibration of a worker's start-up in the benchmark's own cache, as any earlier sweep on a machine would; each
auto cell still measures its own models' training steps (cnn_depth/calibrate.py).

Targets (issue 20): auto >= 0.95x the better of serial and workers at every size, and >= 1.15x the serial
default where workers win; busy, >= 2x the serial default.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TIMING = ["train_seconds", "images_per_second", "valid_seconds", "finished", "peak_memory_mb"]
DEPTHS = [2, 3, 4, 5, 6, 7]


def sizes_to_grid(n: int) -> tuple[list[int], list[int]]:
    """(depths, seeds) giving ``n`` runs: one seed until the depths run out, then two."""
    if n <= len(DEPTHS):
        return DEPTHS[:n] if n > 1 else [4], [0]
    return DEPTHS[: (n + 1) // 2], [0, 1]


def run(cmd: list[str], env: dict) -> tuple[float, float, dict]:
    """Run ``cmd``; return (wall seconds, driver peak RSS MB, {worker pid: peak RSS MB})."""
    try:
        import psutil
    except ImportError:
        psutil = None
    peaks, driver_peak, stop = {}, [0.0], threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    def sample():
        if psutil is None:
            return
        try:
            p = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            try:
                driver_peak[0] = max(driver_peak[0], p.memory_info().rss / 2**20)
                for c in p.children(recursive=True):
                    try:
                        if "resource_tracker" in " ".join(c.cmdline()):
                            continue
                        peaks[c.pid] = max(peaks.get(c.pid, 0.0), c.memory_info().rss / 2**20)
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            stop.wait(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return wall, driver_peak[0], peaks


def competitor() -> subprocess.Popen:
    """One CPU-bound process for the whole of a busy measurement: a pure-Python loop, one core."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 12], help="runs per sweep")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-per-class", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=["quiet", "busy"], choices=["quiet", "busy"])
    ap.add_argument("--quick", action="store_true", help="20 images per class, 1 epoch, sizes 1 and 4")
    ap.add_argument("--gpu", action="store_true", help="CUDA: runs per hour at --runs-per-gpu 1, 2, 4, 8")
    a = ap.parse_args()
    if a.quick:
        a.max_per_class, a.epochs, a.sizes = 20, 1, [1, 4]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cache = tempfile.mkdtemp(prefix="bench-sweep-cache-")
    env = {**os.environ, "CNN_DEPTH_CACHE": cache, "PYTHONWARNINGS": "ignore"}
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    base = [sys.executable, "-m", "cnn_depth", "sweep", "--quiet", "--epochs", str(a.epochs)]
    if a.max_per_class:
        base += ["--max-per-class", str(a.max_per_class)]
    if a.gpu:
        configs = {f"{k} per GPU": ["--runs-per-gpu", str(k)] for k in (1, 2, 4, 8)}
        base += ["--device", "cuda"]
    else:
        base += ["--device", "cpu"]
        configs = {"serial, default threads": ["--workers", "1"], "serial, 1 thread": ["--workers", "1", "--threads", "1"]}
        w = 2
        while w <= cpus:
            configs[f"{w} workers, 1 thread"] = ["--workers", str(w), "--threads", "1"]
            w *= 2
        configs["auto"] = ["--workers", "auto"]
    import torch

    print(f"# {platform.node()}: {cpus} CPUs, Python {platform.python_version()}, torch {torch.__version__}, "
          f"{'CUDA ' + torch.cuda.get_device_name() if a.gpu else 'CPU'}; epochs {a.epochs}, "
          f"max_per_class {a.max_per_class or 'all'}, repeats {a.repeats}")
    # Warm the data cache once, so every configuration starts alike (decoded images on disk).
    run(base + ["--depths", "1", "--seeds", "0", "1", "--epochs", "1", "--out", str(work / "warm")], env)
    rows = []
    for mode in a.modes:
        hog = competitor() if mode == "busy" else None
        try:
            for n in a.sizes:
                depths, seeds = sizes_to_grid(n)
                times: dict = {name: [] for name in configs}
                loads: dict = {name: [] for name in configs}
                mem: dict = {name: (0.0, 0.0, 0) for name in configs}
                names = list(configs)
                for r in range(a.repeats):
                    for name in (names if r % 2 == 0 else names[::-1]):
                        out = work / f"{mode}-{n}-{r}-{names.index(name)}"
                        cmd = base + ["--depths", *map(str, depths), "--seeds", *map(str, seeds), "--out", str(out),
                                      *configs[name]]
                        loads[name].append(_load())
                        wall, drv, workers = run(cmd, env)
                        times[name].append(wall)
                        mem[name] = (max(mem[name][0], drv), max([mem[name][1], *workers.values()]),
                                     max(mem[name][2], len(workers)))
                # rows of the last repeat, compared between configurations with the same threads
                results = {name: pd.read_csv(work / f"{mode}-{n}-{a.repeats - 1}-{names.index(name)}" / "results.csv")
                           for name in names}
                ref = "serial, default threads" if not a.gpu else names[0]
                for name in names:
                    t = statistics.median(times[name])
                    df = results[name]
                    same_threads = [o for o in names if o != name and
                                    set(results[o].get("threads", pd.Series([0]))) == set(df.get("threads", pd.Series([1])))]
                    agree = all(_same_rows(df, results[o]) for o in same_threads) if same_threads else None
                    folder = work / f"{mode}-{n}-{a.repeats - 1}-{names.index(name)}"
                    engine = json.loads((folder / "sweep.json").read_text())["invocations"][-1]["engine"]
                    picked = "serial" if engine.startswith("in this process") else engine.split(" at once")[0] + " workers"
                    others = [statistics.median(times[o]) for o in names if o == ref or "workers" in o]
                    vs_best = round(min(others) / t, 2) if name == "auto" and not a.gpu else ""
                    rows.append(dict(mode=mode, runs=n, config=name + (f" ({picked})" if name == "auto" else ""), threads=",".join(map(str, sorted(set(df["threads"]))))
                                     if "threads" in df else "", wall_s=round(t, 1),
                                     range_s=f"{min(times[name]):.1f}-{max(times[name]):.1f}",
                                     runs_per_min=round(n / t * 60, 2),
                                     speedup=round(statistics.median(times[ref]) / t, 2),
                                     driver_mb=round(mem[name][0]), worker_mb=round(mem[name][1]),
                                     processes=mem[name][2],
                                     rows_agree={None: "-", True: "yes", False: "NO"}[agree],
                                     vs_best=vs_best, load=",".join(f"{x:.1f}" for x in loads[name]),
                                     why=engine if name == "auto" else ""))
                    print(_fmt(rows[-1]), flush=True)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    print()
    print(pd.DataFrame(rows).to_markdown(index=False) if _has_tabulate() else pd.DataFrame(rows).to_string(index=False))
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)


def _load() -> float:
    """The 1-minute load average now (other processes on the machine), 0.0 where it cannot be read."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    cols = [c for c in a.columns if c not in TIMING and c in b.columns]
    a = a[cols].sort_values("run_id").reset_index(drop=True)
    b = b[cols].sort_values("run_id").reset_index(drop=True)
    return a.equals(b)


def _fmt(r: dict) -> str:
    return "  ".join(f"{k}={v}" for k, v in r.items())


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
