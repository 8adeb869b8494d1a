"""The depth sweep: one fastai run per (depth, seed), each written as one row the moment it ends.

What a sweep writes, and how, is :mod:`cnn_depth.records`; the summary and plots are
:mod:`cnn_depth.reports`. Resume: finished (``ok``) runs are skipped; ``diverged`` and ``failed`` ones are run
again and their new row replaces the old one, so results.csv always holds one row per run_id. An interrupt
(Ctrl-C, SIGTERM) leaves the finished rows and no row for the run it cut short.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import shutil
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd
from fastai.callback.core import Callback

from .checkpoint import write_checkpoint
from .config import RESULT_FIELDS, SweepConfig, data_key, data_settings, settings, sweep_flags
from .errors import CnnDepthError, SweepFailed
from .loaders import dataloaders
from .models import check_input_size
from .packing import Packing, is_out_of_memory, run_packed, start_packing
from .plan import (Engine, _jobs, busy_cores, choose_engine, estimated_seconds, finished_runs, longest_first,
                   measured_work, needs_estimate)
from .records import (ACTIVATION_CSV_COLUMNS, HISTORY_COLUMNS, MODELS_DIR, RESULT_COLUMNS, check_folder,
                      claim_folder, environment, folder_grid, read_results, read_sweep_json, run_id, write_rows,
                      write_sweep_json)
from .run import Job, RunResult, failed_result, resolve_device, run_job, samples_word
from .tracking import Trackers
from .transfer import fetch_weights


# ---------------------------------------------------------------------------------------------------------
# Interrupts


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a sweep; its message says what was kept and how to resume."""


class _Interrupts:
    """SIGINT and SIGTERM raise KeyboardInterrupt, except inside ``critical()`` (writing a run's rows),
    where they wait until the rows are on disk. Library code with a bare ``except:`` (fastai's
    ``_try_concat``) can swallow that KeyboardInterrupt: ``check()``, between runs and on the way out,
    raises it again."""

    def __init__(self):
        self.old, self.pending, self.writing, self.requested = {}, None, False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. `cnn-depth sweep &` ignores SIGINT
                    self.old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        if exc[0] is None:
            self.check()

    def check(self):
        if self.requested:
            raise KeyboardInterrupt(signal.Signals(self.requested).name)

    def _handler(self, signum, frame):
        self.requested = signum
        if self.writing:
            self.pending = signum
        else:
            raise KeyboardInterrupt(signal.Signals(signum).name)

    @contextmanager
    def critical(self):
        self.writing = True
        try:
            yield
        finally:
            self.writing = False
        if self.pending:
            signum, self.pending = self.pending, None
            raise KeyboardInterrupt(signal.Signals(signum).name)


# ---------------------------------------------------------------------------------------------------------
# The sweep


def run_sweep(config: Optional[SweepConfig] = None, *, cbs: Sequence[Callback] = (),
              log: Callable[[str], None] = print, **kw) -> pd.DataFrame:
    """Train one model per (depth, seed) and write the reports; return every row of the sweep's results.csv.

    This process (the driver) plans the runs, hands them to an engine (this process, local worker processes
    or Ray: see :func:`choose_engine`) and alone writes the files as runs come back, so resume, extending a
    sweep and "one row per run_id" hold whatever the engine.

    Args:
        config: a :class:`SweepConfig`; or give its fields as keywords (they override ``config``'s), e.g.
            ``run_sweep(depths=[2, 3, 4], seeds=[0], epochs=1, max_per_class=50, out="runs/x")``.
            ``seeds="auto"`` runs in rounds until every comparison is clear (:class:`Rounds`; ``min_seeds``,
            ``max_seeds``, ``margin``, ``compare``).
        cbs: extra fastai callbacks added to every run's Learner. Worker processes get them pickled, and
            never run your script or notebook: callbacks whose class is defined there (``__main__``) make the
            sweep run serially in this process (the ``sweep:`` line says so); define them in a module you
            import to run them in parallel.
        log: where the progress lines go (nothing when ``quiet``).
        **kw: SweepConfig fields.

    Returns:
        results.csv as a DataFrame (every run in the folder, this call's and earlier ones'), with
        ``df.attrs["out"]`` the folder and ``df.attrs["summary"]`` the summary table.

    Raises:
        CnnDepthError: bad options, a folder holding another config or in use by another sweep, an
            unreadable dataset, images too small for the model.
        SweepFailed: every run this call started failed (nothing trained); the rows are recorded and the
            reports written first, ``e.results`` holds results.csv.
        SweepInterrupted: Ctrl-C or SIGTERM; finished runs are saved, rerun to resume.
    """
    cfg = dataclasses.replace(config, **kw) if config is not None else SweepConfig(**kw)
    try:
        return _run_sweep(cfg, cbs, log)
    except SweepInterrupted:
        raise
    except KeyboardInterrupt as e:  # outside the places that say more (say, while the workers shut down)
        raise _interrupted(cfg.out_dir, e) from e


def _interrupted(out: Path, e: Optional[BaseException], where: str = "", then: str = "resume") -> SweepInterrupted:
    """The SweepInterrupted of a sweep stopped by Ctrl-C or SIGTERM: the signal (``e``'s name for it, when
    given), where it landed (``where``, e.g. `` during run 2/3 (bn-d2-s0)``) and the finished runs the folder
    holds, read from it. Without ``where`` and with none finished: that no finished run is saved."""
    import warnings

    why = f" ({e.args[0]})" if e is not None and e.args else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n_ok = int((read_results(out)["status"] == "ok").sum())
    except Exception:  # an unreadable folder (the sweep would have refused it): claim nothing
        n_ok = 0
    if not n_ok and not where:
        return SweepInterrupted(f"interrupted{why} before any run finished; no finished run is saved in {out}")
    return SweepInterrupted(f"interrupted{why}{where}; {n_ok} finished run(s) are saved in {out}; rerun the same "
                            f"command to {then}")


def _run_sweep(cfg: SweepConfig, cbs: Sequence[Callback], log: Callable[[str], None]) -> pd.DataFrame:
    """:func:`run_sweep`'s work; an interrupt that leaves it without a SweepInterrupted becomes one there."""
    from .reports import write_reports

    say = (lambda s: None) if cfg.quiet else log
    combos = cfg.combinations()  # one config per combination of a grid's settings; [cfg] without a grid
    for arch in dict.fromkeys(c.arch for c in combos if c.pretrained):  # before any folder or worker: offline
        fetch_weights(arch)  # without the file, one line and exit 2
    made = _first_missing(cfg.out_dir)  # what claim_folder will create, removed again if no row is written
    with claim_folder(cfg.out_dir) as out, _removed_if_unused(out, made), ExitStack() as stack:
        check_folder(out, cfg.as_dict(), RESULT_FIELDS, save_models=cfg.save_models)
        trackers = Trackers(cfg, out, say, warn=log).check()  # --track: importable, reachable, writable; before any run
        # the settings that vary in the folder (a grid, perhaps extended by this call) name its run ids
        varying = [n for n in settings() if n in cfg.varying() or n in folder_grid(read_sweep_json(out).get(
            "config", {}), cfg.as_dict())]
        done = read_results(out)
        ok = done[done["status"] == "ok"]
        finished = finished_runs(done, cfg, out)
        # --lr find: one lr per combination and depth (--seeds auto: any seed the rule may run)
        seeds = cfg.plan().order if cfg.seeds == "auto" else cfg.seeds
        runs = {run_id(c.arch, d, s, c.run_tag(varying)): (i, d) for i, c in enumerate(combos)
                for d in cfg.depths for s in seeds}
        found_lrs = {runs[rid]: float(lr) for rid, lr in zip(ok["run_id"], ok["lr"]) if rid in runs}
        # --seeds auto: the rounds loop below
        rounds = Rounds(cfg, done, finished, varying, out) if cfg.seeds == "auto" else None
        jobs = rounds.next_jobs(found_lrs) if rounds else _jobs(cfg, finished, found_lrs, varying)
        todo = sum(job.kind == "run" for job in jobs)
        threads_used = set(pd.to_numeric(ok.get("threads", pd.Series(dtype=float)), errors="coerce").dropna())
        recorded = int(threads_used.pop()) if len(threads_used) == 1 else None
        plan = functools.partial(choose_engine, cfg, todo, recorded_threads=recorded, inline_why=_inline_why(cbs))
        device = resolve_device(cfg.device)
        packing, gpu_busy = None, None
        if needs_estimate(cfg):  # auto on CPUs: the data first, then workers only if the work pays for them
            loaders = _driver_dataloaders(cfg, device.torch)
            dls = next(iter(loaders.values()))
            busy = busy_cores()
            work = measured_work(cfg, jobs, dls, todo, busy, recorded)  # a few steps measured on this machine
            seconds = dict(zip(jobs, work.one)) if work else {j: estimated_seconds(cfg, [j], dls) for j in jobs}
            engine = plan(work=work, busy=busy)
            if engine.kind != "inline":
                _check_picklable(cbs)
            starting = stack.enter_context(_starting(engine))
        else:  # workers start while the driver gets the data ready
            if cfg.runs_per_gpu == "auto" and cfg.workers == "auto" and device.torch.type == "cuda":
                gpu_busy = busy_cores()  # GPU packing: a run per core other processes leave free
            engine = plan() if gpu_busy is None else plan(busy=gpu_busy)
            if engine.kind == "inline" and cfg.threads == "auto" and recorded is None:
                engine = plan(busy=busy_cores())  # serially: the cores other processes leave free
            if engine.kind != "inline":
                _check_picklable(cbs)
            starting = stack.enter_context(_starting(engine))
            loaders = _driver_dataloaders(cfg, device.torch if engine.kind == "inline" else "cpu")
            dls = next(iter(loaders.values()))
            seconds = None
        if engine.kind == "local" and engine.gpus:  # runs per GPU: estimated now, then measured (packing.py)
            packing, engine, warning = start_packing(cfg, engine, dls, [j.depth for j in jobs], todo, gpu_busy)
            if warning:
                log(warning)
        if engine.kind != "inline":
            if seconds is None:
                seconds = {j: estimated_seconds(cfg, [j], dls) for j in jobs}
            jobs = longest_first(jobs, lambda j: seconds[j] or 0.0)
        write_sweep_json(out, dict(cfg.as_dict(), out=str(out), **(rounds.config() if rounds else {})),
                         environment(device.name, device.precision),
                         dict(started=datetime.now(timezone.utc).isoformat(timespec="seconds"), argv=sys.argv,
                              depths=cfg.depths, seeds=cfg.seeds, device=device.name, engine=engine.describe(),
                              **(rounds.invocation() if rounds else {})))
        n = len(combos) * len(cfg.depths) * len(cfg.seeds) if not rounds else rounds.ran() + todo
        grid = (f" ({' × '.join(f'{len(getattr(cfg, v))} {v}s' for v in cfg.varying())} × {len(cfg.depths)} depths × "
                f"{len(cfg.seeds)} seeds)" if len(combos) > 1 else "")
        say(f"sweep: {rounds.headline(todo) if rounds else f'{n} runs{grid} ({todo} to do)'} on {device.name}, "
            f"{engine.describe()}; {len(dls.train_ds)} train / {len(dls.valid_ds)} valid {_samples(dls)}; writing "
            f"to {out}")
        if engine.kind == "inline" and len(loaders) == 1:  # the driver is the worker: it reuses these DataLoaders
            from .executors import worker_cache

            worker_cache().update(loaders)
        del dls, loaders
        progress = Progress(say, n, todo, engine.workers, names=_names(cfg, jobs))
        stack.enter_context(trackers)  # closed (FINISHED, KILLED, FAILED) however the runs end
        if rounds:
            rounds.drive(engine, starting, jobs, found_lrs, out, cbs, progress, say, packing, trackers, seconds)
        else:
            _drive(cfg, engine, starting, jobs, found_lrs, out, cbs, progress, say, packing, trackers)
    try:  # every run is on disk: an interrupt now cuts short only the reports, which a rerun writes
        results = read_results(out)
        results.attrs["out"] = str(out)
        results.attrs["summary"] = write_reports(out)
        trackers.reports(out)
    except KeyboardInterrupt as e:
        raise _interrupted(out, None, " while writing the reports", then="write them") from e
    if progress.ended and len(progress.failed) == len(progress.ended):
        run, error = progress.failed[0]
        error = " ".join(error.split())  # one line (fastai wraps a callback's error in a tab-indented line)
        error = error if len(error) <= 300 else error[:297] + "..."
        raise SweepFailed(f"{'all ' if len(progress.ended) > 1 else ''}{len(progress.ended)} run"
                          f"{'s' if len(progress.ended) > 1 else ''} of this sweep failed, none trained (first, "
                          f"{run}: {error}); the rows are in {out / 'results.csv'}", results)
    return results


def _inline_why(cbs: Sequence[Callback]) -> str:
    """Why ``cbs`` keep the runs in this process (empty when they can go to workers): local workers never
    run the driver's ``__main__`` (a script, a notebook), so they cannot unpickle what is defined there."""
    from .executors import main_references

    names = main_references(list(cbs))
    if not names:
        return ""
    return (f"serially: {', '.join(names)} {'is' if len(names) == 1 else 'are'} defined in __main__, which worker "
            f"processes do not run; define {'it' if len(names) == 1 else 'them'} in a module you import to run "
            f"in parallel")


def _driver_dataloaders(cfg: SweepConfig, device) -> dict:
    """The driver's DataLoaders, one per data setting of the sweep (a grid over data settings has several),
    keyed as the worker cache keys them: built before any run, so each dataset is checked (and decoded into
    the disk cache, for the workers) first, and each combination's runs are checked against them
    (:func:`check_loaders`)."""
    loaders = {}
    for combo in cfg.combinations():
        key = data_key(combo, device)
        if key not in loaders:
            loaders[key] = dataloaders(**data_settings(combo), device=device)
        check_loaders(loaders[key], combo)
    return loaders


def _names(cfg: SweepConfig, jobs: Sequence[Job]) -> dict:
    """What the progress lines name a grid's run by besides depth and seed: its combination's values
    (``arch=bn lr=0.001``), by its place in the grid; empty without a grid."""
    if not cfg.varying():
        return {}
    combos = cfg.combinations()
    return {j.index: " ".join(f"{n}={sweep_flags(n, getattr(combos[j.combo], n))[-1]}" for n in cfg.varying())
            for j in jobs if j.kind == "run"}


def _samples(dls) -> str:
    """``images``, ``series`` or ``volumes``: what ``dls`` serves, as the lines name it."""
    from .loaders import data_info

    return samples_word(data_info(dls))


def check_loaders(dls, cfg: SweepConfig) -> None:
    """Refuse, before any run, DataLoaders a sweep cannot train on: a training split smaller than the batch
    size gives no full batch (fastai drops the last partial one), so every run would train on nothing; an
    empty validation split gives no accuracy; inputs smaller than a model's pooling needs, or of a
    dimension it does not take (a 2D preset on series: :func:`check_input_size`), fail every run; a
    ``--split-seed`` for data with split folders of its own would change nothing. One line naming the fix."""
    from .loaders import data_info

    info = data_info(dls)
    what = samples_word(info)
    n_train, n_valid = len(dls.train_ds), len(dls.valid_ds)
    if n_train < cfg.bs:
        more = f"more {what} (--max-per-class {cfg.max_per_class} keeps {n_train})" if cfg.max_per_class else \
            f"a dataset with more {what}"
        raise CnnDepthError(f"the training split has {n_train} {what}, fewer than --bs {cfg.bs}, so there is no "
                            f"full batch to train on; use --bs {max(n_train, 1)} or less, or {more}")
    if n_valid == 0:
        raise CnnDepthError(f"the validation split has no {what}, so there is no accuracy to report; give a "
                            f"dataset with validation {what}")
    if info is not None:
        if cfg.split_seed != 0 and getattr(info.source, "seed", None) is None:
            src = info.source
            raise CnnDepthError(f"--split-seed {cfg.split_seed} picks a random validation split of one folder of "
                                f"classes, but {cfg.dataset_label} has split folders of its own "
                                f"({src.train_name}/, {src.valid_name}/): leave out --split-seed")
        for depth in cfg.depths:
            check_input_size(cfg.arch, depth, tuple(info.img_size))


def _first_missing(path: Path) -> Optional[Path]:
    """The outermost folder of ``path`` that does not exist yet (None when ``path`` exists)."""
    path, missing = Path(path).absolute(), None
    while not path.exists():
        path, missing = path.parent, path
    return missing


@contextmanager
def _removed_if_unused(out: Path, made: Optional[Path]):
    """The folders this sweep made are removed again when it stops before writing a row (bad options, a
    dataset that cannot be read), so a mistyped command leaves nothing behind."""
    try:
        yield
    except BaseException:
        if made is not None and not (out / "results.csv").exists():
            shutil.rmtree(made, ignore_errors=True)
        raise


def _check_picklable(cbs: Sequence[Callback]) -> None:
    import pickle

    for cb in cbs:
        try:
            pickle.dumps(cb)
        except Exception as e:
            raise CnnDepthError(f"callback {type(cb).__name__} cannot be sent to worker processes ({type(e).__name__}:"
                                f" {e}); define it at module level, or run with workers=1") from e


@contextmanager
def _starting(engine: Engine):
    """The engine's executor, made in a thread (worker processes take seconds to start: importing torch
    and fastai), so that the driver builds its DataLoaders meanwhile. Yields a future of the executor; the
    executor is shut down on the way out, however the sweep ends."""
    pool = cf.ThreadPoolExecutor(1, thread_name_prefix="cnn-depth-start")
    fut = pool.submit(engine.executor)
    try:
        yield fut
    finally:
        pool.shutdown(wait=True)
        if not fut.cancelled() and fut.exception() is None:
            fut.result().shutdown(cancel=True)  # a no-op after _drive's own shutdown


def _drive(cfg: SweepConfig, engine: Engine, starting: cf.Future, jobs: list[Job], lrs: dict, out: Path, cbs,
           progress: "Progress", say: Callable[[str], None], packing: Optional[Packing] = None,
           trackers: Optional[Trackers] = None) -> None:
    """The driver loop, the same for every engine: submit jobs into free slots (a run once its depth's lr is
    known), write each run's files as it comes back, stop everything on Ctrl-C/SIGTERM.

    ``packing`` (local GPU workers): at most ``packing.limit`` runs at once, raised or lowered as runs record
    their peak; a job that runs out of GPU memory lowers it and is retried once (its failed row is written
    first, and the retry's row replaces it)."""
    from .executors import WorkerDied

    pending, running, started, submitting = list(jobs), {}, {}, None
    failed_finds: dict[tuple, str] = {}  # by Job.key: (combination, depth)
    combos = cfg.combinations()
    try:
        with _Interrupts() as interrupts, starting.result() as ex:
            while pending or running:
                interrupts.check()
                while pending and ex.free_slots() and (packing is None or len(running) < packing.limit):
                    job = next((j for j in pending if j.kind == "find" or j.key in lrs or j.key in failed_finds
                                or combos[j.combo].lr != "find"), None)
                    if job is None:  # every waiting run needs an lr that is being found
                        break
                    pending.remove(job)
                    combo = combos[job.combo]
                    if job.kind == "run" and job.key in failed_finds:
                        result = failed_result(combo, job, None, failed_finds[job.key], engine.threads)
                        _record(out, cfg, result, interrupts)
                        progress.end(job.index, result.row, 0.0)
                        if trackers:
                            trackers.log(result)
                        continue
                    lr = combo.lr if combo.lr != "find" else lrs.get(job.key)
                    t0, inline, submitting = time.monotonic(), engine.kind == "inline", job
                    if inline:  # the job runs inside submit: announce it first
                        _announce(job, "", progress, say)
                    fut = ex.submit(run_job if packing is None else run_packed, combo, job, lr, out, tuple(cbs))
                    submitting = None
                    if not inline:
                        _announce(job, f" on worker {fut.slot + 1}", progress, say)
                    running[fut], started[fut] = job, t0
                    if fut.done():  # it ran in this process (inline): record it before starting another
                        break
                if not running:
                    continue
                done, _ = cf.wait(list(running), timeout=1.0, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    job, t0 = running.pop(fut), started.pop(fut)
                    combo = combos[job.combo]
                    try:
                        value = fut.result()
                    except WorkerDied as e:
                        value = e
                    except CnnDepthError:
                        raise  # the same for every run (say, the dataset is not readable there): stop the sweep
                    except Exception as e:  # a job's own failure; train_run records its errors itself
                        value = e
                    if job.kind == "find":
                        if (packing is not None and isinstance(value, BaseException)
                                and is_out_of_memory(f"{type(value).__name__}: {value}")):
                            note = _out_of_memory(packing, ("find", job.depth), len(running))
                            say(f"lr_find depth={job.depth}: {note}")
                            if note.endswith("retrying it once"):  # a failed find is not written: nothing to replace
                                pending.insert(0, job)
                                continue
                        if isinstance(value, BaseException):
                            failed_finds[job.key] = f"lr_find failed: {type(value).__name__}: {value}"
                            say(f"lr_find depth={job.depth}: failed ({type(value).__name__}: {value})")
                        else:
                            lrs[job.key] = value
                            say(f"lr_find depth={job.depth}: lr={value:.3g}")
                        continue
                    if isinstance(value, BaseException):
                        value = failed_result(combo, job, combo.lr if combo.lr != "find" else lrs.get(job.key),
                                              f"{type(value).__name__}: {value}", engine.threads)
                    if packing is not None and _packed_result(packing, job, value, combo, len(running), say):
                        _record(out, cfg, value, interrupts)  # on disk until the retry's row replaces it
                        pending.insert(0, job)
                        continue
                    _record(out, cfg, value, interrupts)
                    progress.end(job.index, value.row, time.monotonic() - t0)
                    if trackers:  # --track: the row is on disk; the driver alone talks to the trackers
                        trackers.log(value)
    except KeyboardInterrupt as e:
        cut = sorted((j for j in [*running.values(), submitting] if j is not None and j.kind == "run"),
                     key=lambda j: progress.number(j.index))
        where = (f"during run{'s' if len(cut) > 1 else ''} " + ", ".join(f"{progress.number(j.index)}/{progress.n} "
                 f"({run_id(combos[j.combo].arch, j.depth, j.seed, j.tag)})" for j in cut)) if cut else "between runs"
        raise _interrupted(out, e, f" {where}") from e


# ---------------------------------------------------------------------------------------------------------
# --seeds auto: seeds until the answer is clear, in rounds (the rule: cnn_depth.sequential)


class Rounds:
    """The rounds of a ``--seeds auto`` sweep. Each round's seeds are
    :func:`cnn_depth.sequential.next_round`'s answer on the folder's rows as recorded (an ``ok`` row is its
    accuracy; a row not ``ok`` that this call ran counts as run, with no accuracy; one from an earlier call
    is run again if the rule asks for its seed), so the rounds are a function of results.csv: a rerun goes
    on where the rows leave off, adds nothing once every comparison is resolved or at ``max_seeds``, and
    continues with a higher ``--max-seeds``. Each round's runs go through :func:`_drive`, the path of a
    fixed sweep, on one executor kept open across rounds: rows are written as runs end, and Ctrl-C keeps
    them.

    The rule's cells: the depths, or in a grid each (combination, depth), named ``residual,lr=0.001:20``
    (``SweepConfig.cell_names``); in a grid each combination's depths are compared with its own top (Holm
    within the combination), and a round runs the next seed of every cell whose comparison is unresolved."""

    def __init__(self, cfg: SweepConfig, done: pd.DataFrame, finished: set, varying: Sequence[str], out: Path):
        from .sequential import cell_name

        self.cfg, self.plan, self.finished = cfg, cfg.plan(), set(finished)
        self.combos, names = cfg.combinations(), cfg.cell_names()
        self.grid = bool(names)
        # (combination, depth) <-> the rule's cell: the depth alone without a grid, else (name, depth)
        self.key = {(i, d): (names[i], d) if names else d for i in range(len(self.combos)) for d in cfg.depths}
        self.where = {k: ic for ic, k in self.key.items()}
        self.name = cell_name
        self.tags = [c.run_tag(varying) for c in self.combos]  # each combination's run id part
        recorded = [int(s) for s in done["seed"]]
        self.rid = {run_id(c.arch, d, s, self.tags[i]): (self.key[(i, d)], s) for i, c in enumerate(self.combos)
                    for d in cfg.depths for s in dict.fromkeys([*self.plan.order, *recorded])}
        self.tried: set = set()  # run_ids this call ran, any status
        self.rounds, self.counter, self.last = 0, 0, None
        self.redo = [self.rid[rid] for rid, st in zip(done["run_id"], done["status"])
                     if st == "ok" and rid not in self.finished and rid in self.rid]  # --save-models
        self._read(done)
        most = max(self.results, key=lambda k: len(self.results[k]))
        if len(self.results[most]) > self.plan.max_seeds:  # its boundaries are planned up to max_seeds
            raise CnnDepthError(f"--max-seeds {self.plan.max_seeds} is below the {len(self.results[most])} seeds "
                                f"{self._cell(most)} already has in {out}; give --max-seeds "
                                f"{len(self.results[most])} or more (the rule's boundaries are planned from "
                                f"--min-seeds to --max-seeds)")

    def _read(self, done: pd.DataFrame) -> None:
        self.results = {k: {} for k in self.where}
        for rid, st, acc in zip(done["run_id"], done["status"], done["accuracy"]):
            if rid in self.rid and (st == "ok" or rid in self.tried):
                key, seed = self.rid[rid]
                self.results[key][seed] = float(acc) if st == "ok" else float("nan")

    def _cell(self, key) -> str:
        """A cell in the progress lines: ``depth 4``, or in a grid ``residual:20``."""
        return self.name(key) if self.grid else f"depth {key}"

    def ran(self) -> int:
        """Runs of this sweep's cells recorded so far (as the rule counts them)."""
        return sum(len(r) for r in self.results.values())

    def config(self) -> dict:
        """sweep.json's config: ``seeds`` lists the seeds the rule may run, in order (the rows say which ran)."""
        return dict(seeds=list(self.plan.order))

    def invocation(self) -> dict:
        from .sequential import plan_record

        return dict(plan=plan_record(self.plan))

    def seeds_so_far(self) -> str:
        """How many seeds each cell has: ``seeds per depth so far 1: 3, 2: 5``; in a grid per combination, or
        one number where every cell has the same."""
        if not self.grid:
            return "seeds per depth so far " + ", ".join(f"{d}: {len(r)}" for d, r in self.results.items())
        counts = {len(r) for r in self.results.values()}
        if len(counts) == 1:
            return f"seeds so far {counts.pop()} in each of the {len(self.results)} cells (combination:depth)"
        by_combo: dict = {}
        for (name, d), r in self.results.items():
            by_combo.setdefault(name, []).append(f"{d}: {len(r)}")
        return "seeds so far per combination:depth " + "; ".join(f"{n} {', '.join(v)}" for n, v in by_combo.items())

    def headline(self, todo: int) -> str:
        """The ``sweep:`` line's start: the rule, the seeds each cell has, what this round runs."""
        from .sequential import describe

        now = (f"round 1: {todo} run{'s' if todo != 1 else ''}" if todo else
               "nothing to add (every comparison separated, equivalent or at --max-seeds)")
        return f"seeds auto ({describe(self.plan)}); {self.seeds_so_far()}; {now}"

    def next_jobs(self, lrs: dict) -> list[Job]:
        """The next round's jobs: each cell's next seed where the rule asks for one (its lr_find first with
        ``--lr find``); the first seeds all at once; in a pair the rule stopped at ``max_seeds`` with fewer
        shared seeds (a round cut short), the other side's seeds the lagging one lacks; in the first round
        also ``--save-models`` runs whose model file is missing."""
        from .sequential import MAX_SEEDS, next_round

        self.last = next_round(self.results, self.plan, (lambda k: k[0]) if self.grid else None, self.name)
        self.rounds += 1
        order = list(self.where)
        runs = sorted(self.last.next_seeds.items(), key=lambda r: order.index(r[0]))
        if runs and not self.last.comparisons:  # the first seeds, which the rule gives one a round: all at once
            runs = [(k, s) for k, r in self.results.items()
                    for s in [s for s in self.plan.order if s not in r][:max(0, self.plan.min_seeds - len(r))]]
        for x in self.last.comparisons:  # the rule calls a pair "max seeds" once one side is at the maximum;
            if x.status == MAX_SEEDS and x.n < self.plan.max_seeds:  # the other side (a round cut short) catches up
                for lag, lead in ((x.a, x.b), (x.b, x.a)):
                    have = self.results[lag]
                    missing = [s for s in self.plan.order if s in self.results[lead] and s not in have]
                    runs += [(lag, s) for s in missing[:self.plan.max_seeds - len(have)] if (lag, s) not in runs]
        runs += [r for r in self.redo if r not in runs] if self.rounds == 1 else []
        jobs, finding = [], set()
        for key, seed in runs:
            combo, depth = self.where[key]
            c, tag = self.combos[combo], self.tags[combo]
            if c.lr == "find" and (combo, depth) not in lrs and (combo, depth) not in finding:
                jobs.append(Job("find", depth, self.plan.order[0], combo=combo, tag=tag))
                finding.add((combo, depth))
            self.counter += 1
            jobs.append(Job("run", depth, seed, self.counter, combo, tag))
        return jobs

    def drive(self, engine: Engine, starting: cf.Future, jobs: list[Job], lrs: dict, out: Path, cbs,
              progress: "Progress", say: Callable[[str], None], packing: Optional[Packing],
              trackers: Optional[Trackers], seconds: Optional[dict]) -> None:
        """Run round after round until the rule stops (or Ctrl-C: the rows recorded stay)."""
        cfg = self.cfg
        per_cell = {j.key: s for j, s in (seconds or {}).items() if j.kind == "run" and s}
        try:
            with _Interrupts(), starting.result() as ex:  # one executor, shut down after the last round
                kept = cf.Future()
                kept.set_result(nullcontext(ex))  # _drive's `with` leaves it open between rounds
                while jobs:
                    if self.rounds > 1:
                        self._say_round(jobs, say)
                    _drive(cfg, engine, kept, jobs, lrs, out, cbs, progress, say, packing, trackers)
                    self.tried |= {run_id(self.combos[j.combo].arch, j.depth, j.seed, j.tag) for j in jobs
                                   if j.kind == "run"}
                    self._read(read_results(out))
                    jobs = self.next_jobs(lrs)
                    added = sum(j.kind == "run" for j in jobs)
                    progress.n, progress.todo = progress.n + added, progress.todo + added
                    progress.names.update(_names(cfg, jobs))
                    if engine.kind != "inline" and jobs:
                        jobs = longest_first(jobs, lambda j: per_cell.get(j.key, 0.0) if len(per_cell) ==
                                             len(self.where) else float(j.depth))
        except SweepInterrupted:
            raise
        except KeyboardInterrupt as e:  # between two rounds
            raise _interrupted(out, e, f" between rounds {self.rounds - 1} and {self.rounds}") from e
        if self.rounds > 1:
            say(f"rounds: done after {self.rounds - 1} round{'s' if self.rounds > 2 else ''}: "
                + "; ".join(f"{self._cell(k)} {len(r)} seeds" for k, r in self.results.items()))

    def _say_round(self, jobs: list[Job], say: Callable[[str], None]) -> None:
        runs = [j for j in jobs if j.kind == "run"]
        going = [x for x in self.last.comparisons if x.status == "continue"]
        say(f"round {self.rounds}: {len(runs)} run{'s' if len(runs) != 1 else ''} ("
            + ", ".join(f"{self._cell(self.key[j.key])} seed {j.seed}" for j in runs) + "): "
            + ("; ".join(f"{self.name(x.a)} vs {self.name(x.b)}: {x.reason}" for x in going)
               or "the seeds a round cut short"))


def _out_of_memory(packing: Packing, key, others: int) -> str:
    """A job ran out of GPU memory beside ``others`` runs: lower the packing, and say whether it is retried."""
    retry = packing.retry(key, others)
    before, now = packing.out_of_memory(others)
    at = f"CUDA out of memory with {others + 1} run{'s' if others else ''} at once"
    lowered = f"packing lowered from {before} to {now} per GPU" if now < before else f"packing {now} per GPU"
    if retry:
        return f"{at}; {lowered}; retrying it once"
    if key in packing.retried:
        return f"{at} again, after one retry; {lowered}"
    return f"{at}, alone on its GPU: it does not fit; a smaller --bs needs less"


def _packed_result(packing: Packing, job: Job, result: RunResult, cfg: SweepConfig, others: int,
                   say: Callable[[str], None]) -> bool:
    """What a run's row tells the packing: a CUDA out-of-memory failure lowers it (the error says so), a
    recorded peak re-decides it (auto). True when the run is to be retried."""
    row, rid = result.row, run_id(cfg.arch, job.depth, job.seed, job.tag)
    if row["status"] == "failed" and is_out_of_memory(row["error"]):
        note = _out_of_memory(packing, rid, others)
        row["error"] = f"{row['error']} [{note}]"
        say(f"{rid}: {note}")
        return note.endswith("retrying it once")
    if row["status"] == "failed" and rid in packing.retried:
        row["error"] = f"{row['error']} [a retry after CUDA out of memory]"
    line = packing.measured(job.depth, row.get("peak_memory_mb"))
    if line:
        say(line)
    return False


def _announce(job: Job, where: str, progress: "Progress", say: Callable[[str], None]) -> None:
    if job.kind == "find":
        say(f"lr_find depth={job.depth} (seed {job.seed}; its valley is this depth's lr for every seed){where}")
    else:
        progress.start(job.index, job.depth, job.seed, where)


def _record(out: Path, cfg: SweepConfig, result: RunResult, interrupts: "_Interrupts") -> None:
    with interrupts.critical():
        record_run(out, cfg, result)


def record_run(out: Path, cfg: SweepConfig, result: RunResult) -> None:
    """Write one finished run: its model (with ``save_models``) first, then its history and activation rows,
    then its results.csv row last, so a row on disk means everything of that run is there.

    An interrupt between the model and the row leaves a model without a row, which the rerun retrains and
    overwrites.
    """
    row = result.row
    if result.checkpoint is not None:
        write_checkpoint(Path(out) / MODELS_DIR / f"{row['run_id']}.pt", result.checkpoint)
    row["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rid = row["run_id"]
    write_rows(out / "history.csv", HISTORY_COLUMNS, result.history, replace=[rid])
    write_rows(out / "activations.csv", ACTIVATION_CSV_COLUMNS, result.activations, replace=[rid])
    write_rows(out / "results.csv", RESULT_COLUMNS, [row])


UNITS = {"series": "series", "volume": "vol"}  # the training rate of a done line: 846 img/s, 2400 series/s


class Progress:
    """The sweep's progress lines: one when a run starts and one when it ends, with the sweep's elapsed time
    and an ETA (the mean wall time of the runs finished so far, times the runs left, over the runs at once).

    Runs are numbered in the order they start (``start 1/9`` is the first to start, after the runs an
    earlier call finished: ``start 4/9`` when 3 of 9 were done), whatever order the engine takes them in
    (workers take the longest first); the run's identity is its depth and seed, and results.csv rows are
    keyed by run_id, not by this number. ``ended`` and ``failed`` list the runs this sweep finished."""

    def __init__(self, say: Callable[[str], None], n: int, todo: int, at_once: int = 1, names: Optional[dict] = None):
        self.say, self.n, self.todo, self.at_once = say, n, todo, at_once
        self.names = names or {}  # a grid's run by its place: its combination ("arch=bn lr=0.001")
        self.t0, self.done, self.busy = time.monotonic(), 0, 0.0
        self.numbers: dict[int, int] = {}  # the run's grid index -> its number in start order
        self.ended: list[str] = []  # run_ids this sweep finished, any status
        self.failed: list[tuple[str, str]] = []  # (run_id, error) of those that failed

    def number(self, i: int) -> int:
        """The progress number of the run with grid index ``i``: given when it starts."""
        if i not in self.numbers:
            self.numbers[i] = self.n - self.todo + len(self.numbers) + 1
        return self.numbers[i]

    @staticmethod
    def clock(seconds: float) -> str:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"

    def start(self, i: int, depth: int, seed: int, where: str = "") -> None:
        name = f" {self.names[i]}" if i in self.names else ""
        self.say(f"start {self.number(i)}/{self.n}  depth={depth} seed={seed}{name}{where}")

    def end(self, i: int, row: dict, seconds: float) -> None:
        """``seconds``: the run's wall time, lr_find and measuring included."""
        self.done += 1
        self.busy += seconds
        elapsed = time.monotonic() - self.t0
        left = self.todo - self.done
        eta = f", ETA {self.clock(self.busy / self.done * left / self.at_once)}" if left else ""
        head = f"done  {self.number(i)}/{self.n}  depth={row['depth']} seed={row['seed']}" + (
            f" {self.names[i]}" if i in self.names else "")
        self.ended.append(row["run_id"])
        if row["status"] == "failed":
            self.failed.append((row["run_id"], str(row["error"])))
            text = f"{head}  failed: {row['error']}"
        else:
            text = (f"{head}  lr={float(row['lr']):.3g}  acc={float(row['accuracy']):.4f}  "
                    f"valid_loss={float(row['valid_loss']):.4f}  {float(row['train_seconds']):.1f} s "
                    f"({float(row['images_per_second']):.0f} {UNITS.get(row.get('kind'), 'img')}/s)  "
                    + (f"diverged: {row['error']}" if row["status"] == "diverged" else "ok"))
        self.say(f"{text}  [elapsed {self.clock(elapsed)}{eta}]")
