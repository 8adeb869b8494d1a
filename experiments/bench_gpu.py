"""Benchmark GPU packing: the reference sweep with the default ``--runs-per-gpu auto`` versus one run per GPU.

Each configuration is one real ``cnn-depth sweep`` process, timed from start to exit (start-up, data, worker
start-up and reports included: what a user waits for), on a fresh ``--out``, after one small sweep that
warms the decode cache:

  auto        the defaults (``--runs-per-gpu auto``: what it chose is read from sweep.json)
  1 per GPU   ``--runs-per-gpu 1``

over the reference sweep of issue 20: ``--data ../shared/data/cifar10.tgz --depths 2-8 --seeds 0 1 --epochs 4``
(14 runs). The table gives wall seconds, runs per hour, the speed-up over one per GPU, the runs' peak GPU
memory (``peak_memory_mb``: median and largest), the packing chosen, and whether both wrote the same rows
(timing columns aside). Lines the driver printed about the packing (raised, lowered, out of memory) are
listed after the table.

    python experiments/bench_gpu.py                          # the reference sweep (about 4 minutes on an H200)
    python experiments/bench_gpu.py --epochs 1 --seeds 0     # a shorter one
    python experiments/bench_gpu.py --data PATH              # another dataset

Without CUDA it prints one line saying so and exits 1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10.tgz"
TIMING = ["train_seconds", "images_per_second", "valid_seconds", "finished", "peak_memory_mb", "threads"]


def sweep(cmd: list[str], env: dict) -> tuple[float, str]:
    """Run one sweep; (wall seconds, its output). A failed sweep stops the benchmark with its last lines."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    return wall, proc.stdout


def same_rows(a, b) -> bool:
    cols = [c for c in a.columns if c not in TIMING and c in b.columns]
    a = a[cols].sort_values("run_id").reset_index(drop=True)
    b = b[cols].sort_values("run_id").reset_index(drop=True)
    return a.equals(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA), help="dataset folder or archive (default: ../shared/data/cifar10.tgz)")
    ap.add_argument("--depths", default="2-8")
    ap.add_argument("--seeds", nargs="+", default=["0", "1"])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the sweep folders (printed)")
    a = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(f"bench_gpu: no CUDA here (torch {torch.__version__} sees no GPU); run it on a machine with one",
              file=sys.stderr)
        raise SystemExit(1)
    if not Path(a.data).exists():
        print(f"bench_gpu: no dataset at {a.data}; pass --data PATH", file=sys.stderr)
        raise SystemExit(1)
    import pandas as pd

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    free, total = torch.cuda.mem_get_info(0)
    print(f"# {platform.node()}: {cpus} CPUs, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)} "
          f"({free / 2**30:.1f} of {total / 2**30:.1f} GiB free on GPU 0), Python {platform.python_version()}, "
          f"torch {torch.__version__}; --data {a.data} --depths {a.depths} --seeds {' '.join(a.seeds)} "
          f"--epochs {a.epochs}", flush=True)
    del free, total
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    base = [sys.executable, "-m", "cnn_depth", "sweep", "--data", a.data, "--device", "cuda"]
    # warm the decode cache, so both configurations start alike
    sweep(base + ["--depths", "2", "--epochs", "1", "--max-per-class", "10", "--quiet", "--out", str(work / "warm")],
          env)
    configs = {"auto": [], "1 per GPU": ["--runs-per-gpu", "1"]}
    rows, frames, notes = [], {}, {}
    for i, (name, extra) in enumerate(configs.items()):
        out = work / f"sweep-{i}"
        wall, output = sweep(base + ["--depths", a.depths, "--seeds", *a.seeds, "--epochs", str(a.epochs),
                                     "--out", str(out), *extra], env)
        df = pd.read_csv(out / "results.csv")
        frames[name] = df
        engine = json.loads((out / "sweep.json").read_text())["invocations"][-1]["engine"]
        notes[name] = [line for line in output.splitlines()
                       if line.startswith(("packing:", "warning:")) or "CUDA out of memory" in line]
        peak = pd.to_numeric(df["peak_memory_mb"], errors="coerce")
        rows.append(dict(config=name, runs=len(df), ok=int((df["status"] == "ok").sum()), wall_s=round(wall, 1),
                         runs_per_hour=round(len(df) / wall * 3600), peak_mib_median=round(peak.median()),
                         peak_mib_max=round(peak.max()), engine=engine))
        print("  ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    ref = next(r["wall_s"] for r in rows if r["config"] == "1 per GPU")
    for r in rows:
        r["speedup"] = round(ref / r["wall_s"], 2)
    agree = same_rows(frames["auto"], frames["1 per GPU"])
    table = pd.DataFrame(rows)[["config", "runs", "ok", "wall_s", "runs_per_hour", "speedup", "peak_mib_median",
                                "peak_mib_max", "engine"]]
    print()
    try:
        print(table.to_markdown(index=False))
    except ImportError:  # no tabulate
        print(table.to_string(index=False))
    print(f"\nrows agree (timing columns and threads aside): {'yes' if agree else 'NO'}")
    for name, lines in notes.items():
        for line in lines:
            print(f"{name}: {line}")
    if a.keep:
        print(f"sweeps kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
