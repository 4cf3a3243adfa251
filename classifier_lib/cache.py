"""The on-disk cache of decoded images: one entry per (file list, decode size, decoding code).

An entry is `images_<key>.npy`, the N x 3 x S x S uint8 pixels, written by the decoders as they go
into a preallocated memory-mapped file and read back by memory mapping, and `images_<key>.json`, the
labels, paths and skipped files, written last: an entry without it is incomplete and rebuilt. The
key covers the absolute paths, sizes and dates of the files, the size, and a fingerprint of the
decoding code and Pillow's version, so pixels decoded another way are never reused.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import torch

from . import images as images_module

CACHE_VERSION = 3


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


def entry_for(paths: list[Path], size: int) -> Path:
    """The entry's path without suffix: `.npy` holds the pixels, `.json` the index."""
    digest = hashlib.sha1(f"{preprocessing_fingerprint()} size={size}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return cache_dir() / f"images_{digest.hexdigest()[:20]}"


def decode_into_cache(entry: Path, count: int, size: int, decode: Callable[[torch.Tensor], tuple]):
    """Run `decode(out)` on a preallocated memory-mapped `count x 3 x size x size` array, then move the
    file into place; returns what `decode` returns. Nothing is left behind when it fails."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}.npy")
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, 3, size, size))
        result = decode(torch.from_numpy(array))
        array.flush()
        os.replace(tmp, entry.with_suffix(".npy"))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def write_entry_index(entry: Path, labels: list[int], paths: list[str], skipped: list[tuple[str, str]]) -> None:
    """Complete an entry whose pixels are in place (else do nothing)."""
    if not entry.with_suffix(".npy").exists():
        return
    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}.json")
    try:
        tmp.write_text(json.dumps({"count": len(labels), "labels": labels, "paths": paths, "skipped": skipped}))
        os.replace(tmp, entry.with_suffix(".json"))
    except OSError:
        tmp.unlink(missing_ok=True)


def open_entry(entry: Path):
    """(images memory-mapped copy-on-write, labels, paths, skipped) of a complete entry, else None.
    A broken entry is rebuilt, never fatal."""
    try:
        record = json.loads(entry.with_suffix(".json").read_text())
        images = torch.from_numpy(np.load(entry.with_suffix(".npy"), mmap_mode="c"))[: record["count"]]
        if not len(images) == len(record["labels"]) == len(record["paths"]):
            return None
        return images, record["labels"], record["paths"], [tuple(pair) for pair in record["skipped"]]
    except (OSError, ValueError, KeyError):
        return None
