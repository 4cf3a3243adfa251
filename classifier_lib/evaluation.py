"""Evaluating a checkpoint on a labelled split: accuracy, per-class report, confusion, worst mistakes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import classification_report, confusion_matrix

from .data import CachedImages, DataLayoutError, find_splits, load_split
from .inference import Predictor


@dataclass
class Evaluation:
    """Predictions of one model over one labelled split."""

    class_names: list[str]
    data: CachedImages
    probabilities: torch.Tensor  # N x classes

    @property
    def labels(self) -> np.ndarray:
        return self.data.labels.numpy()

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(dim=1).numpy()

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.labels).mean())

    @property
    def losses(self) -> np.ndarray:
        """Per-image cross-entropy: how wrong each prediction is."""
        return F.nll_loss(self.probabilities.clamp_min(1e-12).log(), self.data.labels, reduction="none").numpy()

    def report(self) -> pd.DataFrame:
        """Per-class precision, recall, F1 and support, plus the averages (scikit-learn)."""
        raw = classification_report(
            self.labels, self.predictions, labels=range(len(self.class_names)), target_names=self.class_names,
            output_dict=True, zero_division=0,
        )
        return pd.DataFrame(raw).T

    def confusion(self, normalize: str | None = None) -> np.ndarray:
        """Rows are true classes, columns predicted; `normalize="true"` gives per-class rates."""
        return confusion_matrix(self.labels, self.predictions, labels=range(len(self.class_names)), normalize=normalize)

    def misclassified(self) -> np.ndarray:
        """Indices of wrong predictions, highest loss first."""
        wrong = np.flatnonzero(self.predictions != self.labels)
        return wrong[np.argsort(-self.losses[wrong])]

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "images": len(self.labels), "errors": int((self.predictions != self.labels).sum()),
                "skipped_files": len(self.data.skipped)}


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, split: str = "valid",
                        device: str = "auto") -> Evaluation:
    """Evaluate a checkpoint on the `valid` (or `train`) split of a data folder."""
    predictor = Predictor(checkpoint, device)
    splits = find_splits(data_dir)
    folder = splits.valid if split == "valid" else splits.train
    if folder is None:
        raise DataLayoutError(f"{data_dir} has no validation folder to evaluate on; pass split='train'")
    if splits.class_names != predictor.class_names:
        raise DataLayoutError(
            f"the checkpoint knows classes {predictor.class_names}, {folder} has {splits.class_names}"
        )
    data = load_split(folder, predictor.class_names, predictor.image_size)
    return Evaluation(predictor.class_names, data, predictor.probabilities(data.images))
