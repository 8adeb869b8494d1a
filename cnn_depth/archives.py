"""Archives: .tgz/.tar.gz/.tar/.zip extracted once into the cache, verified, bounded and safe to share.

An archive is extracted member by member into a temporary folder beside its cache entry and renamed into
place when every member was read and checked (see :mod:`cnn_depth.cache` for the protocol that makes this
safe for several processes at once):

- only regular files and folders are extracted; links, devices and FIFOs are refused, and so is any entry
  that would land outside the folder or whose name is not UTF-8;
- the whole compressed stream is read to its end, so gzip/bzip2/xz checksums are checked, and anything after
  the tar's end-of-archive marker other than zero padding (a tar cut short by damage) is an error; zip
  members are checked against their CRC-32; encrypted members and unknown compression methods are refused;
- the total written (file sizes plus ``ENTRY_BYTES`` per member) is bounded by ``CNN_DEPTH_MAX_EXTRACT_GB``
  (default ``DEFAULT_MAX_EXTRACT_GB``), so a small archive cannot fill the disk.

Every problem is a one-line :class:`~cnn_depth.errors.CnnDepthError`; a failed extraction leaves nothing.
"""
from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import lzma
import os
import secrets
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Optional

from .cache import CACHE_ERRNOS, cache_error, shared_entry, tmp_name
from .errors import CnnDepthError
from .files import PathLike, cache_dir

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")
MAX_EXTRACT_ENV = "CNN_DEPTH_MAX_EXTRACT_GB"
DEFAULT_MAX_EXTRACT_GB = 8.0  # GB (10⁹ bytes) written per archive: full CIFAR-10 is 0.3 GB on disk
ENTRY_BYTES = 4096  # bytes counted per member on top of its size: a file costs at least a block and an inode
FINGERPRINT_BYTES = 1 << 20  # bytes hashed at each end of an archive (gzip's CRC and zip's directory are at the end)
COPY_BYTES = 1 << 20  # bytes per read while copying a member
COMPLETE = ".complete"  # written last into an extraction: an entry without it is unfinished
# Errors a damaged or unusual archive raises while it is read (the tar/zip/compression modules' own types).
READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile,
               OSError, ValueError, NotImplementedError, RuntimeError)


def is_archive(path: Path) -> bool:
    """A regular file named like an archive (.tgz, .tar.gz, .tar, .zip)."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def max_extract_bytes() -> int:
    """The most bytes one extraction may write: ``$CNN_DEPTH_MAX_EXTRACT_GB`` × 10⁹, by default 8 GB."""
    text = os.environ.get(MAX_EXTRACT_ENV, "").strip()
    if not text:
        return int(DEFAULT_MAX_EXTRACT_GB * 1e9)
    try:
        gb = float(text)
    except ValueError:
        gb = float("nan")
    if not gb > 0 or gb == float("inf"):
        raise CnnDepthError(f"{MAX_EXTRACT_ENV} must be a positive number of GB, got {text!r}; e.g. "
                            f"{MAX_EXTRACT_ENV}=50")
    return int(gb * 1e9)


def archive_key(path: PathLike) -> str:
    """A short key for one archive: its resolved path, byte size, mtime and a hash of its first and last MiB.

    The ends hold what changes with any content (gzip's CRC-32 and length of the whole stream, zip's
    directory of member CRCs); a plain .tar rewritten in the middle with the same size and mtime keeps its key.
    """
    path = Path(path).resolve()
    h = hashlib.sha256(f"{path}\n".encode())
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            h.update(f"{st.st_size}|{st.st_mtime_ns}\n".encode())
            h.update(f.read(FINGERPRINT_BYTES))
            if st.st_size > FINGERPRINT_BYTES:
                f.seek(max(st.st_size - FINGERPRINT_BYTES, FINGERPRINT_BYTES))
                h.update(f.read(FINGERPRINT_BYTES))
    except OSError as e:
        raise CnnDepthError(f"cannot read archive {path} ({e.strerror or e}); check the file and its "
                            f"permissions") from e
    return h.hexdigest()[:16]


def extract(archive: PathLike, dest: Optional[PathLike] = None) -> Path:
    """Extract ``archive`` once into ``dest`` (default: ``cache_dir()/archives/<name>-<archive_key>``).

    Safe when several processes ask at once: one extracts, the others wait and use its folder. Returns the
    folder the archive's entries are in.
    """
    archive = Path(archive)
    # (the folder is created only to build: a complete entry in a read-only cache is used as it is)
    dest = Path(dest) if dest else cache_dir() / "archives" / f"{archive.name.split('.')[0]}-{archive_key(archive)}"

    def load(entry: Path) -> Optional[Path]:
        return entry if (entry / COMPLETE).is_file() else None

    def build(entry: Path) -> Path:
        if entry.exists():  # unfinished (no COMPLETE): only a version without the lock protocol leaves this
            shutil.rmtree(entry)
        tmp = tmp_name(entry, secrets.token_hex(4))
        try:
            os.mkdir(tmp)  # mode 0o777 less the umask, like any folder the user makes
        except OSError as e:
            raise cache_error(e, entry.parent, "create a folder") from e
        try:
            writer = _Writer(archive, tmp, max_extract_bytes())
            (_extract_zip if archive.name.lower().endswith(".zip") else _extract_tar)(archive, writer)
            with writer._writing():
                (tmp / COMPLETE).write_text(f"{archive}\n")
                os.rename(tmp, entry)  # entry is absent: we hold its lock and removed any unfinished one
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return entry

    return shared_entry(dest, load, build, f"extracting {archive.name}")


# ---------------------------------------------------------------------------------------------------------
# Reading members


def _damaged(archive: Path, e: BaseException) -> CnnDepthError:
    reason = str(e) or type(e).__name__
    return CnnDepthError(f"cannot read archive {archive} ({reason[:120]}); it may be damaged or truncated: check "
                         f"the file, or pass an extracted folder instead")


class _Writer:
    """Writes an archive's members under ``root`` (the temporary folder): checks each name, counts bytes and
    members against ``limit``, and tells a failed read (damage) from a failed write (the cache's problem)."""

    def __init__(self, archive: Path, root: Path, limit: int):
        self.archive, self.root, self.limit = archive, root, limit
        self.used = self.members = 0
        self.made = {str(root)}  # folders known to exist: one mkdir per folder, not per file

    def take(self, size: int) -> None:
        """Count one member of ``size`` bytes; a one-line error past the limit."""
        self.members += 1
        self.used += max(size, 0) + ENTRY_BYTES
        if self.used > self.limit:
            raise CnnDepthError(
                f"extracting {self.archive} would write more than {self.limit / 1e9:g} GB ({self.members} members "
                f"so far); if that is expected, raise the limit with {MAX_EXTRACT_ENV}=<GB>, or extract it yourself "
                f"and pass the folder")

    def target(self, name: str, is_dir: bool) -> Optional[str]:
        """Where entry ``name`` goes (None: the root itself); a one-line error for a name that escapes or is
        not UTF-8. Pure string normalisation is exact here: nothing under ``root`` is a link (none is made)."""
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise CnnDepthError(f"refusing to extract {self.archive}: entry {name!r} has a name that is not UTF-8; "
                                f"rename it and pack the archive again, or extract it yourself and rename the "
                                f"files") from None
        norm = os.path.normpath(name)
        if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep) or (norm == "." and not is_dir):
            raise CnnDepthError(f"refusing to extract {self.archive}: entry {name!r} would land outside the target "
                                f"folder; unpack it yourself and pass the folder")
        return None if norm == "." else os.path.join(self.root, norm)

    def mkdir(self, path: str) -> None:
        if path not in self.made:
            with self._writing():
                os.makedirs(path, exist_ok=True)  # mode 0o777 less the umask
            self.made.add(path)

    def copy(self, src: IO[bytes], target: str) -> None:
        """Copy one member's bytes to ``target``."""
        self.mkdir(os.path.dirname(target))
        with self._writing(), open(target, "wb") as dst:
            while True:
                try:
                    chunk = src.read(COPY_BYTES)
                except READ_ERRORS as e:
                    raise _damaged(self.archive, e) from e
                if not chunk:
                    return
                dst.write(chunk)

    @contextmanager
    def _writing(self):
        """An OSError that says the cache is full, read-only or not ours becomes a one-line cache error;
        others are the archive's (a name too long, a file where its folder should be)."""
        try:
            yield
        except OSError as e:
            if e.errno in CACHE_ERRNOS:
                raise cache_error(e, self.root.parent, "extract an archive") from e
            raise


def _decompressed(raw: IO[bytes]) -> IO[bytes]:
    """``raw`` read through the decompressor its magic bytes name (gzip, bzip2, xz) or as it is."""
    head = raw.read(6)
    raw.seek(0)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head[:3] == b"BZh":
        return bz2.BZ2File(raw)
    if head == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw)
    return raw


class _Tail(io.RawIOBase):
    """A reader that counts the bytes read through it and keeps at least the last ``keep`` of them."""

    def __init__(self, f: IO[bytes], keep: int = 1 << 20):
        self.f, self.keep, self.pos = f, keep, 0
        self.chunks: deque = deque()  # the last reads, oldest first, at least ``keep`` bytes when there are
        self.kept = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.pos += len(b)
        self.chunks.append(b)
        self.kept += len(b)
        while self.kept - len(self.chunks[0]) >= self.keep:
            self.kept -= len(self.chunks.popleft())
        return b

    def after(self, offset: int) -> bytes:
        """The kept bytes from stream position ``offset`` on."""
        start = self.pos - self.kept
        if offset < start:
            raise ValueError("tar end marker is before the kept bytes")
        return b"".join(self.chunks)[offset - start:]


def _extract_tar(archive: Path, w: _Writer) -> None:
    try:
        raw = open(archive, "rb")
    except OSError as e:
        raise _damaged(archive, e) from e
    with raw:
        try:
            stream = _Tail(_decompressed(raw))
            with tarfile.open(fileobj=stream, mode="r|") as t:
                for m in t:
                    w.take(m.size if m.isreg() else 0)
                    target = w.target(m.name, m.isdir())
                    if m.issym() or m.islnk():
                        raise CnnDepthError(f"refusing to extract {archive}: it holds a link ({m.name}); "
                                            f"unpack it yourself and pass the folder")
                    if m.isdir():
                        if target is not None:
                            w.mkdir(target)
                    elif m.isreg():
                        w.copy(t.extractfile(m), target)
                    else:
                        raise CnnDepthError(f"refusing to extract {archive}: entry {m.name!r} is not a file or "
                                            f"folder (a device or FIFO); unpack it yourself and pass the folder")
                end = t.offset
            # Read on to the end of the stream: the decompressor checks its CRC there, and anything but zero
            # padding after the end-of-archive marker means tarfile stopped at a damaged header.
            rest = stream.after(end)
            while True:
                if rest.strip(b"\0"):
                    raise tarfile.ReadError(f"data after the end of the archive at byte {end}: a damaged "
                                            f"member header")
                rest = stream.read(COPY_BYTES)
                if not rest:
                    break
        except CnnDepthError:
            raise
        except READ_ERRORS as e:
            raise _damaged(archive, e) from e


ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}  # what zipfile reads


def _extract_zip(archive: Path, w: _Writer) -> None:
    try:
        z = zipfile.ZipFile(archive)
    except READ_ERRORS as e:
        raise _damaged(archive, e) from e
    try:
        with z:
            _extract_zip_members(z, archive, w)
    except CnnDepthError:
        raise
    except READ_ERRORS as e:
        raise _damaged(archive, e) from e


def _extract_zip_members(z: zipfile.ZipFile, archive: Path, w: _Writer) -> None:
    infos = z.infolist()
    for info in infos:  # the directory gives every size up front: check the limit before writing
        w.take(0 if info.is_dir() else info.file_size)
    for info in infos:
        target = w.target(info.filename, info.is_dir())
        if info.flag_bits & 0x1:
            raise CnnDepthError(f"cannot extract {archive}: entry {info.filename!r} is encrypted; decrypt it "
                                f"yourself (unzip asks for the password) and pass the folder")
        if info.compress_type not in ZIP_METHODS:
            raise CnnDepthError(f"cannot extract {archive}: entry {info.filename!r} uses zip compression method "
                                f"{info.compress_type}, which Python cannot read; zip it again with deflate "
                                f"(the default) or pass an extracted folder")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise CnnDepthError(f"refusing to extract {archive}: it holds a link ({info.filename}); "
                                f"unpack it yourself and pass the folder")
        if info.is_dir():
            if target is not None:
                w.mkdir(target)
            continue
        with z.open(info) as src:  # ZipExtFile checks the member's CRC-32 when its last byte is read
            w.copy(src, target)
