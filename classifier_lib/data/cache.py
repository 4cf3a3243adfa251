"""The on-disk cache of decoded images: one entry per (file list, decode size, decoding code).

An entry is `images_<key>.npy`, the N x 3 x S x S uint8 pixels, written by the decoders as they go
into a preallocated memory-mapped file and read back by memory mapping, and `images_<key>.json`, the
paths and skipped files, written last: an entry without it is incomplete and rebuilt. Labels are not
cached: they come from the paths and the class list of the run reading the entry. The cache is
capped in size (`$CLASSIFIER_CACHE_MAX_GB`), the least recently used entries going first. The
key covers the absolute paths, sizes and dates of the files, the size, and a fingerprint of the
decoding code and Pillow's version, so pixels decoded another way are never reused.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import torch

from classifier_lib.config import ConfigError
from classifier_lib.data import images as images_module
from classifier_lib.utils.fileio import atomic_write

CACHE_VERSION = 3
DEFAULT_MAX_GB = 20  # the cache's size cap unless $CLASSIFIER_CACHE_MAX_GB says otherwise


def cache_dir() -> Path:
    return Path(os.environ.get("CLASSIFIER_CACHE_DIR", Path.home() / ".cache" / "classifier_lib"))


def clear_cache() -> tuple[int, int]:
    """Delete every decoded-image cache file; returns (files, bytes) removed."""
    files = list(cache_dir().glob("images_*"))
    freed = sum(f.stat().st_size for f in files)
    for f in files:
        f.unlink(missing_ok=True)
    return len(files), freed


@functools.cache  # one read of images.py per process, not one per split
def preprocessing_fingerprint() -> str:
    """Changes whenever decoding could give other pixels: this library's decode code or Pillow's version."""
    source = Path(images_module.__file__).read_bytes()
    return hashlib.sha1(source + PIL.__version__.encode() + f"v{CACHE_VERSION}".encode()).hexdigest()[:12]


def entry_stem(paths: list[Path], size: int) -> Path:
    """The entry's path without suffix: `.npy` holds the pixels, `.json` the index."""
    digest = hashlib.sha1(f"{preprocessing_fingerprint()} size={size}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return cache_dir() / f"images_{digest.hexdigest()[:20]}"


def decode_into_cache(entry: Path, count: int, size: int, decode: Callable[[torch.Tensor], tuple]):
    """Run `decode(out)` on a preallocated memory-mapped `count x 3 x size x size` array, then move the
    file into place; returns what `decode` returns. Nothing is left behind when it fails.

    The file's blocks are reserved before any pixel is written: a memory-mapped write to a sparse file
    on a full disk kills the process (SIGBUS), while a reservation that does not fit raises OSError,
    which the caller turns into decoding in memory."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries()
    make_room(count * 3 * size * size)
    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}.npy")
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, 3, size, size))
        _reserve(tmp)
        result = decode(torch.from_numpy(array))
        array.flush()
        _fsync(tmp)  # the pixels are on disk before the index that declares the entry complete
        os.replace(tmp, entry.with_suffix(".npy"))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def write_entry_index(entry: Path, paths: list[str], skipped: list[tuple[str, str]]) -> None:
    """Complete an entry whose pixels are in place (else do nothing)."""
    if not entry.with_suffix(".npy").exists():
        return
    try:
        atomic_write(entry.with_suffix(".json"), json.dumps({"count": len(paths), "paths": paths, "skipped": skipped}))
    except OSError:
        pass  # the entry stays incomplete and is rebuilt next time


def open_entry(entry: Path):
    """(images memory-mapped copy-on-write, paths, skipped) of a complete entry, else None; marks the
    entry as used (for the size cap's least-recently-used eviction). A broken entry is rebuilt, never fatal."""
    try:
        index = entry.with_suffix(".json")
        record = json.loads(index.read_text())
        images = torch.from_numpy(np.load(entry.with_suffix(".npy"), mmap_mode="c"))[: record["count"]]
        if not len(images) == len(record["paths"]):
            return None
        os.utime(index)
        return images, record["paths"], [tuple(pair) for pair in record["skipped"]]
    except (OSError, ValueError, KeyError):
        return None


def cache_limit_bytes() -> int:
    """The cache's size cap: `$CLASSIFIER_CACHE_MAX_GB` (GiB, default 20; 0 = no cap)."""
    setting = os.environ.get("CLASSIFIER_CACHE_MAX_GB", str(DEFAULT_MAX_GB))
    try:
        return int(float(setting) * 2**30)
    except ValueError:
        raise ConfigError(f"CLASSIFIER_CACHE_MAX_GB must be a number of GiB, got {setting!r}") from None


def make_room(needed: int) -> list[Path]:
    """Delete the least recently used entries until `needed` more bytes fit under the cap; returns
    the entries deleted. An entry a running process maps stays readable by it (unlinked, not truncated)."""
    limit = cache_limit_bytes()
    if not limit:
        return []
    entries = sorted(cache_dir().glob("images_*.json"), key=lambda index: index.stat().st_mtime)
    sizes = {index: index.with_suffix(".npy").stat().st_size if index.with_suffix(".npy").exists() else 0 for index in entries}
    total, removed = sum(sizes.values()), []
    for index in entries:
        if total + needed <= limit:
            break
        index.unlink(missing_ok=True)
        index.with_suffix(".npy").unlink(missing_ok=True)
        total -= sizes[index]
        removed.append(index.with_suffix(""))
    return removed


def remove_stale_temporaries() -> int:
    """Delete half-written pixel files left by decoders that died (their process is gone)."""
    removed = 0
    for tmp in cache_dir().glob("images_*.tmp*.npy"):
        pid = tmp.suffixes[-2].removeprefix(".tmp") if len(tmp.suffixes) >= 2 else ""
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _reserve(path: Path) -> None:
    """Allocate every block of `path` now, so that running out of space is an OSError here."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve: go on
            raise
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
