"""The training loop: `train(config)` is the whole job.

It loads the data, builds a `Trainer`, trains for `config.train.epochs` epochs (with `train.budget_s`, as
many as fit in that time on this machine: `budget`; where that is too few for the default recipe, `fast`'s
recipe instead: `presets.short_budget_recipe`) in a new `runs/version_N` folder (or continues the run a
resume checkpoint belongs to), and after every epoch writes last.pt (and best.pt when validation accuracy
improved), TensorBoard scalars, `metrics.json` and one log line; Ctrl-C keeps the last finished epoch and
prints how to resume. Under torchrun every process trains its share of each epoch's batches and rank 0 alone
validates and writes (see `distributed`).
With `train.patience` it stops early when the monitored validation figure has not improved for that
many epochs; `metrics.json` records why training stopped.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from classifier_lib.config import Config
from classifier_lib.data.dataset import DataBundle, load_data
from classifier_lib.inference.checkpoint import read_checkpoint, save_checkpoint
from classifier_lib.model.resnet import count_parameters
from classifier_lib.presets import SHORT_BUDGET_EPOCHS, short_budget_recipe
from classifier_lib.training.budget import BudgetPlan, plan_budget, refit
from classifier_lib.training.tb_figures import log_figures
from classifier_lib.training.trainer import Trainer, setup_system
from classifier_lib.utils import distributed
from classifier_lib.utils.fileio import write_json
from classifier_lib.utils.progress import progress_bar_wanted
from classifier_lib.utils.runs import new_run_dir


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]]
    best_valid_acc: float
    best_epoch: int
    interrupted: bool = False
    stop_reason: str = ""

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def final_valid_acc(self) -> float:
        """The last epoch's validation accuracy: NaN if it was not validated (an interrupted run)."""
        return self.history[-1].get("valid_acc", math.nan) if self.history else math.nan


def train(
    config: Config, data: DataBundle | None = None, run_dir: str | Path | None = None, runs_root: str | Path = "runs"
) -> TrainResult:
    """Train a model as `config` says; see the module docstring."""
    config = config.validate().resolved()
    device = setup_system(config)
    try:
        return _train(config, device, data, run_dir, runs_root)
    finally:
        distributed.shutdown()


def _train(config: Config, device, data: DataBundle | None, run_dir, runs_root) -> TrainResult:
    main = distributed.is_main()
    resume_state = read_checkpoint(config.train.resume) if config.train.resume else None
    with distributed.main_first():  # rank 0 decodes into the cache, the others then read it
        data = data or load_data(config.data, config.system.seed)
    if main:
        run_dir = Path(run_dir) if run_dir else run_dir_for(config.train.resume, runs_root)
        run_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(distributed.broadcast(str(run_dir) if main else None))
    started = time.perf_counter()  # a budget counts from its measurement on
    plan = None
    if config.train.budget_s and resume_state is None:
        _log(f"time budget {config.train.budget_s:.0f} s: measuring this machine's speed on this data first")
        plan = plan_budget(config, data, device)
        config, data, plan = _recipe_for_budget(config, data, device, plan, started)
        config = plan.apply(config)
        _log(plan.describe())
    trainer = Trainer(config, data, device)
    state = trainer.state
    if resume_state is not None:  # refused before anything of the run is touched when it would change the run
        state.load_state_dict(resume_state, str(config.train.resume), trainer.data.class_names)
        _log(f"resumed from {config.train.resume} after epoch {trainer.state.epoch}")
    if main:
        config.save(run_dir / "config.json")
        if plan is not None:
            write_json(run_dir / "budget.json", plan.to_dict())
    _log(f"run folder: {run_dir}")
    _log(
        f"model: {count_parameters(trainer.state.model) / 1e6:.2f} M parameters, "
        f"{trainer.flops_per_image / 1e9:.3f} GFLOPs per {config.data.image_size}x{config.data.image_size} image"
    )
    _log(
        _data_line(config, data)
        + f"; device {device}, precision {config.train.precision} ({trainer.dtype or 'fp32'})"
        + (f"; {trainer.world} processes, global batch {trainer.world * config.data.batch_size}" if trainer.world > 1 else "")
    )
    writer = SummaryWriter(str(run_dir / "tensorboard")) if main else None
    start_time = started - (trainer.state.history[-1]["elapsed_s"] if trainer.state.history else 0.0)
    interrupted, stop_reason = False, ""
    shown = main and progress_bar_wanted()
    bar = tqdm(desc="training", initial=trainer.state.epoch, total=config.train.epochs, disable=not shown)
    try:
        while trainer.state.epoch < config.train.epochs:
            row = {"epoch": trainer.state.epoch + 1, "lr": trainer.state.optimizer.param_groups[0]["lr"]}
            row |= trainer.train_epoch()
            final = trainer.state.epoch + 1 == config.train.epochs
            if final or (trainer.state.epoch + 1) % config.train.validate_every == 0:
                # rank 0 validates and every rank takes its figures, so that all decide alike (best, stopping)
                row |= distributed.broadcast(trainer.validate(final=final) if main else None)
            trainer.state.epoch += 1
            row["elapsed_s"] = time.perf_counter() - start_time
            trainer.state.history.append(row)
            early_stop = early_stop_reason(trainer.state.history, config.train.patience, config.train.monitor)
            _end_of_epoch(trainer, run_dir, row, writer, last=bool(early_stop) or trainer.state.epoch == config.train.epochs)
            bar.update()
            if early_stop:
                stop_reason = early_stop
                _log(stop_reason)
                break
            if plan is not None and trainer.state.epoch in plan.refit_epochs():
                plan = _follow_budget(trainer, plan, run_dir)
                config, bar.total = trainer.config, trainer.config.train.epochs
    except KeyboardInterrupt:
        interrupted, stop_reason = True, f"interrupted during epoch {trainer.state.epoch + 1}"
        _log(_interrupt_message(trainer, run_dir))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    stop_reason = stop_reason or f"completed {config.train.epochs} epochs"
    result = TrainResult(
        run_dir, trainer.state.history, trainer.state.best_valid_acc, trainer.state.best_epoch, interrupted, stop_reason
    )
    if main and not interrupted:
        _write_hparams(run_dir, config, result)
    if main:
        _write_metrics(trainer, run_dir, result)
    return result


def _recipe_for_budget(config: Config, data: DataBundle, device, plan: BudgetPlan, started: float):
    """(config, data, plan): as given, or `fast`'s recipe in their place when the budget fits fewer than
    SHORT_BUDGET_EPOCHS epochs of the default recipe (`presets.short_budget_recipe`), with the images decoded
    again at the sizes it needs and its speed measured; the budget still counts from `started`."""
    short = short_budget_recipe(config) if plan.epochs < SHORT_BUDGET_EPOCHS else None
    if short is None:
        return config, data, plan
    _log(
        f"budget: {plan.epochs} epochs of the default recipe fit, too few for its progressive resizing (it needs "
        f"{SHORT_BUDGET_EPOCHS}): training the `fast` recipe instead ({short.data.image_size} px crops, the default's "
        "augmentation; an epoch count instead of the budget keeps the default recipe)"
    )
    if short.data.decode_size != data.train.images.shape[-1]:
        with distributed.main_first():
            data = load_data(short.data, short.system.seed)
    short_plan = plan_budget(short, data, device, started)
    return short, data, dataclasses.replace(short_plan, default_recipe_epochs=plan.epochs)


def _follow_budget(trainer: Trainer, plan: BudgetPlan, run_dir: Path) -> BudgetPlan:
    """Fit the budget again to the epochs so far (`budget.refit`); on a change, go on under the new
    schedule and save it (config.json, budget.json). Rank 0 decides for all."""
    refitted = distributed.broadcast(refit(plan, trainer.config, trainer.state.history) if distributed.is_main() else None)
    if refitted is None:
        return plan
    trainer.reschedule(refitted.apply(trainer.config))
    _log(refitted.describe_refit())
    if distributed.is_main():
        trainer.config.save(run_dir / "config.json")
        write_json(run_dir / "budget.json", refitted.to_dict())
    return refitted


def _data_line(config: Config, data: DataBundle) -> str:
    """What the run trains and validates on, in one log line."""
    notes = [f"{data.extra_images} of them from {config.data.extra_train_dir}"] if data.extra_images else []
    if config.data.train_on_all:
        notes.append("validation images are in the training set: train_on_all")
    return (
        f"{len(data.train)} training / {len(data.valid)} validation images"
        + "".join(f" ({note})" for note in notes)
        + f", classes {data.class_names}, {len(data.skipped)} files skipped"
    )


def early_stop_reason(history: list[dict[str, float]], patience: int, monitor: str) -> str:
    """Why to stop after the last epoch of `history` ("" to go on): `monitor` (valid_loss, lower is
    better, or valid_acc) has not improved on its best for `patience` epochs. 0 = never stop early."""
    validated = [row for row in history if monitor in row]  # with train.validate_every > 1, not every epoch
    if not patience or not validated or validated[-1] is not history[-1]:
        return ""
    pick = min if monitor == "valid_loss" else max
    best = pick(validated, key=lambda row: row[monitor])  # the first epoch reaching the best value
    waited = history[-1]["epoch"] - best["epoch"]
    if waited < patience:
        return ""
    return (
        f"early stopping after epoch {history[-1]['epoch']}: {monitor} has not improved for {waited} epochs "
        f"(best {best[monitor]:.4f} at epoch {best['epoch']})"
    )


def _end_of_epoch(trainer: Trainer, run_dir: Path, row: dict[str, float], writer: SummaryWriter | None, last: bool) -> None:
    """Track the best epoch; on rank 0 (the writer's) also save checkpoints, logs and metrics."""
    epoch, config = trainer.state.epoch, trainer.config
    validated = "valid_acc" in row
    improved = validated and row["valid_acc"] > trainer.state.best_valid_acc
    if improved:
        trainer.state.best_valid_acc, trainer.state.best_epoch = row["valid_acc"], epoch
    if writer is None:
        return
    _save_or_warn(trainer, run_dir, "last.pt")
    if improved:
        _save_or_warn(trainer, run_dir, "best.pt", selected_on_valid=True)
    if config.train.checkpoint_every and epoch % config.train.checkpoint_every == 0:
        _save_or_warn(trainer, run_dir, f"epoch_{epoch:03d}.pt")
    for split in ("train", "valid") if validated else ("train",):
        writer.add_scalar(f"loss/{split}", row[f"{split}_loss"], epoch)
        writer.add_scalar(f"accuracy/{split}", row[f"{split}_acc"], epoch)
    writer.add_scalar("lr", row["lr"], epoch)
    writer.add_scalar("image_size", row["image_size"], epoch)
    every = config.train.tensorboard_every
    # the figures need this epoch's validation: at the first validated epoch on or after each multiple of `every`
    if every and validated and (epoch % every < config.train.validate_every or last):
        data = trainer.data
        log_figures(
            writer,
            epoch,
            trainer.state.inference_model,
            data.valid,
            trainer.valid_logits,
            data.class_names,
            data.mean,
            data.std,
            config.data.effective_eval_size,
        )
    writer.flush()
    _write_metrics(trainer, run_dir, None)
    _log(
        f"epoch {epoch:3d}/{config.train.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
        + (
            f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.4f}{' *' if improved else '  '}  "
            + (f"balanced {row['valid_balanced_acc']:.4f}  " if trainer.imbalanced else "")
            if validated
            else "(not validated)".ljust(32)
        )
        + f"lr {row['lr']:.4g}  {row['image_size']}px  {row['elapsed_s']:.0f}s"
    )


def _save_or_warn(trainer: Trainer, run_dir: Path, name: str, selected_on_valid: bool = False) -> None:
    """Save a checkpoint; if that fails (disk full...) keep the previous file and keep training."""
    try:
        state = trainer.state.state_dict(trainer.data) | {"selected_on_valid": selected_on_valid}  # best.pt: picked on Valid
        save_checkpoint(run_dir / "checkpoints" / name, state)
    except OSError as error:
        _log(f"WARNING: could not save {name} ({error}); the previous {name}, if any, is kept unchanged")


def _interrupt_message(trainer: Trainer, run_dir: Path) -> str:
    last = run_dir / "checkpoints" / "last.pt"
    if trainer.state.epoch == 0 or not last.exists():
        return "interrupted before the first epoch finished: nothing to resume from"
    return (
        f"interrupted during epoch {trainer.state.epoch + 1}; {last} holds epoch {trainer.state.epoch}. Resume with:\n"
        f"  python -m classifier_lib train --resume {shlex.quote(str(last))}"
    )


def _write_metrics(trainer: Trainer, run_dir: Path, result: TrainResult | None) -> None:
    history = trainer.state.history
    metrics = {
        "history": history,
        "final_valid_acc": history[-1].get("valid_acc") if history else None,  # None: the last epoch was not validated
        "final_valid_balanced_acc": history[-1].get("valid_balanced_acc") if history else None,
        "imbalanced": trainer.imbalanced,
        "best_valid_acc": trainer.state.best_valid_acc,
        "best_epoch": trainer.state.best_epoch,
        "epochs_done": trainer.state.epoch,
        "valid_in_training": trainer.config.data.train_on_all,
        "class_names": trainer.data.class_names,
        "train_images": len(trainer.data.train),
        "extra_train_images": trainer.data.extra_images,
        "data_split": trainer.data.split,
        "valid_images": len(trainer.data.valid),
        "skipped_files": len(trainer.data.skipped),
        "skipped": trainer.data.skipped,
        "device": str(trainer.device),
        "parameters": count_parameters(trainer.state.model),
        "flops_per_image": trainer.flops_per_image,
        "interrupted": bool(result and result.interrupted),
        "stop_reason": result.stop_reason if result else "running",
    }
    write_json(run_dir / "metrics.json", metrics)


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


def run_dir_for(resume: str | None, runs_root: str | Path) -> Path:
    """A resumed run continues in the run folder its checkpoint lives in; otherwise a new one (made now)."""
    if resume:
        folder = Path(resume).resolve().parent
        if folder.name == "checkpoints" and (folder.parent / "config.json").exists():
            return folder.parent
    return new_run_dir(runs_root)


def _log(message: str) -> None:
    if distributed.is_main():
        tqdm.write(message, file=sys.stdout)
