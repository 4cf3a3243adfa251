"""Time budgets: the schedule fitted to measured speeds, and a budget run on tiny data that repeats exactly
with the epochs it chose."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config, tiny_train_args

from classifier_lib.config import Config
from classifier_lib.data.augment import train_size
from classifier_lib.presets import preset_config, run_config
from classifier_lib.training.budget import (
    FIGURE_ROUNDS,
    MAX_VALIDATIONS,
    REFIT_AT,
    SAFETY,
    BudgetPlan,
    Speeds,
    fit_schedule,
    refit,
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


def test_a_budget_run_ends_near_its_budget_and_saves_its_epochs(tiny_data, tmp_path):
    """The command line's --budget measures, chooses the epochs, saves them with the budget in config.json and
    the measurements (and any re-fit) in budget.json."""
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
    assert all(refit["epochs"] != refit["epochs_before"] for refit in plan["refits"])
    # a re-fit with less time left than one more epoch costs still runs that epoch (the schedule's end) and its
    # plan then says it overruns; any other plan fits. How close the run lands is timing: bench/time_to_accuracy.py
    last = plan["refits"][-1] if plan["refits"] else None
    one_more = last is not None and last["epochs"] == last["after_epoch"] + 1
    assert plan["planned_s"] <= budget or one_more


def test_a_budget_run_without_refits_repeats_exactly_with_its_epochs(tiny_data, tmp_path, monkeypatch):
    """config.json of a budget run, with --epochs N, trains the same weights again (when no re-fit changed
    the schedule along the way: here re-fitting is off)."""
    from classifier_lib.training import budget, engine

    monkeypatch.setattr(budget, "REFIT_AT", ())
    first = engine.train(tiny_config(tiny_data).override({"train.budget_s": 6.0}), runs_root=tmp_path / "runs")
    saved = Config.load(first.run_dir / "config.json")
    assert saved.train.budget_s == 6.0 and len(first.history) == saved.train.epochs
    again = engine.train(saved.override({"train.epochs": saved.train.epochs, "train.budget_s": 0.0}), run_dir=tmp_path / "again")
    assert not (tmp_path / "again" / "budget.json").exists()
    one = torch.load(first.last_checkpoint, weights_only=True)["model"]
    two = torch.load(again.last_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(one[name], two[name]) for name in one)


def test_a_budget_fits_itself_again_to_what_the_epochs_really_take(tiny_data, tmp_path, monkeypatch):
    """A measurement 5x too pessimistic (a machine busy while it measured) plans too few epochs; after the
    first epochs the plan is fitted again to their real cost, and the run trains the new count on one
    learning-rate schedule, joined at the step it had reached and run to its end."""
    from classifier_lib.training import engine

    measured = engine.plan_budget

    def pessimistic(config, data, device):
        plan = measured(config, data, device)
        slow = plan.speeds.scaled(5.0)
        epochs, every, figures_every, seconds = fit_schedule(config, slow, config.train.budget_s - plan.probe_s)
        return BudgetPlan(plan.budget_s, epochs, every, figures_every, seconds + plan.probe_s, plan.probe_s, slow)

    monkeypatch.setattr(engine, "plan_budget", pessimistic)
    config = tiny_config(tiny_data).override({"train.budget_s": 8.0, "train.tensorboard_every": 0})
    result = engine.train(config, runs_root=tmp_path / "runs")
    plan = json.loads((result.run_dir / "budget.json").read_text())
    first = plan["refits"][0]
    assert first["speed_ratio"] < 0.6 and first["epochs"] > first["epochs_before"]
    saved = Config.load(result.run_dir / "config.json")
    assert len(result.history) == saved.train.epochs == plan["epochs"] > first["epochs_before"]
    schedule = torch.load(result.last_checkpoint, weights_only=False)["scheduler"]
    assert schedule["total_steps"] == max(8, saved.train.epochs * plan["speeds"]["steps_per_epoch"])
    assert schedule["last_epoch"] == schedule["total_steps"]  # the whole schedule was run, none of it twice


def _flat_plan(figures_s: float = 0.0) -> tuple[Config, BudgetPlan]:
    """A plan for 1 s epochs (ten 0.1 s steps) in 100 s, nothing else priced unless figures are on."""
    config = Config().override({"data.image_size": 64, "data.min_size": 0, "train.tensorboard_every": int(figures_s > 0)})
    speeds = Speeds({64: 0.1}, steps_per_epoch=10, validation_s=0.0, epoch_s=0.0, figures_s=figures_s)
    epochs, every, figures_every, seconds = fit_schedule(config, speeds, 100)
    return config, BudgetPlan(100, epochs, every, figures_every, seconds, 0.0, speeds)


def _history(seconds_each: list[float]) -> list[dict[str, float]]:
    elapsed = [sum(seconds_each[: n + 1]) for n in range(len(seconds_each))]
    return [{"epoch": n + 1, "image_size": 64, "train_acc": 0.5, "elapsed_s": s} for n, s in enumerate(elapsed)]


def test_refit_scales_the_plan_to_the_measured_epochs():
    config, plan = _flat_plan()
    epochs = plan.epochs
    assert plan.refit_epochs() == {round(share * epochs) for share in REFIT_AT}
    slower = refit(plan, config, _history([2.0] * 10))  # twice the 1 s an epoch priced
    assert slower is not None and slower.epochs == pytest.approx(epochs / 2, abs=2) and slower.refits[0]["speed_ratio"] == 2.0
    assert slower.planned_s <= plan.budget_s
    faster = refit(plan, config, _history([0.5] * 10))
    assert faster is not None and faster.epochs == pytest.approx(epochs * 2, abs=3)
    assert refit(plan, config, _history([1.02] * 10)) is None  # within the tolerance: the plan stands
    moved = refit(plan, config, _history([0.5] * round(0.1 * epochs)))
    assert moved is not None and plan.refit_epochs() <= moved.refit_epochs()  # the first plan's points: no cascade
    assert moved.refit_epochs() - plan.refit_epochs() == {round(REFIT_AT[-1] * moved.epochs)}  # and near its own end
    assert refit(plan, config, _history([50.0] * 3)).epochs == 4  # far over: never fewer than the epochs done + 1


def test_a_few_slow_epochs_cost_their_time_but_do_not_rescale_the_steps():
    """Epochs that drew figures (priced at 5 s a round: here 10 s, or a slow first epoch) are spent time, not
    a slower machine: the steps keep their price and the budget loses just the extra seconds. Scaling every
    price by the mean (what an earlier version did) planned 479 epochs for a 12 s budget and ran 40 s."""
    config, plan = _flat_plan(figures_s=5.0)
    seconds_each = [1.0] * 10
    seconds_each[0] = seconds_each[6] = 11.0
    refitted = refit(plan, config, _history(seconds_each))
    assert refitted is not None and refitted.refits[0]["speed_ratio"] == 1.0
    assert refitted.epochs == pytest.approx(plan.epochs - 20, abs=2)  # the 20 s beyond the price, at 1 s an epoch


def test_the_speed_is_measured_since_the_last_refit():
    """A machine that slows down half way is seen at its new speed, not averaged with its past."""
    config, plan = _flat_plan()
    first = refit(plan, config, _history([0.5] * 10))
    assert first is not None
    later = refit(first, config, _history([0.5] * 10 + [1.0] * 20))
    assert later is not None and later.refits[-1]["speed_ratio"] == pytest.approx(2.0)
    assert later.epochs == pytest.approx(10 + 20 + (100 * SAFETY - 25) / 1.0, abs=2)
    assert "epochs 11-30 ran at 50% of the planned speed" in later.describe_refit()


def test_each_crop_size_seen_since_the_last_refit_is_priced_by_its_own_epochs():
    """A measurement off at one size (here 80 px, which took twice its price) is corrected at that size only;
    a size not yet trained at takes the ratio of all the epochs (here 1: most ran at their price)."""
    config = Config().override({"data.min_size": 64, "data.image_size": 96, "train.tensorboard_every": 0})
    speeds = Speeds({64: 0.1, 80: 0.1, 96: 0.1}, steps_per_epoch=10, validation_s=0.0, epoch_s=0.0, figures_s=0.0)
    epochs, every, figures_every, seconds = fit_schedule(config, speeds, 100)
    plan = BudgetPlan(100, epochs, every, figures_every, seconds, 0.0, speeds)
    history = _history([1.0] * 6 + [2.0] * 4)
    for row in history[6:]:
        row["image_size"] = 80
    refitted = refit(plan, config, history)
    assert refitted is not None and refitted.refits[0]["size_ratios"] == {64: 1.0, 80: 2.0}
    assert refitted.speeds.step_s == pytest.approx({64: 0.1, 80: 0.2, 96: 0.1})
    assert refitted.epochs < plan.epochs


@pytest.mark.parametrize("ratio", [1.1, 0.8])
def test_a_late_refit_prices_only_the_epochs_left_at_the_sizes_they_will_run_at(ratio):
    """Under progressive resizing a new epoch count moves every epoch's crop size. A re-fit after 85 % of the
    epochs must price the epochs still to run, at the sizes the new count gives them, against the time left;
    one that priced all epochs at the new sizes charged the epochs done at sizes they never ran at (a 60-minute
    run cut its plan from 311 to 259 epochs at epoch 240 and ended 21 % early)."""
    config = preset_config("default").override({"train.tensorboard_every": 0})
    step_s = {size: 0.01 * (size / 64) ** 2 for size in training_sizes(config)}
    speeds = Speeds(step_s, steps_per_epoch=30, validation_s=0.0, epoch_s=0.0, figures_s=0.0)
    epochs, every, figures_every, seconds = fit_schedule(config, speeds, 600)
    plan = BudgetPlan(600, epochs, every, figures_every, seconds, 0.0, speeds)
    done = round(REFIT_AT[-1] * epochs)
    ran = plan.apply(config)
    seconds_each = [ratio * step_s[train_size(ran, epoch)] * 30 for epoch in range(done)]  # the machine off by `ratio`
    history = [{"image_size": train_size(ran, epoch), "elapsed_s": sum(seconds_each[: epoch + 1])} for epoch in range(done)]
    refitted = refit(plan, config, history)
    assert refitted is not None and (refitted.epochs < epochs) == (ratio > 1)
    schedule = refitted.apply(config)
    left_s = sum(ratio * step_s[train_size(schedule, epoch)] * 30 for epoch in range(done, refitted.epochs))
    time_left = plan.budget_s - history[-1]["elapsed_s"]
    assert left_s <= SAFETY * time_left < left_s + ratio * step_s[112] * 30  # fills what is left, within an epoch
    assert refitted.planned_s == pytest.approx(history[-1]["elapsed_s"] + left_s)


def test_a_budget_too_short_for_the_default_recipe_trains_fasts(tiny_data, tmp_path, monkeypatch):
    """Where the budget fits fewer than SHORT_BUDGET_EPOCHS of the default recipe (here: every budget), training
    measures again and trains `fast`'s recipe, with the default's RandAugment, for the same budget, from images
    decoded at its sizes: config.json says so, and budget.json keeps the epochs the default recipe would have had."""
    from classifier_lib.training import engine

    monkeypatch.setattr(engine, "SHORT_BUDGET_EPOCHS", 10**6)
    tiny = {"model.widths": (8, 16), "model.blocks": (1, 1), "data.batch_size": 8, "data.workers": 1, "system.threads": 1}
    config = run_config("default", overrides=tiny | {"train.budget_s": "8s"}, data_dir=str(tiny_data))
    result = engine.train(config, runs_root=tmp_path / "runs")
    saved = Config.load(result.run_dir / "config.json")
    fast = preset_config("fast").resolved()
    assert (saved.data.min_size, saved.data.image_size, saved.data.eval_size) == (0, 64, fast.data.eval_size)
    assert saved.model == dataclasses.replace(fast.model, widths=(8, 16), blocks=(1, 1))
    assert saved.train.bias_lr_scale == fast.train.bias_lr_scale and saved.data.randaugment_p == config.data.randaugment_p > 0
    assert saved.train.budget_s == 8.0 and saved.train.epochs == len(result.history)
    plan = json.loads((result.run_dir / "budget.json").read_text())
    assert plan["default_recipe_epochs"] >= 1 and set(plan["speeds"]["step_s"]) == {"64"}
    assert {row["image_size"] for row in result.history} == {64}
    checkpoint = torch.load(result.last_checkpoint, weights_only=False)
    assert checkpoint["config"]["data"]["eval_size"] == fast.data.eval_size  # what evaluation and prediction use


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
