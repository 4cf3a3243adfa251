"""An exponential moving average of a model's weights, updated without waiting on the GPU.

`torch.optim.swa_utils.AveragedModel` compares its update count with zero on every update, which
makes the host wait for the GPU each step; here the count is a Python int and the average one
fused `lerp` over all floating-point parameters and buffers.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """`module` holds the averaged weights; its decay ramps up as (1 + n) / (10 + n) to `decay`,
    so that early in a run the average is not dominated by the random initial weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """Move the average towards `model` by 1 - decay (the ramped `current_decay()` unless given)."""
        averaged, current = self._floats(self.module), self._floats(model)
        if self.updates == 0:
            torch._foreach_copy_(averaged, current)
        else:
            torch._foreach_lerp_(averaged, current, 1.0 - (self.current_decay() if decay is None else decay))
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            if not mine.is_floating_point():  # BatchNorm's num_batches_tracked
                mine.copy_(theirs)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Give `model` the averaged weights and BatchNorm statistics (lookahead's restart)."""
        torch._foreach_copy_(self._floats(model), self._floats(self.module))

    @staticmethod
    def _floats(model: nn.Module) -> list[torch.Tensor]:
        tensors = list(model.parameters()) + list(model.buffers())
        return [t for t in tensors if t.is_floating_point()]
