"""Named recipes for different time budgets, as overrides of the default config.

Each preset's accuracy and time are measured in the README (bench/time_to_accuracy.py, 3 seeds).
"""
from __future__ import annotations

from typing import Any

from .config import Config, ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
}


def preset_config(name: str = "default") -> Config:
    """The default config with a preset's overrides applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return Config().override(PRESETS[name])
