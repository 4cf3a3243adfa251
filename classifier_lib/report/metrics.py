"""Metrics that fit the data: balanced accuracy beside accuracy when classes are imbalanced, top-k when
there are many, and the most confused pairs of classes when a matrix is too large to read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform

TOP_K_FROM = 10  # more classes than this: top-5 accuracy is reported too


def balanced_accuracy(predictions, labels) -> float:
    """Mean per-class recall over the classes present in `labels`: every class counts the same,
    however many images it has."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    recalls = [float((predictions[labels == label] == label).mean()) for label in np.unique(labels)]
    return float(np.mean(recalls)) if recalls else float("nan")


def top_k_accuracy(scores: torch.Tensor, labels, k: int = 5) -> float:
    """Share of images whose true class is among the `k` highest scores (probabilities or logits)."""
    labels = torch.as_tensor(labels)
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean())


def most_confused(confusion: np.ndarray, class_names: Sequence[str], count: int = 15) -> pd.DataFrame:
    """The largest off-diagonal cells of a confusion matrix (rows true, columns predicted), largest first:
    true class, predicted class, images, and their share of the true class."""
    off = confusion.astype(float).copy()
    np.fill_diagonal(off, 0)
    order = np.dstack(np.unravel_index(np.argsort(-off, axis=None), off.shape))[0][:count]
    support = confusion.sum(axis=1)
    rows = [
        {
            "true": class_names[i],
            "predicted": class_names[j],
            "images": int(confusion[i, j]),
            "share of true class": confusion[i, j] / support[i] if support[i] else 0.0,
        }
        for i, j in order
        if off[i, j] > 0
    ]
    return pd.DataFrame(rows, columns=["true", "predicted", "images", "share of true class"])


def cluster_order(confusion: np.ndarray) -> np.ndarray:
    """An order of the classes that puts classes confused with each other next to each other (average-
    linkage clustering of the symmetrised confusion rates), so that blocks of confusion show."""
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    similarity = (rates + rates.T) / 2
    np.fill_diagonal(similarity, 0)
    distance = 1 - similarity / max(similarity.max(), 1e-12)
    np.fill_diagonal(distance, 0)
    return leaves_list(linkage(squareform(distance, checks=False), method="average"))


def headline(summary: Mapping[str, Any]) -> str:
    """The figures a person reads first, from an evaluation summary: accuracy, balanced accuracy (first
    when the classes are imbalanced) and top-5 accuracy when there are many classes."""
    accuracy = f"accuracy {summary['accuracy']:.4f}"
    balanced = f"balanced accuracy {summary['balanced_accuracy']:.4f}"
    parts = [balanced, accuracy] if summary.get("imbalanced") else [accuracy, balanced]
    if "top5_accuracy" in summary:
        parts.append(f"top-5 accuracy {summary['top5_accuracy']:.4f}")
    return ", ".join(parts)
