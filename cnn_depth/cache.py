"""Shared cache entries: safe for any number of processes reading and building the same cache at once.

Every entry under ``cache_dir()`` (an extracted archive, a header scan, a decoded array) follows one protocol:

- A complete entry is read without a lock and is never removed or replaced under a reader: folders are
  renamed into place only while absent, files are replaced only by an atomic rename (a reader that opened the
  old file keeps reading it).
- An entry is built by one process at a time, holding ``.<entry>.lock`` beside it (an OS file lock, so a
  killed process releases it). A process that waited for the lock finds the winner's entry and uses it.
- A build writes to ``.<entry>.<...>.tmp`` beside the entry, then renames it into place. Temporaries left by
  a killed build are removed by the next build in that folder, once their entry's lock is free.
- A failed or partial build is never written: the error reaches the caller, the temporary is removed.

An entry is named by a stem without dots (``cifar10-0123abcd``, a hex key) and may be one folder or a few
files ``<stem>.<ext>``; the stem names its lock and its temporaries, so a temporary's entry is the text
between its first two dots.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

from filelock import FileLock, Timeout

from .errors import CnnDepthError
from .files import atomic_write, cache_dir

T = TypeVar("T")
WAIT_NOTE_S = 5.0  # seconds: how long to wait for another process's build before saying so
LEGACY_TMP_AGE_S = 3600  # seconds: age after which a temporary in an older naming scheme counts as stale


def cache_error(e: OSError, path: Path, doing: str) -> CnnDepthError:
    """A one-line error for a cache folder that cannot be written (no space, no permission, not a folder)."""
    reason = e.strerror or str(e)
    return CnnDepthError(f"cannot {doing} in the cache {path} ({reason}); free space or fix its permissions, "
                         f"or set CNN_DEPTH_CACHE to a writable folder")


def make_folder(path: Path) -> Path:
    """Create ``path`` (a cache folder) if missing and check it is writable; else a one-line error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied")
    except OSError as e:  # a file in the way (FileExistsError, NotADirectoryError), no permission, read-only
        raise cache_error(e, path, "create a folder") from e
    return path


def stem(entry: Path) -> str:
    """The name an entry's lock and temporaries go by: its file name up to the first dot."""
    return entry.name.split(".", 1)[0]


def lock_path(entry: Path) -> Path:
    return entry.with_name(f".{stem(entry)}.lock")


def tmp_name(entry: Path, tag: str = "") -> Path:
    """A temporary beside ``entry`` that only this process uses: ``.<entry name>.<pid>[.<tag>].tmp``."""
    return entry.with_name(f".{entry.name}.{os.getpid()}{'.' + tag if tag else ''}.tmp")


@contextmanager
def entry_lock(entry: Path, what: str) -> Iterator[None]:
    """Hold the build lock of ``entry``; after ``WAIT_NOTE_S`` of waiting say on stderr what it waits for."""
    lock = FileLock(str(lock_path(entry)))
    try:
        try:
            lock.acquire(timeout=WAIT_NOTE_S)
        except Timeout:
            print(f"waiting for another process {what} ({entry.parent})", file=sys.stderr, flush=True)
            lock.acquire()
    except OSError as e:
        raise cache_error(e, entry.parent, "create a lock file") from e
    try:
        yield
    finally:
        lock.release()


def _entry_of(name: str) -> Optional[str]:
    """The entry a temporary belongs to (``.<entry>.<...>.tmp``), or None for other names."""
    if name.startswith(".") and name.endswith(".tmp"):
        entry = name[1:].split(".", 1)[0]
        return entry or None
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(folder: Path, held: Optional[str] = None) -> list[Path]:
    """Remove temporaries in ``folder`` whose builder is gone; return what was removed.

    A temporary of entry ``held`` (whose lock this process holds) is stale by definition; one of another
    entry is stale when that entry's lock is free. ``.extract-*`` folders of older versions count as stale
    after ``LEGACY_TMP_AGE_S``.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        path = folder / name
        entry = _entry_of(name)
        if entry is None:
            if name.startswith(".extract-"):
                try:
                    stale = now - path.lstat().st_mtime > LEGACY_TMP_AGE_S
                except OSError:
                    continue
                if stale:
                    _remove(path)
                    removed.append(path)
            continue
        if entry == held:
            _remove(path)
            removed.append(path)
            continue
        lock = FileLock(str(folder / f".{entry}.lock"))
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):
            continue  # being built right now (or not ours to judge)
        try:
            _remove(path)
            removed.append(path)
        finally:
            lock.release()
    return removed


def shared_entry(entry: Path, load: Callable[[Path], Optional[T]], build: Callable[[Path], T], what: str) -> T:
    """The value of cache entry ``entry``: ``load(entry)`` if it gives one, else built once across processes.

    ``load`` returns None for a missing or invalid entry (never raises for those); ``build`` writes the entry
    (through a temporary and a rename) and returns its value. Only one process builds at a time; the others
    wait, then load the winner's entry.
    """
    value = load(entry)
    if value is not None:
        return value
    make_folder(entry.parent)
    with entry_lock(entry, what):
        value = load(entry)  # built by the process we waited for
        if value is not None:
            return value
        clean_stale(entry.parent, held=stem(entry))
        return build(entry)


# errno values that mean "the cache cannot take this write", as opposed to a problem with what is written
CACHE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def write_entry(path: Path, data, what: str = "write") -> Path:
    """:func:`cnn_depth.files.atomic_write` (no fsync: a lost entry is rebuilt), with cache errors as one line."""
    try:
        return atomic_write(path, data, durable=False)
    except OSError as e:
        raise cache_error(e, path.parent, what) from e
