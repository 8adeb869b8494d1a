"""Where people look at runs: TensorBoard, MLflow and Weights & Biases from any sweep (``--track``), offline by
default.

The driver alone talks to the trackers, as it alone writes the files: :func:`~cnn_depth.sweep.run_sweep` checks
them before any run (importable, reachable, writable: one line naming the fix), opens them once the runs are
planned, hands each run to :meth:`Trackers.log` right after its row is on disk (whichever engine trained it),
closes them in a ``finally`` (nothing is left "running") and logs the reports after they are written. No worker
ever talks to a tracker.

What each tracker gets, per run: every setting as a parameter, under the name of its results.csv column
(:data:`PARAM_COLUMNS`); the per-epoch train/valid loss, accuracy and seconds of history.csv as ``epoch/...``
series (step = epoch); the final row's metrics under their column names (:data:`METRIC_COLUMNS`: accuracy,
losses, params, MACs, times, peak memory); its status (a failed run is marked failed); the model file with
``save_models``. Per sweep: an MLflow parent run, a W&B group, a TensorBoard log dir with the HParams plugin's
table; the figures and summary.csv once the reports are written.

Nothing is logged twice: a run is one (run_id, finished) of results.csv. MLflow is asked which children its
parent already has (tags); TensorBoard and W&B keep what they logged in ``<out>/tracked.json``. A run that is
in results.csv but not in a tracker (logging failed, or ``--track`` was added on a resume) is logged when the
sweep next opens that tracker. A tracker that fails mid-sweep says so in one line and stops logging for this
sweep; the runs go on and stay in results.csv.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from .config import TRACKERS
from .errors import CnnDepthError
from .records import HISTORY_COLUMNS, RUN_FIELDS, SETTING_COLUMNS, model_path, read_rows, write_json

# A run's parameters: every setting of its results.csv row (the lr used too), under the column's name.
PARAM_COLUMNS = [*RUN_FIELDS, *[c for c in SETTING_COLUMNS if c not in RUN_FIELDS], "lr"]
# A run's final metrics: the numbers of its results.csv row, under the column's name.
METRIC_COLUMNS = ["accuracy", "error_rate", "valid_loss", "train_loss", "params", "macs", "train_seconds",
                  "valid_seconds", "images_per_second", "peak_memory_mb", "train_images", "valid_images",
                  "correct", "classes", "epochs_done"]
# history.csv's per-epoch numbers, logged as epoch/<name> with step = epoch.
EPOCH_COLUMNS = [c for c in HISTORY_COLUMNS if c not in (*RUN_FIELDS, "epochs", "epoch")]
EXTRAS = {name: f'pip install "cnn-depth[{name}]"' for name in TRACKERS}
RECORD = "tracked.json"  # under the sweep folder: what TensorBoard and W&B have been given
FIGURES = ("accuracy_vs_depth.png", "curves.png", "activations.png")
CHECK_SECONDS = 5.0  # a tracking server that does not answer within this fails the sweep before any run


@dataclass
class TrackedRun:
    """One run as the trackers get it: its results.csv row and history.csv rows as text (exactly as the files
    hold them) and its model file, if kept."""

    row: dict
    history: list
    model: Optional[Path] = None

    @property
    def run_id(self) -> str:
        return self.row["run_id"]

    @property
    def key(self) -> str:
        """Which attempt of the run this is: a rerun of a failed run is a new row with a new ``finished``."""
        return self.row.get("finished") or ""

    @property
    def status(self) -> str:
        return self.row.get("status") or "failed"

    def params(self) -> dict:
        return {c: self.row.get(c, "") for c in PARAM_COLUMNS}

    def metrics(self) -> dict:
        return {c: v for c in METRIC_COLUMNS if (v := _number(self.row.get(c))) is not None}

    def epochs(self) -> list[tuple[int, dict]]:
        """``[(epoch, {epoch/train_loss: ..., ...}), ...]``"""
        out = []
        for h in self.history:
            epoch = _number(h.get("epoch"))
            if epoch is not None:
                out.append((int(epoch), {f"epoch/{c}": v for c in EPOCH_COLUMNS
                                         if (v := _number(h.get(c))) is not None}))
        return sorted(out, key=lambda e: e[0])


def _text(value) -> str:
    """A value as results.csv holds it (the csv module's str(); None empty)."""
    return "" if value is None else str(value)


def _number(value) -> Optional[float]:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _typed(text: str):
    """A parameter's text as a number or a boolean where it is one (for TensorBoard's and W&B's tables)."""
    if text in ("True", "False"):
        return text == "True"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def parse_tracker_names(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise CnnDepthError(f"unknown tracker {unknown[0]!r}; --track takes {', '.join(TRACKERS)}")
    return list(names)


# ---------------------------------------------------------------------------------------------------------
# The trackers


class Tracker:
    """One place runs are logged to. ``check`` (before any run: importable, reachable, writable; writes
    nothing), ``open`` (the sweep's parent run / group / log dir), ``logged`` (the (run_id, finished) already
    there), ``log_run``, ``log_reports``, ``close`` (with the sweep's status: FINISHED, FAILED or KILLED)."""

    name = ""

    def __init__(self, out: Path, config: dict, say: Callable[[str], None]):
        self.out, self.config, self.say = Path(out), config, say
        self.sweep = self.out.name  # the parent run's / group's name
        self.sweep_id = hashlib.sha1(str(self.out.resolve()).encode()).hexdigest()[:16]

    def check(self) -> None:
        raise NotImplementedError

    def where(self) -> str:
        """One line: where the runs go and how to look at them."""
        raise NotImplementedError

    def open(self) -> None:
        pass

    def logged(self) -> set[tuple[str, str]]:
        return set()

    def log_run(self, run: TrackedRun) -> None:
        raise NotImplementedError

    def log_reports(self, out: Path) -> None:
        pass

    def close(self, status: str) -> None:
        pass

    def _import(self, module: str):
        import importlib

        try:
            return importlib.import_module(module)
        except ImportError as e:
            raise CnnDepthError(f"--track {self.name} needs {self.name}, which is not installed ({e}); "
                                f"{EXTRAS[self.name]} (or leave out --track {self.name})") from e

    def _writable(self, folder: Path) -> None:
        """``folder`` can be made and written to; whatever this makes to find out is removed again."""
        made = None
        probe = folder / f".write-test-{os.getpid()}"
        try:
            path = folder
            while not path.exists():
                path, made = path.parent, path
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise CnnDepthError(f"--track {self.name} cannot write to {folder} ({e.strerror or e}); make it a "
                                f"folder you can write to, or leave out --track {self.name}") from e
        finally:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)


class _Recorded(Tracker):
    """A tracker that cannot be asked what it holds (TensorBoard's files, W&B offline): what it was given is
    kept in ``<out>/tracked.json`` under ``destination``."""

    destination = ""

    def _record(self) -> dict:
        path = self.out / RECORD
        try:
            import json

            data = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            data = {}  # a damaged record: the runs are logged again rather than lost
        return data if isinstance(data, dict) else {}

    def logged(self) -> set[tuple[str, str]]:
        runs = self._record().get(self.name, {}).get(self.destination, {})
        return {(rid, key) for rid, keys in runs.items() if isinstance(keys, list) for key in keys}

    def _remember(self, run: TrackedRun) -> None:
        data = self._record()
        runs = data.setdefault(self.name, {}).setdefault(self.destination, {})
        runs.setdefault(run.run_id, []).append(run.key)
        write_json(self.out / RECORD, data)


class TensorBoard(_Recorded):
    """``<out>/tensorboard/<run_id>/``: one TensorBoard run per run (``<run_id>-attempt2`` for a rerun of a
    failed one): ``epoch/*`` scalars per epoch, the final metrics and an HParams session (the settings and
    status as hyperparameters, the final metrics as its metrics), so the HParams tab compares depths side by
    side; ``<out>/tensorboard/sweep/``: the figures as images and summary.csv as text."""

    name = "tensorboard"

    def __init__(self, *args):
        super().__init__(*args)
        self.logdir = self.out / "tensorboard"
        self.destination = "tensorboard"

    def check(self) -> None:
        self._import("tensorboard")
        self._import("torch.utils.tensorboard")
        self._writable(self.logdir)

    def where(self) -> str:
        return f"tensorboard: {self.logdir} (look: tensorboard --logdir {self.logdir})"

    def log_run(self, run: TrackedRun) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        attempts = sum(rid == run.run_id for rid, _ in self.logged())
        folder = self.logdir / (run.run_id if not attempts else f"{run.run_id}-attempt{attempts + 1}")
        shutil.rmtree(folder, ignore_errors=True)  # left by an attempt cut short: not in the record
        writer = SummaryWriter(str(folder))
        try:
            for epoch, values in run.epochs():
                for tag, value in values.items():
                    writer.add_scalar(tag, value, epoch)
            metrics = run.metrics()
            step = int(metrics.get("epochs_done", 0))
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, step)
            params = {k: _typed(v) for k, v in run.params().items()}
            params["status"] = run.status
            for summary in hparams(params, {k: metrics.get(k, float("nan")) for k in METRIC_COLUMNS}):
                writer.file_writer.add_summary(summary)
            if run.row.get("error"):
                writer.add_text("error", str(run.row["error"]))
            if run.model is not None:
                writer.add_text("model", str(run.model))
            writer.flush()
        except BaseException:
            writer.close()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        writer.close()
        self._remember(run)

    def log_reports(self, out: Path) -> None:
        import numpy as np
        from PIL import Image
        from torch.utils.tensorboard import SummaryWriter

        _, rows = read_rows(out / "results.csv")
        writer = SummaryWriter(str(self.logdir / "sweep"))
        try:
            for name in FIGURES:
                if (out / name).is_file():
                    with Image.open(out / name) as im:
                        writer.add_image(name, np.asarray(im.convert("RGB")), len(rows), dataformats="HWC")
            if (out / "summary.csv").is_file():
                writer.add_text("summary.csv", _markdown_table(out / "summary.csv"), len(rows))
        finally:
            writer.close()


class MLflow(Tracker):
    """One parent run per sweep (named after its folder, tagged ``cnn_depth.sweep_id``) in the experiment
    ``cnn-depth`` (or ``$MLFLOW_EXPERIMENT_NAME``), with the config as parameters and the figures and
    summary.csv as artifacts; one child run per run (named by its run_id): parameters, ``epoch/*`` metrics by
    step, the final metrics, tags ``status``/``error``/``finished``, the model under ``model/``; status
    FINISHED, or FAILED for a failed run. Where: ``$MLFLOW_TRACKING_URI``, else a local store
    ``sqlite:///<out>/mlflow/mlflow.db`` with artifacts in ``<out>/mlflow/artifacts``."""

    name = "mlflow"
    # An MLflow server that stops answering mid-sweep costs seconds, not MLflow's default minutes of retries.
    HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}

    def __init__(self, *args):
        super().__init__(*args)
        self.folder = self.out / "mlflow"
        self.remote = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        self.uri = self.remote or f"sqlite:///{self.folder.resolve() / 'mlflow.db'}"
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or "cnn-depth"
        self.client, self.parent, self.experiment_id = None, None, None

    def check(self) -> None:
        self._import("mlflow")
        scheme = urllib.parse.urlparse(self.uri).scheme
        if not self.remote:
            for module in ("sqlalchemy", "alembic"):  # the local store is SQLite: mlflow-skinny lacks these
                try:
                    __import__(module)
                except ImportError as e:
                    raise CnnDepthError(f"--track mlflow logs to a local SQLite store, which needs {module} "
                                        f"({e}); pip install mlflow, or set MLFLOW_TRACKING_URI to a tracking "
                                        f"server") from e
            self._writable(self.folder)
        elif scheme in ("http", "https"):
            url = self.uri.rstrip("/") + "/health"
            try:
                with urllib.request.urlopen(url, timeout=CHECK_SECONDS) as r:
                    r.read(100)
            except urllib.error.HTTPError as e:
                if e.code >= 500 or e.code == 404:  # 404: a server without /health (a proxy); it answered
                    if e.code >= 500:
                        raise CnnDepthError(f"the MLflow server at MLFLOW_TRACKING_URI={self.uri} answered "
                                            f"{e.code} {e.reason}; fix the server, or unset MLFLOW_TRACKING_URI to "
                                            f"log to {self.folder}") from e
            except (OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise CnnDepthError(f"no MLflow server answers at MLFLOW_TRACKING_URI={self.uri} within "
                                    f"{CHECK_SECONDS:g} s ({reason}); start it, fix the URI, or unset "
                                    f"MLFLOW_TRACKING_URI to log to {self.folder}") from e
        elif scheme in ("file", "sqlite", ""):
            path = urllib.parse.urlparse(self.uri).path
            if path:
                folder = Path(path) if scheme in ("file", "") else Path(path).parent
                self._writable(folder)

    def where(self) -> str:
        if self.remote:
            return f"mlflow: {self.uri}, experiment {self.experiment}, parent run {self.sweep}"
        return f"mlflow: {self.folder} (look: mlflow ui --backend-store-uri {self.uri})"

    @contextlib.contextmanager
    def _calls(self):
        """MLflow's HTTP retries short (where the user has not set them) and its INFO lines quiet."""
        import logging

        old = {k: os.environ.get(k) for k in self.HTTP}
        for k, v in self.HTTP.items():
            os.environ.setdefault(k, v)
        loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(max(lg.level, logging.WARNING))
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)

    def open(self) -> None:
        from mlflow import MlflowClient

        with self._calls():
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                art = None if self.remote else (self.folder / "artifacts").resolve().as_uri()
                self.experiment_id = self.client.create_experiment(self.experiment, artifact_location=art)
            else:
                self.experiment_id = exp.experiment_id
            found = self.client.search_runs(
                [self.experiment_id], max_results=1,
                filter_string=f"tags.`cnn_depth.sweep_id` = '{self.sweep_id}' and tags.`cnn_depth.role` = 'sweep'")
            if found:
                self.parent = found[0].info.run_id
                self.client.update_run(self.parent, status="RUNNING")
            else:
                self.parent = self.client.create_run(
                    self.experiment_id, run_name=self.sweep,
                    tags={"cnn_depth.sweep_id": self.sweep_id, "cnn_depth.role": "sweep",
                          "cnn_depth.sweep_dir": str(self.out.resolve())}).info.run_id
            self._log_params(self.parent, {k: _text(v) for k, v in self.config.items()})

    def _log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        have = self.client.get_run(run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]  # params cannot change
        for i in range(0, len(new), 100):
            self.client.log_batch(run_id, params=new[i:i + 100])

    def logged(self) -> set[tuple[str, str]]:
        out, token = set(), None
        with self._calls():
            while True:
                page = self.client.search_runs([self.experiment_id], max_results=1000, page_token=token,
                                               filter_string=f"tags.`mlflow.parentRunId` = '{self.parent}'")
                for r in page:
                    out.add((r.data.tags.get("run_id", ""), r.data.tags.get("finished", "")))
                token = page.token
                if not token:
                    return out

    def log_run(self, run: TrackedRun) -> None:
        import time

        from mlflow.entities import Metric

        with self._calls():
            child = self.client.create_run(
                self.experiment_id, run_name=run.run_id,
                tags={"mlflow.parentRunId": self.parent, "cnn_depth.sweep_id": self.sweep_id, "run_id": run.run_id,
                      "finished": run.key, "status": run.status,
                      **({"error": str(run.row["error"])[:5000]} if run.row.get("error") else {})}).info.run_id
            try:
                self._log_params(child, run.params())
                now = int(time.time() * 1000)
                metrics = [Metric(k, v, now, e) for e, values in run.epochs() for k, v in values.items()]
                metrics += [Metric(k, v, now, 0) for k, v in run.metrics().items()]
                for i in range(0, len(metrics), 1000):
                    self.client.log_batch(child, metrics=metrics[i:i + 1000])
                if run.model is not None:
                    self.client.log_artifact(child, str(run.model), "model")
                self.client.set_terminated(child, "FAILED" if run.status == "failed" else "FINISHED")
            except BaseException:
                with contextlib.suppress(Exception):  # half logged: gone, so that the next sweep logs it once
                    self.client.set_terminated(child, "KILLED")
                    self.client.delete_run(child)
                raise

    def log_reports(self, out: Path) -> None:
        with self._calls():
            for name in (*FIGURES, "summary.csv", "results.csv"):
                if (out / name).is_file():
                    self.client.log_artifact(self.parent, str(out / name))

    def close(self, status: str) -> None:
        if self.client is not None and self.parent is not None:
            with self._calls():
                self.client.set_terminated(self.parent, status)


class WandB(_Recorded):
    """A W&B run per run (named by its run_id, ``job_type`` run) in the group named after the sweep's folder,
    project ``cnn-depth`` (or ``$WANDB_PROJECT``): the settings as its config, ``epoch/*`` by step (= epoch),
    the final metrics as its summary, tag ``ok``/``diverged``/``failed`` (a failed run exits 1), the model as
    an artifact; a ``reports`` run in the same group with summary.csv (a table and a file) and the figures.
    Offline unless ``WANDB_MODE=online``: the runs are in ``<out>/wandb/offline-run-*`` (``wandb sync``)."""

    name = "wandb"

    def __init__(self, *args):
        super().__init__(*args)
        mode = os.environ.get("WANDB_MODE", "").strip().lower()
        self.mode = {"run": "online", "dryrun": "offline"}.get(mode, mode)
        if self.mode not in ("online", "offline", "disabled"):
            self.mode = "offline"
        self.project = os.environ.get("WANDB_PROJECT", "").strip() or "cnn-depth"
        self.entity = os.environ.get("WANDB_ENTITY", "").strip() or None
        self.destination = f"{self.entity or ''}/{self.project}"
        self.folder = self.out / "wandb"

    def check(self) -> None:
        self._import("wandb")
        self._writable(self.folder)
        if self.mode == "online" and not os.environ.get("WANDB_API_KEY") and not self._netrc_key():
            raise CnnDepthError("WANDB_MODE=online but W&B has no API key here; run `wandb login` first, or "
                                "unset WANDB_MODE to log offline")

    @staticmethod
    def _netrc_key() -> bool:
        import netrc

        host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
        try:
            return bool(netrc.netrc().authenticators(host or ""))
        except (OSError, netrc.NetrcParseError):
            return False

    def where(self) -> str:
        if self.mode == "offline":
            return f"wandb: offline, {self.folder} (upload: wandb sync {self.folder}/offline-run-*)"
        return f"wandb: {self.mode}, project {self.project}, group {self.sweep}"

    def _init(self, **kw):
        import wandb

        settings = wandb.Settings(console="off", silent=True, save_code=False, disable_git=True,
                                  x_disable_stats=True, x_disable_meta=True)
        return wandb.init(dir=str(self.out), project=self.project, entity=self.entity, group=self.sweep,
                          mode=self.mode, settings=settings, reinit="create_new", **kw)

    def log_run(self, run: TrackedRun) -> None:
        import wandb

        config = {k: _typed(v) for k, v in run.params().items()}
        r = self._init(name=run.run_id, job_type="run", config=config, tags=[run.status])
        code = 1
        try:
            for epoch, values in run.epochs():
                r.log(values, step=epoch)
            r.summary.update({**run.metrics(), "status": run.status, "finished": run.key,
                              **({"error": str(run.row["error"])} if run.row.get("error") else {})})
            if run.model is not None:
                art = wandb.Artifact(_artifact_name(f"{self.sweep}-{run.run_id}"), type="model")
                art.add_file(str(run.model))
                r.log_artifact(art)
            code = 1 if run.status == "failed" else 0
        finally:
            r.finish(exit_code=code)
        self._remember(run)

    def log_reports(self, out: Path) -> None:
        import pandas as pd
        import wandb

        r = self._init(name="reports", job_type="reports", config={k: _text(v) for k, v in self.config.items()})
        try:
            logs = {name: wandb.Image(str(out / name)) for name in FIGURES if (out / name).is_file()}
            if (out / "summary.csv").is_file():
                logs["summary"] = wandb.Table(dataframe=pd.read_csv(out / "summary.csv").astype(str))
            r.log(logs)
            art = wandb.Artifact(_artifact_name(f"{self.sweep}-reports"), type="reports")
            for name in (*FIGURES, "summary.csv", "results.csv"):
                if (out / name).is_file():
                    art.add_file(str(out / name))
            r.log_artifact(art)
        finally:
            r.finish()


def _artifact_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:120]


def _markdown_table(path: Path) -> str:
    header, rows = read_rows(path)
    if not header:
        return ""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r.get(c) or "" for c in header) + " |" for r in rows]
    return "\n".join(lines)


TRACKER_CLASSES = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


# ---------------------------------------------------------------------------------------------------------
# What the driver calls


class Trackers:
    """The trackers of one sweep (``cfg.track``), as the driver uses them:

    - ``check()`` before any run: one line naming the fix (the extra to install, a server that does not
      answer, a folder that cannot be written), nothing written;
    - ``with trackers:`` around the runs: opens them and logs what results.csv has that they lack; closes
      them however the sweep ends (FINISHED, KILLED on an interrupt, FAILED on an error);
    - ``log(result)`` right after a run's row is on disk; ``reports(out)`` after the reports are written.

    A tracker that fails while logging says so in one line and is left out for the rest of the sweep."""

    def __init__(self, cfg, out: Path, say: Callable[[str], None] = print, warn: Optional[Callable[[str], None]] = None):
        self.cfg, self.out, self.say, self.warn = cfg, Path(out), say, warn or say
        names = parse_tracker_names(list(getattr(cfg, "track", None) or []))
        config = {k: v for k, v in cfg.as_dict().items()}
        config["out"] = str(self.out)
        self.trackers = [TRACKER_CLASSES[n](self.out, config, say) for n in names]
        self.active: list[Tracker] = []

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def check(self) -> "Trackers":
        for t in self.trackers:
            t.check()
        return self

    def __enter__(self) -> "Trackers":
        for t in self.trackers:
            try:
                t.open()
            except Exception as e:
                self._dropped(t, "could not start", e)
                continue
            self.active.append(t)
            self.say(f"tracking: {t.where()}")
        self._catch_up()
        return self

    def __exit__(self, kind, value, tb) -> None:
        status = "FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
        for t in self.active:
            try:
                t.close(status)
            except Exception as e:
                self.say(f"tracking: {t.name} could not be closed ({type(e).__name__}: {_short(e)})")

    def _dropped(self, t: Tracker, what: str, e: BaseException) -> None:
        if t in self.active:
            self.active.remove(t)
        self.warn(f"warning: tracking: {t.name} {what} ({type(e).__name__}: {_short(e)}); the runs are in "
                 f"{self.out / 'results.csv'}, and rerunning the same command logs them; no more {t.name} "
                 f"logging in this sweep")

    def _catch_up(self) -> None:
        """Log the rows of results.csv a tracker does not have yet (earlier sweeps', or those it missed)."""
        _, rows = read_rows(self.out / "results.csv")
        if not rows or not self.active:
            return
        _, history = read_rows(self.out / "history.csv")
        for t in list(self.active):
            try:
                have = t.logged()
                missing = [r for r in rows if (r.get("run_id", ""), r.get("finished", "")) not in have]
                for row in missing:
                    t.log_run(self._run(row, [h for h in history if h.get("run_id") == row.get("run_id")]))
            except Exception as e:
                self._dropped(t, "could not log the earlier runs", e)
                continue
            if missing:
                self.say(f"tracking: {t.name}: logged {len(missing)} earlier run(s) of {self.out}")

    def _run(self, row: dict, history: list) -> TrackedRun:
        model = None
        if row.get("status") == "ok":
            path = model_path(self.out, row["arch"], row["depth"], row["seed"])
            model = path if path.is_file() else None
        return TrackedRun(row, history, model)

    def log(self, result) -> None:
        """One run, from its :class:`~cnn_depth.run.RunResult` (after ``record_run`` wrote it)."""
        if not self.active:
            return
        row = {k: _text(v) for k, v in result.row.items()}
        history = [{k: _text(v) for k, v in h.items()} for h in result.history]
        run = self._run(row, history)
        for t in list(self.active):
            try:
                t.log_run(run)
            except Exception as e:
                self._dropped(t, f"could not log {run.run_id}", e)

    def reports(self, out: Path) -> None:
        for t in list(self.active):
            try:
                t.log_reports(Path(out))
            except Exception as e:
                self._dropped(t, "could not log the reports", e)


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:197] + "..."
