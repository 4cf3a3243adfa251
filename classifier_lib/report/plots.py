"""Figures for the notebooks and reports. Each function returns a matplotlib Figure.

The backend is left to the caller (inline in Jupyter and papermill): forcing Agg here would drop
every figure from executed notebooks.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch


def _as_hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).cpu().numpy()


def history(rows: Sequence[dict]) -> plt.Figure:
    """Loss and accuracy per epoch, train vs validation, annotated with the best epochs; and the
    learning rate each epoch started with."""
    epochs = [r["epoch"] for r in rows]
    validated = [r for r in rows if "valid_acc" in r]  # every epoch unless train.validate_every > 1
    valid_epochs = [r["epoch"] for r in validated]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4), gridspec_kw={"width_ratios": [1, 1, 0.7]})
    for ax, metric, best in ((axes[0], "loss", np.argmin), (axes[1], "acc", np.argmax)):
        ax.plot(epochs, [r[f"train_{metric}"] for r in rows], marker=".", label="train")
        values = [r[f"valid_{metric}"] for r in validated]
        ax.plot(valid_epochs, values, marker=".", label="valid")
        if values:
            i = int(best(values))
            ax.scatter([valid_epochs[i]], [values[i]], color="red", zorder=3)
            ax.annotate(
                f"{'min' if metric == 'loss' else 'max'} {values[i]:.3f} @ epoch {valid_epochs[i]}",
                (valid_epochs[i], values[i]),
                textcoords="offset points",
                xytext=(-60, 12 if metric == "acc" else -18),
            )
        ax.set(
            xlabel="epoch", ylabel="loss" if metric == "loss" else "accuracy", title="loss" if metric == "loss" else "accuracy"
        )
        ax.grid(alpha=0.3)
        ax.legend()
    axes[2].plot(epochs, [r["lr"] for r in rows], color="gray")
    axes[2].set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def compare_histories(histories: dict[str, Sequence[dict]]) -> plt.Figure:
    """Validation accuracy, validation loss and training loss per epoch of several runs, overlaid."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for name, rows in histories.items():
        for ax, key in zip(axes, ("valid_acc", "valid_loss", "train_loss")):
            logged = [r for r in rows if key in r]  # validation may skip epochs (train.validate_every)
            ax.plot([r["epoch"] for r in logged], [r[key] for r in logged], label=name)
    for ax, key in zip(axes, ("validation accuracy", "validation loss", "training loss")):
        ax.set(xlabel="epoch", title=key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def class_counts(counts: dict[str, dict[str, int]], title: str = "images per class and split") -> plt.Figure:
    """Grouped bars: images per class for each split (`{split: {class: n}}`)."""
    classes = sorted({c for split in counts.values() for c in split})
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(classes)), 3.5))
    width = 0.8 / max(1, len(counts))
    for offset, (split, per_class) in enumerate(counts.items()):
        x = np.arange(len(classes)) + offset * width
        bars = ax.bar(x, [per_class.get(c, 0) for c in classes], width, label=split)
        ax.bar_label(bars)
    ax.set_xticks(np.arange(len(classes)) + width * (len(counts) - 1) / 2, classes)
    ax.set(ylabel="images", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def image_grid(
    images: Sequence[torch.Tensor],
    titles: Sequence[str] = (),
    columns: int = 6,
    title_colors: Sequence[str] = (),
    suptitle: str | None = None,
    size: float = 2.0,
) -> plt.Figure:
    """uint8 3 x H x W images in a grid, each with an optional coloured title."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows + 0.3), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(images):
            ax.imshow(_as_hwc(images[index]))
            if index < len(titles):
                color = title_colors[index] if index < len(title_colors) else "black"
                ax.set_title(titles[index], fontsize=8, color=color)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def confusion(counts: np.ndarray, rates: np.ndarray, class_names: Sequence[str]) -> plt.Figure:
    """Confusion matrix as counts and as row-normalised rates, side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", xticklabels=class_names, yticklabels=class_names, ax=axes[0])
    sns.heatmap(
        rates, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, xticklabels=class_names, yticklabels=class_names, ax=axes[1]
    )
    for ax, title in zip(axes, ("counts", "normalised by true class")):
        ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


def probabilities(probs: dict[str, float], title: str = "") -> plt.Figure:
    """Horizontal bars of class probabilities."""
    names = list(probs)
    fig, ax = plt.subplots(figsize=(5, 0.4 * len(names) + 1))
    bars = ax.barh(names, [probs[n] for n in names], color=sns.color_palette(n_colors=len(names)))
    ax.bar_label(bars, fmt="%.3f")
    ax.set(xlim=(0, 1.1), xlabel="probability", title=title)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def heatmap_overlays(
    images: Sequence[torch.Tensor], heatmaps: Sequence[torch.Tensor], titles: Sequence[str] = (), columns: int = 4
) -> plt.Figure:
    """Each image beside its Grad-CAM heatmap laid over it."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(3.2 * columns, 1.8 * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index, (image, heat) in enumerate(zip(images, heatmaps)):
        left, right = axes.flat[2 * index], axes.flat[2 * index + 1]
        left.imshow(_as_hwc(image))
        right.imshow(_as_hwc(image))
        right.imshow(heat.numpy(), cmap="jet", alpha=0.45)
        if index < len(titles):
            left.set_title(titles[index], fontsize=8)
    fig.tight_layout()
    return fig


def filter_maps(activation: torch.Tensor, filters: Sequence[int], title: str) -> plt.Figure:
    """Feature maps of the chosen channels of one image's activation (C x H x W)."""
    fig, axes = plt.subplots(1, len(filters), figsize=(1.6 * len(filters), 1.9), squeeze=False)
    for ax, channel in zip(axes[0], filters):
        ax.imshow(activation[channel].numpy(), cmap="viridis")
        ax.set_title(f"#{int(channel)}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def image_sizes(files) -> plt.Figure:
    """Width against height of every readable file, one colour per split (a DataFrame from stats.scan_files)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    sns.scatterplot(data=files[files["problem"] == ""], x="width", y="height", hue="split", alpha=0.5, s=12, ax=ax)
    ax.set(title="image sizes (pixels)")
    fig.tight_layout()
    return fig
