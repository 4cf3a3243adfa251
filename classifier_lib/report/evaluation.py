"""Evaluating a checkpoint on a labelled split: accuracy, per-class report, confusion, worst mistakes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import classification_report, confusion_matrix

from classifier_lib.data.augment import normalize, resize
from classifier_lib.data.dataset import CachedImages, load_split
from classifier_lib.data.folders import DataLayoutError, find_splits
from classifier_lib.data.splits import files_digest
from classifier_lib.data.stats import is_imbalanced
from classifier_lib.inference.checkpoint import held_out_of, load_model
from classifier_lib.inference.predictor import Predictor
from classifier_lib.model.explain import grad_cam
from classifier_lib.report.metrics import TOP_K_FROM, balanced_accuracy, most_confused, top_k_accuracy


@dataclass
class Evaluation:
    """Predictions of one model over one labelled split."""

    class_names: list[str]
    data: CachedImages
    probabilities: torch.Tensor  # N x classes
    split: str  # which images these are, in words
    chosen_on: str  # what picked this checkpoint, in words
    caveat: str = ""  # why this accuracy is not an unbiased score, when it is not

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
    def balanced_accuracy(self) -> float:
        """Mean per-class recall: the fair headline when classes are imbalanced."""
        return balanced_accuracy(self.predictions, self.labels)

    @property
    def top5_accuracy(self) -> float:
        return top_k_accuracy(self.probabilities, self.labels, 5)

    @property
    def class_counts(self) -> dict[str, int]:
        """Images of each class the model knows: 0 for a class these images do not hold."""
        return dict(zip(self.class_names, np.bincount(self.labels, minlength=len(self.class_names)).tolist()))

    @property
    def imbalanced(self) -> bool:
        """Are the classes of these images imbalanced (largest over smallest > IMBALANCE_RATIO)?"""
        return is_imbalanced(self.class_counts)

    @property
    def losses(self) -> np.ndarray:
        """Per-image cross-entropy: how wrong each prediction is."""
        return F.nll_loss(self.probabilities.clamp_min(1e-12).log(), self.data.labels, reduction="none").numpy()

    @property
    def present(self) -> list[str]:
        """The classes these images hold: all the model knows on Valid, maybe fewer in another folder."""
        return [name for name, count in self.class_counts.items() if count]

    @property
    def absent(self) -> list[str]:
        """The classes the model knows that none of these images belongs to."""
        return [name for name, count in self.class_counts.items() if not count]

    def report(self) -> pd.DataFrame:
        """Per-class precision, recall, F1 and support of the classes these images hold, plus the averages
        over them (scikit-learn). An image predicted as a class they do not hold counts against its true class."""
        raw = classification_report(
            self.labels,
            self.predictions,
            labels=range(len(self.class_names)),
            target_names=self.class_names,
            output_dict=True,
            zero_division=0,
        )
        table = pd.DataFrame(raw).T
        absent = self.absent
        if not absent:
            return table
        # scikit-learn averages a class with no images in as recall 0: the macro average is over those held
        table = table.drop(index=absent)
        metrics = ["precision", "recall", "f1-score"]
        table.loc["macro avg", metrics] = table.loc[self.present, metrics].mean()
        return table

    def per_class(self) -> pd.DataFrame:
        """Precision, recall, F1 and support of every class these images hold, worst recall first (no average
        rows)."""
        table = self.report().loc[self.present].sort_values(["recall", "f1-score"])
        return table.astype({"support": int})

    def most_confused(self, count: int = 15) -> pd.DataFrame:
        """The pairs of classes most often mistaken for each other, most images first."""
        return most_confused(self.confusion(), self.class_names, count)

    def confusion(self, normalize: str | None = None) -> np.ndarray:
        """Rows are true classes, columns predicted; `normalize="true"` gives per-class rates."""
        return confusion_matrix(self.labels, self.predictions, labels=range(len(self.class_names)), normalize=normalize)

    def misclassified(self) -> np.ndarray:
        """Indices of wrong predictions, highest loss first."""
        wrong = np.flatnonzero(self.predictions != self.labels)
        return wrong[np.argsort(-self.losses[wrong])]

    def summary(self) -> dict:
        many = len(self.class_names) > TOP_K_FROM
        return {
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            **({"top5_accuracy": self.top5_accuracy} if many else {}),
            "imbalanced": self.imbalanced,
            "images": len(self.labels),
            "errors": int((self.predictions != self.labels).sum()),
            "split": self.split,
            "checkpoint_chosen_on": self.chosen_on,
            "caveat": self.caveat,
        }

    def record(self, checkpoint: str | Path) -> dict:
        """What a run keeps as `evaluation.json` (read by the report index): the summary, the checkpoint
        and the per-class report."""
        return self.summary() | {"checkpoint": str(checkpoint), "per_class": self.report().round(4).to_dict(orient="index")}


def evaluate_checkpoint(
    checkpoint: str | Path, data_dir: str | Path | None = None, split: str = "valid", device: str = "auto"
) -> Evaluation:
    """Evaluate a checkpoint on the `valid` (or `train`) split that its training used.

    `data_dir` defaults to the folder the checkpoint was trained on. Without a Valid folder the
    validation split is rebuilt from the checkpoint's config and seed, so it is the same held-out
    part of Train that training validated on (never images it trained on).
    """
    predictor = Predictor(checkpoint, device)
    config = predictor.loaded.config
    folder = str(data_dir or config.data.data_dir)
    folder_classes = find_splits(folder).class_names
    if folder_classes != predictor.class_names:
        raise DataLayoutError(f"the checkpoint knows classes {predictor.class_names}, {folder} has {folder_classes}")
    data, source = held_out_of(config, folder, split)
    same_data = Path(folder).resolve() == Path(config.data.data_dir).resolve()
    state = predictor.loaded.checkpoint
    caveat = _caveat(state, config, split, data, folder) if same_data else ""
    return Evaluation(predictor.class_names, data, predictor.probabilities(data.images), source, _chosen_on(state), caveat)


def evaluate_folder(checkpoint: str | Path, folder: str | Path, device: str = "auto") -> Evaluation:
    """Score a checkpoint on any labelled folder: `folder/<class>/...` (any depth below the class folders),
    images that are neither Train nor Valid, such as photos from another collection. A folder may hold
    fewer classes than the model knows; a class folder the model does not know is refused in one line."""
    predictor = Predictor(checkpoint, device)
    folder = Path(folder).expanduser().resolve()  # absolute, as every split's: cache entries never depend on the cwd
    if not folder.is_dir():
        raise DataLayoutError(f"--folder {folder} is not a folder")
    if not any((folder / name).is_dir() for name in predictor.class_names):
        raise DataLayoutError(f"{folder} has no folder named after a class the model knows {predictor.class_names}")
    labelled = load_split(folder, predictor.class_names, predictor.loaded.decode_size, every_class=False)
    trained_on = [path for path in _training_folders(predictor.loaded.config.data) if _overlap(path, folder)]
    caveat = f"this folder overlaps the run's training images in {trained_on[0]}: not a score" if trained_on else ""
    return Evaluation(
        predictor.class_names,
        labelled.data,
        predictor.probabilities(labelled.data.images),
        f"{folder} ({len(labelled.data)} images, {len(labelled.skipped)} files skipped)",
        _chosen_on(predictor.loaded.checkpoint),
        caveat,
    )


def _training_folders(data) -> list[Path]:
    """The folders a run's training images came from: Train (a split of it when there is no Valid), Valid
    too with train_on_all, and any extra training folder. The whole data folder when it cannot be read."""
    root = Path(data.data_dir).expanduser().resolve()
    try:
        splits = find_splits(root)
    except DataLayoutError:
        return [root]
    folders = [splits.train, *([splits.valid] if data.train_on_all and splits.valid else [])]
    return folders + ([Path(data.extra_train_dir).expanduser().resolve()] if data.extra_train_dir else [])


def _overlap(a: Path, b: Path) -> bool:
    """Whether one folder is the other or inside it."""
    return a == b or a in b.parents or b in a.parents


def side_by_side(evaluations: dict[str, Evaluation]) -> pd.DataFrame:
    """One row per evaluated set (Valid, other folders): images, accuracy, balanced accuracy (top-5 past
    ten classes), so that a drop on photos from elsewhere shows at a glance."""
    columns = ["images", "accuracy", "balanced_accuracy", "top5_accuracy"]
    rows = {name: evaluation.summary() for name, evaluation in evaluations.items()}
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns).dropna(axis=1, how="all")


def explain_mistakes(checkpoint: str | Path, evaluation: Evaluation, count: int = 6):
    """The `count` worst mistakes as the model saw them, their Grad-CAM heatmaps for the predicted class
    and titles `predicted (confidence) / true`: (images, heatmaps, titles)."""
    loaded = load_model(checkpoint)
    wrong = evaluation.misclassified()[:count]
    if not len(wrong):
        return [], [], []
    images = resize(evaluation.data.images[torch.as_tensor(wrong)], loaded.eval_size)
    inputs = normalize(images, loaded.mean, loaded.std)
    heatmaps = [grad_cam(loaded.model, inputs[i : i + 1])[0] for i in range(len(wrong))]
    names, probabilities = evaluation.class_names, evaluation.probabilities
    titles = [f"{names[evaluation.predictions[i]]} ({probabilities[i].max():.2f}) / {names[evaluation.labels[i]]}" for i in wrong]
    return list(images), heatmaps, titles


def _chosen_on(state: dict) -> str:
    """What picked this checkpoint, in words."""
    if state.get("selected_on_valid"):
        return f"its validation accuracy: epoch {state['epoch']} scored best on Valid"
    return "nothing: the weights after the last epoch trained"


def _caveat(state: dict, config, split: str, data: CachedImages, data_dir: str) -> str:
    """Why an accuracy on the run's own data is not an unbiased score, if it is not."""
    if split == "train":
        return "these are training images: the model has seen them"
    if state.get("valid_trained_on"):
        return f"{state['valid_trained_on']}: this is not a score"
    if config.data.train_on_all:
        return "this model was trained on the validation images too (train_on_all): this is not a score"
    recorded = (state.get("data_split") or {}).get("valid_digest")
    if recorded and recorded != files_digest(data.paths, find_splits(data_dir).root):
        return (
            f"these {len(data.paths)} images are not the {state['data_split']['valid_files']} that training validated "
            "on (files were added, removed or renamed since): some of them may have been trained on"
        )
    if state.get("selected_on_valid"):
        return (
            "this checkpoint was chosen for its accuracy on this same split: the figure is optimistic "
            "(last.pt gives an unbiased one)"
        )
    return ""
