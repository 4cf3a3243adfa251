"""The labelled splits a run trains and validates on, held as uint8 tensors.

Without a validation folder a seeded part of the training folder is held out; which files are held
out is a function of each file's path and the seed alone (`held_out_split`), so adding, removing or
renaming a file never moves another one between training and validation.

Every image is decoded once (in parallel), resized to the largest resolution a run needs and kept
as one `N x 3 x S x S` uint8 tensor, backed by a memory-mapped file of the on-disk cache (`cache`),
so the next run or notebook starts in a second and memory stays bounded by the batches in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, WeightedRandomSampler

from classifier_lib.config import DataConfig
from classifier_lib.data.cache import decode_into_cache, entry_stem, open_entry, write_entry_index
from classifier_lib.data.folders import DataLayoutError, FlatImageDataset, Splits, find_splits, list_labelled
from classifier_lib.data.splits import held_out_split, refuse_validation_images, split_record, stratified_subset


class ImageRows:
    """Rows of one or more uint8 N x 3 x S x S tensors (memory-mapped cache entries), gathered only when
    indexed: a held-out split, a subset or Train + an extra folder without a copy of the pixels.

    It reads like the tensor it stands for wherever the library uses one: `len`, indexing with an int, a
    slice, a list or a tensor (a new tensor of those rows), `shape`, `dtype`, `nbytes`, `to(device)`.
    """

    def __init__(self, parts: list[torch.Tensor], part: torch.Tensor, row: torch.Tensor):
        self.parts, self.part, self.row = parts, part, row  # row i is parts[part[i]][row[i]]

    @classmethod
    def of(cls, images: torch.Tensor | ImageRows) -> ImageRows:
        if isinstance(images, ImageRows):
            return images
        return cls([images], torch.zeros(len(images), dtype=torch.long), torch.arange(len(images)))

    def select(self, indices: torch.Tensor) -> ImageRows:
        return ImageRows(self.parts, self.part[indices], self.row[indices])

    def concat(self, other: ImageRows) -> ImageRows:
        return ImageRows(
            self.parts + other.parts, torch.cat([self.part, other.part + len(self.parts)]), torch.cat([self.row, other.row])
        )

    def __len__(self) -> int:
        return len(self.row)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)) or (torch.is_tensor(index) and index.ndim == 0):
            return self.parts[int(self.part[index])][int(self.row[index])]
        part, row = self.part[index], self.row[index]
        out = torch.empty((len(row), *self.shape[1:]), dtype=self.dtype, device=self.device)
        for number, images in enumerate(self.parts):
            mine = part == number
            if mine.any():
                out[mine.to(out.device)] = images[row[mine].to(images.device)]
        return out

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.parts[0].shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0].dtype

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    @property
    def is_cuda(self) -> bool:
        return self.parts[0].is_cuda

    @property
    def nbytes(self) -> int:
        return len(self) * self.parts[0][:1].nbytes

    def numel(self) -> int:
        return len(self) * self.parts[0][:1].numel()

    def to(self, device: torch.device, chunk: int = 1024) -> torch.Tensor:
        """The rows as one tensor on `device` (e.g. the whole split on a GPU it fits on)."""
        return torch.cat([self[start : start + chunk].to(device) for start in range(0, len(self), chunk)])


Images = torch.Tensor | ImageRows  # uint8 N x 3 x S x S, held or gathered on demand


@dataclass
class CachedImages(Dataset):
    """Decoded images: one uint8 tensor, or `ImageRows` of cached tensors (no copy of their pixels).
    Indexing with a list of indices returns a whole batch."""

    images: Images
    labels: torch.Tensor  # N, int64
    paths: list[str]  # absolute

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def select(self, indices) -> CachedImages:
        """Some of the images, as rows of the same tensors: the pixels are not copied."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return CachedImages(ImageRows.of(self.images).select(indices), self.labels[indices], [self.paths[i] for i in indices])

    def to(self, device: torch.device) -> CachedImages:
        """The same images and labels on `device` (e.g. the whole set on a GPU it fits on)."""
        return CachedImages(self.images.to(device), self.labels, self.paths)

    def concat(self, other: CachedImages) -> CachedImages:
        """Both sets of images, as rows of their tensors: the pixels are not copied."""
        return CachedImages(
            ImageRows.of(self.images).concat(ImageRows.of(other.images)),
            torch.cat([self.labels, other.labels]),
            self.paths + other.paths,
        )


@dataclass
class LabelledSplit:
    """One labelled folder as decoded, with the files that were skipped (path, reason)."""

    data: CachedImages
    skipped: list[tuple[str, str]]


@dataclass
class DataBundle:
    """Everything training needs: both splits in memory, the classes and the normalisation."""

    train: CachedImages
    valid: CachedImages
    class_names: list[str]
    mean: tuple[float, ...]  # per channel
    std: tuple[float, ...]
    splits: Splits
    skipped: list[tuple[str, str]]  # every file of the data folder that could not be used, once
    valid_source: str  # which images the validation split is, in words
    extra_images: int = 0  # training images from data.extra_train_dir (e.g. pseudo-labelled)
    split: dict = field(default_factory=dict)  # split_record: which files each split holds, as digests


def load_split(split_dir: Path, class_names: list[str], size: int, workers: int = 0, every_class: bool = True) -> LabelledSplit:
    """Decode one labelled split into the on-disk cache, or map the cached copy when files and
    preprocessing are unchanged.

    The images live in a memory-mapped `.npy` file (N x 3 x S x S uint8) written by the decoders as
    they go: resident memory stays bounded by the batches in use, however large the data set. Only
    where the cache cannot be written (read-only or full disk) are they held in memory instead.
    """
    paths, labels, skipped = list_labelled(split_dir, class_names, every_class)
    entry = entry_stem(paths, size)
    cached = open_entry(entry)
    label_of = dict(zip(map(str, paths), labels))
    # labels come from today's class list, never from the cache (classes may have been added); an index that names
    # the files otherwise (written for the same files reached by a relative path) is decoded again, not trusted
    if cached is not None and all(path in label_of for path in cached[1]):
        images, cached_paths, cached_skipped = cached
        return LabelledSplit(
            CachedImages(images, torch.tensor([label_of[p] for p in cached_paths], dtype=torch.long), cached_paths),
            cached_skipped,
        )
    dataset = FlatImageDataset(paths, size)
    desc = f"decoding {split_dir.name}"
    try:
        images, kept, unreadable = decode_into_cache(
            entry, len(dataset), size, lambda out: dataset.decode_all(workers, desc, out)
        )
    except OSError:  # the cache only saves time and memory; a read-only or full disk must not stop training
        images, kept, unreadable = dataset.decode_all(workers, desc)
    if not kept:
        raise DataLayoutError(f"no readable images in {split_dir}")
    split = LabelledSplit(
        CachedImages(images, torch.tensor([labels[i] for i in kept], dtype=torch.long), [str(paths[i]) for i in kept]),
        skipped + unreadable,
    )
    write_entry_index(entry, split.data.paths, split.skipped)
    return split


def channel_stats(images: Images, chunk: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def load_data(config: DataConfig, seed: int = 0) -> DataBundle:
    """Decode (or load from cache) both splits described by `config` and compute the normalisation."""
    splits = find_splits(config.data_dir)
    train, valid, skipped, valid_source = _train_and_valid(splits, config, seed)
    held_out = valid  # the validation pool, before any subset: what evaluation rebuilds
    if config.subset < 1.0:
        train = train.select(stratified_subset(train.paths, train.labels, config.subset, seed, splits.root))
        valid = valid.select(stratified_subset(valid.paths, valid.labels, config.subset, seed, splits.root))
    extra_images = 0
    if config.extra_train_dir:
        extra = load_extra(config, splits.class_names)
        refuse_validation_images(extra.data.paths, valid.paths, config.extra_train_dir)
        train, skipped, extra_images = train.concat(extra.data), skipped + extra.skipped, len(extra.data)
    if config.train_on_all:
        train = train.concat(valid)
    missing = sorted(set(range(len(splits.class_names))) - set(train.labels.tolist()))
    if missing:
        names = [splits.class_names[i] for i in missing]
        raise DataLayoutError(f"no readable training images for classes {names} in {splits.train}")
    mean, std = channel_stats(train.images)
    return DataBundle(
        train,
        valid,
        splits.class_names,
        mean,
        std,
        splits,
        skipped,
        valid_source,
        extra_images,
        split_record(train.paths, held_out.paths, splits.root),
    )


def load_held_out(config: DataConfig, seed: int, split: str = "valid") -> tuple[CachedImages, str]:
    """The whole `valid` (or `train`) split a run with this config and seed used, and what it is in
    words: the Valid folder, or the part of Train held out by the seeded split when there is none."""
    if split not in ("valid", "train"):
        raise ValueError(f"split must be valid or train, got {split!r}")
    splits = find_splits(config.data_dir)
    if split == "valid" and splits.valid is not None:
        return load_split(splits.valid, splits.class_names, config.decode_size, config.workers).data, str(splits.valid)
    train, valid, _, valid_source = _train_and_valid(splits, config, seed)
    return (valid, valid_source) if split == "valid" else (train, f"{splits.train} less the validation split")


def load_extra(config: DataConfig, class_names: list[str]) -> LabelledSplit:
    """`data.extra_train_dir`: more labelled images for training only (e.g. pseudo-labelled ones)."""
    folder = Path(config.extra_train_dir).expanduser().resolve()
    if not folder.is_dir():
        raise DataLayoutError(f"data.extra_train_dir {folder} does not exist")
    return load_split(folder, class_names, config.decode_size, config.workers, every_class=False)


def _train_and_valid(splits: Splits, config: DataConfig, seed: int):
    """(train, valid, skipped files, what valid is): the Valid folder, else a seeded split of Train."""
    size = config.decode_size
    train = load_split(splits.train, splits.class_names, size, config.workers)
    if splits.valid is not None:
        valid = load_split(splits.valid, splits.class_names, size, config.workers)
        return train.data, valid.data, train.skipped + valid.skipped, str(splits.valid)
    valid_index, train_index = held_out_split(train.data.paths, train.data.labels, config.val_fraction, seed, splits.train)
    source = f"{config.val_fraction:.0%} of {splits.train} held out (by a hash of each path and seed {seed}; no Valid folder)"
    return train.data.select(train_index), train.data.select(valid_index), train.skipped, source


def class_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Per class, the inverse of its share of `labels`, scaled so that a balanced set gets 1 everywhere
    (a class absent from `labels` gets 0)."""
    counts = torch.bincount(labels.cpu(), minlength=classes).double()
    return torch.where(counts > 0, len(labels) / (classes * counts.clamp_min(1)), 0.0).float()


def batches(
    dataset: CachedImages,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    rank: int = 0,
    world: int = 1,
    balanced: bool = False,
):
    """A DataLoader yielding whole batches straight from the in-memory tensors.

    With a generator the order is shuffled and the last incomplete batch dropped (training);
    without one the order is kept and every sample is seen (evaluation). `balanced` (training) draws
    as many images, with replacement, each class equally often. With several processes every rank
    draws the same order and takes every `world`-th batch from its `rank` on, all ranks the same
    number of them.
    """
    sampler: BatchSampler | list[list[int]]
    if generator is not None and balanced:
        weights = class_weights(dataset.labels, int(dataset.labels.max()) + 1)[dataset.labels.cpu()]
        draws = WeightedRandomSampler(weights.tolist(), len(dataset), replacement=True, generator=generator)
        sampler = BatchSampler(draws, batch_size, drop_last=len(dataset) > batch_size)
    elif generator is not None:
        sampler = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=len(dataset) > batch_size)
    else:
        sampler = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
    if world > 1:
        order = list(sampler)
        sampler = order[rank : len(order) // world * world : world]
    pin = device.type == "cuda" and not dataset.images.is_cuda
    return DataLoader(dataset, sampler=sampler, batch_size=None, pin_memory=pin)
