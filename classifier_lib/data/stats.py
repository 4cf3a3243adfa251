"""Dataset statistics for the data report: per-file size and colour mode, read from headers only."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
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
    return {"counts": counts_per_class(files), "mean": list(data.mean), "std": list(data.std),
            "skipped": problems[["path", "problem"]].values.tolist() + [list(pair) for pair in decode_failures]}
