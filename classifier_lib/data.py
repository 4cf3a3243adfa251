"""Finding labelled images on disk and holding them in memory as uint8 tensors.

Layout: `DATA_DIR/{Train,train}/<class>/...` and optionally `DATA_DIR/{Valid,valid,val}/<class>/...`
and `DATA_DIR/{Test,test}/...` (unlabelled, flat or nested). Without a validation folder a
stratified, seeded split of the training folder is used.

Every image is decoded once (in parallel), resized to the training resolution and kept as one
`N x 3 x S x S` uint8 tensor; the result, with its exact per-channel mean/std, is cached on disk
keyed by the file list, so the next run or notebook starts in a second.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .config import DataConfig
from .images import IMAGE_EXTENSIONS, UnreadableImage, is_image_file, load_image

TRAIN_NAMES = ("Train", "train", "training")
VALID_NAMES = ("Valid", "valid", "val", "Val", "validation")
TEST_NAMES = ("Test", "test")
CACHE_VERSION = 1
EXPECTED_LAYOUT = (
    "expected DATA_DIR/Train/<class>/*.jpg (one folder per class), optionally DATA_DIR/Valid/<class>/ "
    "with the same class folders and an unlabelled DATA_DIR/Test/"
)


class DataLayoutError(ValueError):
    """The data folder cannot be used; the message says what is wrong and what is expected."""


@dataclass
class Splits:
    root: Path
    train: Path
    valid: Path | None
    test: Path | None
    class_names: list[str]


@dataclass
class CachedImages(Dataset):
    """Decoded images as one uint8 tensor. Indexing with a list of indices returns a whole batch."""

    images: torch.Tensor  # N x 3 x S x S, uint8
    labels: torch.Tensor  # N, int64
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def select(self, indices) -> CachedImages:
        indices = torch.as_tensor(indices, dtype=torch.long)
        return CachedImages(self.images[indices], self.labels[indices], [self.paths[i] for i in indices], self.skipped)


@dataclass
class DataBundle:
    """Everything training needs: both splits in memory, the classes and the normalisation."""

    train: CachedImages
    valid: CachedImages
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    splits: Splits

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.train.skipped + self.valid.skipped


def find_splits(data_dir: str | Path) -> Splits:
    """Locate the train / valid / test folders and the class names, or say clearly what is wrong."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataLayoutError(f"data folder {root} does not exist; {EXPECTED_LAYOUT}")
    train = _first_existing(root, TRAIN_NAMES)
    if train is None:
        raise DataLayoutError(f"no Train folder in {root}; {EXPECTED_LAYOUT}")
    valid = _first_existing(root, VALID_NAMES)
    class_names = class_folders(train)
    if len(class_names) < 2:
        raise DataLayoutError(
            f"{train} has {len(class_names)} class folder(s) {class_names}; a classifier needs at least two; "
            + EXPECTED_LAYOUT
        )
    if valid is not None:
        valid_classes = class_folders(valid)
        if valid_classes != class_names:
            raise DataLayoutError(
                f"class folders differ between {train} {class_names} and {valid} {valid_classes}; "
                "rename or remove folders so both splits have the same classes"
            )
    return Splits(root, train, valid, _first_existing(root, TEST_NAMES), class_names)


def class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files below `folder` (recursive, sorted) and the other files, skipped with a reason."""
    images, skipped = [], []
    for path in sorted(folder.rglob("*")):
        if path.is_dir() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if is_image_file(path):
            images.append(path)
        else:
            skipped.append((str(path), "not an image file type"))
    return images, skipped


def list_labelled(split_dir: Path, class_names: list[str]) -> tuple[list[Path], list[int], list[tuple[str, str]]]:
    paths, labels, skipped = [], [], []
    for label, name in enumerate(class_names):
        class_paths, class_skipped = list_images(split_dir / name)
        if not class_paths:
            raise DataLayoutError(f"class folder {split_dir / name} holds no images; {EXPECTED_LAYOUT}")
        paths += class_paths
        labels += [label] * len(class_paths)
        skipped += class_skipped
    return paths, labels, skipped


class FlatImageDataset(Dataset):
    """Image files under a folder (flat or nested), unlabelled; `ids` are paths relative to it.

    Items are `(uint8 image, index, reason)`; an unreadable file gives an empty image and the reason,
    so one bad file is counted and skipped instead of stopping a whole DataLoader.
    """

    def __init__(self, paths: list[Path], size: int, root: Path | None = None):
        self.paths, self.size, self.root = list(paths), size, root

    @classmethod
    def from_folder(cls, folder: str | Path, size: int) -> FlatImageDataset:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataLayoutError(f"image folder {folder} does not exist")
        paths, _ = list_images(folder)
        if not paths:
            raise DataLayoutError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
        return cls(paths, size, folder)

    @property
    def ids(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() if self.root else str(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return load_image(self.paths[index], self.size), index, ""
        except UnreadableImage as error:
            return torch.empty(0, dtype=torch.uint8), index, str(error)

    def decode_all(self, workers: int = 0, desc: str = "decoding"):
        """Decode every file in parallel: (uint8 N x 3 x S x S, indices of readable files, skipped)."""
        workers = (workers or os.cpu_count() or 1) if len(self) > 32 else 0
        loader = DataLoader(self, batch_size=32, num_workers=workers, collate_fn=list)
        images, kept, skipped = [], [], []
        for batch in tqdm(loader, desc=desc, leave=False):
            for image, index, reason in batch:
                if reason:
                    skipped.append((str(self.paths[index]), reason))
                else:
                    images.append(image)
                    kept.append(index)
        size = self.size
        stacked = torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)
        return stacked, kept, skipped


def load_split(split_dir: Path, class_names: list[str], size: int, workers: int = 0) -> CachedImages:
    """Decode one labelled split, using the on-disk cache when the file list is unchanged."""
    paths, labels, skipped = list_labelled(split_dir, class_names)
    cache_file = _cache_path(paths, size)
    if cache_file.exists():
        try:
            cached = torch.load(cache_file, weights_only=True)
            return CachedImages(cached["images"], cached["labels"], cached["paths"], _pairs(cached["skipped"]))
        except Exception:  # a stale or broken cache is rebuilt, never fatal
            pass
    images, kept, unreadable = FlatImageDataset(paths, size).decode_all(workers, f"decoding {split_dir.name}")
    data = CachedImages(
        images, torch.tensor([labels[i] for i in kept], dtype=torch.long), [str(paths[i]) for i in kept],
        skipped + unreadable,
    )
    if len(data) == 0:
        raise DataLayoutError(f"no readable images in {split_dir}")
    _save_cache(cache_file, data)
    return data


def channel_stats(images: torch.Tensor, chunk: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std (population) over every pixel of a uint8 N x C x H x W tensor."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].to(torch.float64) / 255.0
        total += block.sum(dim=(0, 2, 3))
        total_sq += (block * block).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def stratified_split(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split: (`fraction` of each class, at least one; the rest), both sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(len(members), max(1, round(fraction * len(members))))
        chosen.append(rng.permutation(members)[:count])
    chosen = np.sort(np.concatenate(chosen))
    return chosen, np.setdiff1d(np.arange(len(labels)), chosen)


def load_data(config: DataConfig, seed: int = 0) -> DataBundle:
    """Decode (or load from cache) both splits described by `config` and compute the normalisation."""
    splits = find_splits(config.data_dir)
    train = load_split(splits.train, splits.class_names, config.image_size, config.workers)
    if splits.valid is not None:
        valid = load_split(splits.valid, splits.class_names, config.image_size, config.workers)
    else:
        valid_index, train_index = stratified_split(train.labels, config.val_fraction, seed)
        train, valid = train.select(train_index), train.select(valid_index)
    if config.subset < 1.0:
        train = train.select(stratified_split(train.labels, config.subset, seed)[0])
        valid = valid.select(stratified_split(valid.labels, config.subset, seed)[0])
    missing = sorted(set(range(len(splits.class_names))) - set(train.labels.tolist()))
    if missing:
        names = [splits.class_names[i] for i in missing]
        raise DataLayoutError(f"no readable training images for classes {names} in {splits.train}")
    mean, std = channel_stats(train.images)
    return DataBundle(train, valid, splits.class_names, mean, std, splits)


def cache_dir() -> Path:
    return Path(os.environ.get("CLASSIFIER_CACHE_DIR", Path.home() / ".cache" / "classifier_lib"))


def _cache_path(paths: list[Path], size: int) -> Path:
    digest = hashlib.sha1(f"v{CACHE_VERSION} size={size}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return cache_dir() / f"images_{digest.hexdigest()[:20]}.pt"


def _save_cache(cache_file: Path, data: CachedImages) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        torch.save(
            {"images": data.images, "labels": data.labels, "paths": data.paths,
             "skipped": json.dumps(data.skipped)},
            tmp,
        )
        os.replace(tmp, cache_file)
    except OSError:  # the cache only saves time; a read-only home must not stop training
        pass


def _pairs(raw: str) -> list[tuple[str, str]]:
    return [tuple(pair) for pair in json.loads(raw)]


def _first_existing(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / name for name in names if (root / name).is_dir()), None)
