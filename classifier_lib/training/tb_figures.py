"""What TensorBoard shows beside the scalars: the validation confusion matrix, a grid of predictions,
and each stage's activations (histograms, and the top feature maps of one fixed image).

Logged every `train.tensorboard_every` epochs and after the last one; the figures reuse the
validation logits the epoch already computed, so the only extra work is one forward pass over a
handful of images and drawing (docs/training.md gives the measured cost).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from sklearn.metrics import confusion_matrix
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from classifier_lib.data.augment import model_input
from classifier_lib.data.dataset import CachedImages
from classifier_lib.model.explain import Network, conv_layers, record_activations, top_filters
from classifier_lib.model.modes import evaluating
from classifier_lib.report import plots

GRID_IMAGES = 12  # validation images in the prediction grid, spread evenly over the split
FEATURE_MAPS = 8  # channels shown per stage for the fixed image


def shown_indices(count: int, shown: int = GRID_IMAGES) -> list[int]:
    """The same validation images every time: evenly spaced over the (class-sorted) split."""
    return sorted({round(i * (count - 1) / max(1, shown - 1)) for i in range(min(shown, count))})


def log_figures(
    writer: SummaryWriter,
    epoch: int,
    model: Network,
    valid: CachedImages,
    logits: torch.Tensor,
    class_names: list[str],
    mean,
    std,
    size: int,
) -> None:
    """Write the confusion matrix, the prediction grid and the activations of `epoch`."""
    labels = valid.labels.numpy()
    predicted = logits.argmax(dim=1).numpy()
    classes = range(len(class_names))
    counts = confusion_matrix(labels, predicted, labels=classes)
    rates = confusion_matrix(labels, predicted, labels=classes, normalize="true")
    _add(writer, "valid/confusion_matrix", plots.confusion(counts, rates, class_names), epoch)
    if not len(labels):
        return
    chosen = shown_indices(len(labels))
    titles = [f"{class_names[predicted[i]]} ({class_names[labels[i]]})" for i in chosen]
    colors = ["green" if predicted[i] == labels[i] else "red" for i in chosen]
    grid = plots.image_grid([valid.images[i] for i in chosen], titles, title_colors=colors, suptitle="predicted (true)")
    _add(writer, "valid/predictions", grid, epoch)
    _log_activations(writer, epoch, model, valid.images[chosen], mean, std, size)


@torch.no_grad()
def _log_activations(writer: SummaryWriter, epoch: int, model: Network, images: torch.Tensor, mean, std, size: int) -> None:
    device = next(model.parameters()).device
    names = list(conv_layers(model))
    with evaluating(model), record_activations(model, names) as activations:
        model(model_input(images.to(device), size, mean, std, channels_last=True))
    for name, activation in activations.items():
        writer.add_histogram(f"activations/{name}", activation, epoch)
        first = activation[0]  # the fixed image: the first of the grid
        maps = first[top_filters(first, FEATURE_MAPS)].unsqueeze(1)
        maps = (maps - maps.amin(dim=(2, 3), keepdim=True)) / (
            maps.amax(dim=(2, 3), keepdim=True) - maps.amin(dim=(2, 3), keepdim=True) + 1e-6
        )
        writer.add_image(f"feature_maps/{name}", make_grid(maps, nrow=FEATURE_MAPS, padding=1), epoch)


def _add(writer: SummaryWriter, tag: str, figure: plt.Figure, epoch: int) -> None:
    writer.add_figure(tag, figure, epoch, close=True)
