"""Learning-rate finder (Smith's range test, as fastai's `lr_find`): train a throwaway copy of the
model for a few dozen batches while the learning rate grows exponentially, and watch the loss.

The suggestion is the rate where the smoothed loss falls fastest; a good peak rate for the one-cycle
schedule is usually a little above it, and always well below where the loss blows up. Nothing of a
run is touched: the model is built fresh from the config and thrown away afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from classifier_lib.config import Config, ConfigError
from classifier_lib.data.dataset import DataBundle, batches, load_data
from classifier_lib.training.trainer import Trainer, setup_system

SMOOTHING = 0.9  # exponential moving average of the loss, debiased
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum


@dataclass
class LRFinderResult:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggestion: float  # the rate of steepest descent of the smoothed loss

    def plot(self) -> plt.Figure:
        """Loss against learning rate (log scale), the suggestion marked."""
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(self.lrs, self.losses)
        ax.axvline(self.suggestion, color="red", linestyle="--", label=f"suggested {self.suggestion:.3g}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="learning-rate finder")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        fig.tight_layout()
        return fig


def find_lr(
    config: Config, data: DataBundle | None = None, start_lr: float = 1e-4, end_lr: float = 10.0, steps: int = 100
) -> LRFinderResult:
    """Sweep the learning rate from `start_lr` to `end_lr` over `steps` batches of `config`'s recipe
    (augmentation, mixing, precision as configured; no schedule, no EMA)."""
    if not 0 < start_lr < end_lr or steps < 5:
        raise ConfigError("the finder needs 0 < start_lr < end_lr and at least 5 steps")
    config = config.override({"train.lr": start_lr, "train.scheduler": "none", "train.ema_decay": 0}).validate()
    device = setup_system(config)
    data = data or load_data(config.data, config.system.seed)
    trainer = Trainer(config, data, device)
    gamma = (end_lr / start_lr) ** (1 / (steps - 1))
    trainer.state.scheduler = torch.optim.lr_scheduler.ExponentialLR(trainer.state.optimizer, gamma)
    generator = torch.Generator().manual_seed(config.system.seed)
    trainer.state.model.train()
    lrs: list[float] = []
    losses: list[float] = []
    average = 0.0
    while len(lrs) < steps:
        for images, labels in batches(data.train, config.data.batch_size, device, generator):
            lr = trainer.state.optimizer.param_groups[0]["lr"]
            loss, _, _ = trainer.train_step(images.to(device), labels.to(device), config.data.image_size, generator)
            if loss is None:
                continue
            average = SMOOTHING * average + (1 - SMOOTHING) * loss.item()
            smoothed = average / (1 - SMOOTHING ** (len(lrs) + 1))
            lrs.append(lr)
            losses.append(smoothed)
            if len(lrs) >= steps or not math.isfinite(smoothed) or smoothed > DIVERGED * min(losses):
                return LRFinderResult(lrs, losses, suggest(lrs, losses))
    return LRFinderResult(lrs, losses, suggest(lrs, losses))


def suggest(lrs: list[float], losses: list[float]) -> float:
    """The learning rate where the loss falls fastest per unit of log learning rate, ignoring the
    noisy first tenth and everything after the minimum."""
    lowest = int(np.nanargmin(losses))
    skip = max(1, len(lrs) // 10)
    if lowest - skip < 2:
        return lrs[lowest]
    slope = np.gradient(np.array(losses[skip : lowest + 1]), np.log(lrs[skip : lowest + 1]))
    return float(lrs[skip + int(np.argmin(slope))])
