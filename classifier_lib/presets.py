"""Named recipes for different time budgets, as overrides of the config's own values (`Config()`).

Each preset's accuracy and time are measured in the README (bench/time_to_accuracy.py, 3 seeds).
"""
from __future__ import annotations

from typing import Any

from .config import Config, ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    # progressive resizing 64 -> 112 px over 150 epochs, tested at 144 px, validated every 10th epoch:
    # 92.3 % ± 1.0 in 1,211 ± 41 s at a 399 GFLOP/s peak (3 seeds); `plain`: 88.3 % ± 0.3 in 1,131 s (381)
    "default": {"data.min_size": 64, "data.image_size": 112, "train.epochs": 150, "train.validate_every": 10},
    "plain": {},  # the config's own values: 250 epochs at 64 px, tested at 80 px (the default before progressive resizing)
    # the plain recipe on 60 epochs with a frozen patch-whitening stem and 4x the learning rate for BatchNorm and biases:
    # 84.7 % ± 0.6 in 260 ± 6 s at a 404-407 GFLOP/s peak (3 seeds); 82.6 % ± 0.7 without the larger rate, 79.3 % ± 0.6
    # without either
    "fast": {"train.epochs": 60, "model.whiten_stem": True, "train.bias_lr_scale": 4.0},
    # progressive resizing 64 -> 112 px over the plain recipe's 250 epochs, tested at 144 px: 93.0 % ± 0.8 (3 seeds); validating
    # at 144 px costs ~3 s an epoch, so only every 10th (the same weights): 1,907 s at a 375 GFLOP/s peak
    "best": {"data.min_size": 64, "data.image_size": 112, "train.validate_every": 10},
}


def preset_config(name: str = "default") -> Config:
    """The config's own values with a preset's overrides applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return Config().override(PRESETS[name])
