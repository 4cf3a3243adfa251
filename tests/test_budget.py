"""Time budgets: the schedule fitted to measured speeds, and a budget run on tiny data that repeats exactly
with the epochs it chose."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config, tiny_train_args

from classifier_lib.config import Config
from classifier_lib.presets import preset_config
from classifier_lib.training.budget import (
    FIGURE_ROUNDS,
    MAX_VALIDATIONS,
    SAFETY,
    BudgetPlan,
    Speeds,
    fit_schedule,
    training_sizes,
)


def test_the_schedule_fills_the_budget_and_no_more():
    config = Config().override({"data.image_size": 64, "data.min_size": 0})
    speeds = Speeds({64: 0.1}, steps_per_epoch=10, validation_s=0.5, epoch_s=0.02, figures_s=2.0)
    epochs, every, figures_every, seconds = fit_schedule(config, speeds, available_s=200)

    def cost(n: int) -> float:  # 1.02 s an epoch; validations every `every`-th and the last; figures
        return n * 1.02 + math.ceil(n / every) * 0.5 + (n // figures_every + 1) * 2.0

    assert seconds == pytest.approx(cost(epochs)) and cost(epochs) <= SAFETY * 200 < cost(epochs + 1)
    assert every == math.ceil(epochs / 20)  # 5 % of 200 s is twenty 0.5 s validations
    assert figures_every % every == 0 and epochs // figures_every + 1 <= FIGURE_ROUNDS + 1  # figures on validated epochs
    assert 165 <= epochs <= 185
    off = fit_schedule(config.override({"train.tensorboard_every": 0}), speeds, available_s=200)
    assert off[2] == 0 and off[0] > epochs  # no figures: their time goes to epochs


def test_progressive_resizing_is_priced_at_each_size():
    """Large crops cost more per step: the plan lands between all-small and all-large epochs."""
    config = preset_config("default")
    sizes = training_sizes(config)
    assert sizes == [64, 80, 96, 112]

    def speeds(step_s, validation_s=1.0):
        return Speeds(step_s, steps_per_epoch=30, validation_s=validation_s, epoch_s=0.0, figures_s=0.0)

    step_s = {size: 0.01 * (size / 64) ** 2 for size in sizes}
    epochs, *_ = fit_schedule(config, speeds(step_s), 600)
    small, *_ = fit_schedule(config, speeds({size: step_s[64] for size in sizes}), 600)
    large, *_ = fit_schedule(config, speeds({size: step_s[112] for size in sizes}), 600)
    assert large < epochs < small
    many, every, *_ = fit_schedule(config, speeds(step_s, validation_s=0.001), 600)
    assert math.ceil(many / every) <= MAX_VALIDATIONS  # a cheap validation is still not run every epoch of a long run


def test_a_budget_below_one_epoch_runs_one_and_says_so():
    speeds = Speeds({64: 1.0}, steps_per_epoch=50, validation_s=1.0, epoch_s=0.0, figures_s=0.0)
    epochs, every, figures_every, seconds = fit_schedule(Config(), speeds, available_s=10)
    assert (epochs, every) == (1, 1) and seconds == 51.0
    plan = BudgetPlan(10, epochs, every, figures_every, seconds, 0.1, speeds)
    assert "WARNING: the budget is smaller than one epoch" in plan.describe()


def test_a_budget_run_ends_near_its_budget_and_repeats_with_its_epochs(tiny_data, tmp_path):
    """The command line's --budget measures, chooses the epochs, saves them with the budget in config.json and
    the measurements in budget.json; that config with --epochs N trains the same weights again."""
    runs = tmp_path / "runs"
    base = tiny_train_args(tiny_data, runs, 1)
    del base[base.index("--epochs") : base.index("--epochs") + 2]
    budget = 12.0
    subprocess.run([sys.executable, *base, "--budget", f"{budget:.0f}s", "--set", "system.threads", "1"], check=True)
    run = runs / "version_0"
    saved = json.loads((run / "config.json").read_text())["train"]
    plan = json.loads((run / "budget.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert saved["budget_s"] == budget and saved["epochs"] == plan["epochs"] == metrics["epochs_done"] > 3
    assert saved["validate_every"] == plan["validate_every"]
    assert set(plan["speeds"]["step_s"]) == {"32"} and plan["probe_s"] < budget / 2
    assert saved["tensorboard_every"] == plan["tensorboard_every"] > 0
    used = metrics["history"][-1]["elapsed_s"]  # counted from the measurement on
    assert 0.5 * budget < used < 1.3 * budget  # loose: a shared CI machine; bench/time_to_accuracy.py measures adherence
    subprocess.run(
        [
            sys.executable,
            *base,
            "--config",
            str(run / "config.json"),
            "--epochs",
            str(saved["epochs"]),
            "--run-dir",
            str(tmp_path / "again"),
        ],
        check=True,
    )
    assert not (tmp_path / "again" / "budget.json").exists()
    first = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    second = torch.load(tmp_path / "again" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_resuming_a_budget_run_keeps_its_schedule(tiny_data, tmp_path):
    """A resumed run continues the epochs its budget chose; it does not measure and plan again."""
    from classifier_lib.training.engine import train

    config = tiny_config(tiny_data).override({"train.budget_s": 6.0, "train.epochs": 1})
    first = train(config, runs_root=tmp_path / "runs")
    planned = json.loads((first.run_dir / "budget.json").read_text())["epochs"]
    (first.run_dir / "budget.json").unlink()
    resumed = train(config.override({"train.resume": str(first.last_checkpoint), "train.epochs": planned}))
    assert resumed.run_dir == first.run_dir and not (first.run_dir / "budget.json").exists()
    assert len(resumed.history) == planned
