"""Ctrl-C at any moment of a real `cnn-depth sweep`: one line, exit 130, nothing recorded lost.

Each trial starts the console script in a process group of its own (as a shell starts a job) and sends one
SIGINT after a seeded random delay, either to the driver alone or to the whole group, as a terminal's
Ctrl-C does (then the fork server and the workers get it too). The delays are spread from 0.05 s (Python
up, nothing of ours imported) to ~8 s (data built, workers starting, runs training or being written), so
over the trials the signal lands in start-up, data building, worker start-up, training, writing and exit.
"""
from __future__ import annotations

import csv
import math
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ARGS = ["sweep", "--max-per-class", "10", "--epochs", "1", "--depths", "1", "2", "--device", "cpu"]
ENGINES = {"workers": ["--workers", "2", "--threads", "1"], "serial": ["--workers", "1", "--threads", "1"]}
RUN_IDS = {"bn-d1-s0", "bn-d2-s0"}


def command() -> list[str]:
    """The installed console script (what a user runs), else ``python -m cnn_depth``."""
    script = Path(sys.executable).with_name("cnn-depth")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cnn_depth"]


def _gone(pgid: int, timeout: float) -> bool:
    """True when no process of group ``pgid`` is left (the fork server and workers end with the driver)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def interrupt_once(out: Path, engine: str, delay: float, group: bool, after: str = "",
                   timeout: float = 180.0) -> list[str]:
    """Start a sweep into ``out``, send SIGINT ``delay`` s after the start (or after the first stdout line
    that starts with ``after``), to the process group when ``group``, and return what is wrong with how it
    ended (empty: nothing)."""
    proc = subprocess.Popen(command() + ARGS + ENGINES[engine] + ["--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = ""
    try:
        if after:
            for line in proc.stdout:  # click's echo flushes every line
                seen += line
                if line.startswith(after):
                    break
        time.sleep(delay)
        if proc.poll() is None:
            (os.killpg if group else os.kill)(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=timeout)
        stdout = seen + stdout
    finally:
        if proc.poll() is None:  # hung: clean up our own process group before failing
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    problems = []
    lines = [line for line in stderr.splitlines() if line.strip()]
    rc = proc.returncode
    if "Traceback" in stderr:
        problems.append("a traceback")
    if "Fatal Python error" in stderr:
        problems.append("a fatal error")
    rows = _rows(out / "results.csv", problems)
    if rc == 130:
        if not lines or not lines[-1].startswith("error: interrupted"):
            problems.append("the last line is not `error: interrupted ...`")
        if sum(line.startswith("error:") for line in lines) != 1:
            problems.append("not exactly one error line")
        said = re.search(r"(\d+) finished run\(s\) are saved", lines[-1]) if lines else None
        if rows and lines and ("nothing was written" in lines[-1] or "no finished run is saved" in lines[-1]):
            problems.append(f"the line says nothing was written, but results.csv holds {sorted(rows)}")
        elif said and int(said.group(1)) != len(rows):
            problems.append(f"the line says {said.group(1)} run(s) are saved, but results.csv holds {sorted(rows)}")
    elif rc == 0:  # the sweep ended before the signal came: then it must be whole
        if set(rows) != RUN_IDS or "reports:" not in stdout:
            problems.append(f"exit 0 with runs {sorted(rows)} and no reports line")
    else:
        problems.append(f"exit code {rc}")
    for depth in re.findall(r"^done  \d/2  depth=(\d) seed=0 .* ok  \[", stdout, flags=re.M):
        if f"bn-d{depth}-s0" not in rows:  # a `done` line is printed only once the row is on disk
            problems.append(f"bn-d{depth}-s0 was reported done but has no row")
    if not _gone(proc.pid, 15.0):
        problems.append("processes of the sweep are left running")
        os.killpg(proc.pid, signal.SIGKILL)
    if problems:
        when = f"{delay:.2f} s after " + (repr(after) if after else "the start")
        problems.append(f"[{engine}, SIGINT to the {'group' if group else 'driver'} {when}, exit {rc}]"
                        f"\n--- stderr:\n{stderr[-3000:]}\n--- stdout:\n{stdout[-1500:]}")
    return problems


def _rows(path: Path, problems: list[str]) -> dict[str, dict]:
    """The rows of results.csv by run_id; a row that is not complete (a cut-off line, a run that is not ok,
    no accuracy) or a repeated run_id is a problem."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = {}
        for values in reader:
            row = dict(zip(header or [], values))
            try:
                complete = len(values) == len(header) and row["status"] == "ok" and 0 <= float(row["accuracy"]) <= 1
            except (KeyError, ValueError):
                complete = False
            if not complete or row.get("run_id") in rows or row.get("run_id") not in RUN_IDS:
                problems.append(f"results.csv holds an incomplete or unexpected row: {values}")
            rows[row.get("run_id")] = row
    return rows


def delays(n: int, seed: int, low: float = 0.05, high: float = 8.0) -> list[float]:
    """``n`` delays spread log-uniformly over [low, high] (start-up gets its share), shuffled, seeded."""
    rng = random.Random(seed)
    edges = [math.exp(math.log(low) + (math.log(high) - math.log(low)) * i / n) for i in range(n + 1)]
    out = [rng.uniform(a, b) for a, b in zip(edges, edges[1:])]
    rng.shuffle(out)
    return out


def trials(seed: int) -> list[tuple[float, str]]:
    """(delay, after) of each trial: four delays after the start, spread from 0.05 s to 8 s (Python's and
    the CLI's start-up, torch's import, the data), then three after a progress line: the `sweep:` line
    (workers still starting: the fork server imports torch), a run's start (training) and a run's end
    (writing it, the next run)."""
    rng = random.Random(seed)
    return [(d, "") for d in delays(4, seed)] + [(rng.uniform(0, 3), "sweep:"), (rng.uniform(0, 1.5), "start 1/2"),
                                                 (rng.uniform(0, 0.3), "done  1/2")]


@pytest.mark.slow
@pytest.mark.parametrize("engine,seed", [("serial", 0), ("workers", 1)])
def test_ctrl_c_at_random_moments_is_one_line_and_exit_130(engine, seed, tmp_path):
    """Seven SIGINTs at seeded random moments per engine, alternately to the driver and to its whole process
    group; every one ends with one `error: interrupted` line and exit 130 (or, if the sweep had finished,
    exit 0 with every row), no traceback, complete rows only, no process left behind."""
    problems = []
    for i, (delay, after) in enumerate(trials(seed)):
        problems += interrupt_once(tmp_path / f"t{i}", engine, delay, group=i % 2 == 1, after=after)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_a_ctrl_c_that_library_code_swallows_mid_sweep_stops_it_before_the_next_run(tmp_path):
    """A real SIGINT at the end of run 1 that a bare ``except:`` swallows (as fastai's ``_try_concat`` does
    around ``torch.cat``): the driver stops before run 2, keeps run 1, one line, exit 130."""
    prelude = textwrap.dedent("""
        import importlib, importlib.abc, os, signal, sys, time
        class Patch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "cnn_depth.sweep":  # before it imports run_job by name
                    sys.meta_path.remove(self)
                    run = importlib.import_module("cnn_depth.run")
                    real = run.run_job
                    def run_job(cfg, job, *args, **kwargs):
                        result = real(cfg, job, *args, **kwargs)
                        try:
                            os.kill(os.getpid(), signal.SIGINT)
                            time.sleep(1)
                        except:  # noqa: E722  (what the library code does)
                            pass
                        return result
                    run.run_job = run_job
                return None
        sys.meta_path.insert(0, Patch())
        sys.argv = ["cnn-depth"] + sys.argv[1:]
        from cnn_depth.__main__ import main
        main()
    """)
    out = tmp_path / "s"
    r = subprocess.run([sys.executable, "-c", prelude] + ARGS + ENGINES["serial"] + ["--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().startswith("error: interrupted (SIGINT) between runs; 1 finished run(s) are saved"), r.stderr
    problems = []
    assert set(_rows(out / "results.csv", problems)) == {"bn-d1-s0"} and not problems, problems
