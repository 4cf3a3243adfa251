"""A run's training state: the network being trained, its moving average, optimiser, schedule,
gradient scaler and progress; what a checkpoint holds and how a resumed run restores it.

Resuming is refused (one line naming the field) when it would change what defines the run: seed and
held-out fraction, training and validation files, steps per epoch (batch size, data, processes).
"""

from __future__ import annotations

import json
from typing import Any, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from classifier_lib.config import Config, ConfigError
from classifier_lib.data.augment import model_input, train_size
from classifier_lib.data.dataset import DataBundle, batches
from classifier_lib.inference.checkpoint import CheckpointError
from classifier_lib.model.ema import ModelEMA
from classifier_lib.model.resnet import ResNet, whiten_stem
from classifier_lib.training.optim import base_lr, fast_forward, make_optimizer, make_scheduler


class TrainState:
    """Model, EMA, optimiser, schedule and scaler of one run, and how far it got.

    `model` is the network being trained; `wrapped` is what the training steps run (DistributedDataParallel
    around `model` under torchrun, else `model`); `inference_model` is what is validated and saved for
    inference (the moving average when there is one)."""

    def __init__(
        self, config: Config, data: DataBundle, device: torch.device, dtype: torch.dtype | None, rank: int = 0, world: int = 1
    ):
        self.config, self.world = config, world
        torch.manual_seed(config.system.seed)  # the same initial weights whatever loading the data consumed
        self.model = ResNet(len(data.class_names), config.model).to(device)
        if config.model.whiten_stem:
            whiten_stem(self.model, _whitening_sample(config, data))
        if config.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        train = config.train
        # the average is copied before SyncBatchNorm replaces BatchNorm: rank 0 alone validates and recalibrates
        # it, and a SyncBatchNorm in training mode would wait for the other ranks forever
        self.ema = ModelEMA(self.model, train.ema_decay) if train.ema_decay else None
        self.wrapped: nn.Module = self._distributed(device) if world > 1 else self.model
        self.optimizer = make_optimizer(self.model, config)
        self.steps_per_epoch = len(batches(data.train, config.data.batch_size, device, torch.Generator(), rank, world))
        self.scheduler = make_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
        self.split = data.split
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best_valid_acc, self.best_epoch = -1.0, 0

    def reschedule(self, config: Config) -> None:
        """Go on under `config`'s epoch count (a time budget fitted again): its learning-rate schedule,
        joined at the step reached."""
        self.config = config
        self._join_schedule(self.scheduler.last_epoch)

    def _join_schedule(self, steps: int) -> None:
        for group in self.optimizer.param_groups:  # a fresh schedule starts from the base rates
            group["lr"] = base_lr(group, self.config)
            group.pop("initial_lr", None)
        self.scheduler = make_scheduler(self.optimizer, self.config, self.steps_per_epoch)
        fast_forward(self.scheduler, steps)

    def _distributed(self, device: torch.device) -> nn.Module:
        """DistributedDataParallel around the model (with SyncBatchNorm if asked: CUDA only)."""
        if self.config.train.sync_bn:
            if device.type != "cuda":
                raise ConfigError("train.sync_bn needs CUDA: SyncBatchNorm does not run on the CPU")
            self.model = cast(ResNet, nn.SyncBatchNorm.convert_sync_batchnorm(self.model))
        return DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)

    @property
    def inference_model(self) -> ResNet:
        """The weights that are validated and saved for inference: the moving average when there is one."""
        return cast(ResNet, self.ema.module) if self.ema is not None else self.model

    def state_dict(self, data: DataBundle) -> dict[str, Any]:
        """Everything a checkpoint holds: for inference (weights, classes, normalisation, sizes, config) and
        for resuming (raw weights, optimiser, schedule, scaler, history, the run's identity)."""
        config = self.config
        return {
            "model": self.inference_model.state_dict(),
            # with an EMA, "model" holds the averaged weights; keep the raw ones and the count to resume
            **({"training_model": self.model.state_dict(), "ema_updates": self.ema.updates} if self.ema is not None else {}),
            "class_names": data.class_names,
            "mean": list(data.mean),
            "std": list(data.std),
            "decode_size": config.data.decode_size,  # what images are decoded to (load_image's size)
            "eval_size": config.data.effective_eval_size,  # what the model sees at test time
            "config": config.to_dict(),
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": json.dumps(self.history),
            "best_valid_acc": self.best_valid_acc,
            "best_epoch": self.best_epoch,
            "data_split": data.split,  # which files trained and were held out (digests)
            "run_identity": self.run_identity(),
        }

    def run_identity(self) -> dict[str, Any]:
        """What a resumed run must share with the checkpoint it continues: the seed and the split (or the
        validation images would change mid-run), the training files, and the steps per epoch (batch size,
        data, processes), which the learning-rate schedule was built for."""
        split = self.split
        return {
            "system.seed": self.config.system.seed,
            "data.val_fraction": self.config.data.val_fraction,
            "training files": f"{split.get('train_files')} files, digest {split.get('train_digest')}",
            "validation files": f"{split.get('valid_files')} files, digest {split.get('valid_digest')}",
            "steps per epoch": self.steps_per_epoch,
            "processes": self.world,
        }

    def load_state_dict(self, state: dict[str, Any], source: str, class_names: list[str]) -> None:
        """Continue from a training checkpoint, or refuse in one line what would make it another run."""
        if list(state["class_names"]) != class_names:
            raise CheckpointError(f"{source} was trained on classes {state['class_names']}, the data has {class_names}")
        recorded = state.get("run_identity") or {  # checkpoints written before it was recorded
            "system.seed": state["config"]["system"]["seed"],
            "data.val_fraction": state["config"]["data"]["val_fraction"],
        }
        for field, then in recorded.items():
            now = self.run_identity()[field]
            if now != then:
                raise ConfigError(
                    f"{source} cannot be resumed with other {field} ({now}; the run has {then}): a resumed "
                    "run keeps its data, split, seed, batch size and processes; start a new run instead"
                )
        done, planned = int(state["epoch"]), self.config.train.epochs
        if done > planned:
            raise ConfigError(f"{source} has already trained {done} epochs; ask for more than that with --epochs")
        try:
            self.model.load_state_dict(state.get("training_model", state["model"]))
            if self.ema is not None and "ema_updates" in state:  # else the average restarts from these weights
                self.ema.module.load_state_dict(state["model"])
                self.ema.updates = int(state["ema_updates"])
        except RuntimeError as error:
            raise CheckpointError(f"{source}: its weights do not fit this model config: {str(error).splitlines()[0]}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        if state["config"]["train"]["epochs"] == planned:
            self.scheduler.load_state_dict(state["scheduler"])
        else:  # a longer run: the schedule for the new epoch count, joined at the step reached
            self._join_schedule(done * self.steps_per_epoch)
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = done
        self.history = json.loads(state["history"])
        self.best_valid_acc, self.best_epoch = float(state["best_valid_acc"]), int(state["best_epoch"])


def _whitening_sample(config: Config, data: DataBundle, count: int = 512) -> torch.Tensor:
    """Up to `count` training images, un-augmented at the first epoch's size and normalised, the same on
    every rank (drawn from the seed, not the global random stream)."""
    images = data.train.images
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.system.seed))[:count]
    return model_input(images[pick.to(images.device)], train_size(config, 0), data.mean, data.std)
