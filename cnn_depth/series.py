"""Time series from the UCR/UEA archive: ``.ts`` (sktime/aeon) and ``.tsv`` (UCR 2018) files, read by our own
parsers and converted once into an array folder (:mod:`cnn_depth.arrays`).

A problem is two files in one folder, ``<Name>_TRAIN.ts`` and ``<Name>_TEST.ts`` (or ``.tsv``):
``dataloaders("path/GunPoint")``. They are converted into ``<cache>/datasets/series/<Name>-<key>/`` as
``{train,test}/<label>/<NNNNN>.npy``, file NNNNN holding series NNNNN of its file (from 0) as float32
``(channels, length)``, with an ``origin.json`` naming the files, so every check of :mod:`cnn_depth.arrays`
names the series of the original file too. ``<key>`` hashes each file's path, size, mtime and ends: an
edited file is converted again. Missing values (``?`` in ``.ts``, ``NaN`` in ``.tsv``) are kept as NaN and
series of different lengths as they are: the array folder refuses them in one line unless
``dataloaders(fill=...)``/``pad=True`` say what to do.

The ``.ts`` format (https://www.aeon-toolkit.org, "ts file format"): ``#`` comments, ``@`` header tags
(case-insensitive: ``@problemName``, ``@timeStamps``, ``@missing``, ``@univariate``, ``@dimensions``,
``@equalLength``, ``@seriesLength``, ``@classLabel true <labels>``, then ``@data``), then one case per line:
its dimensions separated by ``:``, values by ``,``, the class label last. Time-stamped data and regression
targets are refused. The UCR 2018 ``.tsv`` format: one series per line, the label first, values
tab-separated (commas or spaces are read too); trailing ``NaN`` pad shorter series to the longest there,
so they are dropped: such a series is shorter, not missing values.

Registered by name (``GunPoint``, ``ArrowHead``, ``ItalyPowerDemand``, ``BasicMotions``): the files that ship
inside the installed ``aeon`` package (``aeon/datasets/data/<Name>/``), found without importing aeon (it
pulls numba); without aeon, one line says ``pip install 'cnn-depth[series]'``.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Optional

import numpy as np

from .archives import archive_key
from .errors import CnnDepthError
from .files import PathLike, cache_dir

SUFFIXES = (".ts", ".tsv")  # preferred first when a folder holds both
AEON_NAMES = ("GunPoint", "ArrowHead", "ItalyPowerDemand", "BasicMotions")
CONVERT_VERSION = 1  # bump when what a converted folder holds changes
INSTALL = "pip install 'cnn-depth[series]'"


def _bad(path: Path, line: int, what: str) -> CnnDepthError:
    return CnnDepthError(f"{path} line {line}: {what}")


def _values(text: str, path: Path, line: int) -> np.ndarray:
    """Comma-separated numbers (``?``, ``NaN`` or nothing: missing) as float64, NaN for missing."""
    parts = [p.strip() for p in text.split(",")]
    if parts and parts[-1] == "":  # a trailing comma
        parts = parts[:-1]
    try:
        return np.array([np.nan if p in ("?", "") else p for p in parts], dtype=np.float64)
    except ValueError as e:
        bad = next((p for p in parts if p not in ("?", "") and not _is_number(p)), "?")
        raise _bad(path, line, f"{bad[:20]!r} is not a number; every value must be a number or ? (missing)") from e


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise CnnDepthError(f"cannot read {path} ({e.strerror or e}); check the file and its permissions") from e


def read_ts(path: PathLike) -> tuple[list[np.ndarray], list[str]]:
    """The series of a ``.ts`` file, each a float64 ``(dimensions, length)`` array (NaN: missing), and labels.

    One-line errors naming the line for: no ``@data``, time stamps, no class labels, a label not declared in
    ``@classLabel``, a value that is not a number, a case with another number of dimensions than the first,
    and dimensions of one case of different lengths."""
    path = Path(path)
    lines = _read_lines(path)
    tags, start = {}, None
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("@"):
            raise _bad(path, i + 1, "data before the @data tag; a .ts file has its @ header tags first")
        key, _, value = line[1:].partition(" ")
        key = key.lower()
        if key == "data":
            start = i + 1
            break
        tags[key] = value.strip()
    if start is None:
        raise CnnDepthError(f"{path} has no @data line; is it a .ts file (sktime/aeon format)?")
    if tags.get("timestamps", "false").lower() == "true":
        raise CnnDepthError(f"{path} holds time-stamped values (@timeStamps true), which are not read; save the "
                            f"series as plain values")
    if tags.get("targetlabel", "false").lower().startswith("true"):
        raise CnnDepthError(f"{path} holds a regression target (@targetLabel), not class labels; a classifier "
                            f"needs @classLabel true")
    label_tag = tags.get("classlabel", "false").split()
    if not label_tag or label_tag[0].lower() != "true":
        raise CnnDepthError(f"{path} has no class labels (@classLabel false or missing); a classifier needs "
                            f"@classLabel true <labels> and a label after each case")
    declared = set(label_tag[1:])
    samples, labels, n_dims = [], [], None
    for i in range(start, len(lines)):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            continue
        if "(" in line:
            raise _bad(path, i + 1, "time-stamped values ((time,value) pairs) are not read; save plain values")
        *dims, label = line.split(":")
        label = label.strip()
        if not dims or not label:
            raise _bad(path, i + 1, "a case needs its values and a class label after the last ':'")
        if declared and label not in declared:
            raise _bad(path, i + 1, f"label {label!r} is not among the @classLabel labels "
                                    f"({' '.join(sorted(declared))})")
        values = [_values(d, path, i + 1) for d in dims]
        if n_dims is None:
            n_dims = len(values)
        elif len(values) != n_dims:
            raise _bad(path, i + 1, f"{len(values)} dimensions, the first case {n_dims}; every case needs the same "
                                    f"dimensions")
        lengths = {len(v) for v in values}
        if len(lengths) > 1:
            raise _bad(path, i + 1, f"the dimensions of this case have different lengths ({sorted(lengths)}); each "
                                    f"case needs one length for all its dimensions")
        if 0 in lengths:
            raise _bad(path, i + 1, "a case without values")
        samples.append(np.stack(values))
        labels.append(label)
    if not samples:
        raise CnnDepthError(f"{path} has no cases after @data")
    return samples, labels


def _label(text: str) -> str:
    """A .tsv label as text: ``1.0000000e+00`` (older UCR files) as ``1``; any other as it is."""
    try:
        v = float(text)
    except ValueError:
        return text
    return str(int(v)) if v.is_integer() else text


def read_tsv(path: PathLike) -> tuple[list[np.ndarray], list[str]]:
    """The series of a UCR 2018 ``.tsv`` file (label first, then the values; tabs, commas or spaces between),
    each a float64 ``(1, length)`` array; trailing NaN (UCR's padding of shorter series) dropped."""
    path = Path(path)
    samples, labels = [], []
    for i, raw in enumerate(_read_lines(path)):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        label, *values = re.split(r"[\t, ]+", line)
        v = _values(",".join(values), path, i + 1)
        n = len(v)
        while n and np.isnan(v[n - 1]):
            n -= 1
        if n == 0:
            raise _bad(path, i + 1, "a series without values after its label")
        samples.append(v[None, :n])
        labels.append(_label(label))
    if not samples:
        raise CnnDepthError(f"{path} holds no series; a UCR .tsv file has one per line, its label first")
    return samples, labels


def read_series(path: PathLike) -> tuple[list[np.ndarray], list[str]]:
    """:func:`read_ts` or :func:`read_tsv`, by the file's suffix."""
    return (read_tsv if Path(path).suffix.lower() == ".tsv" else read_ts)(path)


def find_ucr(folder: PathLike) -> Optional[tuple[Path, Path]]:
    """The (train, test) files of the one UCR problem in ``folder``: ``<Name>_TRAIN<suffix>`` and
    ``<Name>_TEST<suffix>``, ``.ts`` preferred to ``.tsv``; with several problems, the one named as the folder.
    None when there is none; a one-line error when several are and none is named as the folder."""
    folder = Path(folder)
    try:
        names = {p.name: p for p in folder.iterdir() if p.is_file()}
    except OSError:
        return None
    pairs = {}
    for name, p in sorted(names.items()):
        m = re.fullmatch(r"(.+)_TRAIN(\.tsv?)", name, flags=re.IGNORECASE)
        if not m:
            continue
        stem, suffix = m.group(1), m.group(2)
        test = next((q for n, q in names.items() if n.lower() == f"{stem}_test{suffix}".lower()), None)
        if test is not None and (stem not in pairs or suffix.lower() == ".ts"):
            pairs[stem] = (p, test)
    if not pairs:
        return None
    if len(pairs) == 1:
        return next(iter(pairs.values()))
    if folder.name in pairs:
        return pairs[folder.name]
    raise CnnDepthError(f"{folder} holds {len(pairs)} problems ({', '.join(sorted(pairs))}); put each pair of "
                        f"<Name>_TRAIN/_TEST files in a folder of its own (or name the folder as the problem)")


def ucr_folder(train: PathLike, test: PathLike, name: Optional[str] = None) -> Path:
    """The array folder converted from a pair of UCR files (once, in the cache; see the module docstring)."""
    from .arrays import write_array_folder  # arrays imports data, which registers our datasets: keep the order

    train, test = Path(train).resolve(), Path(test).resolve()
    name = name or re.sub(r"_TRAIN$", "", train.stem, flags=re.IGNORECASE)
    key = archive_key(train)[:8] + archive_key(test)[:8]
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    dest = cache_dir() / "datasets" / "series" / f"{stem}-v{CONVERT_VERSION}-{key}"

    def samples(path: Path):
        return lambda: [(label, a.astype(np.float32)) for a, label in zip(*read_series(path))]

    origin = dict(format=train.suffix.lower()[1:], dims=1, unit="series", problem=name,
                  files=dict(train=str(train), test=str(test)))
    return write_array_folder(dest, dict(train=samples(train), test=samples(test)), origin,
                              f"converting {train.name} and {test.name}")


def aeon_data() -> Path:
    """The folder of data files inside the installed aeon package, found without importing it."""
    try:
        spec = importlib.util.find_spec("aeon")
    except (ImportError, ValueError):  # a broken install, or aeon blocked (sys.modules['aeon'] = None)
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise CnnDepthError(f"the registered series datasets ({', '.join(AEON_NAMES)}) are read from the aeon "
                            f"package, which is not installed: {INSTALL} (or give the folder of a problem's "
                            f"<Name>_TRAIN.ts and <Name>_TEST.ts files)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def aeon_dataset(name: str) -> Path:
    """The array folder of a problem shipped inside aeon (``aeon/datasets/data/<name>/``), converted once."""
    folder = aeon_data() / name
    train, test = folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts"
    if not (train.is_file() and test.is_file()):
        raise CnnDepthError(f"the installed aeon has no {train.name} and {test.name} in {folder}; "
                            f"pip install -U 'aeon>=1.0' (or give a folder holding the two files)")
    return ucr_folder(train, test, name)
