"""Early stopping, the learning-rate finder and TensorBoard's figures, on tiny generated data."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_MODEL_FLAGS, tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from classifier_lib.cli import main as cli_main
from classifier_lib.config import Config, ConfigError
from classifier_lib.data.dataset import batches, load_data
from classifier_lib.inference.checkpoint import read_checkpoint
from classifier_lib.report import plots
from classifier_lib.training.engine import early_stop_reason, train
from classifier_lib.training.lr_finder import find_lr, suggest
from classifier_lib.training.trainer import Trainer


def rows(values, metric="valid_loss"):
    return [{"epoch": i + 1, metric: value} for i, value in enumerate(values)]


def test_early_stop_waits_patience_epochs_after_the_best_loss():
    history = rows([1.0, 0.8, 0.9, 0.85])
    assert early_stop_reason(history, patience=3, monitor="valid_loss") == ""
    history = rows([1.0, 0.8, 0.9, 0.85, 0.81])
    reason = early_stop_reason(history, patience=3, monitor="valid_loss")
    assert "not improved for 3 epochs" in reason and "epoch 2" in reason
    assert early_stop_reason(history, patience=0, monitor="valid_loss") == ""


def test_early_stop_on_accuracy_wants_higher_values():
    history = rows([0.5, 0.7, 0.6, 0.7], metric="valid_acc")  # a tie is no improvement
    assert "epoch 2" in early_stop_reason(history, patience=2, monitor="valid_acc")
    assert early_stop_reason(rows([0.5, 0.6, 0.7], "valid_acc"), patience=2, monitor="valid_acc") == ""


def test_early_stop_counts_epochs_between_validations():
    # validated every second epoch: the best loss at epoch 2, no better at 4 and 6
    history = [{"epoch": e} | ({"valid_loss": {2: 0.8, 4: 0.9, 6: 0.85}[e]} if e % 2 == 0 else {}) for e in range(1, 8)]
    assert early_stop_reason(history[:6], patience=4, monitor="valid_loss").startswith(
        "early stopping after epoch 6: valid_loss has not improved for 4 epochs (best 0.8000 at epoch 2)"
    )
    assert early_stop_reason(history[:6], patience=5, monitor="valid_loss") == ""
    assert early_stop_reason(history, patience=4, monitor="valid_loss") == ""  # epoch 7 has no validation to judge


def test_validating_every_n_epochs_skips_the_epochs_between(tiny_data, tmp_path):
    config = tiny_config(tiny_data, **{"train.epochs": 7, "train.validate_every": 3, "train.tensorboard_every": 4})
    result = train(config, runs_root=tmp_path / "runs")
    validated = [row["epoch"] for row in result.history if "valid_acc" in row]
    assert validated == [3, 6, 7]  # every third epoch, and the last
    assert all("train_loss" in row for row in result.history)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["final_valid_acc"] == result.history[-1]["valid_acc"] == result.final_valid_acc
    assert metrics["best_epoch"] in validated
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert [event.step for event in events.Scalars("accuracy/valid")] == validated
    assert len(events.Scalars("accuracy/train")) == 7
    # the figures need a validation: the first validated epoch from epoch 4 on, and the last
    assert [event.step for event in events.Images("valid/confusion_matrix")] == [6, 7]
    figure = plots.history(result.history)
    assert list(figure.axes[1].lines[1].get_xdata()) == validated  # the validation curve has only those epochs


def test_skipping_validations_leaves_the_training_unchanged(tiny_data, tmp_path):
    weights = []
    for every in (1, 3):
        config = tiny_config(tiny_data, **{"train.epochs": 4, "train.validate_every": every})
        result = train(config, runs_root=tmp_path / f"every_{every}")
        weights.append(read_checkpoint(result.last_checkpoint)["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_validate_every_must_be_positive(tiny_data):
    with pytest.raises(ConfigError, match="train.validate_every"):
        tiny_config(tiny_data, **{"train.validate_every": 0}).validate()


def test_training_stops_early_and_says_why(tiny_data, tmp_path):
    # with the learning rate at zero nothing improves after the first epoch
    config = tiny_config(
        tiny_data,
        **{
            "train.epochs": 10,
            "train.patience": 2,
            "train.lr": 1e-12,
            "train.scheduler": "none",
            "train.ema_decay": 0,
            "data.augment": False,
        },
    )
    result = train(config, runs_root=tmp_path / "runs")
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert len(result.history) < 10
    assert metrics["stop_reason"].startswith("early stopping") and metrics["epochs_done"] == len(result.history)
    assert result.last_checkpoint.exists()


def test_completed_run_records_its_stop_reason(trained_run):
    result, _ = trained_run
    assert json.loads((result.run_dir / "metrics.json").read_text())["stop_reason"] == "completed 3 epochs"


def test_bad_early_stopping_settings_are_refused(tiny_data):
    with pytest.raises(ConfigError, match="train.monitor"):
        tiny_config(tiny_data, **{"train.monitor": "loss"}).validate()


def test_tensorboard_gets_figures_activations_and_feature_maps(tiny_data, tmp_path):
    config = tiny_config(tiny_data, **{"train.epochs": 3, "train.tensorboard_every": 2})
    result = train(config, runs_root=tmp_path / "runs")
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert {"valid/confusion_matrix", "valid/predictions"} <= set(tags["images"])
    assert any(tag.startswith("feature_maps/stage2") for tag in tags["images"])
    assert "activations/stem" in tags["histograms"]
    # every second epoch and after the last one: epochs 2 and 3
    assert [event.step for event in events.Images("valid/confusion_matrix")] == [2, 3]


def test_suggestion_is_where_the_loss_falls_fastest():
    lrs = [10 ** (-4 + i * 0.1) for i in range(50)]
    losses = [2.0] * 20 + [2.0 - 0.1 * i for i in range(1, 16)] + [0.5 + 0.3 * i for i in range(15)]
    losses[27] -= 0.3  # the steepest drop: into step 27
    assert suggest(lrs, losses) == pytest.approx(lrs[27], rel=0.3)
    assert lrs[20] <= suggest(lrs, losses) <= lrs[34]


def test_lr_finder_sweeps_exponentially_and_stops_when_the_loss_explodes(tiny_data):
    result = find_lr(tiny_config(tiny_data), start_lr=1e-4, end_lr=1e3, steps=40)
    assert result.lrs[0] == pytest.approx(1e-4)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios))  # exponential
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert len(result.lrs) <= 40
    assert result.plot().axes[0].get_xscale() == "log"


def test_lr_find_command_saves_the_plot(tiny_data, tmp_path, capsys):
    plot = tmp_path / "lr.png"
    code = cli_main(
        [
            "lr-find",
            "--data-dir",
            str(tiny_data),
            "--steps",
            "12",
            "-o",
            str(plot),
            *TINY_MODEL_FLAGS,
            "--set",
            "data.image_size",
            "32",
            "--batch-size",
            "8",
        ]
    )
    assert code == 0 and plot.stat().st_size > 1000
    assert "steepest descent" in capsys.readouterr().out


def test_lr_finder_refuses_a_backwards_range(tiny_data):
    with pytest.raises(ConfigError, match="start_lr < end_lr"):
        find_lr(tiny_config(tiny_data), start_lr=1.0, end_lr=0.1)


def test_a_whitening_stem_is_set_from_the_data_and_never_trained(tiny_data, tmp_path):
    config = tiny_config(tiny_data, **{"model.whiten_stem": True, "train.epochs": 2, "train.checkpoint_every": 1})
    result = train(config, runs_root=tmp_path)
    first, last = (
        read_checkpoint(result.run_dir / "checkpoints" / name)["model"]["stem.0.weight"] for name in ("epoch_001.pt", "last.pt")
    )
    half = len(last) // 2
    assert torch.equal(last[half:], -last[:half])  # whitening filters beside their negations
    assert torch.equal(first, last)  # frozen: training never moved them
    assert not torch.equal(
        read_checkpoint(result.last_checkpoint)["model"]["stem.1.weight"], torch.ones(half * 2)
    )  # while the BatchNorm after it did learn


def test_a_whitening_stem_needs_an_even_first_width(tiny_data):
    with pytest.raises(ConfigError, match="model.whiten_stem"):
        tiny_config(tiny_data, **{"model.whiten_stem": True, "model.widths": (9, 16)}).validate()


def test_lookahead_restarts_the_training_weights_from_the_average_every_n_steps(tiny_data, tmp_path):
    config = tiny_config(
        tiny_data, **{"train.ema_decay": 0.9, "train.lookahead_every": 2, "train.epochs": 1, "data.batch_size": 4}
    )
    trainer = Trainer(config, load_data(config.data), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    trainer.state.model.train()
    for step, (images, labels) in enumerate(batches(trainer.data.train, 4, trainer.device, generator), start=1):
        trainer.train_step(images, labels, 32, generator)
        same = [
            torch.equal(mine, theirs)
            for mine, theirs in zip(trainer.state.model.state_dict().values(), trainer.state.ema.module.state_dict().values())
        ]
        assert all(same) == (step % 2 == 0), step  # restarted from the average, or moved on from it
    assert trainer.state.ema.updates == step // 2 >= 3


def test_lookahead_needs_the_average(tiny_data):
    with pytest.raises(ConfigError, match="lookahead_every needs the EMA"):
        tiny_config(tiny_data, **{"train.ema_decay": 0.0, "train.lookahead_every": 5}).validate()


def test_class_balance_by_sampling_draws_each_class_equally_often(tmp_path):
    """train.class_balance sampler: an epoch of an imbalanced split draws every class about as often."""
    from classifier_lib.data.dataset import CachedImages, batches, class_weights

    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    data = CachedImages(torch.zeros(len(labels), 3, 2, 2, dtype=torch.uint8), labels, [str(i) for i in range(len(labels))])
    assert class_weights(labels, 3).tolist() == pytest.approx([1000 / 2700, 1000 / 270, 1000 / 30])
    drawn = torch.cat([y for _, y in batches(data, 50, torch.device("cpu"), torch.Generator().manual_seed(0), balanced=True)])
    assert len(drawn) == 1000 and all(abs(share - 1 / 3) < 0.05 for share in (torch.bincount(drawn) / 1000).tolist())
    plain = torch.cat([y for _, y in batches(data, 50, torch.device("cpu"), torch.Generator().manual_seed(0))])
    assert torch.bincount(plain).tolist() == [900, 90, 10]


@pytest.mark.parametrize("balance", ["sampler", "loss"])
def test_class_balance_options_train(tmp_path, balance):
    from conftest import make_image

    for name, colour, count in (("cat", (200, 60, 60), 16), ("dog", (60, 200, 60), 4)):
        for i in range(count):
            make_image(tmp_path / "data" / "Train" / name / f"{i}.png", colour, seed=i + count)
            if i < 3:
                make_image(tmp_path / "data" / "Valid" / name / f"{i}.png", colour, seed=100 + i + count)
    config = tiny_config(tmp_path / "data", **{"train.class_balance": balance, "train.epochs": 2})
    trainer = Trainer(config, load_data(config.data), torch.device("cpu"))
    assert (trainer.loss_weights is not None) == (balance == "loss")
    if balance == "loss":
        assert trainer.loss_weights.tolist() == pytest.approx([20 / 32, 20 / 8])
    result = train(config, runs_root=tmp_path / "runs")
    assert len(result.history) == 2 and "valid_balanced_acc" in result.history[-1]
    with pytest.raises(ConfigError, match="train.class_balance"):
        Config().override({"train.class_balance": "oversample"}).validate()
