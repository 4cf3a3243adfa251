"""One run's training steps: batches, augmentation, mixing, optimiser steps, the moving average.

`Trainer` trains and validates one epoch at a time around a `state.TrainState` (model, EMA, optimiser,
schedule, scaler: what a checkpoint holds); the loop around it (run folder, logs, checkpoints per
epoch) is `engine.train`, validation is `validation.validate`.

Every epoch draws its randomness (shuffling, augmentation, mixing, dropout) from a seed derived
from `(system.seed, epoch)`, so a run resumed after epoch k repeats epochs k+1... exactly as the
uninterrupted run would (on the CPU, where kernels are deterministic).

On CUDA the step never waits for the GPU: losses and accuracies are summed on the device and read
once per epoch (plus a progress-bar figure every few dozen steps); only fp16 with its gradient
scaler reads the scale each step, so that a skipped step advances neither the schedule nor the EMA.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from classifier_lib.config import Config
from classifier_lib.data.augment import BatchAugment, Mixer, normalize, resize, train_size
from classifier_lib.data.dataset import DataBundle, batches, class_weights
from classifier_lib.data.stats import is_imbalanced
from classifier_lib.model.resnet import flops_per_image
from classifier_lib.training.state import TrainState
from classifier_lib.training.validation import validate
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
    """Trains one run epoch by epoch: batches, augmentation, mixing and optimiser steps around a
    `TrainState`. Files are the engine's (`engine.train`)."""

    def __init__(self, config: Config, data: DataBundle, device: torch.device):
        if fits_on_gpu(data.train.images.nbytes + data.valid.images.nbytes, device):
            # the whole decoded set on the GPU: batches are gathered there, no copies from the host
            data = dataclasses.replace(data, train=data.train.to(device), valid=data.valid.to(device))
        self.config, self.data, self.device = config, data, device
        self.dtype = autocast_dtype(config.train.precision, device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.state = TrainState(config, data, device, self.dtype, self.rank, self.world)
        train = config.train
        self.augment = BatchAugment.from_config(config.data) if config.data.augment else None
        self.num_classes = len(data.class_names)
        self.mixer = Mixer(self.num_classes, train.mix_p, train.mixup_alpha, train.cutmix_alpha) if train.mix_p else None
        self.flops_per_image = flops_per_image(self.state.model, config.data.image_size)
        self.valid_logits = torch.empty(0)
        balance = train.class_balance
        self.loss_weights = class_weights(data.train.labels, self.num_classes).to(device) if balance == "loss" else None
        # then the epoch lines headline balanced accuracy beside accuracy
        self.imbalanced = is_imbalanced(dict(enumerate(torch.bincount(data.train.labels.cpu()).tolist())))

    def reschedule(self, config: Config) -> None:
        """Go on under `config` (another epoch count, validation and figure frequency: a re-fitted budget)."""
        self.config = config
        self.state.reschedule(config)

    # --- one epoch ---------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        order = torch.Generator().manual_seed(self.epoch_seed())  # the same batch order on every rank
        # augmentation, dropout and mixing: one stream per rank (the order's own stream in one process)
        generator = order if self.world == 1 else torch.Generator().manual_seed(self.epoch_seed() * self.world + self.rank)
        torch.manual_seed(self.epoch_seed() * self.world + self.rank)
        self.state.wrapped.train()
        size = train_size(self.config, self.state.epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        balanced = self.config.train.class_balance == "sampler"
        loader = batches(self.data.train, self.config.data.batch_size, self.device, order, self.rank, self.world, balanced)
        bar = tqdm(
            loader, desc=f"epoch {self.state.epoch + 1}/{self.config.train.epochs}", leave=False, disable=not batch_bars_wanted()
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
                f"training loss became {train_loss} in epoch {self.state.epoch + 1}; lower the learning rate "
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
            logits = self.state.wrapped(inputs)
            loss = F.cross_entropy(
                logits.float(), labels, weight=self.loss_weights, label_smoothing=self.config.train.label_smoothing
            )
        self.state.optimizer.zero_grad(set_to_none=True)
        self.state.scaler.scale(loss).backward()
        self.state.scaler.step(self.state.optimizer)
        if self.state.scaler.is_enabled():
            scale = self.state.scaler.get_scale()
            self.state.scaler.update()
            if self.state.scaler.get_scale() < scale:  # inf/NaN gradients: the step was skipped
                return None, None, None
        self.state.scheduler.step()
        if self.state.ema is not None:
            self._average()
        return loss, logits, labels

    def _average(self) -> None:
        """Update the EMA every step; or, with lookahead, every N steps and restart from the average.

        Lookahead's decay grows as progress³ from 0 to ema_decay^N: early on the average follows the
        model, late in the run the training weights keep returning to it."""
        assert self.state.ema is not None  # called only with an EMA
        every = self.config.train.lookahead_every
        if not every:
            self.state.ema.update(self.state.model)
            return
        step = self.state.scheduler.last_epoch  # optimiser steps taken, counted across resumes
        if step % every == 0:
            progress = step / (self.config.train.epochs * self.state.steps_per_epoch)
            self.state.ema.update(self.state.model, decay=self.config.train.ema_decay**every * min(progress, 1.0) ** 3)
            self.state.ema.copy_to(self.state.model)

    def validate(self, final: bool = False) -> dict[str, float]:
        """Validation loss and accuracy of the inference model (see `validation.validate`); its logits
        are kept for the epoch's TensorBoard figures."""
        metrics, self.valid_logits = validate(self.state.inference_model, self.data, self.config, self.device, self.dtype, final)
        return metrics

    def epoch_seed(self) -> int:
        return self.config.system.seed * 100_003 + self.state.epoch
