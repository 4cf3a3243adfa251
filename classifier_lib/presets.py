"""Named recipes for different time budgets, as overrides of the default config.

Each preset's accuracy and time are measured in the README (bench/time_to_accuracy.py, 3 seeds).
"""
from __future__ import annotations

from typing import Any

from .config import Config, ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},  # 250 epochs at 64 px, tested at 80 px: 88.3 % in 1,131 s at a 381 GFLOP/s bf16 peak
    "fast": {"train.epochs": 60},  # the same recipe on 60 epochs: 79.3 % in 271 s at a ~400 GFLOP/s peak
    # progressive resizing 64 -> 112 px, tested at 144 px, the same 250 epochs: 93.0 % ± 0.8 (3 seeds); validating
    # at 144 px costs ~3 s an epoch, so only every 10th (the same weights): 1,907 s at a 375 GFLOP/s peak
    "best": {"data.min_size": 64, "data.image_size": 112, "train.validate_every": 10},
}


def preset_config(name: str = "default") -> Config:
    """The default config with a preset's overrides applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return Config().override(PRESETS[name])
