"""Fitting a run into a time budget (`train.budget_s`, `--budget 20m`).

Before the first epoch, training measures its own speed on this machine and this data set: a few
optimiser steps at every crop size the schedule can use (progressive resizing included), one
validation pass (scaled from a sample), one round of TensorBoard figures and what every epoch writes
(last.pt, metrics.json). `fit_schedule` then picks the largest epoch count that fits in what is left
of the budget, how often to validate (about VALIDATION_SHARE of the budget at most) and to draw the
figures. The one-cycle schedule and the progressive-resizing steps follow from the epoch count, as in
any run. The budget counts from the measurement on; decoding images into the cache comes before it.

A few seconds of measurement cannot see a machine that gets slower or faster later (other work on it,
changing clocks: on one machine here the same step took 94 ms in one measurement and 163 ms in
another). So after 10, 30, 60 and 85 % of the first plan's epochs (REFIT_AT) the plan is fitted again
to what the epochs since the last re-fit really took (the median epoch against what the plan priced it
at, per crop size where those epochs ran at it), as Ultralytics does for its `time` argument: the epoch
count, validation and figure frequency change, and the learning-rate schedule and progressive resizing
follow the new count from the step reached.

The final `train.epochs`, `validate_every` and `tensorboard_every` are saved in config.json beside the
budget, so `--config config.json --epochs N` trains that schedule from the start (the same run exactly
when no re-fit changed it); the measurements and every re-fit are in budget.json.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from classifier_lib.config import SIZE_STEP, Config
from classifier_lib.data.augment import train_size
from classifier_lib.data.dataset import DataBundle, batches
from classifier_lib.inference.checkpoint import save_checkpoint
from classifier_lib.inference.predict import predict_logits
from classifier_lib.training.tb_figures import log_figures
from classifier_lib.training.trainer import Trainer
from classifier_lib.utils import distributed
from classifier_lib.utils.fileio import write_json

WARMUP_STEPS = 2  # untimed steps at each size: kernel selection, caches
TIMED_STEPS = 5  # timed steps at each size (the median counts)
VALIDATION_SAMPLE = 256  # validation images timed; the pass is scaled to the whole split
VALIDATION_SHARE = 0.05  # at most this share of the budget goes to validating
MAX_VALIDATIONS = 30  # enough points for the curves
FIGURE_ROUNDS = 5  # TensorBoard figures (seconds each) are drawn about this many times, and after the last epoch
SAFETY = 0.97  # plan to this share of the budget: what the measurement does not see (logs, noise)
# after these shares of the planned epochs the plan is fitted again to what the epochs really took: a machine
# shared with other work, or whose clocks change, runs at another speed than in the few seconds measured
REFIT_AT = (0.1, 0.3, 0.6, 0.85)  # the last one for a machine that changes late in the run
REFIT_TOLERANCE = 0.03  # a re-fit that changes the epoch count by at most this share (or one epoch) keeps the plan
MAX_EPOCHS = 10_000


@dataclass
class Speeds:
    """What one run's pieces cost on this machine, measured before its first epoch."""

    step_s: dict[int, float]  # seconds per optimiser step at each training size
    steps_per_epoch: int
    validation_s: float  # one validation pass
    epoch_s: float  # what every epoch writes: last.pt, metrics.json, the TensorBoard scalars
    figures_s: float  # one round of TensorBoard figures (0 when train.tensorboard_every is 0)

    def scaled(self, factor: float, size_factors: dict[int, float] | None = None) -> Speeds:
        """Every cost `factor` times as long, the steps at a size in `size_factors` by its own factor instead
        (the steps per epoch unchanged)."""
        size_factors = size_factors or {}
        step_s = {size: seconds * size_factors.get(size, factor) for size, seconds in self.step_s.items()}
        return Speeds(step_s, self.steps_per_epoch, self.validation_s * factor, self.epoch_s * factor, self.figures_s * factor)


@dataclass
class BudgetPlan:
    """What the budget measured and the schedule it chose."""

    budget_s: float
    epochs: int
    validate_every: int
    tensorboard_every: int
    planned_s: float  # the estimate of the whole run, the measurement included
    probe_s: float  # the measurement: from the budget's start to the first epoch
    speeds: Speeds
    refits: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # each re-fit: after which epoch, to what
    # the epochs the default recipe would have had, when the budget was too short for it and trains `fast`'s instead
    default_recipe_epochs: int = 0

    def refit_epochs(self) -> set[int]:
        """The epochs after which the plan is fitted again (see REFIT_AT): shares of the first plan's epochs,
        so that a re-fit does not move the next ones, and the last share of the current plan's, so that a plan
        re-fitted to many more epochs is still checked near its end (one grown from 117 to 164 epochs, checked
        last at epoch 99, ran its last 40 % on a machine that had slowed down and used 121 % of its budget)."""
        planned = self.refits[0]["epochs_before"] if self.refits else self.epochs
        points = {max(1, round(share * planned)) for share in REFIT_AT}
        points |= {round(share * self.epochs) for share in REFIT_AT[-1:]}
        return {epoch for epoch in points if epoch < self.epochs}

    def epoch_cost_s(self, row: dict[str, float]) -> float:
        """What the plan's speeds price one epoch of the history at: its steps, its validation and what every
        epoch writes (TensorBoard figures left out: a few epochs draw them, and `refit` takes a median)."""
        speeds = self.speeds
        validation_s = speeds.validation_s if "valid_acc" in row else 0.0
        return speeds.step_s[int(row["image_size"])] * speeds.steps_per_epoch + validation_s + speeds.epoch_s

    def apply(self, config: Config) -> Config:
        """`config` with the chosen epochs, validation and figure frequencies."""
        train = dataclasses.replace(
            config.train, epochs=self.epochs, validate_every=self.validate_every, tensorboard_every=self.tensorboard_every
        )
        return dataclasses.replace(config, train=train)

    def describe(self) -> str:
        speeds = ", ".join(f"{size} px {1 / seconds:.1f}" for size, seconds in self.speeds.step_s.items())
        line = (
            f"budget {self.budget_s:.0f} s: measured in {self.probe_s:.1f} s (steps/s at {speeds}; validation "
            f"{self.speeds.validation_s:.1f} s) -> {self.epochs} epochs, validated every {self.validate_every}, "
            f"planned {self.planned_s:.0f} s"
        )
        if self.planned_s > self.budget_s:
            line += "; WARNING: the budget is smaller than one epoch, so one epoch is run"
        return line

    def describe_refit(self) -> str:
        *earlier, last = self.refits
        first = earlier[-1]["after_epoch"] + 1 if earlier else 1
        return (
            f"budget: epochs {first}-{last['after_epoch']} ran at {1 / last['speed_ratio']:.0%} of the planned speed "
            f"-> {self.epochs} epochs instead of {last['epochs_before']}, validated every {self.validate_every}"
        )

    def to_dict(self) -> dict[str, Any]:
        plan = dataclasses.asdict(self)
        plan["speeds"]["step_s"] = {str(size): seconds for size, seconds in self.speeds.step_s.items()}
        return plan


def plan_budget(config: Config, data: DataBundle, device: torch.device, started: float | None = None) -> BudgetPlan:
    """Measure this run's speed and fit its schedule into `config.train.budget_s` (see the module doc), counting
    from `started` (a `time.perf_counter()` reading; now by default). Under torchrun every rank takes the steps
    (they synchronise) and rank 0's plan is used by all."""
    start = time.perf_counter() if started is None else started
    probe = Trainer(config, data, device)  # a throwaway trainer: its own steps are what is timed
    step_s = {size: _time_steps(probe, size) for size in training_sizes(config)}
    plan = None
    if distributed.is_main():
        validation_s, figures_s = _time_validation(probe)
        speeds = Speeds(step_s, probe.state.steps_per_epoch, validation_s, _time_epoch_files(probe), figures_s)
        probe_s = time.perf_counter() - start
        epochs, every, figures_every, seconds = fit_schedule(config, speeds, config.train.budget_s - probe_s)
        plan = BudgetPlan(config.train.budget_s, epochs, every, figures_every, seconds + probe_s, probe_s, speeds)
    del probe
    return distributed.broadcast(plan)


def refit(plan: BudgetPlan, config: Config, history: list[dict[str, float]]) -> BudgetPlan | None:
    """The plan fitted again after the epochs in `history`: its speeds scaled by how much longer (or shorter)
    the epochs since the last re-fit took than it priced them at (`speed_ratios`: each crop size seen by its
    own ratio, the others by that of all those epochs), and the epochs still to run fitted into the time the
    budget has left (what the epochs done really took, figures and slow epochs included, is spent).
    None when the epoch count changes by less than REFIT_TOLERANCE; never fewer than the epochs done plus one."""
    done = len(history)
    ratio, size_ratios = speed_ratios(plan, history)
    scaled = dataclasses.replace(plan, speeds=plan.speeds.scaled(ratio, size_ratios))
    spent_s = history[-1]["elapsed_s"]  # from the measurement on, as the budget counts
    epochs, every, figures_every, seconds = fit_schedule(config, scaled.speeds, plan.budget_s - spent_s, done=done)
    if abs(epochs - plan.epochs) <= max(1.0, REFIT_TOLERANCE * plan.epochs):
        return None
    record = {
        "after_epoch": done,
        "speed_ratio": ratio,
        "size_ratios": size_ratios,
        "epochs_before": plan.epochs,
        "epochs": epochs,
    }
    return dataclasses.replace(
        scaled, epochs=epochs, validate_every=every, tensorboard_every=figures_every,
        planned_s=spent_s + seconds, refits=[*plan.refits, record],
    )  # fmt: skip


def speed_ratios(plan: BudgetPlan, history: list[dict[str, float]]) -> tuple[float, dict[int, float]]:
    """The seconds each epoch since the plan's last re-fit took over the seconds the plan priced it at: their
    median, and their median at each crop size among them. Medians, so that the few epochs that also drew
    figures or wrote a best.pt do not move them; since the last re-fit, so that they follow the machine as it
    is now; per size, because a few steps measured at one size can be off by more than at another (one run
    here measured 96 px slower than 112 px, and priced its last epochs at 112 px too cheap)."""
    start = plan.refits[-1]["after_epoch"] if plan.refits else 0
    previous_s = history[start - 1]["elapsed_s"] if start else plan.probe_s
    by_size: dict[int, list[float]] = {}
    for row in history[start:]:
        by_size.setdefault(int(row["image_size"]), []).append((row["elapsed_s"] - previous_s) / max(plan.epoch_cost_s(row), 1e-9))
        previous_s = row["elapsed_s"]
    everything = statistics.median(ratio for ratios in by_size.values() for ratio in ratios)
    return everything, {size: statistics.median(ratios) for size, ratios in by_size.items()}


def training_sizes(config: Config) -> list[int]:
    """Every crop size the training schedule can use, whatever its epoch count."""
    data = config.data
    if not data.min_size or data.min_size >= data.image_size:
        return [data.image_size]
    return sorted({*range(data.min_size, data.image_size, SIZE_STEP), data.image_size})


def fit_schedule(config: Config, speeds: Speeds, available_s: float, done: int = 0) -> tuple[int, int, int, float]:
    """(epochs, validate_every, tensorboard_every, estimated seconds): the most epochs that fit in
    `available_s`, validated at most MAX_VALIDATIONS times and within about VALIDATION_SHARE of the time
    (always after the last), with TensorBoard figures about FIGURE_ROUNDS times (none if they are off).
    With `done` epochs already run (a re-fit), only the epochs from there on are priced, each at the crop size
    the schedule of the candidate count gives it, and the validations and figures are shared out over them.
    At least one epoch more than `done`, even when it does not fit."""
    validation_s = max(speeds.validation_s, 1e-9)
    figures_on = config.train.tensorboard_every > 0

    def cost(epochs: int) -> tuple[float, int, int]:
        left = epochs - done
        validations = max(1, min(math.ceil(MAX_VALIDATIONS * left / epochs), int(VALIDATION_SHARE * available_s / validation_s)))
        every = math.ceil(left / validations)
        figures_every = every * math.ceil(math.ceil(epochs / every) / FIGURE_ROUNDS) if figures_on else 0
        sized = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
        training = sum(speeds.step_s[train_size(sized, epoch)] for epoch in range(done, epochs)) * speeds.steps_per_epoch
        validated = epochs // every - done // every + (1 if epochs % every else 0)  # every `every`-th and the last
        figures = (epochs // figures_every - done // figures_every + 1) * speeds.figures_s if figures_on else 0.0
        return training + validated * speeds.validation_s + left * speeds.epoch_s + figures, every, figures_every

    # cost grows with the epoch count (but for a validation or figure round gained or lost to rounding): bisect
    low, high = done + 1, MAX_EPOCHS
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if cost(middle)[0] <= SAFETY * available_s else (low, middle - 1)
    seconds, every, figures_every = cost(low)
    return low, every, figures_every, seconds


def _time_steps(trainer: Trainer, size: int) -> float:
    """Median seconds of one optimiser step at `size`, gathering the batch and augmenting it included."""
    generator = torch.Generator().manual_seed(0)
    trainer.state.wrapped.train()
    times: list[float] = []
    while len(times) < WARMUP_STEPS + TIMED_STEPS:
        loader = iter(
            batches(trainer.data.train, trainer.config.data.batch_size, trainer.device, generator, trainer.rank, trainer.world)
        )
        while len(times) < WARMUP_STEPS + TIMED_STEPS:
            started = time.perf_counter()
            batch = next(loader, None)
            if batch is None:
                break
            images, labels = batch[0].to(trainer.device), batch[1].to(trainer.device)
            trainer.train_step(images, labels, size, generator)
            _synchronize(trainer.device)
            times.append(time.perf_counter() - started)
    return statistics.median(times[WARMUP_STEPS:])


def _time_validation(trainer: Trainer) -> tuple[float, float]:
    """(seconds of one validation pass, of one round of TensorBoard figures): validation is timed on a
    sample of the validation images after a warm-up batch and scaled to the split."""
    settings, data = trainer.config.data, trainer.data
    sample = data.valid.select(torch.arange(min(len(data.valid), VALIDATION_SAMPLE)))
    model = trainer.state.inference_model

    def predict(images):
        logits = predict_logits(
            model,
            images,
            data.mean,
            data.std,
            settings.tta_size_list,
            device=trainer.device,
            dtype=trainer.dtype,
            flip=settings.mirror_tta,
        )
        _synchronize(trainer.device)
        return logits

    predict(sample.images[:32])
    started = time.perf_counter()
    logits = predict(sample.images)
    validation_s = (time.perf_counter() - started) * len(data.valid) / max(len(sample), 1)
    if not trainer.config.train.tensorboard_every:
        return validation_s, 0.0
    with tempfile.TemporaryDirectory() as folder, SummaryWriter(folder) as writer:
        started = time.perf_counter()
        log_figures(writer, 0, model, sample, logits, data.class_names, data.mean, data.std, settings.effective_eval_size)
        writer.flush()
        return validation_s, time.perf_counter() - started


def _time_epoch_files(trainer: Trainer) -> float:
    """Seconds of what every epoch writes: last.pt and a metrics.json of a long run's size."""
    history = [{"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "lr": 0.1, "elapsed_s": 1.0} for epoch in range(200)]
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        save_checkpoint(Path(folder) / "last.pt", trainer.state.state_dict(trainer.data))
        write_json(Path(folder) / "metrics.json", {"history": history, "skipped": trainer.data.skipped})
        return time.perf_counter() - started


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
