"""Dataset statistics for the data report: per-file size and colour mode, read from headers only."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image

from classifier_lib.data.dataset import DataBundle
from classifier_lib.data.folders import Splits, list_images


def scan_files(splits: Splits) -> pd.DataFrame:
    """One row per file of every split: split, class, path, width, height, mode, and why it is unusable.

    Only image headers are read, so this is fast; the full decode happens when the data is loaded.
    """
    rows = []
    folders = [("train", splits.train), ("valid", splits.valid), ("test", splits.test)]
    for split, folder in folders:
        if folder is None:
            continue
        for class_name in splits.class_names if split != "test" else [None]:
            root = folder / class_name if class_name else folder
            images, others = list_images(root)
            rows += [_header_row(split, class_name, path) for path in images]
            rows += [dict(split=split, label=class_name, path=p, problem=reason) for p, reason in others]
    frame = pd.DataFrame(rows, columns=["split", "label", "path", "width", "height", "mode", "problem"])
    frame["problem"] = frame["problem"].fillna("")
    return frame


def _header_row(split: str, label: str | None, path: Path) -> dict:
    row: dict[str, object] = dict(split=split, label=label, path=str(path), problem="")
    try:
        with Image.open(path) as image:
            row.update(width=image.width, height=image.height, mode=image.mode)
    except Exception as error:  # any unreadable header is reported, never raised
        row["problem"] = f"{type(error).__name__}: {error}"
    return row


def counts_per_class(files: pd.DataFrame) -> dict[str, dict[str, int]]:
    """`{split: {class: images}}` for the labelled splits, usable files only."""
    usable = files[(files["problem"] == "") & files["label"].notna()]
    return {split: group.groupby("label").size().to_dict() for split, group in usable.groupby("split", sort=False)}


def unusable_files(files: pd.DataFrame, skipped: list[tuple[str, str]]) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """(files refused while scanning, with split, class, path and problem; the (path, reason) of files
    that failed later, while decoding): every file the run cannot use, each once."""
    problems = files[files.problem != ""][["split", "label", "path", "problem"]]
    scanned = set(problems.path)
    return problems, [(path, reason) for path, reason in skipped if path not in scanned]


def data_stats(files: pd.DataFrame, data: DataBundle) -> dict:
    """What a run keeps as `data_stats.json`: images per class and split, the normalisation, and every
    file that could not be used with the reason."""
    problems, decode_failures = unusable_files(files, data.skipped)
    return {
        "counts": counts_per_class(files),
        "mean": list(data.mean),
        "std": list(data.std),
        "skipped": problems[["path", "problem"]].values.tolist() + [list(pair) for pair in decode_failures],
    }


FEW_TO_MEASURE = 5  # validation images of a class below which its recall says little


def balance_note(counts: dict[str, dict[str, int]]) -> str:
    """What the class counts mean for the figures to read, in words: whether the training classes are
    balanced (then accuracy is a fair headline) or not (then balanced accuracy is)."""
    train = next(iter(counts.values()), {})
    if not train:
        return "no labelled images"
    largest, smallest = max(train, key=train.__getitem__), min(train, key=train.__getitem__)
    ratio = imbalance(train)
    if is_imbalanced(train):
        note = (
            f"Imbalanced: the largest class has {ratio:.1f}x the images of the smallest ({largest}: {train[largest]}, "
            f"{smallest}: {train[smallest]}). Plain accuracy favours the large classes, so the reports headline "
            "balanced accuracy (the mean recall per class) beside it."
        )
    else:
        note = (
            f"Balanced: the largest class has {ratio:.2f}x the images of the smallest, so plain accuracy is a fair "
            "headline (balanced accuracy is reported beside it)."
        )
    return note


def validation_note(data: DataBundle) -> str:
    """The classes with fewer than FEW_TO_MEASURE validation images (a Valid folder or the held-out part of
    Train), whose recall says little, in words ("" when there are none)."""
    counts = torch.bincount(data.valid.labels.cpu(), minlength=len(data.class_names)).tolist()
    few = [name for name, count in zip(data.class_names, counts) if count < FEW_TO_MEASURE]
    if not few:
        return ""
    shown = ", ".join(few[:10]) + (f" and {len(few) - 10} more" if len(few) > 10 else "")
    return (
        f"{len(few)} of {len(counts)} classes have fewer than {FEW_TO_MEASURE} validation images ({shown}): "
        "their recall is measured on too few images to trust."
    )


IMBALANCE_RATIO = 1.5  # largest class over smallest: above it, balanced accuracy is the fair headline


def imbalance(counts: Mapping[Any, int]) -> float:
    """Images of the largest class over those of the smallest (1.0 for a balanced set)."""
    values = [count for count in counts.values() if count > 0]
    return float(max(values) / min(values)) if values else 1.0


def is_imbalanced(counts: Mapping[Any, int]) -> bool:
    """Is the largest class more than IMBALANCE_RATIO times the smallest?"""
    return bool(imbalance(counts) > IMBALANCE_RATIO)
