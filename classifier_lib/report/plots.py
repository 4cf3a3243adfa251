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

from classifier_lib.report.metrics import cluster_order


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


ANNOTATED_UP_TO = 15  # classes: beyond, confusion matrices drop their numbers (a table lists the pairs)
BARS_UP_TO = 40  # classes: beyond, class counts become a histogram and the smallest and largest classes


def class_counts(counts: dict[str, dict[str, int]], title: str = "images per class and split") -> plt.Figure:
    """Images per class for each split (`{split: {class: n}}`), largest class first: horizontal bars while
    they stay readable; past BARS_UP_TO classes a histogram of the counts and the 10 smallest and 10
    largest classes."""
    first = next(iter(counts.values()), {})
    classes = sorted({c for split in counts.values() for c in split}, key=lambda c: (-first.get(c, 0), c))
    if len(classes) > BARS_UP_TO:
        return _many_class_counts(counts, classes, title)
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.22 * len(classes) * max(1, len(counts))))
    height = 0.8 / max(1, len(counts))
    for offset, (split, per_class) in enumerate(counts.items()):
        y = np.arange(len(classes)) + offset * height
        bars = ax.barh(y, [per_class.get(c, 0) for c in classes], height, label=split)
        ax.bar_label(bars, fontsize=8, padding=2)
    ax.set_yticks(np.arange(len(classes)) + height * (len(counts) - 1) / 2, classes)
    ax.invert_yaxis()
    ax.set(xlabel="images", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def _many_class_counts(counts: dict[str, dict[str, int]], classes: list[str], title: str) -> plt.Figure:
    split, per_class = next(iter(counts.items()))
    values = [per_class.get(c, 0) for c in classes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.2]})
    left.hist(values, bins=min(30, len(set(values))), color="tab:blue")
    left.set(xlabel=f"{split} images per class", ylabel="classes", title=f"{len(classes)} classes: how many images each")
    shown = classes[:10] + classes[-10:]
    bars = right.barh(
        range(len(shown)), [per_class.get(c, 0) for c in shown], color=["tab:blue"] * 10 + ["tab:orange"] * (len(shown) - 10)
    )
    right.bar_label(bars, fontsize=8, padding=2)
    right.set_yticks(range(len(shown)), shown, fontsize=8)
    right.invert_yaxis()
    right.set(xlabel=f"{split} images", title="the 10 largest (blue) and 10 smallest (orange) classes")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def class_samples(
    images: Sequence[torch.Tensor], labels: Sequence[int], class_names: Sequence[str], per_class: int = 6
) -> plt.Figure:
    """One grid, a row per class present in `labels`: up to `per_class` images of each (choose the classes
    with `splits.spread_classes`, so the report has one readable figure whatever the number of classes)."""
    shown = sorted(set(labels))
    fig, axes = plt.subplots(len(shown), per_class, figsize=(1.5 * per_class, 1.5 * len(shown) + 0.4), squeeze=False)
    for row, label in enumerate(shown):
        members = [image for image, own in zip(images, labels) if own == label][:per_class]
        for column, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if column < len(members):
                ax.imshow(_as_hwc(members[column]))
        axes[row][0].set_ylabel(class_names[label], rotation=0, ha="right", va="center", fontsize=9)
    if len(shown) < len(class_names):
        fig.suptitle(f"{len(shown)} of {len(class_names)} classes", fontsize=10)
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
    """Confusion matrix as counts and as row-normalised rates, side by side, annotated; past ANNOTATED_UP_TO
    classes the rates alone, without numbers, ordered so that classes confused with each other sit together
    (pair them with `metrics.most_confused`)."""
    if len(class_names) > ANNOTATED_UP_TO:
        order = cluster_order(counts)
        names = [class_names[i] for i in order]
        side = min(22.0, 4 + 0.14 * len(names))
        fig, ax = plt.subplots(figsize=(side + 1.5, side))
        font = max(3.0, 9 - len(names) / 20)
        sns.heatmap(
            rates[np.ix_(order, order)],
            cmap="Blues",
            vmin=0,
            vmax=1,
            square=True,
            ax=ax,
            xticklabels=names,
            yticklabels=names,
            cbar_kws={"shrink": 0.5, "label": "share of the true class"},
        )
        ax.tick_params(labelsize=font)
        ax.set(xlabel="predicted", ylabel="true", title="normalised by true class; similar classes side by side")
        fig.tight_layout()
        return fig
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
