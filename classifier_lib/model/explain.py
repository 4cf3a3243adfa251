"""Looking inside the model: layer activations through forward hooks, and Grad-CAM heatmaps."""

from __future__ import annotations

from contextlib import contextmanager
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from classifier_lib.model.ensemble import EnsembleModel
from classifier_lib.model.modes import evaluating
from classifier_lib.model.resnet import ResNet

Network = ResNet | EnsembleModel  # what has a stem and stages to look at


def conv_layers(model: Network) -> dict[str, nn.Module]:
    """The layers worth looking at: the stem and the output of every residual block."""
    layers: dict[str, nn.Module] = {"stem": model.stem}
    for stage_index, stage in enumerate(model.stages):
        for block_index, block in enumerate(cast(nn.Sequential, stage)):
            layers[f"stage{stage_index + 1}.block{block_index + 1}"] = block
    return layers


def default_layer_names(model: Network) -> list[str]:
    """The stem and the last block of every stage: one view per resolution."""
    return ["stem"] + [f"stage{index + 1}.block{len(cast(nn.Sequential, stage))}" for index, stage in enumerate(model.stages)]


@contextmanager
def record_activations(model: Network, layer_names: list[str]):
    """Within the block, every forward pass stores the named layers' outputs in the yielded dict."""
    layers = conv_layers(model)
    unknown = set(layer_names) - set(layers)
    if unknown:
        raise ValueError(f"unknown layers {sorted(unknown)}; choose from {list(layers)}")
    activations: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, inputs, output):
            activations[name] = output.detach().float().cpu()

        return hook

    handles = [layers[name].register_forward_hook(hook_for(name)) for name in layer_names]
    try:
        yield activations
    finally:
        for handle in handles:
            handle.remove()


def top_filters(activation: torch.Tensor, k: int = 8) -> torch.Tensor:
    """Indices of the `k` channels with the highest mean activation for one image (C x H x W)."""
    return activation.mean(dim=(1, 2)).topk(min(k, activation.shape[0])).indices


def grad_cam(model: Network, inputs: torch.Tensor, target: int | None = None, layer: nn.Module | None = None):
    """Grad-CAM for one normalised image (1 x 3 x H x W): (heatmap H x W in [0, 1], target class).

    The heatmap weighs `layer`'s channels (default: the last residual stage) by the mean gradient
    of the target class score, keeps the positive part and upsamples it to the input size.
    """
    layer = layer or model.stages[-1]
    captured: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda module, args, output: captured.update(output=output))
    try:
        with evaluating(model), torch.enable_grad():
            logits = model(inputs)
            target = int(logits.argmax(dim=1)) if target is None else target
            (gradient,) = torch.autograd.grad(logits[0, target], captured["output"])
    finally:
        handle.remove()
    activation = captured["output"].detach()
    cam = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    return (cam / cam.max() if cam.max() > 0 else cam).cpu(), target
