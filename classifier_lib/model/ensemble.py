"""A model that averages the probabilities of several trained members (an ensemble file's network)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from classifier_lib.model.resnet import ResNet


class EnsembleModel(nn.Module):
    """Members' probabilities, averaged; each member sees the input in its own normalisation."""

    def __init__(self, members: Sequence[nn.Module], means: list, stds: list):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("means", torch.tensor(means, dtype=torch.float32))  # members x 3
        self.register_buffer("stds", torch.tensor(stds, dtype=torch.float32))

    @property
    def stem(self) -> nn.Sequential:  # what the activation notebook and Grad-CAM look at: the first member's
        return cast(ResNet, self.members[0]).stem

    @property
    def stages(self) -> nn.Sequential:
        return cast(ResNet, self.members[0]).stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means, stds = cast(torch.Tensor, self.means)[:, :, None, None], cast(torch.Tensor, self.stds)[:, :, None, None]
        pixels = x * stds[0] + means[0]  # the input is normalised as for the first member
        probabilities = [
            member((pixels - mean) / std).float().softmax(dim=1) for member, mean, std in zip(self.members, means, stds)
        ]
        return torch.stack(probabilities).mean(dim=0).clamp_min(1e-12).log()
