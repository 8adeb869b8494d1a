"""Run picklable functions concurrently, on local worker processes or on Ray, with one shape for both.

A sweep's driver (the process the user started, the only one that writes the CSV reports) hands each run
to an executor and waits for the futures::

    with LocalExecutor(workers=2, threads=4) as ex:           # or RayExecutor("auto", threads=4)
        running = set()
        for spec in specs:
            while not ex.free_slots():                          # submit only into a free slot
                done, running = wait(running, return_when=FIRST_COMPLETED)
                ...                                             # write the rows of the finished runs
            fut = ex.submit(train_one, spec)                    # a concurrent.futures.Future
            print(f"start ... on worker {fut.slot}")
            running.add(fut)
        ...                                                     # wait for the rest the same way

- **Slots.** An executor has ``slots`` places for one task each; ``submit`` takes a free one and raises
  ``RuntimeError`` when there is none (a driver bug: there is no hidden queue, so every submitted task has
  started, ``future.slot`` says where, and cancelling never has a backlog to drain). A slot is free again
  before its future is marked done, so a driver woken by ``wait`` can submit at once.
- **Per-process state.** :func:`worker_cache` is a dict that lives as long as the worker process: cache
  decoded data there (keyed by what it depends on) and the next task on the same worker finds it.
  :func:`worker_info` tells a task which slot, thread count and GPU it has.
- **Failures.** A task's exception comes back as itself (or as :class:`TaskError` when it cannot be
  pickled); a worker that dies (SIGKILL, out of memory, a crash) fails only its own task, with
  :class:`WorkerDied`, and the slot gets a fresh process on its next submit.
- **Interrupts.** Workers ignore SIGINT (Ctrl-C reaches the whole process group; the driver decides);
  ``shutdown(cancel=True)`` cancels the futures and terminates the running workers, and cancelling one
  future stops its task the same way. A local worker whose driver died (even by SIGKILL) exits on its own
  within a second.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import threading
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional, Sequence

from .errors import CnnDepthError

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # read by OpenMP/BLAS at load
WATCHDOG_SECONDS = 0.5  # how often a local worker checks that its driver is still alive
TERMINATE_SECONDS = 2.0  # SIGTERM grace before SIGKILL when a running worker is stopped
CONNECT_SECONDS = 5.0  # TCP check of a Ray address before ray.init, which retries a closed port for minutes
RAY_EXTRA = "install the extra: pip install 'cnn-depth[ray]'"


# ---------------------------------------------------------------------------------------------------------
# What a task sees and what it can raise


class WorkerDied(RuntimeError):
    """The process running a task died (killed, out of memory, crashed) before the task returned."""


class TaskError(RuntimeError):
    """A task raised an exception that cannot travel back as itself (it does not pickle and unpickle):
    its type and message in one line; ``remote_traceback`` has the worker's traceback."""

    def __init__(self, message: str, remote_traceback: str = ""):
        super().__init__(message)
        self.remote_traceback = remote_traceback

    def __reduce__(self):
        return type(self), (self.args[0], self.remote_traceback)


class _RemoteTraceback(Exception):
    """The traceback of a task, as text; set as ``__cause__`` so that it prints with the exception."""

    def __str__(self):
        return self.args[0]


@dataclass(frozen=True)
class WorkerInfo:
    """Where the calling task runs."""

    slot: int  # the executor's slot (0-based), the "worker" of progress lines
    threads: int  # torch intra-op threads set for this task
    gpu: Optional[str]  # CUDA_VISIBLE_DEVICES given to a local worker, None otherwise (Ray assigns its own)


_CACHE: dict = {}
_INFO: Optional[WorkerInfo] = None


def worker_cache() -> dict:
    """A dict private to this process that lives as long as it: what one task puts there, the next task
    on the same worker finds (in the driver, the driver's own dict)."""
    return _CACHE


def worker_info() -> Optional[WorkerInfo]:
    """The slot, threads and GPU of the task calling this; None outside an executor's task."""
    return _INFO


class TaskFuture(cf.Future):
    """A ``concurrent.futures.Future`` that also says where its task runs.

    It stays pending (never "running") until the task ends, so that ``cancel()`` works while the task
    runs: it stops the task (a local worker is terminated and replaced, a Ray task force-cancelled).
    """

    def __init__(self, slot: int, pid: Optional[int] = None):
        super().__init__()
        self.slot = slot  # the executor's slot (0-based)
        self.pid = pid  # the local worker process (None on Ray)


def _set_threads(threads: int) -> None:
    """torch and the OpenMP/BLAS libraries loaded later use ``threads`` threads (inter-op: 1)."""
    for key in THREAD_ENV:
        os.environ[key] = str(threads)
    import torch  # only in workers: this module itself needs no torch, and must never initialise CUDA

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # allowed once per process, before any inter-op work: a reused worker has it set
        pass


def _sendable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a :class:`TaskError` that says what it was.

    One that pickles but fails to unpickle would otherwise break the local pool (it is unpickled by the
    pool's own thread in the driver) or come back as Ray's UnserializableException."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception as e:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return TaskError(f"{type(exc).__name__}: {exc} (not sent back as itself: {type(e).__name__}: {e})", tb)


def _call(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """Run one task in a worker."""
    try:
        return fn(*args, **kwargs)
    except BaseException as e:
        sendable = _sendable(e)
        if sendable is e:
            raise
        raise sendable from None


def _settle(outer: cf.Future, result: Any = None, exc: Optional[BaseException] = None) -> None:
    """Complete ``outer`` unless it was cancelled meanwhile."""
    try:
        if exc is not None:
            outer.set_exception(exc)
        else:
            outer.set_result(result)
    except cf.InvalidStateError:  # cancelled (by shutdown or the caller) while the task ended
        pass


def _check_sizes(workers: int, threads: int, runs_per_gpu: int) -> None:
    for name, value in (("workers", workers), ("threads", threads), ("runs_per_gpu", runs_per_gpu)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CnnDepthError(f"{name} must be a whole number of at least 1, got {value!r}: "
                                f"pass --{name.replace('_', '-')} 1 or more")


# ---------------------------------------------------------------------------------------------------------
# Local: one single-process pool per slot


def _signal_name(exitcode: Optional[int]) -> str:
    if exitcode is None:
        return "exit code unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return name
    return f"exit code {exitcode}"


def _exitcode(proc, timeout: float = 2.0) -> Optional[int]:
    """The exit code of a dead worker; the pool's thread may be reaping it at the same moment."""
    deadline = time.monotonic() + timeout
    while proc.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc.exitcode


def _watchdog(parent: int) -> None:
    """Exit when our parent is gone (our parent pid changes): the driver, or the fork server, which exits
    when the driver does. A SIGKILLed driver runs no cleanup, and a worker blocked on the pool's queue would
    otherwise wait forever."""
    while os.getppid() == parent:
        time.sleep(WATCHDOG_SECONDS)
    os._exit(1)


def _init_worker(slot: int, threads: int, gpu: Optional[str]) -> None:
    """The initializer of a local worker process, before its first task."""
    global _INFO
    threading.Thread(target=_watchdog, args=(os.getppid(),), name="cnn-depth-watchdog", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the driver, which stops us with shutdown()
    if gpu is not None:  # before any CUDA call: a forked worker inherits the fork server's environment
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    _set_threads(threads)
    _INFO = WorkerInfo(slot=slot, threads=threads, gpu=gpu)


@contextmanager
def sigint_blocked():
    """SIGINT blocked in the calling thread meanwhile: a process started here (a worker, and the fork server
    when this starts it) inherits the block and keeps it, so a terminal's Ctrl-C, which reaches the whole
    process group, cannot interrupt its start-up (a fork server importing torch printed a ~70-line
    KeyboardInterrupt traceback; a worker before its initializer, another); the driver alone handles it and
    stops its workers. A SIGINT sent meanwhile goes to another thread of the driver, or waits for the block to
    end. (issue 19; kept apart from how workers start, so it can wrap whatever starts them.)"""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # starting its process unblocks SIGINT in the calling thread: first
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_NO_MAIN = threading.local()  # set while this thread starts one of our worker processes


def _install_main_filter() -> None:
    """Make multiprocessing leave the driver's ``__main__`` out of what it sends a worker it starts for us.

    A spawned or fork-server child runs ``multiprocessing.spawn.prepare()`` before anything else, and that
    re-runs the parent's main script (``init_main_from_path``) or module (``init_main_from_name``) as
    ``__mp_main__``: an unguarded script (the README's example saved as a file) would train again in every
    worker and hit the sweep's folder lock. Our workers import only cnn_depth (their task is a cnn_depth
    function, its arguments plain data or importable classes), so their preparation data omits both keys.
    ``spawn.get_preparation_data`` is wrapped once, and filters only in a thread that is starting one of our
    workers (:func:`_without_main`): other uses of multiprocessing in the same program are left as they are.
    The filter runs in the parent, so it holds for the spawn fallback and for a fork server started by
    anyone (with any preload list), unlike a patch installed inside the fork server."""
    from multiprocessing import spawn

    current = spawn.get_preparation_data
    if getattr(current, "_cnn_depth_no_main", False):
        return

    def get_preparation_data(name, _original=current):
        data = _original(name)
        if getattr(_NO_MAIN, "on", False):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data._cnn_depth_no_main = True
    get_preparation_data.__doc__ = current.__doc__
    spawn.get_preparation_data = get_preparation_data


@contextmanager
def _without_main():
    _install_main_filter()
    before = getattr(_NO_MAIN, "on", False)
    _NO_MAIN.on = True
    try:
        yield
    finally:
        _NO_MAIN.on = before


if hasattr(multiprocessing.context, "ForkServerProcess"):  # POSIX
    class _NoMainForkServerProcess(multiprocessing.context.ForkServerProcess):
        """A fork-server process that starts without the driver's ``__main__`` (module level: it is pickled)."""

        @staticmethod
        def _Popen(process_obj):
            with _without_main():  # Popen sends the preparation data before it returns
                return multiprocessing.context.ForkServerProcess._Popen(process_obj)


class _NoMainSpawnProcess(multiprocessing.context.SpawnProcess):
    """A spawned process that starts without the driver's ``__main__`` (module level: it is pickled)."""

    @staticmethod
    def _Popen(process_obj):
        with _without_main():
            return multiprocessing.context.SpawnProcess._Popen(process_obj)


class _NoMainContext(multiprocessing.context.BaseContext):
    """A multiprocessing context (``forkserver`` or ``spawn``) whose processes are of the class above."""

    def __init__(self, method: str, process: type):
        self._name, self.Process = method, process


def _context(preload: Sequence[str]):
    """How worker processes start: from a fork server that has imported ``preload`` once (each worker then
    starts in milliseconds instead of importing torch and fastai again: seconds each), where the platform
    has one and there is something to preload; else spawned. Never forked from the driver itself: it may
    hold CUDA or OpenMP state that a fork cannot carry. Either way a worker never runs the driver's
    ``__main__`` (see :func:`_install_main_filter`)."""
    if preload and "forkserver" in multiprocessing.get_all_start_methods():
        ctx = _NoMainContext("forkserver", _NoMainForkServerProcess)
        ctx.set_forkserver_preload(list(preload))  # no effect once the server runs: it keeps its first list
        return ctx
    return _NoMainContext("spawn", _NoMainSpawnProcess)


def main_references(obj: Any) -> list[str]:
    """The names of what pickling ``obj`` refers to in ``__main__`` (a class or function defined in a script
    or a notebook, an instance of one): a local worker, which never runs the driver's ``__main__``, cannot
    unpickle them. Those found before pickling fails count too (a class defined in a notebook cell and
    since redefined no longer pickles even here); empty when there are none."""
    import io

    found: list[str] = []

    class _Finder(pickle.Pickler):
        def persistent_id(self, o):  # called for every object pickled, classes and functions included
            for c in (o, type(o)):
                if isinstance(c, type) or callable(c):
                    if getattr(c, "__module__", None) == "__main__":
                        name = getattr(c, "__qualname__", repr(c))
                        if name not in found:
                            found.append(name)
                        break
            return None

    try:
        _Finder(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except Exception:  # not picklable at all: what was found so far, else the caller says why
        pass
    return found


_ENV_LOCK = threading.Lock()


@contextmanager
def _environ(env: dict):
    """``os.environ`` updated with ``env`` for as long as this lasts: a spawned worker inherits it, so
    OpenMP, BLAS and CUDA see their settings when they load, before any code of ours runs there."""
    with _ENV_LOCK:
        old = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for key, value in old.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def slot_gpus(workers: int, gpus: Sequence[int], runs_per_gpu: int) -> list[Optional[int]]:
    """The GPU of each slot: round-robin over ``gpus``, at most ``runs_per_gpu`` slots on each."""
    if not gpus:
        if runs_per_gpu != 1:
            raise CnnDepthError(f"runs_per_gpu={runs_per_gpu} needs GPUs to share, but none were given: "
                                "pass gpus=[0, 1], or set runs_per_gpu=1 (from the CLI: leave --runs-per-gpu out)")
        return [None] * workers
    if workers > len(gpus) * runs_per_gpu:
        raise CnnDepthError(f"workers={workers} is more than {len(gpus)} GPU(s) x runs_per_gpu={runs_per_gpu}: "
                            f"lower --workers to {len(gpus) * runs_per_gpu} or raise --runs-per-gpu")
    return [gpus[i % len(gpus)] for i in range(workers)]


def _visible_gpu(gpu: int) -> str:
    """The CUDA_VISIBLE_DEVICES entry for GPU ``gpu`` as the driver numbers it (its own
    CUDA_VISIBLE_DEVICES, when set, renumbers the GPUs from 0)."""
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        return str(gpu)
    visible = [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    if gpu >= len(visible):
        raise CnnDepthError(f"GPU {gpu} is not among the {len(visible)} visible ones "
                            f"(CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}): "
                            f"pass GPUs 0..{len(visible) - 1}")
    return visible[gpu]


class _Slot:
    """One worker process (a ProcessPoolExecutor with max_workers=1) and the task it runs."""

    def __init__(self, index: int, threads: int, gpu: Optional[str], ctx):
        self.index, self.threads, self.gpu, self.ctx = index, threads, gpu, ctx
        self.pool: Optional[cf.ProcessPoolExecutor] = None
        self.proc = None  # the pool's multiprocessing.Process
        self.future: Optional[TaskFuture] = None  # the task now running here
        self.dead = True  # no live worker: start one on the next submit

    def start(self) -> None:
        self.pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=self.ctx, initializer=_init_worker,
                                           initargs=(self.index, self.threads, self.gpu))
        env = {key: str(self.threads) for key in THREAD_ENV}
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        with _environ(env), sigint_blocked():
            self.pool.submit(os.getpid)  # spawns the process now, so its imports overlap the driver's work
        # The pool's private table of processes: the one place that has the Process, for its exit code.
        self.proc = next(iter(self.pool._processes.values()))
        self.dead = False

    def stop(self) -> None:
        """Ask the pool to end and the process to terminate, without waiting; SIGKILL follows after
        ``TERMINATE_SECONDS`` (a task may have its own SIGTERM handler) unless :meth:`reap` comes first."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        proc = self.proc
        if proc is not None and proc.exitcode is None:
            proc.terminate()
            timer = threading.Timer(TERMINATE_SECONDS, lambda: proc.exitcode is None and proc.kill())
            timer.daemon = True
            timer.start()
        self.dead = True

    def reap(self, deadline: float) -> None:
        """Phase 2: the process is gone (SIGKILL after the grace time) and the pool's thread joined."""
        if self.proc is not None:
            self.proc.join(max(0.0, deadline - time.monotonic()))
            if self.proc.exitcode is None:
                self.proc.kill()
                self.proc.join(TERMINATE_SECONDS)
        if self.pool is not None:
            self.pool.shutdown(wait=True)


class _Executor:
    """What both executors share: slots, the context manager, shutdown on the way out."""

    slots: int

    def free_slots(self) -> int:
        """How many tasks can be submitted now."""
        raise NotImplementedError

    def submit(self, fn: Callable, *args, **kwargs) -> TaskFuture:
        raise NotImplementedError

    def shutdown(self, cancel: bool = True) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # An error or Ctrl-C in the with-block cancels the runs; a normal exit waits for them.
        self.shutdown(cancel=exc_type is not None)


class InlineExecutor(_Executor):
    """One task at a time in this very process, run when it is submitted: no process to start and nothing
    to pickle (what a sweep with one worker uses). ``threads`` torch threads while the executor is open.

    ``submit`` returns a finished future; an exception of the task is in it, except KeyboardInterrupt,
    which stops the driver as it always does.
    """

    slots = 1

    def __init__(self, threads: int):
        _check_sizes(1, threads, 1)
        self.threads = threads
        self._restore: Optional[int] = None

    def __enter__(self):
        import torch

        self._restore = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        return self

    def free_slots(self) -> int:
        return 1

    def submit(self, fn: Callable, *args, **kwargs) -> TaskFuture:
        fut = TaskFuture(0, os.getpid())  # worker_info() stays None: this is the driver, not a worker
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as e:
            fut.set_exception(e)
        return fut

    def shutdown(self, cancel: bool = True) -> None:
        if self._restore is not None:
            import torch

            torch.set_num_threads(self._restore)
            self._restore = None


class LocalExecutor(_Executor):
    """Up to ``workers`` tasks at once, each slot a long-lived worker process of its own, started from a
    fork server that preloads ``preload`` (or spawned), never forked from the driver: CUDA must not be
    initialised in the driver before the workers start.

    Each slot is a ``ProcessPoolExecutor(max_workers=1)``, so a worker that dies breaks only its own
    one-process pool: its task fails with :class:`WorkerDied`, the other slots run on, and the slot gets a
    fresh process on its next submit. Worker processes start at once (their imports take seconds) and
    stay for the executor's lifetime, so :func:`worker_cache` carries over between their tasks. Unlike
    multiprocessing's own spawned processes, a worker never re-imports the driver's main script or module,
    so a driver script needs no ``if __name__ == "__main__":`` guard; in exchange a task, its arguments and
    what it returns must not refer to anything defined in ``__main__`` (a script or a notebook).

    Args:
        workers: tasks at once (slots), at least 1. With GPUs at most ``len(gpus) * runs_per_gpu``.
        threads: torch threads per worker (``torch.set_num_threads``, OMP/MKL/OpenBLAS env), at least 1.
        gpus: GPU indices as the driver sees them; slot ``i`` gets ``gpus[i % len(gpus)]`` as its only
            visible GPU (``CUDA_VISIBLE_DEVICES``). Empty: the workers see what the driver sees.
        runs_per_gpu: slots per GPU; only with ``gpus``.
        preload: modules the fork server imports once for every worker (e.g. ``["cnn_depth.run"]``);
            empty: each worker is spawned and imports what its tasks need itself.
    """

    def __init__(self, workers: int, threads: int, gpus: Sequence[int] = (), runs_per_gpu: int = 1,
                 preload: Sequence[str] = ()):
        _check_sizes(workers, threads, runs_per_gpu)
        gpus = list(gpus)
        for g in gpus:
            if not isinstance(g, int) or isinstance(g, bool) or g < 0:
                raise CnnDepthError(f"GPU indices are whole numbers from 0, got {g!r}: pass e.g. gpus=[0, 1]")
        visible = [None if g is None else _visible_gpu(g) for g in slot_gpus(workers, gpus, runs_per_gpu)]
        self.slots, self.threads = workers, threads
        self._lock = threading.Lock()
        self._closed = False
        ctx = _context(preload)
        self._slots = [_Slot(i, threads, gpu, ctx) for i, gpu in enumerate(visible)]
        try:
            for slot in self._slots:
                slot.start()
        except BaseException:
            self.shutdown(cancel=True)
            raise

    @property
    def pids(self) -> list[Optional[int]]:
        """The process id of each slot's worker (the last one, when a slot awaits a fresh process)."""
        return [None if s.proc is None else s.proc.pid for s in self._slots]

    def free_slots(self) -> int:
        with self._lock:
            return 0 if self._closed else sum(s.future is None for s in self._slots)

    def submit(self, fn: Callable, *args, **kwargs) -> TaskFuture:
        """Run ``fn(*args, **kwargs)`` in a free slot's worker; ``fn`` and its arguments must pickle (a
        module-level function, plain data). Raises RuntimeError when no slot is free."""
        with self._lock:
            if self._closed:
                raise RuntimeError("submit after shutdown")
            free = [s for s in self._slots if s.future is None]
            if not free:
                raise RuntimeError(f"all {self.slots} slots are busy: wait for a future before submitting")
            slot = min(free, key=lambda s: s.dead)  # a live worker first: a new one takes seconds to start
            if slot.dead:
                slot.stop()  # the broken pool's last threads and queues
                slot.start()
            outer = TaskFuture(slot.index, slot.proc.pid)
            inner = slot.pool.submit(_call, fn, args, kwargs)
            slot.future = outer
        inner.add_done_callback(partial(self._finished, slot, slot.proc, outer))
        outer.add_done_callback(partial(self._cancelled, slot))
        return outer

    def _finished(self, slot: _Slot, proc, outer: TaskFuture, inner: cf.Future) -> None:
        """The pool's thread: free the slot, then hand the result over."""
        if outer.cancelled():  # _cancelled has freed the slot and stopped the worker
            return
        exc = None if inner.cancelled() else inner.exception()
        if isinstance(exc, BrokenProcessPool):
            if exc.__cause__ is None:
                code = _exitcode(proc)
                oom = ": SIGKILL is often the out-of-memory killer" if code == -getattr(signal, "SIGKILL", 9) else ""
                died = WorkerDied(f"worker {slot.index} (pid {proc.pid}) died ({_signal_name(code)}) "
                                  f"while running this task{oom}")
            else:  # the pool's thread failed to unpickle the result, and stopped the worker
                why = str(exc.__cause__).strip().strip("'").strip().splitlines()[-1]
                died = WorkerDied(f"worker {slot.index} (pid {proc.pid}) sent back a result that does not "
                                  f"unpickle here ({why}), and was stopped: return plain data")
            died.__cause__ = exc
            exc = died
        with self._lock:
            if slot.future is outer:
                slot.future = None
                slot.dead = slot.dead or isinstance(exc, WorkerDied)
        if inner.cancelled():
            outer.cancel()
        else:
            _settle(outer, None if exc else inner.result(), exc)

    def _cancelled(self, slot: _Slot, outer: TaskFuture) -> None:
        """A cancelled future stops its task: the worker is terminated and the slot freed for a new one."""
        if not outer.cancelled():
            return
        with self._lock:
            if slot.future is not outer:
                return
            slot.future = None
            slot.stop()

    def shutdown(self, cancel: bool = True) -> None:
        """Stop the workers.

        Args:
            cancel: True: cancel the futures of running tasks and terminate every worker now (SIGTERM,
                SIGKILL after ``TERMINATE_SECONDS``); False: let running tasks finish first.
        """
        with self._lock:
            self._closed = True
            running = [s.future for s in self._slots if s.future is not None]
        if cancel:
            for fut in running:
                fut.cancel()
        else:
            cf.wait(running)
        with self._lock:
            for slot in self._slots:
                slot.stop()
        deadline = time.monotonic() + TERMINATE_SECONDS
        for slot in self._slots:
            slot.reap(deadline)


# ---------------------------------------------------------------------------------------------------------
# Ray: one task per run


def _import_ray():
    try:
        import ray
    except ImportError:
        raise CnnDepthError(f"Ray is not installed: {RAY_EXTRA}") from None
    return ray


def _ray_task(threads: int, slot: int, fn: Callable, args: tuple, kwargs: dict) -> Any:
    """The Ray task around ``fn``: thread count and worker info first."""
    global _INFO
    _set_threads(threads)
    _INFO = WorkerInfo(slot=slot, threads=threads, gpu=None)
    return _call(fn, args, kwargs)


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address.strip("[]"), default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise CnnDepthError(f"bad Ray address {address!r}: pass host:port, ray://host:port or auto") from None


def _check_reachable(address: str) -> None:
    """Fail within ``CONNECT_SECONDS`` when nothing listens at a Ray address (ray.init would retry for
    minutes). 'auto' is resolved the way ray.init resolves it (RAY_ADDRESS, then the last ``ray start``)."""
    if address.startswith("ray://"):
        host, port = _host_port(address[len("ray://"):], 10001)
    else:
        if address == "auto":
            try:
                from ray._private.services import canonicalize_bootstrap_address_or_die
            except ImportError:  # a Ray without it: ray.init itself finds or refuses 'auto' quickly
                return
            try:
                address = canonicalize_bootstrap_address_or_die("auto")
            except ConnectionError:
                raise CnnDepthError("no running Ray cluster found for address 'auto': start one with "
                                    "`ray start --head`, or pass its address host:port") from None
        host, port = _host_port(address, 6379)
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise CnnDepthError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}): check the address "
                            "and that `ray start --head` runs there") from None


def ray_capacity(resources: dict, threads: int, runs_per_gpu: int = 1,
                 use_gpus: Optional[bool] = None) -> tuple[int, float]:
    """Tasks a Ray cluster with ``resources`` (``ray.cluster_resources()``) runs at once, and the GPU share
    each asks for: CPUs // threads, and at most GPUs * runs_per_gpu when tasks use GPUs."""
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if use_gpus and not gpus:
        raise CnnDepthError("the Ray cluster has no GPUs: leave use_gpus out (or pass use_gpus=False), or add nodes "
                            "that have them")
    use_gpus = bool(gpus) and use_gpus is not False
    if runs_per_gpu != 1 and not use_gpus:
        raise CnnDepthError(f"runs_per_gpu={runs_per_gpu} needs GPUs, and this Ray cluster's tasks get none: "
                            "leave --runs-per-gpu out")
    slots = int(cpus // threads)
    if slots < 1:
        raise CnnDepthError(f"the Ray cluster has {cpus:g} CPUs, fewer than threads={threads} per task: "
                            "lower --threads")
    if use_gpus:
        return min(slots, int(round(gpus * runs_per_gpu, 6))), 1 / runs_per_gpu  # round: 0.5 GPUs * 2 runs
    return slots, 0


_RAY_DIED = ("WorkerCrashedError", "OutOfMemoryError", "NodeDiedError", "LocalRayletDiedError")


class RayExecutor(_Executor):
    """Each task a Ray task (``num_cpus=threads``, a ``1/runs_per_gpu`` share of a GPU when the cluster
    has GPUs, no retries), on a Ray cluster or on a local Ray started here.

    ``slots`` is the cluster's CPUs divided by ``threads`` (and its GPUs times ``runs_per_gpu``), read
    once at start. Ray reuses a worker process for the next CPU task, so :func:`worker_cache` carries over
    there; a GPU task gets a fresh process (Ray's ``max_calls=1`` for GPU tasks), so it does not.

    Args:
        address: ``"local"`` starts a Ray of our own here; ``"auto"``, ``"host:port"`` or
            ``"ray://host:port"`` (needs the client extra, which ``cnn-depth[ray]`` has) joins a running
            cluster; ``None``: the one RAY_ADDRESS names, else local. Ray sends its token only with
            ``"auto"``: a cluster with token authentication at an explicit address needs ``RAY_AUTH_MODE=token``.
        threads: CPUs per task, and torch threads inside it.
        runs_per_gpu: tasks sharing one GPU (a scheduling share, not memory isolation); only with GPUs.
        num_cpus, num_gpus: resources of a local Ray started here (default: all of this machine's).
        use_gpus: ask each task for a GPU share; default: when the cluster has GPUs.
        max_slots: at most this many tasks at once, even on a larger cluster.
    """

    def __init__(self, address: Optional[str] = None, threads: int = 1, runs_per_gpu: int = 1, *,
                 num_cpus: Optional[int] = None, num_gpus: Optional[int] = None, use_gpus: Optional[bool] = None,
                 max_slots: Optional[int] = None):
        _check_sizes(1, threads, runs_per_gpu)
        ray = self._ray = _import_ray()
        self.threads = threads
        self._lock = threading.Lock()
        self._closed = False
        self._running: dict[int, tuple[TaskFuture, Any, cf.Future]] = {}  # slot -> (future, ObjectRef, ref's future)
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        self._owner = not ray.is_initialized()  # we disconnect (and stop a local Ray) only if we connected
        if self._owner:
            quiet = dict(log_to_driver=False, logging_level=logging.ERROR)  # the task's output is the driver's to print
            if address == "local":
                # always a Ray of our own, never one that another program started on this machine
                ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **quiet)
            else:
                _check_reachable(address)
                try:
                    ray.init(address=address, **quiet)
                except Exception as e:  # token, version mismatch, a port that is not Ray's: after ~30 s
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    hint = ""
                    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
                        # Ray sends its token only to a cluster it found itself ('auto'), never to an address
                        hint = ("; if the cluster uses token authentication (the default of new Ray clusters), "
                                "set RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
                    raise CnnDepthError(f"cannot join the Ray cluster at {address}: {first}{hint}") from None
        try:
            self.slots, num_gpus_each = ray_capacity(ray.cluster_resources(), threads, runs_per_gpu, use_gpus)
            if max_slots is not None:  # a sweep never needs more slots than it has runs
                self.slots = max(1, min(self.slots, max_slots))
        except BaseException:
            self.shutdown()
            raise
        self._remote = ray.remote(_ray_task).options(num_cpus=threads, num_gpus=num_gpus_each, max_retries=0,
                                                     retry_exceptions=False)

    def free_slots(self) -> int:
        with self._lock:
            return 0 if self._closed else self.slots - len(self._running)

    def submit(self, fn: Callable, *args, **kwargs) -> TaskFuture:
        """Run ``fn(*args, **kwargs)`` as a Ray task; ``fn`` must be importable on the workers (a
        module-level function of an installed package). Raises RuntimeError when no slot is free."""
        with self._lock:
            if self._closed:
                raise RuntimeError("submit after shutdown")
            free = [i for i in range(self.slots) if i not in self._running]
            if not free:
                raise RuntimeError(f"all {self.slots} slots are busy: wait for a future before submitting")
            slot = free[0]
            outer = TaskFuture(slot)
            ref = self._remote.remote(self.threads, slot, fn, args, kwargs)
            inner = ref.future()
            self._running[slot] = (outer, ref, inner)
        inner.add_done_callback(partial(self._finished, slot, outer))
        outer.add_done_callback(partial(self._cancelled, slot, ref))
        return outer

    def _finished(self, slot: int, outer: TaskFuture, inner: cf.Future) -> None:
        """Ray's thread: map Ray's exceptions onto ours, free the slot, hand the result over."""
        exc = None if inner.cancelled() else inner.exception()
        errors = self._ray.exceptions
        if isinstance(exc, errors.RayTaskError) and exc.cause is not None:
            cause = exc.cause  # the task's own exception, as the local executor gives it
            cause.__cause__ = _RemoteTraceback(str(exc))
            exc = cause
        elif type(exc).__name__ in _RAY_DIED:
            first = (str(exc).strip().splitlines() or [""])[0]
            died = WorkerDied(f"worker {slot} died ({type(exc).__name__}: {first}) while running this task")
            died.__cause__ = exc
            exc = died
        elif type(exc).__name__ == "UnserializableException":
            exc = TaskError(str(exc).strip().splitlines()[0], str(exc))
        with self._lock:
            if self._running.get(slot, (None,))[0] is outer:
                del self._running[slot]
        if inner.cancelled() or isinstance(exc, errors.TaskCancelledError):
            outer.cancel()
        else:
            _settle(outer, None if exc else inner.result(), exc)

    def _cancelled(self, slot: int, ref, outer: TaskFuture) -> None:
        """A cancelled future stops its task, and its slot is free at once, as with LocalExecutor."""
        if outer.cancelled():
            with self._lock:
                if self._running.get(slot, (None,))[0] is outer:
                    del self._running[slot]
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # already finished, or the connection is gone: nothing left to stop
                pass

    def shutdown(self, cancel: bool = True) -> None:
        """Cancel or wait for the running tasks, then disconnect (stopping a local Ray started here).

        Args:
            cancel: True: cancel the futures and force-cancel their tasks (their worker processes are
                killed); False: let running tasks finish first.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = list(self._running.values())
        if cancel:
            for outer, _, _ in running:
                outer.cancel()
            # Give the cancels time to reach the cluster before we disconnect.
            cf.wait([inner for _, _, inner in running], timeout=CONNECT_SECONDS)
        else:
            cf.wait([outer for outer, _, _ in running])
        if self._owner and self._ray.is_initialized():
            self._ray.shutdown()
