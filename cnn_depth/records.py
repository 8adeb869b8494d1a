"""What a sweep records, and how: the columns of its CSV files, the identity of a run, and durable writes.

A sweep folder (``SweepConfig.out``) holds:

- ``sweep.json``: the config (``asdict(SweepConfig)``) and the environment (versions, device, git commit);
- ``results.csv``: one row per run (``RESULT_COLUMNS``), appended, flushed and fsync'd as each run ends;
- ``history.csv``: one row per run and epoch (``HISTORY_COLUMNS``);
- ``activations.csv``: one row per run and conv layer (``ACTIVATION_CSV_COLUMNS``);
- ``models/{run_id}.pt`` with ``save_models``.

Only the process that runs the sweep (the driver) writes these, whichever engine trained the runs. Every
row of every file starts with the run's identity (:func:`run_fields`), so the files join on ``run_id``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pandas as pd

from .errors import CnnDepthError
from .files import PathLike, atomic_open, atomic_write

# The fields that identify a run in every file, in this order.
RUN_FIELDS = ["run_id", "dataset", "arch", "depth", "seed"]
RESULT_COLUMNS = [
    *RUN_FIELDS, "epochs", "lr", "bs", "params",
    "train_images",       # training images processed by fit_one_cycle (all epochs; fewer if it diverged)
    "train_seconds",      # wall time of fit_one_cycle, its per-epoch validation passes included
    "images_per_second",  # train_images / train_seconds
    "valid_seconds",      # wall time of the final validate()
    "train_loss",         # fastai's smoothed training loss at the end of the last epoch (as printed)
    "valid_loss", "accuracy", "error_rate",  # from the final validate(); error_rate = 1 - accuracy
    "epochs_done", "device", "precision", "pipeline", "augment", "status", "error", "finished",
]
HISTORY_COLUMNS = [*RUN_FIELDS, "epochs", "epoch", "train_loss", "valid_loss", "accuracy", "seconds"]
# activation_stats() gives one row per conv layer with these; activations.csv prefixes the run's identity.
ACTIVATION_COLUMNS = ["layer", "stage", "index", "mean", "std", "frac_zero", "shape"]
ACTIVATION_CSV_COLUMNS = [*RUN_FIELDS, *ACTIVATION_COLUMNS]
STATUSES = ("ok", "diverged", "failed")
MODELS_DIR = "models"  # under the sweep folder


def run_id(arch: str, depth: int, seed: int) -> str:
    """The id of one run of a sweep, also the stem of its saved model: ``{arch}-d{depth}-s{seed}``."""
    return f"{arch}-d{depth}-s{seed}"


def run_fields(dataset: str, arch: str, depth: int, seed: int) -> dict:
    """The identity every row of a run starts with (``RUN_FIELDS``)."""
    return dict(run_id=run_id(arch, depth, seed), dataset=dataset, arch=arch, depth=depth, seed=seed)


def model_path(run_dir: PathLike, arch: str, depth: int, seed: int) -> Path:
    """Where a sweep saves the model of one run: ``<run_dir>/models/{run_id}.pt``."""
    return Path(run_dir) / MODELS_DIR / f"{run_id(arch, depth, seed)}.pt"


# ---------------------------------------------------------------------------------------------------------
# CSV rows that survive interrupts


def read_rows(path: PathLike) -> tuple[Optional[list[str]], list[dict]]:
    """Header and rows of a CSV as strings (exactly as written); (None, []) when it does not exist."""
    path = Path(path)
    if not path.exists():
        return None, []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def write_rows(path: PathLike, columns: Sequence[str], rows: list[dict], key: str = "run_id",
               replace: Sequence[str] = ()) -> None:
    """Add ``rows`` to a CSV, dropping old rows whose ``key`` is in ``replace`` or in ``rows``; durable when
    it returns.

    The common case appends (then flush and fsync). A retried run, a changed header or a damaged last line
    rewrites the whole file aside and renames it over the old one (:func:`~cnn_depth.files.atomic_open`), so
    a crash leaves the old or the new file, never half of one.
    """
    path = Path(path)
    header, old = read_rows(path)
    keys = {str(r[key]) for r in rows} | set(replace)
    clean_end = not path.exists() or path.stat().st_size == 0 or path.read_bytes()[-1:] == b"\n"
    if header == list(columns) and clean_end and not any(r.get(key) in keys for r in old):
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, columns, extrasaction="ignore").writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        return
    cols = list(columns) + [c for c in (header or []) if c not in columns]
    keep = [r for r in old if r.get(key) not in keys and None not in r.values()]  # None: a truncated line
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(keep + rows)


def write_json(path: PathLike, data: dict) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def read_results(out: PathLike) -> pd.DataFrame:
    """``results.csv`` of a sweep folder as a DataFrame (empty, with the columns, when there is none yet)."""
    path = Path(out) / "results.csv"
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    df = pd.read_csv(path, keep_default_na=True)
    return df[df["status"].isin(STATUSES)].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------
# sweep.json: the config and the environment of every invocation


def _git(*args: str) -> Optional[str]:
    src = Path(__file__).resolve().parent.parent
    if not (src / "pyproject.toml").exists():  # an installed copy: a git repo around it says nothing about it
        return None
    try:
        r = subprocess.run(["git", *args], cwd=src, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def environment(device: str, precision: str) -> dict:
    """Versions, hardware and the git commit of the code (when it runs from a checkout)."""
    import fastai
    import torch
    import torchvision

    from . import __version__

    commit = _git("rev-parse", "HEAD")
    return dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                fastai=fastai.__version__, cnn_depth=__version__, device=device, precision=precision,
                platform=platform.platform(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                git_commit=commit, git_dirty=bool(_git("status", "--porcelain", "--untracked-files=no"))
                if commit else None)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-12)
    return a == b


@contextmanager
def claim_folder(out: PathLike) -> Iterator[Path]:
    """Hold the sweep folder ``out`` (made if need be) for as long as this lasts; a second sweep on the same
    folder is refused with one line instead of interleaving its rows with ours.

    The lock is an OS file lock (``filelock``) on ``out/.sweep.lock``: it is released when the process ends,
    however it ends, so a killed sweep never leaves the folder locked.
    """
    from filelock import FileLock, Timeout

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnnDepthError(f"cannot write to {out} ({e.strerror or e}); pick a folder you can write to "
                            f"with --out") from e
    if not out.is_dir():
        raise CnnDepthError(f"{out} is not a folder; pick another --out")
    lock, owner = FileLock(out / ".sweep.lock"), out / ".sweep.owner"
    try:
        lock.acquire(timeout=0)
    except Timeout as e:
        who = owner.read_text().strip() if owner.exists() else "another process"
        raise CnnDepthError(f"{out} is in use by another cnn-depth sweep ({who}); wait for it to finish, or use "
                            f"another --out") from e
    except OSError as e:
        raise CnnDepthError(f"cannot lock {out} ({e.strerror or e}); pick a folder you can write to with --out") from e
    try:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        owner.write_text(f"pid {os.getpid()} on {platform.node()}, since {started}\n")
        yield out
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def check_folder(out: Path, config: dict, fields: Sequence[str], save_models: bool = False) -> Path:
    """The sweep folder ``out``, made and writable; an existing one must hold a sweep whose ``fields`` of
    ``config`` (the settings that decide a run's numbers) are the same. With ``save_models``,
    ``out/models`` must be a folder (or not exist yet)."""
    meta = out / "sweep.json"
    if meta.exists():
        try:
            old = json.loads(meta.read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CnnDepthError(f"cannot read {meta} ({type(e).__name__}); use another --out, or delete the "
                                f"folder to start over") from e
        for name in fields:
            new = config[name]
            if name in old and not _same(old[name], new):
                flag = "--data" if name == "dataset" and "/" in str(old[name]) else f"--{name.replace('_', '-')}"
                same = (f"leave out {flag}" if old[name] is None else
                        f"--{'' if old[name] else 'no-'}{name}" if isinstance(old[name], bool) else f"{flag} {old[name]}")
                raise CnnDepthError(f"{out} holds a sweep with {name}={old[name]!r}, not {new!r}; use another "
                                    f"--out (or {same} to resume that sweep)")
    elif (out / "results.csv").exists():
        raise CnnDepthError(f"{out} has a results.csv but no sweep.json, so it cannot be resumed safely; "
                            f"use another --out")
    models = out / MODELS_DIR
    if save_models and models.exists() and not models.is_dir():
        raise CnnDepthError(f"{models} is a file, so models cannot be saved there; move it away, or leave out "
                            f"--save-models")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise CnnDepthError(f"cannot write to {out} ({e.strerror or e}); pick a folder you can write to "
                            f"with --out") from e
    return out


def write_sweep_json(out: Path, config: dict, env: dict, invocation: dict) -> dict:
    """Write (or update) ``sweep.json``: ``config`` with depths and seeds grown to every run in the folder,
    ``env``, and ``invocation`` appended to the list of every command run on this folder."""
    path = out / "sweep.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    config = dict(config)
    for name in ("depths", "seeds"):
        config[name] = list(dict.fromkeys(old.get("config", {}).get(name, []) + list(config[name])))
    data = dict(config=config, environment=env, invocations=old.get("invocations", []) + [invocation])
    write_json(path, data)
    return data
