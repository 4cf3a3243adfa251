"""Pseudo-labels: a trained model (the teacher) labels the unlabelled images it is confident about,
and a new model (the student) trains on them beside the labelled ones.

`pseudo_label` predicts every image under a folder (e.g. the data set's Test/) and copies those whose
top probability reaches a threshold into `OUT/<class>/`, with `pseudo_labels.csv` listing every image
(id, label, confidence, kept). Training takes such a folder as `data.extra_train_dir`: its images join
the training split only, so the validation accuracy stays a score as long as the teacher did not
train on Valid. It is opt-in: nothing uses unlabelled images unless told to.
"""
from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .folders import DataLayoutError
from .inference import Predictor, csv_safe


@dataclass
class PseudoLabels:
    out_dir: Path
    kept: Counter  # class name -> images kept
    total: int  # readable images predicted
    skipped: list[tuple[str, str]]  # (path, reason) of unreadable files
    threshold: float

    def summary(self) -> str:
        per_class = ", ".join(f"{name} {count}" for name, count in sorted(self.kept.items()))
        return (f"kept {sum(self.kept.values())} of {self.total} images with confidence >= {self.threshold:g} "
                f"({per_class or 'none'}) in {self.out_dir}; {len(self.skipped)} unreadable files skipped")


def pseudo_label(checkpoint: str | Path, folder: str | Path, out_dir: str | Path, threshold: float = 0.9,
                 device: str = "auto") -> PseudoLabels:
    """Label the images under `folder` with `checkpoint` and copy the confident ones into `out_dir/<class>/`.

    `out_dir` must not exist yet or be empty: an earlier set of pseudo-labels is never overwritten.
    """
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataLayoutError(f"{out_dir} already holds files; choose a new folder for these pseudo-labels")
    folder = Path(folder)
    predictions = Predictor(checkpoint, device).predict_folder(folder)
    confidences, indices = predictions.probabilities.max(dim=1)
    kept: Counter = Counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "pseudo_labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label", "confidence", "kept"])
        for image_id, index, confidence in zip(predictions.ids, indices.tolist(), confidences.tolist()):
            label = predictions.class_names[index]
            keep = confidence >= threshold
            if keep:
                _link_or_copy(folder / image_id, out_dir / label / image_id.replace("/", "__"))
                kept[label] += 1
            writer.writerow([csv_safe(image_id), label, f"{confidence:.6f}", int(keep)])
    return PseudoLabels(out_dir, kept, len(predictions.ids), predictions.skipped, threshold)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows one (no second copy of the image), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
