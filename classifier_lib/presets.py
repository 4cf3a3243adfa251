"""Named recipes for different time budgets, as overrides of the config's own values (`Config()`).

Each preset's accuracy and time are measured in docs/results.md (bench/time_to_accuracy.py, 3 seeds).
"""

from __future__ import annotations

from typing import Any

from classifier_lib.config import Config, ConfigError

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


# notebook parameters (and run_pipeline.py -p names) that set one config field each
NAMED_SETTINGS = {
    "epochs": "train.epochs",
    "image_size": "data.image_size",
    "eval_size": "data.eval_size",
    "train_on_all": "data.train_on_all",
    "batch_size": "data.batch_size",
    "lr": "train.lr",
    "subset": "data.subset",
    "augment": "data.augment",
    "precision": "train.precision",
    "seed": "system.seed",
}


def run_config(
    preset: str | None = "default",
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    data_dir: str | None = None,
    **named: Any,
) -> Config:
    """The one way a run's config is built, by the command line, every notebook and the pipeline's check:
    a preset (or a saved config.json instead), then `overrides` (`section.field` or bare names), then the
    named settings (`epochs=...`, see NAMED_SETTINGS; None keeps the value), then the data folder."""
    unknown = sorted(set(named) - set(NAMED_SETTINGS))
    if unknown:
        raise ConfigError(f"unknown settings {unknown}; named settings are {sorted(NAMED_SETTINGS)}")
    config = Config.load(config_file) if config_file else preset_config(preset or "default")
    changes = dict(overrides or {}) | {NAMED_SETTINGS[name]: value for name, value in named.items() if value is not None}
    if data_dir:
        changes["data.data_dir"] = str(data_dir)
    return config.override(changes)
