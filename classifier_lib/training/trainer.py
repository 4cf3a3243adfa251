"""One run's training state and steps: model, optimiser, schedule, EMA, augmentation, mixing.

`Trainer` trains and validates one epoch at a time and saves or restores its whole state; the
loop around it (run folder, logs, checkpoints per epoch) is `engine.train`.

Every epoch draws its randomness (shuffling, augmentation, mixing, dropout) from a seed derived
from `(system.seed, epoch)`, so a run resumed after epoch k repeats epochs k+1... exactly as the
uninterrupted run would (on the CPU, where kernels are deterministic).

On CUDA the step never waits for the GPU: losses and accuracies are summed on the device and read
once per epoch (plus a progress-bar figure every few dozen steps); only fp16 with its gradient
scaler reads the scale each step, so that a skipped step advances neither the schedule nor the EMA.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchmetrics.functional.classification import multiclass_accuracy
from tqdm.auto import tqdm

from classifier_lib.config import Config, ConfigError
from classifier_lib.data.augment import BatchAugment, Mixer, model_input, normalize, resize, train_size
from classifier_lib.data.dataset import DataBundle, batches
from classifier_lib.inference.checkpoint import CheckpointError, save_checkpoint
from classifier_lib.inference.predict import predict_logits, recalibrate_bn
from classifier_lib.model.ema import ModelEMA
from classifier_lib.model.resnet import ResNet, flops_per_image, whiten_stem
from classifier_lib.training.optim import base_lr, fast_forward, make_optimizer, make_scheduler
from classifier_lib.utils import distributed
from classifier_lib.utils.device import autocast, autocast_dtype, fits_on_gpu, resolve_device, seed_everything
from classifier_lib.utils.progress import batch_bars_wanted

BAR_EVERY = 25  # steps between progress-bar loss updates (each one waits for the device)


def setup_system(config: Config) -> torch.device:
    """Seed everything, set threads and determinism; return the device to train on."""
    system = config.system
    if system.threads:
        torch.set_num_threads(system.threads)
    seed_everything(system.seed)
    torch.use_deterministic_algorithms(system.deterministic, warn_only=True)
    device = distributed.init(system.device) or resolve_device(system.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not system.deterministic
    return device


class Trainer:
    """Holds the model, optimizer, schedule and data of one run and trains it epoch by epoch."""

    def __init__(self, config: Config, data: DataBundle, run_dir: Path, device: torch.device):
        if fits_on_gpu(data.train.images.nbytes + data.valid.images.nbytes, device):
            # the whole decoded set on the GPU: batches are gathered there, no copies from the host
            data = dataclasses.replace(data, train=data.train.to(device), valid=data.valid.to(device))
        self.config, self.data, self.run_dir, self.device = config, data, run_dir, device
        self.dtype = autocast_dtype(config.train.precision, device)
        torch.manual_seed(config.system.seed)  # the same initial weights whatever loading the data consumed
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.model = ResNet(len(data.class_names), config.model).to(device)
        if config.model.whiten_stem:
            whiten_stem(self.model, self._whitening_sample())
        if config.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        train = config.train
        # the average is copied before SyncBatchNorm replaces BatchNorm: rank 0 alone validates and recalibrates
        # it, and a SyncBatchNorm in training mode would wait for the other ranks forever
        self.ema = ModelEMA(self.model, train.ema_decay) if train.ema_decay else None
        self.network = self._distributed(self.model) if self.world > 1 else self.model  # what training steps run
        self.optimizer = make_optimizer(self.model, config)
        self.steps_per_epoch = len(batches(data.train, config.data.batch_size, device, torch.Generator(), self.rank, self.world))
        self.scheduler = make_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)
        self.augment = BatchAugment.from_config(config.data) if config.data.augment else None
        self.num_classes = len(data.class_names)
        self.mixer = Mixer(self.num_classes, train.mix_p, train.mixup_alpha, train.cutmix_alpha) if train.mix_p else None
        self.flops_per_image = flops_per_image(self.model, config.data.image_size)
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best_valid_acc, self.best_epoch = -1.0, 0
        self.valid_logits = torch.empty(0)

    def _whitening_sample(self, count: int = 512) -> torch.Tensor:
        """Up to `count` training images, un-augmented at the first epoch's size and normalised, the
        same on every rank (drawn from the seed, not the global random stream)."""
        images = self.data.train.images
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.config.system.seed))[:count]
        return model_input(images[pick.to(images.device)], train_size(self.config, 0), self.data.mean, self.data.std)

    def _distributed(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around the model (with SyncBatchNorm if asked: CUDA only)."""
        if self.config.train.sync_bn:
            if self.device.type != "cuda":
                raise ConfigError("train.sync_bn needs CUDA: SyncBatchNorm does not run on the CPU")
            model = self.model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # --- one epoch ---------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        order = torch.Generator().manual_seed(self.epoch_seed())  # the same batch order on every rank
        # augmentation, dropout and mixing: one stream per rank (the order's own stream in one process)
        generator = order if self.world == 1 else torch.Generator().manual_seed(self.epoch_seed() * self.world + self.rank)
        torch.manual_seed(self.epoch_seed() * self.world + self.rank)
        self.network.train()
        size = train_size(self.config, self.epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        loader = batches(self.data.train, self.config.data.batch_size, self.device, order, self.rank, self.world)
        bar = tqdm(
            loader, desc=f"epoch {self.epoch + 1}/{self.config.train.epochs}", leave=False, disable=not batch_bars_wanted()
        )
        for step, (images, labels) in enumerate(bar):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            loss, logits, labels = self.train_step(images, labels, size, generator)
            if loss is None:  # fp16 overflow: the gradient scaler skipped this step
                continue
            loss_sum += loss.detach() * len(labels)
            hard = labels.argmax(dim=1) if labels.ndim == 2 else labels
            correct += (logits.detach().argmax(dim=1) == hard).sum()
            seen += len(labels)
            if step % BAR_EVERY == 0 and not bar.disable:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        totals = distributed.all_reduce_sum(
            torch.stack([loss_sum, correct.to(loss_sum.dtype), torch.tensor(float(seen), device=self.device)])
        )
        loss_sum, correct, seen = totals[0], totals[1], int(totals[2].item())
        train_loss = (loss_sum / max(seen, 1)).item()
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training loss became {train_loss} in epoch {self.epoch + 1}; lower the learning rate "
                f"(now {self.config.train.lr}) or use --precision fp32"
            )
        return {"train_loss": train_loss, "train_acc": correct.item() / max(seen, 1), "image_size": size}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, size: int, generator: torch.Generator):
        """One optimiser step; returns (loss, logits, targets), or Nones when fp16 skipped the step."""
        images = self.augment(images, generator, size) if self.augment else resize(images.float().div_(255.0), size)
        if self.mixer is not None:
            images, labels = self.mixer(images, labels, generator)
        inputs = normalize(images, self.data.mean, self.data.std, self.config.train.channels_last)
        with autocast(self.device, self.dtype):
            logits = self.network(inputs)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.train.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.update()
            if self.scaler.get_scale() < scale:  # inf/NaN gradients: the step was skipped
                return None, None, None
        self.scheduler.step()
        if self.ema is not None:
            self._average()
        return loss, logits, labels

    def _average(self) -> None:
        """Update the EMA every step; or, with lookahead, every N steps and restart from the average.

        Lookahead's decay grows as progress³ from 0 to ema_decay^N: early on the average follows the
        model, late in the run the training weights keep returning to it."""
        assert self.ema is not None  # called only with an EMA
        every = self.config.train.lookahead_every
        if not every:
            self.ema.update(self.model)
            return
        step = self.scheduler.last_epoch  # optimiser steps taken, counted across resumes
        if step % every == 0:
            progress = step / (self.config.train.epochs * self.steps_per_epoch)
            self.ema.update(self.model, decay=self.config.train.ema_decay**every * min(progress, 1.0) ** 3)
            self.ema.copy_to(self.model)

    @torch.no_grad()
    def validate(self, final: bool = False) -> dict[str, float]:
        """Validation loss and accuracy of the evaluated model at the test size; after the last epoch
        the BatchNorm statistics are first recomputed at that size (`train.recalibrate_bn`)."""
        data = self.config.data
        if final and self.config.train.recalibrate_bn:
            recalibrate_bn(
                self.evaluated_model,
                self.data.train.images,
                self.data.mean,
                self.data.std,
                data.effective_eval_size,
                self.device,
                self.dtype,
            )
        logits = predict_logits(
            self.evaluated_model,
            self.data.valid.images,
            self.data.mean,
            self.data.std,
            size=data.tta_size_list,
            device=self.device,
            dtype=self.dtype,
            flip=data.flip_tta,
        )
        self.valid_logits = logits  # for the epoch's TensorBoard figures
        labels = self.data.valid.labels
        accuracy = multiclass_accuracy(logits, labels, self.num_classes, average="micro")
        return {"valid_loss": F.cross_entropy(logits, labels).item(), "valid_acc": accuracy.item()}

    @property
    def evaluated_model(self) -> ResNet:
        """The weights that are validated and saved for inference: the EMA when there is one."""
        return cast(ResNet, self.ema.module) if self.ema is not None else self.model

    def epoch_seed(self) -> int:
        return self.config.system.seed * 100_003 + self.epoch

    # --- state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds: for inference and for resuming."""
        data = self.config.data
        return {
            "model": self.evaluated_model.state_dict(),
            # with an EMA, "model" holds the averaged weights; keep the raw ones and the count to resume
            **({"training_model": self.model.state_dict(), "ema_updates": self.ema.updates} if self.ema is not None else {}),
            "class_names": self.data.class_names,
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "decode_size": data.decode_size,  # what images are decoded to (load_image's size)
            "eval_size": data.effective_eval_size,  # what the model sees at test time
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": json.dumps(self.history),
            "best_valid_acc": self.best_valid_acc,
            "best_epoch": self.best_epoch,
            "data_split": self.data.split,  # which files trained and were held out (digests)
            "run_identity": self.run_identity(),
        }

    def run_identity(self) -> dict[str, Any]:
        """What a resumed run must share with the checkpoint it continues: the seed and the split (or the
        validation images would change mid-run), the training files, and the steps per epoch (batch size,
        data, processes), which the learning-rate schedule was built for."""
        split = self.data.split
        return {
            "system.seed": self.config.system.seed,
            "data.val_fraction": self.config.data.val_fraction,
            "training files": f"{split.get('train_files')} files, digest {split.get('train_digest')}",
            "validation files": f"{split.get('valid_files')} files, digest {split.get('valid_digest')}",
            "steps per epoch": self.steps_per_epoch,
            "processes": self.world,
        }

    def load_state(self, state: dict[str, Any], source: str) -> None:
        if list(state["class_names"]) != self.data.class_names:
            raise CheckpointError(f"{source} was trained on classes {state['class_names']}, the data has {self.data.class_names}")
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
            for group in self.optimizer.param_groups:  # a fresh schedule starts from the base rates
                group["lr"] = base_lr(group, self.config)
                group.pop("initial_lr", None)
            self.scheduler = make_scheduler(self.optimizer, self.config, self.steps_per_epoch)
            fast_forward(self.scheduler, done * self.steps_per_epoch)
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = done
        self.history = json.loads(state["history"])
        self.best_valid_acc, self.best_epoch = float(state["best_valid_acc"]), int(state["best_epoch"])

    def save(self, name: str, selected_on_valid: bool = False) -> Path:
        """Write a checkpoint; `selected_on_valid` marks one picked for its validation accuracy (best.pt)."""
        path = self.run_dir / "checkpoints" / name
        save_checkpoint(path, self.state() | {"selected_on_valid": selected_on_valid})
        return path
