"""Configuration as dataclasses: one section per concern, saved as JSON beside every run.

A `Config` round-trips through `to_dict` / `from_dict`, so `config.json` in a run folder
(or the copy inside a checkpoint) is enough to reproduce that run.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifier_lib.utils.fileio import write_json
from classifier_lib.utils.paths import default_data_dir

SIZE_STEP = 16  # the network's total stride: training and test sizes are multiples of it (others do worse)
MOMENTUM_DIP = 0.1  # the one-cycle schedule lowers momentum by this much at the learning-rate peak
AUGMENT_SHARES = ("grey_p", "blur_p", "trivial_p", "randaugment_p", "augmix_p", "erase_p")  # DataConfig shares of images
FIXRES_RATIO = 1.25  # test size / training size: 80 px for 64 px crops, +1.3 points (docs/results.md, 2 seeds)


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the field and what is allowed."""


_DURATION = re.compile(r"(\d+(?:\.\d*)?)\s*(s|sec|m|min|h)?")
_SECONDS_PER = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str | float) -> float:
    """Seconds in a duration: `90s`, `20m`, `1.5h` or a bare number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    match = _DURATION.fullmatch(str(text).strip().lower())
    if not match:
        raise ConfigError(f"cannot read {text!r} as a duration: write e.g. 90s, 20m or 1h")
    return float(match.group(1)) * _SECONDS_PER[match.group(2)]


@dataclass
class SystemConfig:
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms; slower on CUDA
    device: str = "auto"  # "auto" picks cuda when available, else cpu
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default (one per core)


@dataclass
class DataConfig:
    data_dir: str = field(default_factory=default_data_dir)
    image_size: int = 64  # training resolution (of the last epochs, with progressive resizing)
    min_size: int = 0  # progressive resizing: the first epochs at this size, growing to image_size; 0 or >= image_size = off
    eval_size: int = 0  # test-time resolution; 0 = automatic: FIXRES_RATIO x image_size on the 16 px grid
    batch_size: int = 64
    subset: float = 1.0  # stratified fraction of every split, for quick runs
    val_fraction: float = 0.2  # used only when the data has no validation folder
    augment: bool = True
    zoom: float = 1.6  # random zoom in up to this factor (a random-resized-crop)
    rotate: float = 15.0  # degrees, either way
    jitter: float = 0.3  # brightness / contrast / saturation, each by up to this fraction
    equalize_p: float = 0.1  # chance of histogram equalisation per image
    grey_p: float = 0.0  # chance of turning an image grey: for photos unlike the training set's
    blur_p: float = 0.0  # chance of a Gaussian blur (sigma 0.3-1.5 px): likewise
    trivial_p: float = 0.0  # share of the images given one TrivialAugmentWide operation (torchvision's): likewise
    randaugment_p: float = 0.0  # share given torchvision's RandAugment (2 operations at magnitude 9): likewise
    augmix_p: float = 0.0  # share given torchvision's AugMix (3 chains of 1-3 operations, mixed with the image): likewise
    erase_p: float = 0.0  # share of the images with one rectangle erased to grey (torchvision's RandomErasing): likewise
    # mirror images: random horizontal flips in training. Off where left and right are different classes (traffic
    # signs, text, arrows); flip TTA is then off too
    mirror: bool = True
    flip_tta: bool = True  # evaluate and predict on each image and its mirror image, averaged
    tta_sizes: int = 1  # 1: predict at the test size; 3: also 16 px below and above it, averaged
    workers: int = 0  # DataLoader processes decoding JPEGs into the cache; 0 = one per usable core
    extra_train_dir: str = ""  # more labelled images for training only, e.g. from the pseudo-label command
    train_on_all: bool = False  # train on Train + Valid (the final model); its Valid figures are then no score

    @property
    def effective_eval_size(self) -> int:
        """The resolution the model sees at evaluation and prediction: larger than the training crops,
        which zoom in, so that objects appear at the size they had in training (FixRes)."""
        if self.eval_size:
            return self.eval_size
        return max(SIZE_STEP, int(self.image_size * FIXRES_RATIO / SIZE_STEP + 0.5) * SIZE_STEP)

    @property
    def mirror_tta(self) -> bool:
        """Whether test-time predictions average each image with its mirror image."""
        return self.flip_tta and self.mirror

    @property
    def tta_size_list(self) -> list[int]:
        """The test sizes whose predictions are averaged."""
        size = self.effective_eval_size
        return [size] if self.tta_sizes == 1 else [size - SIZE_STEP, size, size + SIZE_STEP]

    @property
    def decode_size(self) -> int:
        """The resolution images are decoded and cached at: the largest one any step needs."""
        return max(self.image_size, *self.tta_size_list)


@dataclass
class ModelConfig:
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (1, 1, 2, 1)
    stem_stride: int = 2  # 4: a 4x4 patchify stem, for large images at the cost of small ones
    block_dropout: float = 0.0  # Dropout2d after the blocks of the two deepest stages
    head_dropout: float = 0.0
    whiten_stem: bool = False  # a frozen first convolution that whitens image patches (set from the training images)
    # anti-aliased downsampling: a fixed 3x3 binomial blur before each block's strided convolution and a 2x2 average
    # pool before its 1x1 shortcut (Zhang 2019, ResNet-D), so that halving the resolution does not alias
    antialias: bool = False


@dataclass
class TrainConfig:
    epochs: int = 250
    # a time budget in seconds (0 = off): training measures its speed first and sets epochs and validate_every so
    # that the run ends within it (training/budget.py); the epochs it chose are saved beside it in config.json
    budget_s: float = 0.0
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.4
    # SGD momentum (AdamW's beta1). Under onecycle it cycles against the rate: this value at both ends of the
    # run, MOMENTUM_DIP lower at the peak (before, onecycle ignored it and cycled 0.95 -> 0.85, today's default)
    momentum: float = 0.95
    weight_decay: float = 5e-4
    bias_lr_scale: float = 1.0  # learning rate of BatchNorm weights and biases (no weight decay) over train.lr
    scheduler: str = "onecycle"  # onecycle | cosine | lambda | none
    lambda_decay: float = 0.95  # per-epoch factor of the "lambda" scheduler (the seed's)
    label_smoothing: float = 0.0
    # imbalanced classes: none | sampler (each class drawn equally often, with replacement) | loss (each class's
    # loss weighted by the inverse of its share); off by default: not yet measured on an imbalanced set
    class_balance: str = "none"
    mix_p: float = 0.0  # share of batches mixed by CutMix or MixUp (half each); 0 = off
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    recalibrate_bn: bool = False  # after the last epoch, recompute BatchNorm statistics at the test size
    ema_decay: float = 0.99  # exponential moving average of the weights per step; 0 = off
    lookahead_every: int = 0  # every N steps, average into the EMA (a decay ramped up over the run) and restart from it; 0 = off
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; auto = bf16 where the CPU or GPU runs it, else fp32 (CPU) / fp16 (GPU)
    channels_last: bool = True
    sync_bn: bool = False  # several GPUs under torchrun: BatchNorm statistics over the global batch
    checkpoint_every: int = 0  # also keep epoch_NNN.pt every N epochs; 0 = only best/last
    validate_every: int = 1  # validate every N epochs and after the last; between them, train only (saves time)
    patience: int = 0  # early stopping: stop after this many epochs without a better `monitor`; 0 = off
    monitor: str = "valid_loss"  # what early stopping watches: valid_loss (lower is better) | valid_acc
    tensorboard_every: int = 25  # every N epochs, confusion matrix, predictions and activations to TensorBoard; 0 = off
    resume: str | None = None


@dataclass
class Config:
    system: SystemConfig = field(default_factory=SystemConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build a Config from nested dicts; unknown keys are an error, missing ones take defaults."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(raw) - set(sections)
        if unknown:
            raise ConfigError(f"unknown config sections: {sorted(unknown)}")
        config = cls()
        for name, values in raw.items():
            setattr(config, name, _section_from_dict(getattr(config, name), values))
        return config

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def resolved(self) -> Config:
        """A copy with automatic values made explicit (the test size), as saved with a run: the run
        reproduces even if the rule behind an automatic value changes."""
        return dataclasses.replace(self, data=dataclasses.replace(self.data, eval_size=self.data.effective_eval_size))

    def validate(self) -> Config:
        """Refuse values that would fail later or silently do nothing; returns self."""
        data, train = self.data, self.train
        checks = [
            (train.epochs >= 1, f"train.epochs must be at least 1, got {train.epochs}"),
            (train.budget_s >= 0, f"train.budget_s must be 0 (off) or a number of seconds, got {train.budget_s}"),
            (data.batch_size >= 1, f"data.batch_size must be at least 1, got {data.batch_size}"),
            (data.image_size >= 16, f"data.image_size must be at least 16 px, got {data.image_size}"),
            (data.eval_size == 0 or data.eval_size >= 16, f"data.eval_size must be 0 or at least 16, got {data.eval_size}"),
            (data.min_size >= 0, f"data.min_size must be 0 (off) or a size in px, got {data.min_size}"),
            (0 < data.subset <= 1, f"data.subset must be in (0, 1], got {data.subset}"),
            (data.tta_sizes in (1, 3), f"data.tta_sizes must be 1 or 3, got {data.tta_sizes}"),
            (0 < data.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {data.val_fraction}"),
            (0 <= train.mix_p <= 1, f"train.mix_p must be in [0, 1], got {train.mix_p}"),
            *(
                (0 <= getattr(data, share) <= 1, f"data.{share} must be in [0, 1], got {getattr(data, share)}")
                for share in AUGMENT_SHARES
            ),
            (0 <= train.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {train.ema_decay}"),
            (train.lr > 0, f"train.lr must be positive, got {train.lr}"),
            (
                MOMENTUM_DIP <= train.momentum < 1 if train.scheduler == "onecycle" else 0 <= train.momentum < 1,
                f"train.momentum must be in [{MOMENTUM_DIP}, 1) under onecycle (it dips by {MOMENTUM_DIP}), else in [0, 1); "
                f"got {train.momentum}",
            ),
            (train.bias_lr_scale > 0, f"train.bias_lr_scale must be positive, got {train.bias_lr_scale}"),
            (
                train.lookahead_every >= 0,
                f"train.lookahead_every must be 0 (off) or a number of steps, got {train.lookahead_every}",
            ),
            (not train.lookahead_every or train.ema_decay > 0, "train.lookahead_every needs the EMA: train.ema_decay > 0"),
            (
                train.precision in ("auto", "fp32", "bf16", "fp16"),
                f"train.precision must be auto, fp32, bf16 or fp16, got {train.precision!r}",
            ),
            (
                train.scheduler in ("onecycle", "cosine", "lambda", "none"),
                f"train.scheduler must be onecycle, cosine, lambda or none, got {train.scheduler!r}",
            ),
            (train.optimizer in ("sgd", "adamw"), f"train.optimizer must be sgd or adamw, got {train.optimizer!r}"),
            (
                train.class_balance in ("none", "sampler", "loss"),
                f"train.class_balance must be none, sampler or loss, got {train.class_balance!r}",
            ),
            (train.patience >= 0, f"train.patience must be 0 (off) or a number of epochs, got {train.patience}"),
            (train.validate_every >= 1, f"train.validate_every must be at least 1, got {train.validate_every}"),
            (
                train.monitor in ("valid_loss", "valid_acc"),
                f"train.monitor must be valid_loss or valid_acc, got {train.monitor!r}",
            ),
            (
                not self.model.whiten_stem or self.model.widths[0] % 2 == 0,
                f"model.whiten_stem needs an even first width (filters and their negations), got {self.model.widths[0]}",
            ),
            (
                not (train.sync_bn and train.recalibrate_bn and not train.ema_decay),
                "train.recalibrate_bn with train.sync_bn needs the EMA (train.ema_decay > 0): rank 0 alone recalibrates, "
                "and SyncBatchNorm would wait for the other ranks",
            ),
            (train.tensorboard_every >= 0, f"train.tensorboard_every must be 0 (off) or positive, got {train.tensorboard_every}"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ConfigError("; ".join(problems))
        return self

    def override(self, dotted: dict[str, Any]) -> Config:
        """Return a copy with `{"train.epochs": 3, "lr": 0.1, ...}` applied.

        A bare name is looked up in every section and must be unambiguous.
        """
        raw = self.to_dict()
        for key, value in dotted.items():
            section, name = _resolve_key(raw, key)
            raw[section][name] = value
        return Config.from_dict(raw)


def flat_config(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`{"train": {"lr": 0.4}}` -> `{"train.lr": 0.4}`; lists (from JSON) become tuples, as in the config."""
    return {
        f"{section}.{name}": tuple(value) if isinstance(value, list) else value
        for section, values in config.items()
        for name, value in values.items()
    }


def _section_from_dict(default_section: Any, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in dataclasses.fields(default_section)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"unknown {type(default_section).__name__} fields: {sorted(unknown)}")
    converted = {}
    for name, value in values.items():
        try:
            converted[name] = _coerce(getattr(default_section, name), value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{type(default_section).__name__}.{name}: cannot use {value!r} ({error})") from None
    return dataclasses.replace(default_section, **converted)


def _coerce(default: Any, value: Any) -> Any:
    """Match the type of the default: JSON gives lists for tuples, CLI and papermill give strings."""
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        return tuple(type(default[0])(v) for v in value) if default else tuple(value)
    if isinstance(value, str) and default is not None and not isinstance(default, str):
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"expected a boolean, got {value!r}")
        return type(default)(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _resolve_key(raw: dict[str, dict[str, Any]], key: str) -> tuple[str, str]:
    if "." in key:
        section, name = key.split(".", 1)
        if section not in raw or name not in raw[section]:
            raise ConfigError(f"unknown config key {key!r}")
        return section, name
    owners = [section for section, values in raw.items() if key in values]
    if len(owners) != 1:
        raise ConfigError(f"unknown config key {key!r}" if not owners else f"ambiguous config key {key!r}: {owners}")
    return owners[0], key
