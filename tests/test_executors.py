"""Executors: results, threads, per-worker cache, failures, worker death, shutdown and orphans, Ray.

Task functions are trivial and module-level (a worker imports them by name). Starting a worker costs
seconds (it imports cnn_depth, hence fastai), so the local tests share one executor where they can.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import FIRST_COMPLETED, CancelledError, wait
from pathlib import Path

import pytest

from cnn_depth import CnnDepthError
from cnn_depth.executors import (LocalExecutor, RayExecutor, TaskError, WorkerDied, _visible_gpu, ray_capacity,
                                 slot_gpus, worker_cache, worker_info)

ROOT = Path(__file__).resolve().parents[1]
START_SECONDS = 300  # a worker's first task waits for its imports: ~8 s idle, 80 s seen with load 7 on 2 cores


# ---------------------------------------------------------------------------------------------------------
# Tasks (run in the workers)


def where(x):
    import torch
    info = worker_info()
    return dict(x=x, pid=os.getpid(), slot=info.slot, threads=torch.get_num_threads(),
                interop=torch.get_num_interop_threads(), omp=os.environ.get("OMP_NUM_THREADS"),
                cuda=os.environ.get("CUDA_VISIBLE_DEVICES"))


def cached_token():
    """The pid, the id of an object made by this worker's first call, and how many calls it has seen."""
    cache = worker_cache()
    token = cache.setdefault("token", object())
    cache["calls"] = cache.get("calls", 0) + 1
    return os.getpid(), id(token), cache["calls"]


def fail(message):
    raise ValueError(message)


class TwoArgError(Exception):
    """Pickles, but does not unpickle: pickle calls TwoArgError(message) without ``code``."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def fail_unpicklable():
    raise TwoArgError("no way back", 3)


def return_a_lock():
    import threading
    return threading.Lock()


def started_then_sleep(marker, seconds):
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def kill_myself():
    os.kill(os.getpid(), signal.SIGKILL)


def node_and_pid():
    import ray
    time.sleep(1)  # both tasks run at once, so on both one-CPU nodes
    return ray.get_runtime_context().get_node_id(), os.getpid()


# ---------------------------------------------------------------------------------------------------------
# Helpers


def run_all(ex, calls):
    """The driver's loop: submit into free slots, wait for the first to finish; results in call order."""
    futures, running = [], set()
    for fn, *args in calls:
        while not ex.free_slots():
            _, running = wait(running, return_when=FIRST_COMPLETED)
        fut = ex.submit(fn, *args)
        futures.append(fut)
        running.add(fut)
    wait(futures)
    return futures


def wait_for_file(path: Path, timeout=START_SECONDS) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    psutil = pytest.importorskip("psutil")
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def children() -> set:
    psutil = pytest.importorskip("psutil")
    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


def gone_within(pids, seconds) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# ---------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("kwargs, match", [
    (dict(workers=0, threads=1), r"workers must be .* at least 1, got 0: pass --workers"),
    (dict(workers=2, threads=0), r"threads must be .* at least 1, got 0: pass --threads"),
    (dict(workers=2, threads=1, runs_per_gpu=2), r"runs_per_gpu=2 needs GPUs .* leave --runs-per-gpu out"),
    (dict(workers=5, threads=1, gpus=[0, 1], runs_per_gpu=2), r"workers=5 is more than 2 GPU\(s\) .* lower --workers to 4"),
    (dict(workers=1, threads=1, gpus=[-1]), r"GPU indices are whole numbers"),
])
def test_bad_sizes_are_one_line_errors(kwargs, match):
    with pytest.raises(CnnDepthError, match=match) as e:
        LocalExecutor(**kwargs)
    assert "\n" not in str(e.value)


def test_slots_spread_round_robin_over_gpus():
    assert slot_gpus(4, [0, 1], 2) == [0, 1, 0, 1]
    assert slot_gpus(3, [2, 5], 2) == [2, 5, 2]
    assert slot_gpus(2, [], 1) == [None, None]


def test_gpu_indices_follow_the_drivers_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _visible_gpu(3) == "3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert _visible_gpu(1) == "6"
    with pytest.raises(CnnDepthError, match=r"GPU 2 is not among the 2 visible ones .*: pass GPUs 0..1"):
        _visible_gpu(2)


@pytest.mark.parametrize("resources, kwargs, expected", [
    (dict(CPU=8), dict(threads=3), (2, 0)),
    (dict(CPU=16, GPU=2), dict(threads=2, runs_per_gpu=3), (6, 1 / 3)),  # the GPUs bound it
    (dict(CPU=4, GPU=2), dict(threads=1, runs_per_gpu=4), (4, 0.25)),  # the CPUs bound it
    (dict(CPU=16, GPU=2), dict(threads=2, use_gpus=False), (8, 0)),
    (dict(CPU=2), dict(threads=4), r"has 2 CPUs, fewer than threads=4 per task: lower --threads"),
    (dict(CPU=8), dict(threads=1, runs_per_gpu=2), r"runs_per_gpu=2 needs GPUs.*: leave --runs-per-gpu out"),
    (dict(CPU=8), dict(threads=1, use_gpus=True), r"has no GPUs"),
])
def test_ray_capacity(resources, kwargs, expected):
    if isinstance(expected, str):
        with pytest.raises(CnnDepthError, match=expected):
            ray_capacity(resources, **kwargs)
    else:
        assert ray_capacity(resources, **kwargs) == expected


def test_ray_not_installed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(CnnDepthError, match=r"^Ray is not installed: install the extra: pip install 'cnn-depth\[ray\]'$"):
        RayExecutor(threads=1)


# ---------------------------------------------------------------------------------------------------------
# Local workers


DRIVER = textwrap.dedent("""
    import os, time
    from cnn_depth.executors import LocalExecutor
    if __name__ == "__main__":
        ex = LocalExecutor(workers=1, threads=1)
        ex.submit(os.getpid).result(timeout=300)  # the worker is up
        fut = ex.submit(time.sleep, 600)
        print(fut.pid, flush=True)
        time.sleep(600)
""")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """A driver process running one task on one worker, to be SIGKILLed by a test. Started with the shared
    executor below, so that its imports (driver, then worker: seconds each) overlap the other tests."""
    script = tmp_path_factory.mktemp("driver") / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    yield proc
    proc.kill()  # its worker follows (that is what the test checks)
    proc.wait()
    proc.stdout.close()


@pytest.fixture(scope="module")
def local(driver):
    """Two workers with two threads each, "GPUs" 0 and 1 (only CUDA_VISIBLE_DEVICES: nothing touches CUDA)."""
    ex = LocalExecutor(workers=2, threads=2, gpus=[0, 1])
    yield ex
    ex.shutdown(cancel=True)


@pytest.mark.slow
def test_results_come_back_with_the_threads_and_gpu_asked_for(local):
    futures = run_all(local, [(where, i) for i in range(4)])
    rows = [f.result() for f in futures]
    assert [r["x"] for r in rows] == [0, 1, 2, 3]
    for fut, row in zip(futures, rows):
        assert row["slot"] == fut.slot and row["pid"] == fut.pid
        assert row["cuda"] == str(fut.slot)  # slot i gets GPU i of [0, 1] as its only visible GPU
        assert (row["threads"], row["interop"], row["omp"]) == (2, 1, "2")
    assert {r["slot"] for r in rows} == {0, 1}
    assert local.free_slots() == 2


@pytest.mark.slow
def test_worker_cache_outlives_a_task(local):
    seen = {}
    for fut in run_all(local, [(cached_token,)] * 6):
        pid, token, calls = fut.result()
        seen.setdefault(pid, []).append((token, calls))
    assert max(len(values) for values in seen.values()) > 1  # 6 tasks, 2 workers
    for pid, values in seen.items():
        assert len({token for token, _ in values}) == 1  # one object per worker process, made once
        calls = [c for _, c in values]
        assert calls == sorted(calls) and len(set(calls)) == len(calls)  # counted up across tasks


@pytest.mark.slow
def test_task_exceptions_come_back_and_the_pool_goes_on(local):
    fut = local.submit(fail, "bad value")
    with pytest.raises(ValueError, match="bad value"):
        fut.result(timeout=START_SECONDS)
    fut = local.submit(fail_unpicklable)
    with pytest.raises(TaskError, match=r"^TwoArgError: no way back \(not sent back as itself") as e:
        fut.result(timeout=START_SECONDS)
    assert "fail_unpicklable" in e.value.remote_traceback
    with pytest.raises(TypeError, match="cannot pickle '_thread.lock'"):  # a result that does not pickle
        local.submit(return_a_lock).result(timeout=START_SECONDS)
    with pytest.raises(Exception, match="pickle"):  # nor does a lambda: the pool's feeder thread says so
        local.submit(lambda: 1).result(timeout=START_SECONDS)
    assert [f.result()["x"] for f in run_all(local, [(where, 1), (where, 2)])] == [1, 2]
    assert len(set(local.pids)) == 2  # none of it cost a worker


@pytest.mark.slow
def test_submit_needs_a_free_slot(local):
    futures = [local.submit(time.sleep, 0.2), local.submit(time.sleep, 0.2)]
    assert local.free_slots() == 0
    with pytest.raises(RuntimeError, match="all 2 slots are busy"):
        local.submit(time.sleep, 0)
    wait(futures)
    assert local.free_slots() == 2


@pytest.mark.slow
def test_a_killed_worker_fails_only_its_task_and_is_replaced(local, tmp_path):
    marker = tmp_path / "pid"
    doomed = local.submit(started_then_sleep, str(marker), 60)
    other = local.submit(started_then_sleep, str(tmp_path / "other"), 1)
    pid = int(wait_for_file(marker))
    assert pid == doomed.pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerDied, match=rf"^worker {doomed.slot} \(pid {pid}\) died \(SIGKILL\) while running"):
        doomed.result(timeout=30)
    assert other.result(timeout=START_SECONDS) == other.pid  # the other slot ran on
    futures = run_all(local, [(where, 1), (where, 2)])  # both slots, the replaced one included
    rows = {f.slot: f.result() for f in futures}
    assert set(rows) == {0, 1}
    assert rows[doomed.slot]["pid"] != pid and rows[doomed.slot]["threads"] == 2


@pytest.mark.slow
def test_interrupt_cancels_and_leaves_no_worker(tmp_path):
    before = children()
    marker = tmp_path / "pid"
    with pytest.raises(KeyboardInterrupt):
        with LocalExecutor(workers=1, threads=1) as ex:
            fut = ex.submit(started_then_sleep, str(marker), 60)
            pids = set(ex.pids)
            assert int(wait_for_file(marker)) == fut.pid
            raise KeyboardInterrupt  # as Ctrl-C in the driver: the with-block shuts down with cancel=True
    assert fut.cancelled()
    with pytest.raises(CancelledError):
        fut.result()
    assert not any(alive(p) for p in pids)
    assert children() <= before
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(time.sleep, 0)


@pytest.mark.slow
def test_workers_exit_when_the_driver_is_killed(driver):
    worker = int(driver.stdout.readline())
    assert alive(worker)
    driver.send_signal(signal.SIGKILL)  # no cleanup runs in the driver
    driver.wait(10)
    assert gone_within([worker], 5), "the worker outlived its driver"


# ---------------------------------------------------------------------------------------------------------
# Ray


@pytest.mark.ray
def test_unreachable_ray_address_fails_fast(monkeypatch):
    pytest.importorskip("ray")
    import socket
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        start = time.monotonic()
        with pytest.raises(CnnDepthError, match=rf"^cannot reach a Ray cluster at {address} .*ray start --head") as e:
            RayExecutor(address, threads=1)
        assert time.monotonic() - start < 10 and "\n" not in str(e.value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from ray._private.services import find_bootstrap_address, find_gcs_addresses
    if not find_gcs_addresses() and not find_bootstrap_address(None):  # no Ray of anyone's runs here
        with pytest.raises(CnnDepthError, match=r"^no running Ray cluster found for address 'auto': start one"):
            RayExecutor("auto", threads=1)


@pytest.mark.slow
@pytest.mark.ray
def test_local_ray_is_started_and_stopped():
    ray = pytest.importorskip("ray")
    before = children()
    with RayExecutor(None, threads=1, num_cpus=2) as ex:
        assert ray.is_initialized() and ex.slots == 2 and ex.free_slots() == 2
        assert ray.cluster_resources()["CPU"] == 2
    assert not ray.is_initialized()
    assert gone_within(children() - before, 10), "Ray processes outlived shutdown"


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster of two nodes with one CPU each, on this machine.

    Its workers import this module by name: Ray gives them the driver's working and script folders, not
    the tests folder that pytest put on sys.path, but they inherit PYTHONPATH from the processes started here.
    """
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False))
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()
        mp.undo()


@pytest.mark.slow
@pytest.mark.ray
def test_ray_runs_tasks_on_both_nodes_and_maps_failures(cluster):
    import ray
    with RayExecutor(cluster.address, threads=1) as ex:
        assert ex.slots == 2
        nodes = [f.result() for f in run_all(ex, [(node_and_pid,), (node_and_pid,)])]
        assert len({node for node, _ in nodes}) == 2  # two one-CPU tasks at once: one on each node
        futures = run_all(ex, [(where, i) for i in range(4)])
        rows = [f.result() for f in futures]
        assert [r["x"] for r in rows] == [0, 1, 2, 3]
        assert all(r["slot"] == f.slot and (r["threads"], r["interop"], r["omp"]) == (1, 1, "1")
                   for f, r in zip(futures, rows))
        tokens = {}
        for fut in run_all(ex, [(cached_token,)] * 4):  # Ray reuses a worker for CPU tasks, and its cache
            pid, token, calls = fut.result()
            tokens.setdefault(pid, set()).add(token)
        assert all(len(t) == 1 for t in tokens.values()) and len(tokens) < 4  # some worker ran two
        with pytest.raises(ValueError, match="bad value"):
            ex.submit(fail, "bad value").result(timeout=START_SECONDS)
        with pytest.raises(TaskError, match=r"^TwoArgError: no way back"):
            ex.submit(fail_unpicklable).result(timeout=START_SECONDS)
        with pytest.raises(WorkerDied, match=r"^worker \d died \(WorkerCrashedError"):
            ex.submit(kill_myself).result(timeout=START_SECONDS)
        assert ex.free_slots() == 2
        running = ex.submit(time.sleep, 60)
        time.sleep(0.5)
        ex.shutdown(cancel=True)
    assert running.cancelled()
    assert not ray.is_initialized()  # disconnected; the cluster itself is the fixture's to stop
