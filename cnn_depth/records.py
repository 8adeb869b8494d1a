"""What a sweep records, and how: the columns of its CSV files, the identity of a run, and durable writes.

A sweep folder (``SweepConfig.out``) holds:

- ``sweep.json``: the config (``asdict(SweepConfig)``) and the environment (versions, device, git commit);
- ``results.csv``: one row per run (``RESULT_COLUMNS``), appended, flushed and fsync'd as each run ends;
- ``history.csv``: one row per run and epoch (``HISTORY_COLUMNS``);
- ``activations.csv``: one row per run and conv layer (``ACTIVATION_CSV_COLUMNS``);
- ``models/{run_id}.pt`` with ``save_models``.

Only the process that runs the sweep (the driver) writes these, whichever engine trained the runs. Every
row of every file starts with the run's identity (:func:`run_fields`), so the files join on ``run_id``.

A user can edit, cut or copy any of these, so each is read back with a schema: the CSV files by
:func:`read_results` and friends, ``sweep.json`` by :func:`read_sweep_json` (``CONFIG_SCHEMA``); a bad value
is one line naming the file, the field (or line) and the fix. A resume first rewrites the CSV files with one
row per run (and epoch, layer) and without cut lines, saying once what it left out (:func:`tidy_rows`). A
full disk while writing is one line too (:class:`~cnn_depth.files.DiskFull`); what was written stays.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from .config import settings
from .errors import CnnDepthError
from .files import PathLike, atomic_open, atomic_write, is_disk_full, disk_full_error, writing

# The fields that identify a run in every file, in this order.
RUN_FIELDS = ["run_id", "dataset", "arch", "depth", "seed"]
# What a row records of where it ran, besides the settings (config.Setting): their place among the setting
# columns (config.Setting.rank). They can change a result's last digits, so reports group by them too.
RECORDED = {"threads": 7, "device": 8, "precision": 9, "kind": 13}
# results.csv without the settings' columns, which each config.Setting places (``after``): what a run measured.
_MEASURED = [
    *RUN_FIELDS,
    "lr",                 # the peak lr used (lr_find's valley with --lr find)
    "threads",            # torch.get_num_threads() during the run
    "params",             # parameters (trainable or not)
    "macs",               # multiply-accumulates of one image's forward pass (conv and linear layers)
    "train_images",       # training images processed by fit_one_cycle (all epochs; fewer if it diverged)
    "train_seconds",      # wall time of fit_one_cycle, its per-epoch validation passes included
    "images_per_second",  # train_images / train_seconds
    "valid_seconds",      # wall time of the final validate()
    "peak_memory_mb",     # MiB: CUDA, torch's max allocated during the run; CPU, the process's peak RSS during it
    "train_loss",         # fastai's smoothed training loss at the end of the last epoch (as printed)
    "valid_loss",         # from the final validate()
    "classes",            # number of classes (chance accuracy is 1/classes)
    "kind",               # what the data was read as: image, series or volume (empty in older rows: images)
    "valid_images",       # validation images of the final validate()
    "correct",            # of those, predicted right
    "accuracy", "error_rate",  # correct / valid_images and 1 - that
    "epochs_done", "device", "precision",
    "status", "error", "finished",
]
# The settings' columns (config.settings: each field that decides a run's numbers, as it is marked there):
#   source         the dataset as resolved: a registry name or the absolute path of its folder or archive
#   epochs, bs, pipeline, augment
#   lr_setting     the --lr given: "find" or a number
#   max_per_class  images kept per class and split; empty: all
#   compile        torch.compile: off, on, or failed→eager (it could not compile; trained eagerly)
#   pretrained     ImageNet weights at the start (resnet18, resnet50, vgg16); False: from scratch
#   transfer       with pretrained: feature-extraction or fine-tune; empty from scratch
#   dims           arrays read as 1, 2 or 3 spatial dims (--dims); empty: as the data decided (kind says what)
#   pad, fill      series zero-padded to the longest; the value NaN became (empty: NaN refused)
#   split_seed     the seed of the random validation split of one folder of classes (moot with split folders)


def _result_columns() -> list[str]:
    """results.csv's columns: what a run measured, each setting's column after the one it names (``after``;
    a setting that names none goes last before ``status``)."""
    cols = list(_MEASURED)
    todo = [s for s in settings().values() if s.column not in cols]
    while todo:
        placed = [s for s in todo if (s.after or "status") in cols]
        if not placed:
            raise RuntimeError(f"settings placed after no column: {[s.column for s in todo]}")
        for s in placed:
            cols.insert(cols.index(s.after) + 1 if s.after else cols.index("status"), s.column)
            todo.remove(s)
    return cols


RESULT_COLUMNS = _result_columns()
# What decides a run's numbers besides depth and seed (and the identity columns dataset and arch): reports group
# by these (see reports.GROUP), in their rank's order. A row carries every one of them, so rows from different
# sweeps (or the combinations of one grid) can be pooled or told apart from the row alone.
SETTING_COLUMNS = [c for c, _ in sorted([*((s.column, s.rank) for s in settings().values()), *RECORDED.items()],
                                        key=lambda cr: cr[1]) if c not in RUN_FIELDS]
HISTORY_COLUMNS = [*RUN_FIELDS, "epochs", "epoch", "train_loss", "valid_loss", "accuracy", "seconds"]
# activation_stats() gives one row per conv layer with these; activations.csv prefixes the run's identity.
ACTIVATION_COLUMNS = ["layer", "stage", "index", "mean", "std", "frac_zero", "shape"]
ACTIVATION_CSV_COLUMNS = [*RUN_FIELDS, *ACTIVATION_COLUMNS]
STATUSES = ("ok", "diverged", "failed")
MODELS_DIR = "models"  # under the sweep folder


def run_id(arch: str, depth: int, seed: int, tag: str = "") -> str:
    """The id of one run of a sweep, also the stem of its saved model: ``{arch}-d{depth}-s{seed}``, and in a
    grid the values of the other settings that vary there (``tag``: ``-lr0.003-aug``,
    :meth:`~cnn_depth.config.SweepConfig.run_tag`)."""
    return f"{arch}-d{depth}-s{seed}{tag}"


def run_fields(dataset: str, arch: str, depth: int, seed: int, tag: str = "") -> dict:
    """The identity every row of a run starts with (``RUN_FIELDS``)."""
    return dict(run_id=run_id(arch, depth, seed, tag), dataset=dataset, arch=arch, depth=depth, seed=seed)


def model_path(run_dir: PathLike, arch: str, depth: int, seed: int, tag: str = "") -> Path:
    """Where a sweep saves the model of one run: ``<run_dir>/models/{run_id}.pt``."""
    return Path(run_dir) / MODELS_DIR / f"{run_id(arch, depth, seed, tag)}.pt"


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


# What identifies one row of each file a sweep writes (results.csv: a run; history.csv: a run's epoch;
# activations.csv: a run's layer). A rewrite keeps one row per key, the later one (a rerun's row replaces the
# old one, as the readers do).
UNIQUE = {tuple(RESULT_COLUMNS): ("run_id",), tuple(HISTORY_COLUMNS): ("run_id", "epoch"),
          tuple(ACTIVATION_CSV_COLUMNS): ("run_id", "index")}


def _existing(path: Path, unique: Sequence[str], strict: bool) -> tuple[Optional[list[str]], list[dict], list[str]]:
    """The rows of a CSV ``write_rows`` may keep: (header, rows as dicts of strings, what was left out and why).

    Left out: a torn last line (no end of line: a crash mid-write, or a cut copy), a line with another number
    of fields than the header (cut by hand) and the earlier of two lines with the same ``unique`` key. With
    ``strict`` (results.csv: a line is a finished run) a cut line inside the file is a one-line error instead
    of being left out, as when the file is read.
    """
    if not path.exists():
        return None, [], []
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CnnDepthError(f"{path} is not UTF-8 text (byte {e.start}); fix the file, or move the folder aside "
                            f"and use another --out") from e
    notes = []
    if raw and not raw.endswith("\n"):
        cut = raw.rfind("\n")
        notes.append(f"the last line ({raw[cut + 1:][:40]!r}) was cut short, by a crash or a copy")
        raw = raw[:cut + 1]
    reader = csv.reader(io.StringIO(raw, newline=""))
    try:
        header = next(reader, None)
        rows, lines = [], []
        for row in reader:
            if not row:
                continue
            if header is not None and len(row) != len(header):
                if strict:
                    raise CnnDepthError(f"{path} line {reader.line_num}: {len(row)} fields where the header has "
                                        f"{len(header)}; fix or delete that line")
                notes.append(f"line {reader.line_num} has {len(row)} fields where the header has {len(header)} "
                             f"(cut by hand or damaged)")
                continue
            rows.append(dict(zip(header, row)))
            lines.append(reader.line_num)
    except csv.Error as e:
        raise CnnDepthError(f"cannot read {path} as CSV (line {reader.line_num}: {e}); fix or delete that "
                            f"line") from e
    if header is None:
        return None, [], notes
    last = {}
    for i, r in enumerate(rows):
        last[tuple(r.get(k) for k in unique)] = i
    dups = [i for i, r in enumerate(rows) if last[tuple(r.get(k) for k in unique)] != i]
    for i in dups:
        notes.append(f"line {lines[i]} has the same {'/'.join(unique)} as line "
                     f"{lines[last[tuple(rows[i].get(k) for k in unique)]]}, which is kept")
    if dups:
        rows = [r for i, r in enumerate(rows) if i not in set(dups)]
    return header, rows, notes


def write_rows(path: PathLike, columns: Sequence[str], rows: list[dict], key: str = "run_id",
               replace: Sequence[str] = (), unique: Optional[Sequence[str]] = None,
               strict: Optional[bool] = None) -> None:
    """Add ``rows`` to a CSV, dropping old rows whose ``key`` is in ``replace`` or in ``rows``; durable when
    it returns.

    The common case appends (then flush and fsync). A retried run, a changed header, a damaged line or two
    lines with the same ``unique`` key (``UNIQUE`` for the sweep's files, else ``key``) rewrite the whole file
    aside and rename it over the old one (:func:`~cnn_depth.files.atomic_open`), so a crash leaves the old or
    the new file, never half of one; what the rewrite leaves out (a cut line, the earlier of two lines of one
    run) is said in one :class:`RowWarning`. ``strict`` (default: for results.csv, where a line is a finished
    run) makes a cut line inside the file a one-line error instead. A full disk is one line
    (:class:`~cnn_depth.files.DiskFull`).
    """
    path = Path(path)
    unique = list(unique or UNIQUE.get(tuple(columns), (key,)))
    if strict is None:
        strict = path.name == "results.csv" or tuple(columns) == tuple(RESULT_COLUMNS)
    with writing(path, "rows to"):
        header, old, notes = _existing(path, unique, strict)
        keys = {str(r[key]) for r in rows} | set(replace)
        if header == list(columns) and not notes and not any(r.get(key) in keys for r in old):
            if rows:
                with open(path, "a", newline="") as f:
                    csv.DictWriter(f, columns, extrasaction="ignore").writerows(rows)
                    f.flush()
                    os.fsync(f.fileno())
            return
        if not rows and not notes and header is None:
            return
        if notes:
            warnings.warn(f"{path}: {len(notes)} line(s) left out: {'; '.join(notes)}", RowWarning, stacklevel=2)
        cols = list(columns) + [c for c in (header or []) if c not in columns]
        keep = [r for r in old if r.get(key) not in keys]
        with atomic_open(path, "w", newline="") as f:
            w = csv.DictWriter(f, cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(keep + rows)


def tidy_rows(path: PathLike) -> None:
    """Rewrite a sweep's CSV file with one row per key (``UNIQUE``) and without cut lines, saying once
    (a :class:`RowWarning`) what was left out; nothing when it is already so. A resume calls it first
    (:func:`check_folder`), so that every later read of the file finds it clean and says nothing."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), None)
    if header:
        unique = {"history.csv": ("run_id", "epoch"), "activations.csv": ("run_id", "index")}.get(path.name,
                                                                                                  ("run_id",))
        write_rows(path, header, [], unique=unique)


def write_json(path: PathLike, data: dict) -> None:
    """``data`` as indented JSON, written atomically; a full disk is one line."""
    with writing(path):
        atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------------------------
# Reading rows back, checked: every column's type and range, one line naming the file and line when wrong


class RowWarning(UserWarning):
    """A row read back was left out: a torn last line, or the older of two rows of one run."""


@dataclass(frozen=True)
class Column:
    """How one CSV column reads back.

    ``kind``: ``text``; ``int`` (a whole number); ``number`` (finite); ``float`` (any number, NaN and inf
    included: losses of diverged runs); ``bool``; ``lr_setting`` (``find`` or a positive number). Numbers
    must lie in [``low``, ``high``] (finite ones, for ``float``). ``required``: no row may leave it empty.
    """

    kind: str
    low: float = -math.inf
    high: float = math.inf
    required: bool = False


_TEXT, _NEEDED = Column("text"), Column("text", required=True)
_SECONDS = Column("number", 0)
_POSITIVE = math.ulp(0.0)  # the lowest bound that refuses 0
RESULT_SCHEMA = {
    "run_id": _NEEDED, "dataset": _NEEDED, "arch": _NEEDED, "depth": Column("int", 1, required=True),
    "seed": Column("int", 0, required=True), "source": _TEXT, "epochs": Column("int", 1, required=True),
    "lr_setting": Column("lr_setting", _POSITIVE), "lr": Column("number", _POSITIVE), "bs": Column("int", 1),
    "max_per_class": Column("int", 1), "pipeline": _TEXT, "augment": Column("bool"), "compile": _TEXT,
    "threads": Column("int", 1),
    "params": Column("int", 0), "macs": Column("int", 0), "train_images": Column("int", 0),
    "train_seconds": _SECONDS, "images_per_second": _SECONDS, "valid_seconds": _SECONDS,
    "peak_memory_mb": _SECONDS, "train_loss": Column("float"), "valid_loss": Column("float"),
    "classes": Column("int", 1), "valid_images": Column("int", 1), "correct": Column("int", 0),
    "accuracy": Column("number", 0, 1), "error_rate": Column("number", 0, 1), "epochs_done": Column("int", 0),
    "device": _TEXT, "precision": _TEXT, "pretrained": Column("bool"), "transfer": _TEXT, "kind": _TEXT,
    "status": _NEEDED,
    "error": _TEXT, "finished": _TEXT,
}
for _s in settings().values():  # a setting added to the config reads back as it is marked there
    RESULT_SCHEMA.setdefault(_s.column, _TEXT if _s.kind == "text" else Column(_s.kind, _s.low))
# The columns without which a file is not a sweep's results.csv (every cnn-depth version wrote them).
RESULT_REQUIRED = ["run_id", "dataset", "arch", "depth", "seed", "epochs", "params", "train_seconds", "accuracy",
                   "status"]
HISTORY_SCHEMA = {
    "run_id": _NEEDED, "dataset": _TEXT, "arch": _TEXT, "depth": Column("int", 1, required=True),
    "seed": Column("int", 0, required=True), "epochs": Column("int", 1), "epoch": Column("int", 1, required=True),
    "train_loss": Column("float"), "valid_loss": Column("float"), "accuracy": Column("float", 0, 1),
    "seconds": _SECONDS,
}
ACTIVATION_SCHEMA = {
    "run_id": _NEEDED, "dataset": _TEXT, "arch": _TEXT, "depth": Column("int", 1, required=True),
    "seed": Column("int", 0, required=True), "layer": _TEXT, "stage": _TEXT,
    "index": Column("int", 1, required=True), "mean": Column("float"), "std": Column("float", 0),
    "frac_zero": Column("number", 0, 1, required=True), "shape": _TEXT,
}


def _what(col: Column) -> str:
    """What a column holds, for messages: ``a whole number ≥ 1``, ``a number between 0 and 1``."""
    if col.kind == "bool":
        return "True or False"
    if col.kind == "lr_setting":
        return "'find' or a positive number"
    noun = "a whole number" if col.kind == "int" else "a number" if col.kind == "float" else "a finite number"
    if col.low == _POSITIVE:
        return f"a positive {noun[2:]}"
    if math.isfinite(col.low) and math.isfinite(col.high):
        return f"{noun} between {col.low:g} and {col.high:g}"
    return f"{noun} ≥ {col.low:g}" if math.isfinite(col.low) else noun


def _show(v) -> str:
    """A cell's value in a message: text quoted, numbers as numbers, nothing as ``empty``."""
    if v is None or v is pd.NA:
        return "empty"
    return repr(v) if isinstance(v, str) else str(v)


def _is_float(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


class _Where:
    """Names a row in messages: ``results.csv line 7`` for a file (the header is line 1), else ``row 7``."""

    def __init__(self, where: str, lines: Optional[pd.Series]):
        self.where, self.lines = where, lines

    def __call__(self, i) -> str:
        if self.lines is not None:
            return f"{self.where} line {self.lines[i]}"
        return f"{self.where} row {i + 1}" if isinstance(i, (int, np.integer)) else f"{self.where} row {i}"

    def fail(self, i, message: str):
        raise CnnDepthError(f"{self(i)}: {message}; fix or delete that line")


def _parse_column(s: pd.Series, name: str, col: Column, at: _Where) -> pd.Series:
    """One column as its type (``Int64``, float, ``boolean``, text), or a one-line error at its first bad cell."""
    text = s.astype(object).where(s.notna(), "")
    empty = text.map(lambda v: isinstance(v, str) and v.strip() == "")
    if col.required and empty.any():
        at.fail(empty.idxmax(), f"{name} is empty; every row needs one")

    def refuse(bad: pd.Series):
        if bad.any():
            i = bad.idxmax()
            at.fail(i, f"{name} is {text[i]!r}, not {_what(col)}")

    if col.kind == "text":
        return text.map(str)
    if col.kind == "bool":
        table = {"true": True, "false": False, "1": True, "0": False}
        key = text.map(lambda v: str(v).strip().lower())
        refuse(~empty & ~key.isin(list(table)))
        return key.map(table).where(~empty).astype("boolean")
    find = text.map(lambda v: isinstance(v, str) and v.strip().lower() == "find") if col.kind == "lr_setting" \
        else pd.Series(False, index=s.index)
    num = ~empty & ~find
    x = pd.to_numeric(text.where(num), errors="coerce").astype(float)
    finite = num & np.isfinite(x)
    bad = num & ~text.map(_is_float)  # no number at all ("abc"; "nan" and "inf" are numbers)
    if col.kind != "float":
        bad |= num & ~finite
    bad |= finite & ((x < col.low) | (x > col.high))
    if col.kind == "int":
        bad |= finite & (x % 1 != 0)
    refuse(bad)
    if col.kind == "int":
        return x.round().astype("Int64")
    if col.kind == "lr_setting":
        return pd.Series([None if e else "find" if f else float(v) for e, f, v in zip(empty, find, x)],
                         index=s.index, dtype=object)
    return x


def check_frame(df: pd.DataFrame, schema: dict, where: str, lines: Optional[pd.Series] = None) -> pd.DataFrame:
    """``df`` (strings as read, or values already typed) with every column of ``schema`` it has parsed and
    range-checked; a one-line :class:`CnnDepthError` naming ``where`` and the line at the first bad cell.

    ``lines``: each row's line in the file it came from (for messages); rows are counted from 1 otherwise.
    """
    at = _Where(where, lines)
    out = df.copy()
    for name, col in schema.items():
        if name in out.columns:
            out[name] = _parse_column(out[name], name, col, at)
    return out


def _read_csv(path: Path, check, required: Sequence[str], key: Sequence[str], kind: str) -> pd.DataFrame:
    """A CSV written by a sweep, checked line by line: a torn last line (no newline at the end: a crash or a
    cut copy) is left out with a warning; a row with the wrong number of fields, a bad value, or a missing
    column is a one-line error naming the file and line; of two rows with the same ``key``, the later is kept
    (as a rerun's row replaces the old one), with a warning. ``check(df, where, lines)`` types and checks
    the rows; ``kind`` names the file in messages (``results.csv``)."""
    try:
        raw = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CnnDepthError(f"cannot read {path} ({type(e).__name__}); give the CSV files a cnn-depth sweep "
                            f"wrote") from e
    if not raw.strip():
        raise CnnDepthError(f"{path} is empty; give the CSV files a cnn-depth sweep wrote")
    if not raw.endswith("\n"):
        cut = raw.rfind("\n")
        warnings.warn(f"{path}: the last line ({raw[cut + 1:][:40]!r}...) has no end of line, so it was cut "
                      f"short (by a crash or a copy); it is left out", RowWarning, stacklevel=3)
        raw = raw[:cut + 1] if cut >= 0 else ""
    reader = csv.reader(io.StringIO(raw, newline=""))
    try:
        header = next(reader, None)
        if not header:
            raise CnnDepthError(f"{path} has no header line; give the CSV files a cnn-depth sweep wrote")
        rows, lines = [], []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise CnnDepthError(f"{path} line {reader.line_num}: {len(row)} fields where the header has "
                                    f"{len(header)}; fix or delete that line")
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise CnnDepthError(f"cannot read {path} as CSV (line {reader.line_num}: {e}); fix or delete that "
                            f"line") from e
    missing = [c for c in required if c not in header]
    if missing:
        raise CnnDepthError(f"{path} is not a sweep's {kind} (no column {', '.join(missing)}); give the files in "
                            f"a cnn-depth sweep's --out folder")
    df = pd.DataFrame(rows, columns=header, dtype=object)
    line = pd.Series(lines, index=df.index, dtype=int)
    df = check(df, str(path), line)
    dup = df.duplicated(list(key), keep="last")
    if dup.any():
        i = dup.idxmax()
        later = df.index[(df[list(key)] == df.loc[i, list(key)]).all(axis=1)][-1]
        warnings.warn(f"{path}: {int(dup.sum())} line(s) repeat an earlier one's {'/'.join(key)} (first: line "
                      f"{line[i]}, again on line {line[later]}); the later line of each is used",
                      RowWarning, stacklevel=3)
        df = df[~dup]
    return df.reset_index(drop=True)


def check_results(df: pd.DataFrame, where: str = "results", lines: Optional[pd.Series] = None) -> pd.DataFrame:
    """Rows of results.csv typed and checked (:func:`check_frame`), and what must hold between columns: a
    known status, a run_id that matches arch, depth and seed, an ok run's finite accuracy and losses,
    accuracy = correct / valid_images, error_rate = 1 - accuracy. Columns an older version did not write are
    added, empty."""
    df = df.copy()
    given = set(df.columns)
    for c in RESULT_COLUMNS:
        if c not in df.columns:
            df[c] = ""
    df = check_frame(df, RESULT_SCHEMA, where, lines)
    df["pretrained"] = df["pretrained"].fillna(False)  # a row without it trained from scratch (no --pretrained then)
    at = _Where(where, lines)

    def first(bad: pd.Series, message):
        if bad.any():
            i = bad.idxmax()
            at.fail(i, message(df.loc[i]))

    first(~df["status"].isin(STATUSES), lambda r: f"status is {r.status!r}, not one of {', '.join(STATUSES)}")
    expected = df["arch"] + "-d" + df["depth"].astype(str) + "-s" + df["seed"].astype(str)
    tagged = pd.Series([rid.startswith(f"{e}-") for rid, e in zip(df["run_id"], expected)], index=df.index,
                       dtype=bool)  # a grid's run: the values of the settings that vary there follow
    first((df["run_id"] != expected) & ~tagged,
          lambda r: f"run_id is {r.run_id!r}, but arch, depth and seed make {run_id(r.arch, r.depth, r.seed)!r}")
    ok = df["status"] == "ok"
    for c in ("accuracy", "params", "train_loss", "valid_loss"):
        if c in given:
            v = df[c].astype(float)
            first(ok & ~np.isfinite(v), lambda r, c=c: f"an ok run needs a finite {c}, not {_show(r[c])}")
    both = df["correct"].notna() & df["valid_images"].notna()
    first(both & (df["correct"] > df["valid_images"]),
          lambda r: f"correct ({r.correct}) is more than valid_images ({r.valid_images})")
    share = df["correct"].astype(float) / df["valid_images"].astype(float)
    first(both & df["accuracy"].notna() & ((df["accuracy"] - share).abs() > 1e-6),
          lambda r: f"accuracy is {r.accuracy:g}, but correct / valid_images is {r.correct}/{r.valid_images}")
    first(df["accuracy"].notna() & df["error_rate"].notna() & ((df["accuracy"] + df["error_rate"] - 1).abs() > 1e-6),
          lambda r: f"error_rate ({r.error_rate:g}) is not 1 - accuracy ({r.accuracy:g})")
    first(df["epochs_done"].notna() & (df["epochs_done"] > df["epochs"]),
          lambda r: f"epochs_done ({r.epochs_done}) is more than epochs ({r.epochs})")
    return df


def _results_path(path: PathLike) -> Path:
    path = Path(path).expanduser()
    return path / "results.csv" if path.is_dir() else path


def read_results(path: PathLike) -> pd.DataFrame:
    """A sweep's results.csv (give the file or its folder), checked and typed (see :func:`check_results`);
    an empty frame with ``RESULT_COLUMNS`` when there is none yet.

    Rows an older cnn-depth wrote lack ``source``, ``lr_setting``, ``max_per_class`` and ``threads``; they are
    filled in from the sweep.json beside the file (one sweep folder holds one setting of them), else
    ``source`` from ``dataset``, ``lr_setting`` from the lr used (``find`` when it differs between rows),
    with a warning.
    """
    path = _results_path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    return _fill_legacy(_read_csv(path, check_results, RESULT_REQUIRED, ["run_id"], "results.csv"), path)


def _fill_legacy(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Fill the settings older rows did not record (those rows have no ``threads``) from sweep.json."""
    old = df["threads"].isna()
    if not old.any():
        return df
    meta = read_sweep_json(path.parent / "sweep.json")
    config, env = meta.get("config", {}), meta.get("environment", {})
    df = df.copy()

    def fill(column, value):
        if value is not None and value != "":
            df.loc[old & (df[column].isna() | (df[column].astype(str) == "")), column] = value

    fill("source", config.get("dataset"))
    df.loc[old & (df["source"] == ""), "source"] = df.loc[old & (df["source"] == ""), "dataset"]
    if "lr" in config:
        lr = config["lr"]
        fill("lr_setting", "find" if str(lr).lower() == "find" else float(lr))
    else:  # one folder, one lr setting: a number when every row used the same lr, else lr_find's per depth
        used = df.loc[old, "lr"].dropna().unique()
        fill("lr_setting", float(used[0]) if len(used) == 1 else "find" if len(used) else None)
    for c in ("max_per_class", "bs", "pipeline", "augment"):
        fill(c, config.get(c))
    if isinstance(env.get("torch_threads"), int):
        fill("threads", env["torch_threads"])
    if not config:
        warnings.warn(f"{path}: {int(old.sum())} row(s) from an older cnn-depth lack max_per_class and lr_setting, "
                      f"and there is no sweep.json beside the file: they are taken as all images per class and "
                      f"lr {df.loc[old, 'lr_setting'].iloc[0]}; put the sweep's sweep.json beside it to be sure",
                      RowWarning, stacklevel=3)
    return df


def read_history(path: PathLike) -> pd.DataFrame:
    """A sweep's history.csv, checked and typed; empty (with ``HISTORY_COLUMNS``) when there is none."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    return _read_csv(path, lambda df, w, ln: check_frame(df, HISTORY_SCHEMA, w, ln),
                     ["run_id", "depth", "seed", "epoch", "train_loss", "valid_loss", "accuracy"], ["run_id", "epoch"],
                     "history.csv")


def read_activations(path: PathLike) -> pd.DataFrame:
    """A sweep's activations.csv, checked and typed; empty (with ``ACTIVATION_CSV_COLUMNS``) when there is none."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=ACTIVATION_CSV_COLUMNS)
    return _read_csv(path, lambda df, w, ln: check_frame(df, ACTIVATION_SCHEMA, w, ln),
                     ["run_id", "depth", "seed", "index", "std", "frac_zero"], ["run_id", "index"],
                     "activations.csv")


# ---------------------------------------------------------------------------------------------------------
# sweep.json: the config and the environment of every invocation


def _git(package_dir: Path, *args: str) -> Optional[str]:
    try:
        r = subprocess.run(["git", *args], cwd=package_dir, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_state(package_dir: Optional[PathLike] = None) -> dict:
    """The commit of the code: ``git_commit``, ``git_dirty`` and ``git_note`` (why they are empty, or "").

    Recorded only when the package's own files are tracked by the repository around ``package_dir`` (the
    cnn_depth package folder; this one by default): a copy of the package inside another repository (a
    notebook project, a site-packages inside someone's checkout) would otherwise record that repository's
    commit, which says nothing about this code. ``git_dirty``: tracked files of that repository changed since
    the commit.
    """
    package_dir = Path(package_dir or Path(__file__).resolve().parent)
    marker = package_dir / "__init__.py"
    commit = None
    if _git(package_dir, "ls-files", "--error-unmatch", "--", marker.name) is not None:
        commit = _git(package_dir, "rev-parse", "HEAD")
    if not commit:
        where = ("is not in a git repository (or git cannot read it)" if _git(package_dir, "rev-parse", "--git-dir") is None
                 else "is not tracked by the git repository around it")
        return dict(git_commit="", git_dirty=None,
                    git_note=f"the cnn_depth code at {package_dir} {where}, so no commit is recorded")
    dirty = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
    return dict(git_commit=commit, git_dirty=bool(dirty), git_note="")


def environment(device: str, precision: str) -> dict:
    """Versions, hardware and the git commit of the code (:func:`git_state`: only from its own checkout)."""
    import fastai
    import torch
    import torchvision

    from . import __version__

    return dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                fastai=fastai.__version__, cnn_depth=__version__, device=device, precision=precision,
                platform=platform.platform(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                **git_state())


# sweep.json as read back: what each key of its config must hold (keys may be missing: older versions wrote
# fewer). A value of another type would stop a resume with a traceback, or be taken for a setting it is not.
def _whole(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _text(v) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _or_none(check):
    return lambda v: v is None or check(v)


def _ints(low: int):
    return lambda v: isinstance(v, list) and len(v) > 0 and all(_whole(low)(x) for x in v)


def _auto(v) -> bool:
    return v == "auto" or _whole(1)(v)


CONFIG_SCHEMA = {
    "depths": ("a non-empty list of whole numbers ≥ 1", _ints(1)),
    "seeds": ("a non-empty list of whole numbers ≥ 0", _ints(0)),
    "epochs": ("a whole number ≥ 1", _whole(1)),
    "lr": ("a positive number or \"find\"", lambda v: v == "find" or (
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0)),
    "bs": ("a whole number ≥ 1", _whole(1)),
    "arch": ("a model name", _text),
    "pretrained": ("true or false", lambda v: isinstance(v, bool)),
    "transfer": ("a transfer mode or null", _or_none(_text)),
    "dataset": ("a dataset name or path", _text),
    "max_per_class": ("a whole number ≥ 1 or null", _or_none(_whole(1))),
    "pipeline": ("a pipeline name", _text),
    "augment": ("true or false", lambda v: isinstance(v, bool)),
    "compile": ("true or false", lambda v: isinstance(v, bool)),
    "dims": ("1, 2, 3 or null", lambda v: v is None or (_whole(1)(v) and v <= 3)),
    "pad": ("true or false", lambda v: isinstance(v, bool)),
    "fill": ("a finite number or null", lambda v: v is None or (
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))),
    "split_seed": ("a whole number ≥ 0", _whole(0)),
    "out": ("a folder or null", _or_none(lambda v: isinstance(v, str))),
    "device": ("a device name", _text),
    "quiet": ("true or false", lambda v: isinstance(v, bool)),
    "save_models": ("true or false", lambda v: isinstance(v, bool)),
    "workers": ("a whole number ≥ 1 or \"auto\"", _auto),
    "threads": ("a whole number ≥ 1 or \"auto\"", _auto),
    "runs_per_gpu": ("a whole number ≥ 1 or \"auto\"", _auto),
    "ray": ("an address or null", _or_none(lambda v: isinstance(v, str))),
}


def _or_grid(ok):
    return lambda v: ok(v) or (isinstance(v, list) and len(v) > 1 and all(ok(x) for x in v))


for _name in settings():  # a setting may hold a grid: a list of its values
    if _name in CONFIG_SCHEMA:
        CONFIG_SCHEMA[_name] = (CONFIG_SCHEMA[_name][0], _or_grid(CONFIG_SCHEMA[_name][1]))


def _json_value(v) -> str:
    text = json.dumps(v, default=str)
    kind = {dict: "an object ", list: "a list ", str: "a string "}.get(type(v), "")
    return f"{kind}{text[:40]}{'...' if len(text) > 40 else ''}"


def read_sweep_json(path: PathLike) -> dict:
    """A sweep's ``sweep.json`` (give the file or its folder), checked: an object with a ``config`` object
    whose known keys hold what :class:`~cnn_depth.config.SweepConfig` wrote (:data:`CONFIG_SCHEMA`), an
    ``environment`` object and a list of ``invocations`` objects (either may be missing). ``{}`` when there
    is no file; anything else is one line naming the file, the field and the fix."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "sweep.json"
    if not path.exists():
        return {}
    fix = ("it was changed by hand or damaged: put back what the sweep wrote, or move the folder aside (or use "
           "another --out) to start over")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CnnDepthError(f"cannot read {path} ({type(e).__name__}: {' '.join(str(e).split())[:80]}); "
                            f"{fix}") from e

    def refuse(field: str, value, what: str):
        raise CnnDepthError(f"{path}: {field} is {_json_value(value)}, not {what}; {fix}")

    if not isinstance(data, dict):
        refuse("the file", data, "an object with config, environment and invocations")
    if "config" not in data:
        raise CnnDepthError(f"{path} has no config; {fix}")
    config = data["config"]
    if not isinstance(config, dict):
        refuse("config", config, "an object of the sweep's settings")
    for name, (what, ok) in CONFIG_SCHEMA.items():
        if name in config and not ok(config[name]):
            refuse(f"config.{name}", config[name], what)
    if not isinstance(data.get("environment", {}), dict):
        refuse("environment", data["environment"], "an object (versions, device, git commit)")
    invocations = data.get("invocations", [])
    if not isinstance(invocations, list):
        refuse("invocations", invocations, "a list of the commands run on this folder")
    for i, inv in enumerate(invocations):
        if not isinstance(inv, dict):
            refuse(f"invocations[{i}]", inv, "an object (started, argv, ...)")
    return data


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
        with writing(owner):
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
        old = read_sweep_json(meta)["config"]
        for name in fields:
            new = config[name]
            if name in old and isinstance(old[name], list):  # a grid over it: this call may add values
                continue
            if name in old and isinstance(new, list):
                from .config import sweep_flags

                raise CnnDepthError(f"{out} holds a sweep with {name}={old[name]!r} only, not a grid over {name} "
                                    f"(its run ids would change); use another --out for the grid (or "
                                    f"{' '.join(sweep_flags(name, old[name]))} to resume that sweep)")
            if name in old and not _same(old[name], new):
                flag = "--data" if name == "dataset" and "/" in str(old[name]) else f"--{name.replace('_', '-')}"
                same = (f"leave out {flag}" if old[name] is None else
                        f"--{'' if old[name] else 'no-'}{name}" if isinstance(old[name], bool) else f"{flag} {old[name]}")
                raise CnnDepthError(f"{out} holds a sweep with {name}={old[name]!r}, not {new!r}; use another "
                                    f"--out (or {same} to resume that sweep)")
    elif (out / "results.csv").exists():
        raise CnnDepthError(f"{out} has a results.csv but no sweep.json, so it cannot be resumed safely; "
                            f"use another --out")
    for name in ("results.csv", "history.csv", "activations.csv"):  # one row per run (and epoch, layer) from here on
        tidy_rows(out / name)
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
        if is_disk_full(e):
            raise disk_full_error(out, e, "a file in") from e
        raise CnnDepthError(f"cannot write to {out} ({e.strerror or e}); pick a folder you can write to "
                            f"with --out") from e
    return out


def folder_grid(old: dict, new: dict) -> dict:
    """The grid settings of a folder: each setting that already holds a list in ``old`` (sweep.json's
    config), with the values of ``new`` added (an extended grid); ``{}`` when none."""
    from .config import settings

    out = {}
    for name in settings():
        if isinstance(old.get(name), list):
            values = list(old[name])
            for v in new.get(name) if isinstance(new.get(name), list) else [new.get(name)]:
                if not any(_same(v, w) and type(v) is type(w) for w in values):
                    values.append(v)
            out[name] = values
    return out


def write_sweep_json(out: Path, config: dict, env: dict, invocation: dict) -> dict:
    """Write (or update) ``sweep.json``: ``config`` with depths and seeds grown to every run in the folder,
    ``env``, and ``invocation`` appended to the list of every command run on this folder."""
    path = out / "sweep.json"
    old = read_sweep_json(path)
    config = dict(config)
    for name in ("depths", "seeds"):
        config[name] = list(dict.fromkeys(old.get("config", {}).get(name, []) + list(config[name])))
    config.update(folder_grid(old.get("config", {}), config))
    data = dict(config=config, environment=env, invocations=old.get("invocations", []) + [invocation])
    write_json(path, data)
    return data
