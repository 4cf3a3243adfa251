"""Pseudo-labels: a trained model (the teacher) labels the unlabelled images it is confident about,
and a new model (the student) trains on them beside the labelled ones.

`pseudo_label` predicts every image under a folder (e.g. the data set's Test/) and copies those whose
top probability reaches a threshold into `OUT/<class>/` (hard links where possible), with `pseudo_labels.csv` listing every image
(id, label, confidence, kept). Training takes such a folder as `data.extra_train_dir`: its images join
the training split only, so the validation accuracy stays a score as long as the teacher did not
train on Valid. It is opt-in: nothing uses unlabelled images unless told to.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from classifier_lib.config import ConfigError
from classifier_lib.data.folders import DataLayoutError, find_splits
from classifier_lib.inference.predictor import Predictor
from classifier_lib.utils.fileio import write_csv


@dataclass
class PseudoLabels:
    out_dir: Path
    kept: Counter  # class name -> images kept
    total: int  # readable images predicted
    skipped: list[tuple[str, str]]  # (path, reason) of unreadable files
    threshold: float

    def summary(self) -> str:
        per_class = ", ".join(f"{name} {count}" for name, count in sorted(self.kept.items()))
        return (
            f"kept {sum(self.kept.values())} of {self.total} images with confidence >= {self.threshold:g} "
            f"({per_class or 'none'}) in {self.out_dir}; {len(self.skipped)} unreadable files skipped"
        )


def pseudo_label(
    checkpoint: str | Path, folder: str | Path, out_dir: str | Path, threshold: float = 0.9, device: str = "auto"
) -> PseudoLabels:
    """Label the images under `folder` with `checkpoint` and link the confident ones into
    `out_dir/<class>/<their path under folder>`.

    `out_dir` must not exist yet or be empty: an earlier set of pseudo-labels is never overwritten.
    `folder` must not overlap the teacher's Train/ or Valid/: labelled images are no pseudo-labels,
    and validation images in a student's training set would make its validation accuracy no score.
    """
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataLayoutError(f"{out_dir} already holds files; choose a new folder for these pseudo-labels")
    folder = Path(folder)
    predictor = Predictor(checkpoint, device)
    _refuse_labelled_folder(folder, predictor.loaded.config.data.data_dir)
    predictions = predictor.predict_folder(folder)
    confidences, indices = predictions.probabilities.max(dim=1)
    kept: Counter = Counter()
    rows = []
    for image_id, index, confidence in zip(predictions.ids, indices.tolist(), confidences.tolist()):
        label = predictions.class_names[index]
        keep = confidence >= threshold
        if keep:  # ids are unique paths under `folder`: keeping them as paths never makes two files one
            _link_or_copy(folder / image_id, out_dir / label / image_id)
            kept[label] += 1
        rows.append([image_id, label, f"{confidence:.6f}", int(keep)])
    write_csv(out_dir / "pseudo_labels.csv", ["id", "label", "confidence", "kept"], rows)
    return PseudoLabels(out_dir, kept, len(predictions.ids), predictions.skipped, threshold)


def _refuse_labelled_folder(folder: Path, data_dir: str) -> None:
    """Refuse a `folder` inside (or holding) the teacher's Train/ or Valid/ folder."""
    try:
        splits = find_splits(data_dir)
    except DataLayoutError:  # the teacher's data folder is not here: nothing to compare with
        return
    folder = folder.expanduser().resolve()
    for labelled in filter(None, (splits.train, splits.valid)):
        if folder.is_relative_to(labelled) or labelled.is_relative_to(folder):
            raise DataLayoutError(
                f"{folder} overlaps the teacher's labelled folder {labelled}: pseudo-label unlabelled images only "
                "(e.g. DATA_DIR/Test); a student trained on validation images would score itself on its training set"
            )


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows one (no second copy of the image), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
