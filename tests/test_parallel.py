"""Sweeps on several worker processes and on Ray: the same rows as one after another, faults, interrupts,
no processes left behind, and one-line errors for bad engine options."""
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from fastai.callback.core import Callback
from typer.testing import CliRunner

from cnn_depth import SweepConfig, run_sweep
from cnn_depth.cli import app
from cnn_depth.plan import Work, _jobs, choose_engine, estimated_seconds, expected_seconds, longest_first

TINY = dict(depths=[1, 2], seeds=[0, 1], epochs=1, max_per_class=10, bs=16, device="cpu", quiet=True, threads=1)
# What may differ between two runs of the same (depth, seed): when and how fast it ran, and where.
TIMING = ["train_seconds", "images_per_second", "valid_seconds", "finished", "peak_memory_mb"]
runner = CliRunner()


class KillWorkerAt(Callback):
    """SIGKILL the process training depth ``depth`` at its second batch: a worker dying mid-run."""

    def __init__(self, depth: int):
        self.depth = depth

    def after_batch(self):
        if self.training and self.iter == 1 and self.learn.model.config["depth"] == self.depth:
            os.kill(os.getpid(), signal.SIGKILL)


def by_run(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("run_id").reset_index(drop=True)


def no_children_left():
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not multiprocessing.active_children()


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    return run_sweep(out=str(tmp_path_factory.mktemp("serial")), workers=1, **TINY)


@pytest.mark.slow
def test_two_workers_give_the_rows_of_one_to_the_last_digit(serial, tmp_path):
    out = tmp_path / "two"
    df = run_sweep(out=str(out), workers=2, **TINY)
    a, b = by_run(serial), by_run(df)
    assert list(b["run_id"]) == ["bn-d1-s0", "bn-d1-s1", "bn-d2-s0", "bn-d2-s1"] and (b["status"] == "ok").all()
    same = [c for c in a.columns if c not in TIMING]
    pd.testing.assert_frame_equal(a[same], b[same])
    for name in ("history.csv", "activations.csv"):  # per-epoch and per-layer numbers too, timing aside
        h_a = pd.read_csv(serial.attrs["out"] + "/" + name).drop(columns=["seconds"], errors="ignore")
        h_b = pd.read_csv(out / name).drop(columns=["seconds"], errors="ignore")
        pd.testing.assert_frame_equal(h_a.sort_values(list(h_a.columns[:5])).reset_index(drop=True),
                                      h_b.sort_values(list(h_b.columns[:5])).reset_index(drop=True))
    assert no_children_left()


@pytest.mark.slow
def test_a_killed_worker_fails_its_run_only_and_the_rerun_retries_it(serial, tmp_path):
    out = str(tmp_path / "kill")
    df = run_sweep(out=out, workers=2, cbs=[KillWorkerAt(depth=2)], **{**TINY, "seeds": [0]})
    status = dict(zip(df["run_id"], df["status"]))
    assert status == {"bn-d1-s0": "ok", "bn-d2-s0": "failed"}
    error = df.set_index("run_id").loc["bn-d2-s0", "error"]
    assert error.startswith("WorkerDied: worker ") and "died (SIGKILL)" in error
    assert no_children_left()
    df = run_sweep(out=out, workers=2, **{**TINY, "seeds": [0]})  # retried, without the killer
    assert dict(zip(df["run_id"], df["status"])) == {"bn-d1-s0": "ok", "bn-d2-s0": "ok"}
    again = by_run(df).set_index("run_id")
    assert again.loc["bn-d2-s0", "accuracy"] == by_run(serial).set_index("run_id").loc["bn-d2-s0", "accuracy"]


@pytest.mark.slow
def test_sigterm_stops_the_workers_keeps_finished_rows_and_resumes(tmp_path):
    """A real driver with two workers: SIGTERM once a run has finished; exit 130, the finished rows kept,
    no worker left; the same command finishes the sweep."""
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "cnn_depth", "sweep", "--depths", "1", "2", "3", "--seeds", "0", "1", "--epochs", "2",
           "--max-per-class", "10", "--bs", "16", "--device", "cpu", "--workers", "2", "--threads", "1",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    children = []
    for line in proc.stdout:
        if line.startswith("done "):
            children = psutil.Process(proc.pid).children(recursive=True)
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted (SIGTERM) ") and "finished run(s) are saved in" in last, err
    assert "Traceback" not in err
    _, alive = psutil.wait_procs(children, timeout=10)  # workers and multiprocessing's resource tracker
    assert children and not alive, [c.cmdline() for c in alive]
    done = pd.read_csv(out / "results.csv")
    assert 1 <= len(done) < 6 and (done["status"] == "ok").all() and done["run_id"].is_unique
    r = runner.invoke(app, cmd[3:] + ["--quiet"])
    assert r.exit_code == 0, r.output
    full = pd.read_csv(out / "results.csv")
    assert sorted(full["run_id"]) == sorted(f"bn-d{d}-s{s}" for d in (1, 2, 3) for s in (0, 1))
    assert full.iloc[: len(done)].equals(done)


def test_auto_engine_fills_the_cores_and_never_spawns_for_one_run():
    cfg = SweepConfig(device="cpu")
    one = choose_engine(cfg, todo=1, cpus=2)
    assert (one.kind, one.workers, one.threads) == ("inline", 1, 2)
    two = choose_engine(cfg, todo=6, cpus=2)
    assert (two.kind, two.workers, two.threads) == ("local", 2, 1)
    many = choose_engine(cfg, todo=3, cpus=16)
    assert (many.kind, many.workers, many.threads) == ("local", 3, 5)  # never more workers than runs
    given = choose_engine(SweepConfig(device="cpu", workers=1, threads=3), todo=6, cpus=2)
    assert (given.kind, given.workers, given.threads) == ("inline", 1, 3)
    # a resumed sweep keeps the thread count its finished runs used, so its rows stay one group
    kept = choose_engine(cfg, todo=1, cpus=2, recorded_threads=1)
    assert (kept.kind, kept.workers, kept.threads) == ("inline", 1, 1)
    kept = choose_engine(cfg, todo=6, cpus=4, recorded_threads=2)
    assert (kept.kind, kept.workers, kept.threads) == ("local", 2, 2)


def work(one, serial, start, threads=2, note=""):
    """What a calibration measured, as choose_engine weighs it: seconds per job at 1 and ``threads`` threads."""
    return Work(tuple(one), tuple(serial), threads, start, note)


def test_auto_engine_weighs_the_measured_work_and_the_load():
    cfg = SweepConfig(device="cpu")
    # three short runs: 2 threads in one process beat workers that must start first and then wait on the longest
    small = choose_engine(cfg, todo=3, cpus=2, work=work([22, 19, 16], [16, 14, 12], start=10))
    assert (small.kind, small.threads) == ("inline", 2) and "s serially" in small.describe()
    big = choose_engine(cfg, todo=12, cpus=2, work=work([12.0] * 12, [9.0] * 12, start=6))
    assert (big.kind, big.workers, big.threads) == ("local", 2, 1)
    # another process on one of two cores: serial runs take the free core only, workers still one thread each
    shared = choose_engine(cfg, todo=4, cpus=2, work=work([8] * 4, [8] * 4, start=10, threads=1), busy=1.2)
    assert (shared.kind, shared.threads) == ("inline", 1) and "1 of 2 cores busy" in shared.describe()
    assert choose_engine(cfg, todo=1, cpus=8, busy=20).threads == 1  # never fewer than one
    # what the user asked for is never second-guessed
    asked = choose_engine(SweepConfig(device="cpu", workers=2), todo=4, cpus=2, work=work([1] * 4, [1] * 4, 0),
                          busy=1.5)
    assert (asked.kind, asked.workers, asked.threads, asked.why) == ("local", 2, 1, "")
    assert choose_engine(SweepConfig(device="cpu", threads=2), todo=4, cpus=2, work=work([1] * 4, [1] * 4, 0),
                         busy=1.5).threads == 2


def test_expected_seconds_serial_and_parallel():
    # serial: the sum of the runs measured at that thread count; parallel: start-up plus the busiest worker's
    # runs, longest first
    assert expected_seconds([10, 20], 1, 1, cpus=2) == 30
    assert expected_seconds([6, 12], 1, 2, cpus=2) == 18
    assert expected_seconds([30, 20, 10], 2, 1, cpus=2, start=7) == 7 + 30
    # a busy host slows both: our threads share the cores with the other process
    assert expected_seconds([30, 20, 10], 2, 1, cpus=2, busy=1, start=7) > 7 + 30
    assert expected_seconds([10, 20], 1, 2, cpus=2, busy=2) > 30


def test_work_estimate_grows_with_depth_epochs_and_images(sample_dls):
    def seconds(**kw):
        cfg = SweepConfig(device="cpu", **kw)
        return estimated_seconds(cfg, _jobs(cfg, set(), {}), sample_dls)

    base = seconds(depths=[2], epochs=1)
    assert 0 < base < seconds(depths=[6], epochs=1) < seconds(depths=[6], epochs=3)
    assert seconds(depths=[2, 6], epochs=1) == pytest.approx(base + seconds(depths=[6], epochs=1))
    assert seconds(depths=[2], epochs=1, lr="find") > base  # the lr find counts too
    assert estimated_seconds(SweepConfig(), [], object()) is None  # not our DataLoaders: no estimate


def test_longest_runs_start_first_and_each_find_precedes_its_runs():
    cfg = SweepConfig(depths=[2, 8, 4], seeds=[0, 1], lr="find")
    order = longest_first(_jobs(cfg, set(), {}), lambda j: j.depth)
    assert [(j.kind, j.depth) for j in order] == [("find", 8), ("run", 8), ("run", 8), ("find", 4), ("run", 4),
                                                  ("run", 4), ("find", 2), ("run", 2), ("run", 2)]


@pytest.mark.parametrize("args,message", [
    (["--workers", "0"], "workers must be a whole number ≥ 1, got 0"),
    (["--workers", "two"], "workers must be a whole number ≥ 1 or auto, got 'two'"),
    (["--threads", "0"], "threads must be a whole number ≥ 1, got 0"),
    (["--runs-per-gpu", "2", "--device", "cpu"], "--runs-per-gpu 2 needs CUDA GPUs"),
    (["--ray", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
])
def test_bad_engine_options_are_one_line_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if args[0] == "--ray":
        pytest.importorskip("ray")
    r = runner.invoke(app, ["sweep", "--depths", "1", "--max-per-class", "10", "--epochs", "1", *args])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], r.output
    assert not (tmp_path / "runs").exists()


def test_ray_without_ray_installed_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r = runner.invoke(app, ["sweep", "--depths", "1", "2", "--max-per-class", "10", "--ray", "local"])
    assert r.exit_code == 2 and r.stderr.strip() == ("error: Ray is not installed: install the extra: "
                                                     "pip install 'cnn-depth[ray]'"), r.output


@pytest.mark.slow
@pytest.mark.ray
def test_local_ray_gives_the_same_rows(serial, tmp_path):
    pytest.importorskip("ray")
    df = run_sweep(out=str(tmp_path / "ray"), ray="local", **TINY)
    same = [c for c in serial.columns if c not in TIMING]
    pd.testing.assert_frame_equal(by_run(serial)[same], by_run(df)[same])


@pytest.mark.slow
@pytest.mark.ray
def test_two_node_ray_cluster_runs_the_sweep(serial, tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1))
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        df = run_sweep(out=str(tmp_path / "cluster"), ray=cluster.address, **TINY)
        same = [c for c in serial.columns if c not in TIMING]
        pd.testing.assert_frame_equal(by_run(serial)[same], by_run(df)[same])
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_engine_lines_count_threads_and_runs_in_plain_english():
    cfg = SweepConfig(device="cpu")
    assert choose_engine(cfg, todo=6, cpus=2).describe() == "2 runs at once, 1 torch thread each"
    assert choose_engine(cfg, todo=3, cpus=8).describe() == "3 runs at once, 2 torch threads each"
    assert choose_engine(cfg, todo=1, cpus=2).describe() == "in this process, 2 torch threads"
    assert choose_engine(SweepConfig(device="cpu", threads=1), todo=1, cpus=2).describe() == \
        "in this process, 1 torch thread"


def test_serial_threads_are_the_free_cores_whoever_chose_serial():
    # the same rule as depth_learner(threads="auto"): cores minus what other processes keep busy
    asked = choose_engine(SweepConfig(device="cpu", workers=1), todo=3, cpus=2, busy=1.2)
    assert (asked.kind, asked.threads) == ("inline", 1) and "1 of 2 cores busy" in asked.describe()
    # callbacks a worker cannot import: serially, saying why, with the free cores
    main = choose_engine(SweepConfig(device="cpu", workers=2), todo=4, cpus=2, inline_why="serially: X")
    assert (main.kind, main.workers, main.threads, main.why) == ("inline", 1, 2, "serially: X")
    assert choose_engine(SweepConfig(device="cpu"), todo=1, cpus=2, inline_why="serially: X").why == ""


def test_progress_numbers_runs_in_the_order_they_start():
    from cnn_depth.sweep import Progress

    lines = []
    progress = Progress(lines.append, n=5, todo=3, at_once=2)  # 2 of 5 finished earlier
    row = dict(depth=4, seed=0, status="failed", error="E", run_id="bn-d4-s0")
    progress.start(5, 4, 0, " on worker 1")  # grid run 5 is the longest: it starts first
    progress.start(3, 2, 0, " on worker 2")
    progress.end(5, row, 1.0)
    assert lines[0] == "start 3/5  depth=4 seed=0 on worker 1" and lines[1] == "start 4/5  depth=2 seed=0 on worker 2"
    assert lines[2].startswith("done  3/5  depth=4 seed=0  failed: E")
    assert progress.number(3) == 4 and progress.failed == [("bn-d4-s0", "E")]
