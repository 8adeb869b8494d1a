"""Files that survive crashes and are safe to share: write aside then rename, fsync, the cache folder.

Every file cnn-depth writes for others to read (reports, sweep.json, saved models, cache entries) goes through
:func:`atomic_write`, so a reader sees the old file or the new one, never half of one, and a crash leaves at
most a hidden ``.<name>.<pid>.tmp`` beside it.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator, Union

PathLike = Union[str, os.PathLike]


def cache_dir() -> Path:
    """Where extracted archives, scans and decoded images live: ``$CNN_DEPTH_CACHE`` or ``~/.cache/cnn_depth``.

    An empty ``CNN_DEPTH_CACHE`` counts as unset (it would otherwise put the cache in the working folder).
    """
    return Path(os.environ.get("CNN_DEPTH_CACHE") or Path.home() / ".cache" / "cnn_depth").expanduser()


def fsync_dir(path: PathLike) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: PathLike) -> Path:
    """The hidden temporary name a write to ``path`` goes to first: unique per process."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_open(path: PathLike, mode: str = "w", durable: bool = True, **kw) -> Iterator[IO]:
    """Open a temporary file beside ``path``; when the block ends without error, rename it over ``path``.

    ``durable``: fsync the file and its folder, so that the new content survives a power cut too (what the
    reports want); cache entries, which are rebuilt when lost, can skip it. On an error the temporary file
    is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: PathLike, data: Union[str, bytes, Callable[[IO], None]], durable: bool = True) -> Path:
    """Write ``data`` (text, bytes, or a function that writes to a binary file) to ``path`` atomically."""
    mode = "w" if isinstance(data, str) else "wb"
    with atomic_open(path, mode, durable=durable, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
        data(f) if callable(data) else f.write(data)
    return Path(path)
