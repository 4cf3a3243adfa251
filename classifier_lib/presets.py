"""Named recipes for different time budgets, as overrides of the config's own values (`Config()`).

Each preset's accuracy and time are measured in docs/results.md (bench/time_to_accuracy.py, 3 seeds).
"""

from __future__ import annotations

from typing import Any

from classifier_lib.config import AUGMENT_SHARES, Config, ConfigError, flat_config, parse_duration

# progressive resizing 64 -> 112 px, tested at 144 px, RandAugment on half the images, 20 minutes. As 266-282
# epochs on a 858-942 GFLOP/s machine: Valid 93.1 % ± 0.0, other collections 85.0 % ± 2.0 (86.7 % balanced), against
# 93.8 % ± 0.4 and 83.4 % ± 1.7 (84.2 %) without RandAugment (3 seeds each; docs/results.md)
DEFAULT: dict[str, Any] = {
    "data.min_size": 64,
    "data.image_size": 112,
    "data.randaugment_p": 0.5,
    "train.budget_s": 1200.0,
    "train.validate_every": 10,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Presets are time budgets (train.budget_s): training measures its speed on this machine and this data set
    # and sets the epochs (and how often to validate) to end within it. An explicit epoch count turns that off.
    "default": DEFAULT,
    "plain": {},  # the config's own values: 250 epochs at 64 px, tested at 80 px (the default before progressive resizing)
    # the plain recipe for 5 minutes with a frozen patch-whitening stem, 4x the learning rate for BatchNorm and
    # biases, and anti-aliased downsampling (as 50 epochs: +4.4 points on Valid, +4.1 on other collections, 3 seeds;
    # docs/results.md); before it, as 60 epochs: 84.7 % ± 0.6 in 260 ± 6 s at a 404-407 GFLOP/s peak (3 seeds)
    "fast": {"train.budget_s": 300.0, "model.whiten_stem": True, "train.bias_lr_scale": 4.0, "model.antialias": True},
    # the default recipe for 60 minutes; before RandAugment joined it, as 250 epochs: 93.0 % ± 0.8 (3 seeds) in
    # 1,907 s at a 375 GFLOP/s peak. On an AVX2 machine the hour fits 109-141 default epochs: below 120 it trains
    # `fast`'s recipe (243-366 epochs): Valid 92.1 % ± 0.8, other collections 82.5 % ± 2.6 (3 seeds); the default
    # recipe at 140-158 epochs: 93.8 % ± 0.9 and 82.7 % ± 0.3 (3 seeds)
    "best": DEFAULT | {"train.budget_s": 3600.0},
}


# A time budget that fits fewer epochs than this of the default recipe trains `fast`'s recipe instead: the default's
# progressive resizing (64 -> 112 px) needs room. On AVX2 machines without bf16 (fp32, 117-178 GFLOP/s), last epoch,
# 3 seeds each (docs/results.md): 20 minutes fitted 48-56 epochs of the default (Valid 80.2 %, other collections
# 63.5 %) against 101-105 of `fast`'s recipe with RandAugment (91.3 %, 79.7 %); 40 minutes fitted 105-114 of the
# default (91.3 %, 79.2 %) against 224-276 of `fast`'s (91.3 %, 82.4 %): a tie on Valid, `fast`'s ahead on the other
# photos in every seed pair. That is about where they cross (at 266-282 epochs the default leads: 93.1 %, 85.0 %),
# so the threshold sits just above it; at 140-158 epochs the default leads by 1.7 points on Valid in every seed and
# ties on the other photos (3 seeds), so they cross between about 115 and 140 (not measured)
SHORT_BUDGET_EPOCHS = 120
BUDGET_SET = {"train.budget_s", "train.epochs", "train.validate_every", "train.tensorboard_every"}  # a budget sets these
# The switch keeps the default's augmentation: `fast`'s recipe with RandAugment on half the images, 101-105 epochs in
# the same 20 minutes on an AVX2 machine: Valid 91.3 % ± 0.4, other collections 79.7 % ± 1.5 (3 seeds, docs/results.md);
# `fast` itself goes without it, as in 5 minutes there (24-28 epochs) it cost 3 points on Valid (83.6 -> 80.6 %)
KEPT_BY_THE_SWITCH = {f"data.{share}" for share in AUGMENT_SHARES}


def preset_config(name: str = "default") -> Config:
    """The config's own values with a preset's overrides applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return Config().override(PRESETS[name])


def short_budget_recipe(config: Config) -> Config | None:
    """`config` with `fast`'s recipe in place of the default's, for a budget too short for the default's progressive
    resizing (SHORT_BUDGET_EPOCHS): the settings in which the two presets differ (the 64 px crops and their test size,
    the whitening stem, the BatchNorm learning rate, anti-aliasing) take `fast`'s values; the augmentation stays the
    default's (KEPT_BY_THE_SWITCH: RandAugment on half the images), and so do the data, seed, budget and other
    settings. None when `config` does not train the default recipe, i.e. one of the swapped settings was set
    otherwise: a recipe of one's own is never replaced."""
    default, fast = (flat_config(preset_config(name).resolved().to_dict()) for name in ("default", "fast"))
    kept = BUDGET_SET | KEPT_BY_THE_SWITCH
    recipe = {key: value for key, value in fast.items() if value != default[key] and key not in kept}
    current = flat_config(config.resolved().to_dict())
    if any(current[key] != default[key] for key in recipe):
        return None
    return config.override(recipe)


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
    "budget": "train.budget_s",  # a duration: 90s, 20m, 1h
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
    changes = _epochs_or_budget(changes)
    if data_dir:
        changes["data.data_dir"] = str(data_dir)
    return config.override(changes)


def _epochs_or_budget(changes: dict[str, Any]) -> dict[str, Any]:
    """A run is sized by an epoch count or by a time budget: one given explicitly turns off the preset's
    (or the saved config's) budget; both at once are refused. Budgets are read as durations (20m)."""
    epochs = next((key for key in ("train.epochs", "epochs") if key in changes), None)
    budget = next((key for key in ("train.budget_s", "budget_s") if key in changes), None)
    if epochs and budget and parse_duration(changes[budget]):
        raise ConfigError("give an epoch count or a time budget, not both (the budget sets the epochs)")
    if budget:
        return changes | {budget: parse_duration(changes[budget])}
    return changes | ({"train.budget_s": 0.0} if epochs else {})
