"""The training engine: train/validate epochs, schedules, mixed precision, checkpoints, TensorBoard.

`train(config)` is the whole job: it loads the data, builds the model, trains for
`config.train.epochs` epochs in a new `runs/version_N` folder (or continues the run a resume
checkpoint belongs to) and returns a `TrainResult`.

Every epoch draws its randomness (shuffling, augmentation, dropout) from a seed derived from
`(system.seed, epoch)`, so a run resumed after epoch k repeats epochs k+1... exactly as the
uninterrupted run would (on the CPU, where kernels are deterministic).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from torch.utils.tensorboard import SummaryWriter
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from tqdm.auto import tqdm

from .augment import BatchAugment, normalize
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .config import Config
from .data import CachedImages, DataBundle, load_data
from .model import ResNet, count_parameters, flops_per_image
from .runs import new_run_dir


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting, or None for plain fp32."""
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "bf16"
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of auto, fp32, bf16, fp16; got {precision!r}")
    if dtypes[precision] is torch.float16 and device.type != "cuda":
        raise ValueError("fp16 autocast needs CUDA; on the CPU use bf16")
    return dtypes[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    train = config.train
    # No weight decay on BatchNorm and bias parameters: decaying them only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=True)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr)
    raise ValueError(f"optimizer must be sgd or adamw; got {train.optimizer!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int):
    """A learning-rate schedule stepped once per batch."""
    train = config.train
    total = max(1, train.epochs * steps_per_epoch)
    if train.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(  # it needs at least one step in each phase
            optimizer, max_lr=train.lr, total_steps=max(total, 8), pct_start=0.25, div_factor=20, final_div_factor=200
        )
    if train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if train.scheduler == "lambda":  # the seed's: lr * decay ** epoch
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: train.lambda_decay ** (step // steps_per_epoch))
    if train.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ValueError(f"scheduler must be onecycle, cosine, lambda or none; got {train.scheduler!r}")


def ema_with_warmup(decay: float):
    """EMA update whose decay ramps up as (1 + n) / (10 + n) to `decay`, so that in a short run the
    average is not dominated by the random initial weights."""

    @torch.no_grad()
    def update(ema_params, params, num_averaged):
        n = int(num_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(ema_params, params, num_averaged)

    return update


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


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, mean, std, batch_size: int = 256,
    device: torch.device | None = None, dtype: torch.dtype | None = None, flip: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Logits (float32, on the CPU) for a uint8 N x 3 x S x S tensor, in eval mode.

    With `flip`, the logits of each image and its mirror image are averaged (test-time augmentation).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    for start in tqdm(range(0, len(images), batch_size), desc="predicting", leave=False, disable=not progress):
        batch = normalize(images[start : start + batch_size].to(device), mean, std, channels_last=True)
        with autocast(device, dtype):
            logits = model(batch).float()
            if flip:
                logits = (logits + model(batch.flip(dims=[3])).float()) / 2
        outputs.append(logits.cpu())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


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
        self.flops_per_image = flops_per_image(self.model, config.data.image_size)
        decay = config.train.ema_decay
        self.ema = AveragedModel(self.model, multi_avg_fn=ema_with_warmup(decay), use_buffers=True) if decay else None
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best_valid_acc, self.best_epoch = -1.0, 0

    # --- one epoch ---------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.epoch_seed())
        torch.manual_seed(self.epoch_seed())  # dropout
        self.model.train()
        loss_metric = MeanMetric().to(self.device)
        acc_metric = MulticlassAccuracy(self.num_classes, average="micro").to(self.device)
        loader = batches(self.data.train, self.config.data.batch_size, self.device, generator)
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{self.config.train.epochs}", leave=False)
        for images, labels in bar:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            images = self.augment(images, generator) if self.augment else images
            inputs = normalize(images, self.data.mean, self.data.std, self.config.train.channels_last)
            with autocast(self.device, self.dtype):
                logits = self.model(inputs)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.train.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} in epoch {self.epoch + 1}; lower the learning rate "
                    f"(now {self.config.train.lr}) or use --precision fp32"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            loss_metric.update(loss.detach(), weight=len(labels))
            acc_metric.update(logits.detach(), labels)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        return {"train_loss": loss_metric.compute().item(), "train_acc": acc_metric.compute().item()}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        logits = predict_logits(self.evaluated_model, self.data.valid.images, self.data.mean, self.data.std,
                                device=self.device, dtype=self.dtype, flip=self.config.data.flip_tta)
        labels = self.data.valid.labels
        accuracy = MulticlassAccuracy(self.num_classes, average="micro")(logits, labels)
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
        return {
            "model": self.evaluated_model.state_dict(),
            # with an EMA, "model" holds the averaged weights; keep the raw ones and the count to resume
            **({"training_model": self.model.state_dict(), "ema_updates": int(self.ema.n_averaged)}
               if self.ema is not None else {}),
            "class_names": self.data.class_names,
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "image_size": self.config.data.image_size,
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
        try:
            self.model.load_state_dict(state.get("training_model", state["model"]))
            if self.ema is not None and "ema_updates" in state:  # else the average restarts from these weights
                self.ema.module.load_state_dict(state["model"])
                self.ema.n_averaged.fill_(state["ema_updates"])
        except RuntimeError as error:
            raise CheckpointError(f"{source}: its weights do not fit this model config: {str(error).splitlines()[0]}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.history = json.loads(state["history"])
        self.best_valid_acc, self.best_epoch = float(state["best_valid_acc"]), int(state["best_epoch"])

    def save(self, name: str) -> Path:
        path = self.run_dir / "checkpoints" / name
        save_checkpoint(path, self.state())
        return path


def train(config: Config, data: DataBundle | None = None, run_dir: str | Path | None = None,
          runs_root: str | Path = "runs") -> TrainResult:
    """Train a model as `config` says; see the module docstring."""
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
    _log(f"{len(data.train)} training / {len(data.valid)} validation images, classes {data.class_names}, "
         f"{len(data.skipped)} files skipped; device {device}, precision {config.train.precision}")
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    start_time = time.perf_counter() - (trainer.history[-1]["elapsed_s"] if trainer.history else 0.0)
    interrupted = False
    try:
        for _ in tqdm(range(trainer.epoch, config.train.epochs), desc="training", initial=trainer.epoch,
                      total=config.train.epochs):
            row = {"epoch": trainer.epoch + 1, "lr": trainer.optimizer.param_groups[0]["lr"]}
            row |= trainer.train_epoch()
            row |= trainer.validate()
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
        _save_or_warn(trainer, "best.pt")
    if config.train.checkpoint_every and epoch % config.train.checkpoint_every == 0:
        _save_or_warn(trainer, f"epoch_{epoch:03d}.pt")
    for split in ("train", "valid"):
        writer.add_scalar(f"loss/{split}", row[f"{split}_loss"], epoch)
        writer.add_scalar(f"accuracy/{split}", row[f"{split}_acc"], epoch)
    writer.add_scalar("lr", row["lr"], epoch)
    writer.flush()
    _write_metrics(trainer, None)
    _log(
        f"epoch {epoch:3d}/{config.train.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
        f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.4f}{' *' if improved else '  '}  "
        f"lr {row['lr']:.4g}  {row['elapsed_s']:.0f}s"
    )


def _save_or_warn(trainer: Trainer, name: str) -> None:
    """Save a checkpoint; if that fails (disk full...) keep the previous file and keep training."""
    try:
        trainer.save(name)
    except OSError as error:
        _log(f"WARNING: could not save {name} ({error}); the previous {name}, if any, is kept unchanged")


def _interrupt_message(trainer: Trainer) -> str:
    last = trainer.run_dir / "checkpoints" / "last.pt"
    if trainer.epoch == 0 or not last.exists():
        return "interrupted before the first epoch finished: nothing to resume from"
    return (f"interrupted during epoch {trainer.epoch + 1}; {last} holds epoch {trainer.epoch}. Resume with:\n"
            f"  python -m classifier_lib train --resume {shlex.quote(str(last))}")


def _write_metrics(trainer: Trainer, result: TrainResult | None) -> None:
    metrics = {
        "history": trainer.history,
        "best_valid_acc": trainer.best_valid_acc,
        "best_epoch": trainer.best_epoch,
        "epochs_done": trainer.epoch,
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
    final = result.history[-1] if result.history else {}
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        writer.add_hparams(
            hparams,
            {"hparam/best_valid_acc": result.best_valid_acc, "hparam/final_valid_acc": final.get("valid_acc", math.nan)},
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
