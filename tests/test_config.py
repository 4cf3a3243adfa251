import json
from pathlib import Path

import pytest

from classifier_lib.config import Config, ModelConfig


def test_json_round_trip(tmp_path):
    config = Config().override({"train.epochs": 7, "model.widths": (16, 32), "model.blocks": (1, 2)})
    config.save(tmp_path / "config.json")
    loaded = Config.load(tmp_path / "config.json")
    assert loaded == config
    assert json.loads((tmp_path / "config.json").read_text())["model"]["widths"] == [16, 32]


def test_override_accepts_bare_names_and_strings():
    config = Config().override({"epochs": "3", "lr": "0.5", "augment": "false", "widths": "8,16", "blocks": "1 1"})
    assert config.train.epochs == 3 and config.train.lr == 0.5
    assert config.data.augment is False
    assert config.model == ModelConfig(widths=(8, 16), blocks=(1, 1))


def test_int_given_for_float_field_becomes_float():
    assert Config().override({"train.lr": 1}).train.lr == 1.0
    assert isinstance(Config().override({"train.lr": 1}).train.lr, float)


@pytest.mark.parametrize("key", ["train.nope", "nope", "bogus.epochs"])
def test_unknown_keys_are_errors(key):
    with pytest.raises(ValueError, match="unknown"):
        Config().override({key: 1})


def test_data_dir_defaults_to_environment(monkeypatch):
    monkeypatch.setenv("CLASSIFIER_DATA_DIR", "/somewhere/else")
    assert Config().data.data_dir == "/somewhere/else"
    monkeypatch.delenv("CLASSIFIER_DATA_DIR")
    assert Config().data.data_dir == str(Path(__file__).resolve().parents[1] / "data")  # the project's data/


def test_presets_are_overrides_of_the_default_and_reach_the_command_line(tiny_data):
    from classifier_lib import cli
    from classifier_lib.config import ConfigError
    from classifier_lib.presets import PRESETS, preset_config

    assert preset_config("plain") == Config()  # the config's own values
    default = preset_config("default")  # grows from plain's crop size to a larger one
    assert default.data.min_size == Config().data.image_size < default.data.image_size
    bare_args = cli.build_parser().parse_args(["train", "--data-dir", str(tiny_data)])
    assert cli.config_from_args(bare_args).data.image_size == default.data.image_size  # no --preset: the default
    fast = preset_config("fast")
    assert fast.train.budget_s == 300 < default.train.budget_s < preset_config("best").train.budget_s  # presets are budgets
    assert fast.model.whiten_stem and fast.model.antialias and not default.model.antialias
    assert fast.train.bias_lr_scale > Config().train.bias_lr_scale
    best = preset_config("best").data
    assert best.min_size < best.image_size and best.effective_eval_size > best.image_size > Config().data.image_size
    with pytest.raises(ConfigError, match="unknown preset 'fastest'"):
        preset_config("fastest")
    args = cli.build_parser().parse_args(["train", "--data-dir", str(tiny_data), "--preset", "fast", "--lr", "0.1"])
    config = cli.config_from_args(args)
    assert config.train.budget_s == PRESETS["fast"]["train.budget_s"] and config.train.lr == 0.1  # flags win


def test_a_short_budget_swaps_the_default_recipe_for_fasts_and_keeps_everything_else():
    """`short_budget_recipe`: the settings in which `fast` differs from `default` take `fast`'s values (its test size
    too); the augmentation (the default's RandAugment, or a share set otherwise), the data, the seed, the budget and
    the settings outside the recipe stay. A recipe of one's own (any swapped setting changed), `fast`'s or `plain`'s
    is never replaced."""
    from classifier_lib.presets import preset_config, run_config, short_budget_recipe

    mine = {"system.seed": 3, "train.class_balance": "sampler", "model.widths": (16, 32), "model.blocks": (1, 1)}
    for preset in ("default", "best"):
        config = run_config(preset, overrides=mine, data_dir="somewhere")
        short = short_budget_recipe(config)
        assert short is not None
        fast = preset_config("fast").resolved()
        assert (short.data.min_size, short.data.image_size, short.data.effective_eval_size) == (0, 64, 80)
        assert short.model.whiten_stem and short.model.antialias and short.train.bias_lr_scale == fast.train.bias_lr_scale
        assert short.data.randaugment_p == config.data.randaugment_p == 0.5 != fast.data.randaugment_p
        assert short.train.budget_s == config.train.budget_s and short.data.data_dir == "somewhere"
        assert (short.system.seed, short.train.class_balance, short.model.widths) == (3, "sampler", (16, 32))
    mine_augmented = short_budget_recipe(run_config("default", overrides={"data.randaugment_p": 0.25, "data.grey_p": 0.1}))
    assert mine_augmented is not None and (mine_augmented.data.randaugment_p, mine_augmented.data.grey_p) == (0.25, 0.1)
    own = [{"data.image_size": 128}, {"model.antialias": True}, {"data.eval_size": 128}, {"train.bias_lr_scale": 2.0}]
    for changed in own:
        assert short_budget_recipe(run_config("default", overrides=changed)) is None, changed
    assert short_budget_recipe(run_config("fast")) is None and short_budget_recipe(run_config("plain")) is None


@pytest.mark.parametrize(
    "text, seconds", [("90s", 90), ("20m", 1200), ("1h", 3600), ("1.5h", 5400), ("45", 45), (" 2 min ", 120)]
)
def test_durations(text, seconds):
    from classifier_lib.config import parse_duration

    assert parse_duration(text) == seconds


def test_an_epoch_count_or_a_budget_sizes_a_run(tmp_path):
    """--budget sets train.budget_s; an explicit epoch count turns the preset's (or a saved config's) budget
    off, so a saved budget run repeats with --epochs; both at once are refused; a bad duration is one line."""
    from classifier_lib import cli
    from classifier_lib.config import ConfigError
    from classifier_lib.presets import run_config

    parse = cli.build_parser().parse_args
    assert cli.config_from_args(parse(["train", "--budget", "20m"])).train.budget_s == 1200
    by_epochs = cli.config_from_args(parse(["train", "--preset", "fast", "--epochs", "7"]))
    assert by_epochs.train.epochs == 7 and by_epochs.train.budget_s == 0
    assert run_config("default", epochs=9).train.budget_s == 0
    assert run_config("plain", budget="90s").train.budget_s == 90  # the notebooks' `budget` parameter
    assert run_config("plain", overrides={"train.budget_s": "2m"}).train.budget_s == 120  # --set train.budget_s 2m
    saved = tmp_path / "config.json"
    run_config("default").override({"train.epochs": 123}).save(saved)  # what a budget run saves: its budget and epochs
    assert run_config(config_file=str(saved)).train.budget_s == 1200  # as saved: plans again on this machine
    repeat = run_config(config_file=str(saved), epochs=123).train
    assert (repeat.epochs, repeat.budget_s) == (123, 0)
    with pytest.raises(ConfigError, match="an epoch count or a time budget, not both"):
        run_config("plain", epochs=5, budget="1m")
    with pytest.raises(ConfigError, match="cannot read 'soon' as a duration"):
        run_config("plain", budget="soon")
    with pytest.raises(SystemExit):
        parse(["train", "--budget", "soon"])


def test_a_config_file_keeps_its_resume(tmp_path):
    """The training notebook with nproc > 1 hands torchrun a config file: its train.resume used to be
    overwritten with None (the run restarted from scratch in a new folder)."""
    from classifier_lib import cli
    from classifier_lib.training.engine import run_dir_for

    run = tmp_path / "runs" / "version_3"
    (run / "checkpoints").mkdir(parents=True)
    Config().save(run / "config.json")
    resume = str(run / "checkpoints" / "last.pt")
    Config().override({"train.resume": resume}).save(tmp_path / "config.json")
    args = cli.build_parser().parse_args(["train", "--config", str(tmp_path / "config.json"), "--epochs", "3"])
    config = cli.config_from_args(args)
    assert config.train.resume == resume and config.train.epochs == 3
    assert run_dir_for(resume, tmp_path / "runs") == run  # and the launch continues in the run's folder
    assert cli.config_from_args(cli.build_parser().parse_args(["train"])).train.resume is None
