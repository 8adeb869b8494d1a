"""Files that survive crashes and are safe to share: write aside then rename, fsync, the cache folder.

Every file cnn-depth writes for others to read (reports, sweep.json, saved models, cache entries) goes through
:func:`atomic_write`, so a reader sees the old file or the new one, never half of one, and a crash leaves at
most a hidden ``.<name>.<pid>.tmp`` beside it.

For every writer, including the reports and figures: ``with writing(path, "the figure"):`` turns a full disk
into :class:`DiskFull` (one line: what, where, the free space, "free space and rerun the same command to
resume"; the CLI exits 1), :func:`save_figure` writes a matplotlib figure that way, and
:func:`output_folder` makes and checks a folder given by ``--out`` (empty, a file in the way, unwritable:
one line naming the flag).
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator, Optional, Union

from .errors import CnnDepthError

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


# ---------------------------------------------------------------------------------------------------------
# A full disk, and the folders cnn-depth writes to: one line each, never a traceback


class DiskFull(CnnDepthError):
    """A write failed because the disk (or the user's quota) is full. The CLI prints it as one line and exits
    1, not 2: nothing the user typed was wrong, and rerunning the same command after freeing space resumes."""

    exit_code = 1


_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or the error it was raised from) says the disk is full: ``OSError`` ENOSPC/EDQUOT, or
    the ``unexpected pos`` torch's zip writer raises when a write it made came up short."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return True
        if isinstance(e, RuntimeError) and "unexpected pos" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def free_space(path: PathLike) -> str:
    """The free space on the file system that holds ``path`` (or its nearest existing folder), e.g.
    ``1.2 GiB free``; ``free space unknown`` where it cannot be read."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return f"{_size(shutil.disk_usage(p).free)} free"
    except OSError:
        return "free space unknown"


def disk_full_error(path: PathLike, e: BaseException, what: str = "") -> DiskFull:
    """The one-line error for a write of ``what`` to ``path`` that failed on a full disk (raise it ``from e``)."""
    what = f"{what} " if what else ""
    return DiskFull(f"the disk is full: could not write {what}{path} ({free_space(path)} there); free space and "
                    f"rerun the same command to resume")


@contextmanager
def writing(path: PathLike, what: str = "") -> Iterator[None]:
    """Around a write of ``what`` (``"a row of"``, ``"the model"``, ``"the figure"``) to ``path``: a full disk
    becomes :class:`DiskFull` (one line: what, where, the free space, and how to resume); other errors pass."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if is_disk_full(e):
            raise disk_full_error(path, e, what) from e
        raise


def output_folder(path: Optional[PathLike], flag: str = "--out") -> Path:
    """The folder ``path`` made (with its parents) and checked writable, for a command's ``flag``; every
    mistake a user can make here is one line naming ``flag``: an empty path (which would write to the
    working folder unasked), a file in the way, a place that cannot hold files (``/proc/x``), no permission,
    a full disk."""
    if path is None or not str(path).strip():
        raise CnnDepthError(f"{flag} is empty; give a folder (e.g. {flag} runs/x), or leave out {flag} for the "
                            f"default")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise CnnDepthError(f"{out} is a file, not a folder; give another {flag}")
    probe = out / f".write-test-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(out, e, "the folder") from e
        if isinstance(e, (FileExistsError, NotADirectoryError)):
            raise CnnDepthError(f"cannot make the folder {out}: a file is in the way ({e.strerror}); give another "
                                f"{flag}") from e
        raise CnnDepthError(f"cannot write to {out} ({e.strerror or type(e).__name__}); give a folder you can "
                            f"write to with {flag}") from e
    return out


def save_figure(fig, path: PathLike) -> Path:
    """Save a matplotlib figure to ``path`` (its suffix is the format) atomically, as every report is written:
    a crash leaves the old figure or the new one, never half of one; a full disk is one line (:class:`DiskFull`)."""
    path = Path(path)
    with writing(path, "the figure"):
        return atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png"))
