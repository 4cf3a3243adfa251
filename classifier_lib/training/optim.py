"""Optimiser and learning-rate schedule factories, and the schedule's fast-forward for resumed runs."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from classifier_lib.config import MOMENTUM_DIP, Config, ConfigError


def base_lr(group: dict, config: Config) -> float:
    """A parameter group's peak learning rate: train.lr times the group's `lr_scale` (BatchNorm and biases)."""
    return config.train.lr * group.get("lr_scale", 1.0)


def make_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    train = config.train
    # No weight decay on BatchNorm and bias parameters: decaying them only hurts. Frozen ones (a whitening stem) stay out.
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim > 1]
    no_decay = [p for p in trained if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": train.bias_lr_scale},
    ]
    for group in groups:
        group["lr"] = base_lr(group, config)
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=True)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr, betas=(train.momentum, 0.999))
    raise ConfigError(f"optimizer must be sgd or adamw; got {train.optimizer!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int):
    """A learning-rate schedule stepped once per batch, over `config.train.epochs` epochs."""
    train = config.train
    total = max(1, train.epochs * steps_per_epoch)
    if train.scheduler == "onecycle":
        peaks = [base_lr(group, config) for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(  # it needs at least one step in each phase
            optimizer,
            max_lr=peaks,
            total_steps=max(total, 8),
            pct_start=0.25,
            div_factor=20,
            final_div_factor=200,
            # momentum (AdamW's beta1) cycles inversely to the rate: train.momentum at both ends, MOMENTUM_DIP lower at the peak
            max_momentum=train.momentum,
            base_momentum=train.momentum - MOMENTUM_DIP,
        )
    if train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if train.scheduler == "lambda":  # the seed's: lr * decay ** epoch
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: train.lambda_decay ** (step // steps_per_epoch))
    if train.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ConfigError(f"scheduler must be onecycle, cosine, lambda or none; got {train.scheduler!r}")


def fast_forward(scheduler, steps: int) -> None:
    """Advance a fresh schedule by `steps` batches without training: how a resumed run whose epoch
    count changed joins the new, longer schedule at the step it had reached."""
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            scheduler.step()
