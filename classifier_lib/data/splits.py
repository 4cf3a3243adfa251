"""Which files train and which are held out: the hash-stable held-out split, stratified subsets, the
digests that record a run's split, and the check that extra training files are no validation images.

Membership is a function of each file's path (relative to its folder) and the seed alone, so adding,
removing or renaming a file never moves another one between training and validation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from classifier_lib.data.folders import DataLayoutError

MIN_HELD_OUT = 3  # held-out images a class keeps at least (half its images when it has fewer than 6)


def held_out_split(paths: list[str], labels, fraction: float, seed: int, root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the files held out, the rest), both sorted.

    A file is held out when a hash of (`seed`, its path relative to `root`) falls below `fraction`: its
    membership depends on nothing else, so adding, removing or renaming a file moves only that file.
    Each class gets about `fraction` of its files, and at least a few to be measured on: its lowest-hash
    min(MIN_HELD_OUT, half its files); one with two or more keeps at least one file for training.
    """
    labels = np.asarray(labels)
    scores = _scores(paths, seed, root, "valid")
    chosen = scores < fraction
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        ranked = members[np.argsort(scores[members], kind="stable")]
        chosen[ranked[: min(MIN_HELD_OUT, len(members) // 2)]] = True  # a few to measure the class on
        if len(members) >= 2 and chosen[members].all():
            chosen[ranked[-1]] = False  # and one to train on
    return np.flatnonzero(chosen), np.flatnonzero(~chosen)


def stratified_subset(paths: list[str], labels, fraction: float, seed: int, root: str | Path) -> np.ndarray:
    """Sorted indices of `fraction` of each class (at least one): its files of lowest hash of (`seed`, path)."""
    labels = np.asarray(labels)
    scores = _scores(paths, seed, root, "subset")
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(len(members), max(1, round(fraction * len(members))))
        chosen.append(members[np.argsort(scores[members], kind="stable")[:count]])
    return np.sort(np.concatenate(chosen))


def _scores(paths: list[str], seed: int, root: str | Path, purpose: str) -> np.ndarray:
    """A deterministic number in [0, 1) per file from (purpose, seed, path relative to `root`), the same
    on every machine and Python version."""
    return np.array(
        [
            int.from_bytes(hashlib.sha1(f"{purpose}|{seed}|{os.path.relpath(path, root)}".encode()).digest()[:8], "big") / 2**64
            for path in paths
        ]
    )


def split_record(train: list[str], valid: list[str], root: str | Path) -> dict[str, int | str]:
    """Which files a run trains on and holds out for validation (before any `data.subset`), as counts and
    digests of their paths relative to the data folder: saved in metrics.json and every checkpoint, and
    compared by whatever rebuilds a split (evaluation, resume)."""
    return {
        "train_files": len(train),
        "train_digest": files_digest(train, root),
        "valid_files": len(valid),
        "valid_digest": files_digest(valid, root),
    }


def files_digest(paths: list[str], root: str | Path) -> str:
    """A digest of a set of files, by their paths relative to `root` (order does not matter)."""
    names = sorted(os.path.relpath(path, root) for path in paths)
    return hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]


def refuse_validation_images(extra: list[str], valid: list[str], source: str) -> None:
    """Refuse extra training files that are validation images: the same file (a hard link has another
    path but the same device and inode) or a copy of one (same size and content)."""

    def identity(path: str) -> tuple[int, int]:
        stat = os.stat(path)
        return stat.st_dev, stat.st_ino

    valid_ids = {identity(path): path for path in valid}
    valid_by_size: dict[int, list[str]] = {}
    for path in valid:
        valid_by_size.setdefault(os.path.getsize(path), []).append(path)
    contents: dict[str, str] = {}  # path -> digest, computed only for files whose size matches

    def content(path: str) -> str:
        if path not in contents:
            contents[path] = hashlib.sha1(Path(path).read_bytes()).hexdigest()
        return contents[path]

    leaks = []
    for path in extra:
        same = valid_ids.get(identity(path)) or next(
            (other for other in valid_by_size.get(os.path.getsize(path), []) if content(other) == content(path)), None
        )
        if same:
            leaks.append((path, same))
    if leaks:
        raise DataLayoutError(
            f"{len(leaks)} images of data.extra_train_dir {source} are validation images (e.g. {leaks[0][0]} is "
            f"{leaks[0][1]}): training on them would make the validation accuracy no score; pseudo-label a folder "
            "outside Train/ and Valid/"
        )


def spread_classes(classes: int, limit: int) -> list[int]:
    """At most `limit` class indices spread evenly over `range(classes)` (all of them when they fit): the
    classes a figure shows, so that it stays readable at 3 classes and at 300."""
    if classes <= limit:
        return list(range(classes))
    return sorted({round(i * (classes - 1) / (limit - 1)) for i in range(limit)})


def first_per_class(labels: torch.Tensor, count: int, classes: Sequence[int]) -> torch.Tensor:
    """Indices of the first `count` images of each of `classes`, class by class (fewer where a class has
    fewer): a fixed, readable sample for figures."""
    return torch.cat([(labels == label).nonzero().flatten()[:count] for label in classes])
