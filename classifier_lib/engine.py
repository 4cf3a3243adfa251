"""The training engine: train/validate epochs, checkpoints, TensorBoard, resume.

`train(config)` is the whole job: it loads the data, builds the model, trains for
`config.train.epochs` epochs in a new `runs/version_N` folder (or continues the run a resume
checkpoint belongs to) and returns a `TrainResult`.

Every epoch draws its randomness (shuffling, augmentation, mixing, dropout) from a seed derived
from `(system.seed, epoch)`, so a run resumed after epoch k repeats epochs k+1... exactly as the
uninterrupted run would (on the CPU, where kernels are deterministic).

On CUDA the step never waits for the GPU: losses and accuracies are summed on the device and read
once per epoch (plus a progress-bar figure every few dozen steps); only fp16 with its gradient
scaler reads the scale each step, so that a skipped step advances neither the schedule nor the EMA.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from torch.utils.tensorboard import SummaryWriter
from torchmetrics.functional.classification import multiclass_accuracy
from torchvision.transforms import v2
from tqdm.auto import tqdm

from .augment import BatchAugment, normalize, resize
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .config import Config, ConfigError
from .data import CachedImages, DataBundle, load_data
from .device import autocast, autocast_dtype, resolve_device, seed_everything
from .ema import ModelEMA
from .model import ResNet, count_parameters, flops_per_image
from .optim import fast_forward, make_optimizer, make_scheduler
from .predict import predict_logits, recalibrate_bn
from .progress import batch_bars_wanted, progress_bar_wanted
from .runs import new_run_dir

PROGRESSIVE_END = 0.75  # progressive resizing reaches the full image size at 75 % of the epochs
SIZE_STEP = 16  # training sizes are multiples of the network's total stride
BAR_EVERY = 25  # steps between progress-bar loss updates (each one waits for the device)


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]]
    best_valid_acc: float
    best_epoch: int
    interrupted: bool = False

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def final_valid_acc(self) -> float:
        return self.history[-1]["valid_acc"] if self.history else math.nan


def setup_system(config: Config) -> torch.device:
    """Seed everything, set threads and determinism; return the device to train on."""
    system = config.system
    if system.threads:
        torch.set_num_threads(system.threads)
    seed_everything(system.seed)
    torch.use_deterministic_algorithms(system.deterministic, warn_only=True)
    device = resolve_device(system.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not system.deterministic
    return device


def batches(dataset: CachedImages, batch_size: int, device: torch.device, generator: torch.Generator | None = None):
    """A DataLoader yielding whole batches straight from the in-memory tensors.

    With a generator the order is shuffled and the last incomplete batch dropped (training);
    without one the order is kept and every sample is seen (evaluation).
    """
    if generator is not None:
        sampler = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=len(dataset) > batch_size)
    else:
        sampler = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
    return DataLoader(dataset, sampler=sampler, batch_size=None, pin_memory=device.type == "cuda")


def train_size(config: Config, epoch: int) -> int:
    """The training resolution of `epoch` (0-based): with progressive resizing it grows linearly from
    `data.min_size` to `data.image_size` over the first 75 % of the epochs, in steps of 16 px."""
    data, epochs = config.data, config.train.epochs
    if not data.min_size or data.min_size >= data.image_size:
        return data.image_size
    progress = min(1.0, epoch / max(1.0, PROGRESSIVE_END * epochs))
    size = data.min_size + progress * (data.image_size - data.min_size)
    return min(data.image_size, max(data.min_size, int(size) // SIZE_STEP * SIZE_STEP))


class Mixer:
    """CutMix or MixUp (torchvision's, half each) on a `p` share of the batches; labels become soft."""

    def __init__(self, num_classes: int, p: float, mixup_alpha: float, cutmix_alpha: float):
        self.p = p
        self.mix = v2.RandomChoice([v2.CutMix(num_classes=num_classes, alpha=cutmix_alpha),
                                    v2.MixUp(num_classes=num_classes, alpha=mixup_alpha)])

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        if torch.rand((), generator=generator) < self.p:
            return self.mix(images, labels)
        return images, labels


class Trainer:
    """Holds the model, optimizer, schedule and data of one run and trains it epoch by epoch."""

    def __init__(self, config: Config, data: DataBundle, run_dir: Path, device: torch.device):
        self.config, self.data, self.run_dir, self.device = config, data, run_dir, device
        self.dtype = autocast_dtype(config.train.precision, device)
        torch.manual_seed(config.system.seed)  # the same initial weights whatever loading the data consumed
        self.model = ResNet(len(data.class_names), config.model).to(device)
        if config.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, config)
        self.steps_per_epoch = len(batches(data.train, config.data.batch_size, device, torch.Generator()))
        self.scheduler = make_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)
        self.augment = BatchAugment.from_config(config.data) if config.data.augment else None
        self.num_classes = len(data.class_names)
        train = config.train
        self.mixer = Mixer(self.num_classes, train.mix_p, train.mixup_alpha, train.cutmix_alpha) if train.mix_p else None
        self.flops_per_image = flops_per_image(self.model, config.data.image_size)
        self.ema = ModelEMA(self.model, train.ema_decay) if train.ema_decay else None
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best_valid_acc, self.best_epoch = -1.0, 0

    # --- one epoch ---------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.epoch_seed())
        torch.manual_seed(self.epoch_seed())  # dropout, CutMix / MixUp
        self.model.train()
        size = train_size(self.config, self.epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        loader = batches(self.data.train, self.config.data.batch_size, self.device, generator)
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{self.config.train.epochs}", leave=False,
                   disable=not batch_bars_wanted())
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
            logits = self.model(inputs)
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
            self.ema.update(self.model)
        return loss, logits, labels

    @torch.no_grad()
    def validate(self, final: bool = False) -> dict[str, float]:
        """Validation loss and accuracy of the evaluated model at the test size; after the last epoch
        the BatchNorm statistics are first recomputed at that size (`train.recalibrate_bn`)."""
        data = self.config.data
        if final and self.config.train.recalibrate_bn:
            recalibrate_bn(self.evaluated_model, self.data.train.images, self.data.mean, self.data.std,
                           data.test_size, self.device, self.dtype)
        logits = predict_logits(self.evaluated_model, self.data.valid.images, self.data.mean, self.data.std,
                                size=data.test_size, device=self.device, dtype=self.dtype, flip=data.flip_tta)
        labels = self.data.valid.labels
        accuracy = multiclass_accuracy(logits, labels, self.num_classes, average="micro")
        return {"valid_loss": F.cross_entropy(logits, labels).item(), "valid_acc": accuracy.item()}

    @property
    def evaluated_model(self) -> nn.Module:
        """The weights that are validated and saved for inference: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def epoch_seed(self) -> int:
        return self.config.system.seed * 100_003 + self.epoch

    # --- state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds: for inference and for resuming."""
        data = self.config.data
        return {
            "model": self.evaluated_model.state_dict(),
            # with an EMA, "model" holds the averaged weights; keep the raw ones and the count to resume
            **({"training_model": self.model.state_dict(), "ema_updates": self.ema.updates}
               if self.ema is not None else {}),
            "class_names": self.data.class_names,
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "image_size": data.decode_size,  # what images are decoded to (load_image's size)
            "eval_size": data.test_size,  # what the model sees at test time
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": json.dumps(self.history),
            "best_valid_acc": self.best_valid_acc,
            "best_epoch": self.best_epoch,
        }

    def load_state(self, state: dict[str, Any], source: str) -> None:
        if list(state["class_names"]) != self.data.class_names:
            raise CheckpointError(
                f"{source} was trained on classes {state['class_names']}, the data has {self.data.class_names}"
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
            for group in self.optimizer.param_groups:  # a fresh schedule starts from the base rate
                group["lr"] = self.config.train.lr
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


def train(config: Config, data: DataBundle | None = None, run_dir: str | Path | None = None,
          runs_root: str | Path = "runs") -> TrainResult:
    """Train a model as `config` says; see the module docstring."""
    config.validate()
    device = setup_system(config)
    resume_state = read_checkpoint(config.train.resume) if config.train.resume else None
    data = data or load_data(config.data, config.system.seed)
    run_dir = Path(run_dir) if run_dir else _run_dir_for(config.train.resume, runs_root)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.json")
    trainer = Trainer(config, data, run_dir, device)
    if resume_state is not None:
        trainer.load_state(resume_state, config.train.resume)
        _log(f"resumed from {config.train.resume} after epoch {trainer.epoch}")
    _log(f"run folder: {run_dir}")
    _log(f"model: {count_parameters(trainer.model) / 1e6:.2f} M parameters, "
         f"{trainer.flops_per_image / 1e9:.3f} GFLOPs per {config.data.image_size}x{config.data.image_size} image")
    _log(f"{len(data.train)} training / {len(data.valid)} validation images"
         f"{' (validation images are in the training set: train_on_all)' if config.data.train_on_all else ''}, "
         f"classes {data.class_names}, {len(data.skipped)} files skipped; device {device}, "
         f"precision {config.train.precision} ({trainer.dtype or 'fp32'})")
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    start_time = time.perf_counter() - (trainer.history[-1]["elapsed_s"] if trainer.history else 0.0)
    interrupted = False
    try:
        for _ in tqdm(range(trainer.epoch, config.train.epochs), desc="training", initial=trainer.epoch,
                      total=config.train.epochs, disable=not progress_bar_wanted()):
            row = {"epoch": trainer.epoch + 1, "lr": trainer.optimizer.param_groups[0]["lr"]}
            row |= trainer.train_epoch()
            row |= trainer.validate(final=trainer.epoch + 1 == config.train.epochs)
            trainer.epoch += 1
            row["elapsed_s"] = time.perf_counter() - start_time
            trainer.history.append(row)
            _end_of_epoch(trainer, row, writer)
    except KeyboardInterrupt:
        interrupted = True
        _log(_interrupt_message(trainer))
    finally:
        writer.close()
    result = TrainResult(run_dir, trainer.history, trainer.best_valid_acc, trainer.best_epoch, interrupted)
    if not interrupted:
        _write_hparams(run_dir, config, result)
    _write_metrics(trainer, result)
    return result


def _end_of_epoch(trainer: Trainer, row: dict[str, float], writer: SummaryWriter) -> None:
    epoch, config = trainer.epoch, trainer.config
    improved = row["valid_acc"] > trainer.best_valid_acc
    if improved:
        trainer.best_valid_acc, trainer.best_epoch = row["valid_acc"], epoch
    _save_or_warn(trainer, "last.pt")
    if improved:
        _save_or_warn(trainer, "best.pt", selected_on_valid=True)
    if config.train.checkpoint_every and epoch % config.train.checkpoint_every == 0:
        _save_or_warn(trainer, f"epoch_{epoch:03d}.pt")
    for split in ("train", "valid"):
        writer.add_scalar(f"loss/{split}", row[f"{split}_loss"], epoch)
        writer.add_scalar(f"accuracy/{split}", row[f"{split}_acc"], epoch)
    writer.add_scalar("lr", row["lr"], epoch)
    writer.add_scalar("image_size", row["image_size"], epoch)
    writer.flush()
    _write_metrics(trainer, None)
    _log(
        f"epoch {epoch:3d}/{config.train.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
        f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.4f}{' *' if improved else '  '}  "
        f"lr {row['lr']:.4g}  {row['image_size']}px  {row['elapsed_s']:.0f}s"
    )


def _save_or_warn(trainer: Trainer, name: str, selected_on_valid: bool = False) -> None:
    """Save a checkpoint; if that fails (disk full...) keep the previous file and keep training."""
    try:
        trainer.save(name, selected_on_valid)
    except OSError as error:
        _log(f"WARNING: could not save {name} ({error}); the previous {name}, if any, is kept unchanged")


def _interrupt_message(trainer: Trainer) -> str:
    last = trainer.run_dir / "checkpoints" / "last.pt"
    if trainer.epoch == 0 or not last.exists():
        return "interrupted before the first epoch finished: nothing to resume from"
    return (f"interrupted during epoch {trainer.epoch + 1}; {last} holds epoch {trainer.epoch}. Resume with:\n"
            f"  python -m classifier_lib train --resume {shlex.quote(str(last))}")


def _write_metrics(trainer: Trainer, result: TrainResult | None) -> None:
    history = trainer.history
    metrics = {
        "history": history,
        "final_valid_acc": history[-1]["valid_acc"] if history else None,
        "best_valid_acc": trainer.best_valid_acc,
        "best_epoch": trainer.best_epoch,
        "epochs_done": trainer.epoch,
        "valid_in_training": trainer.config.data.train_on_all,
        "class_names": trainer.data.class_names,
        "train_images": len(trainer.data.train),
        "valid_images": len(trainer.data.valid),
        "skipped_files": len(trainer.data.skipped),
        "skipped": trainer.data.skipped,
        "device": str(trainer.device),
        "parameters": count_parameters(trainer.model),
        "flops_per_image": trainer.flops_per_image,
        "interrupted": bool(result and result.interrupted),
    }
    path = trainer.run_dir / "metrics.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, path)


def _write_hparams(run_dir: Path, config: Config, result: TrainResult) -> None:
    hparams = {}
    for section, values in config.to_dict().items():
        for name, value in values.items():
            hparams[f"{section}.{name}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        writer.add_hparams(
            hparams,
            {"hparam/best_valid_acc": result.best_valid_acc, "hparam/final_valid_acc": result.final_valid_acc},
            run_name="hparams",
        )


def _run_dir_for(resume: str | None, runs_root: str | Path) -> Path:
    """A resumed run continues in the run folder its checkpoint lives in; otherwise a new one."""
    if resume:
        folder = Path(resume).resolve().parent
        if folder.name == "checkpoints" and (folder.parent / "config.json").exists():
            return folder.parent
    return new_run_dir(runs_root)


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stdout)
