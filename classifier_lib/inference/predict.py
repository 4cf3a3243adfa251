"""Logits for a batch of decoded images, in eval mode, with test-time augmentation.

This is the one path from cached or freshly decoded uint8 images to model outputs: validation
during training, `evaluate`, `predict`, `submit`, the notebooks and the image tester all use it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from tqdm.auto import tqdm

from classifier_lib.data.augment import model_input
from classifier_lib.data.dataset import Images
from classifier_lib.model.modes import evaluating
from classifier_lib.utils.device import autocast


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: Images,
    mean,
    std,
    size: int | list[int] | None = None,
    batch_size: int = 256,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    flip: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Logits (float32, on the CPU) for a uint8 N x 3 x S x S tensor resized to `size` (default: S).

    Test-time augmentation: with `flip` the logits of each image and its mirror image are averaged;
    with a list of sizes, those of each size too.
    """
    device = device or next(model.parameters()).device
    sizes = size if isinstance(size, list) else [size]
    outputs = []
    with evaluating(model):
        for start in tqdm(range(0, len(images), batch_size), desc="predicting", leave=False, disable=not progress):
            chunk = images[start : start + batch_size].to(device)
            views = []
            for view_size in sizes:
                batch = model_input(chunk, view_size, mean, std, channels_last=True)
                with autocast(device, dtype):
                    views.append(model(batch).float())
                    if flip:
                        views.append(model(batch.flip(dims=[3])).float())
            outputs.append(torch.stack(views).mean(dim=0).cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def recalibrate_bn(
    model: nn.Module,
    images: Images,
    mean,
    std,
    size: int | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    batch_size: int = 256,
) -> None:
    """Recompute `model`'s BatchNorm statistics from scratch on uint8 `images` resized to `size`.

    Training batches are augmented and (with FixRes) smaller than test images; statistics measured on
    un-augmented images at the test size match what the model sees at prediction time.
    """
    device = device or next(model.parameters()).device
    inputs = (
        model_input(images[i : i + batch_size].to(device), size, mean, std, channels_last=True)
        for i in range(0, len(images), batch_size)
    )
    with autocast(device, dtype):
        update_bn(inputs, model)
