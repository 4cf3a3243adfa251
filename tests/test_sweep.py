"""Sweeps (one pipeline run per combination, resumable) and the run comparison page, on tiny generated data."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest
from conftest import make_dataset

import classifier_lib.workflow.sweep as sweep_module
from classifier_lib.config import flat_config
from classifier_lib.presets import preset_config
from classifier_lib.report.runs_table import comparison_table, differences_from_default, differing_keys, load_run
from classifier_lib.workflow.pipeline import PipelineError
from classifier_lib.workflow.sweep import combinations, default_name, notebook_parameters, parse_axes, run_sweep


def test_axes_and_their_combinations():
    axes = parse_axes(["lr=0.1,0.2", "train.ema_decay=0,0.99", "augment=true,false"])
    assert axes == {"lr": [0.1, 0.2], "train.ema_decay": [0, 0.99], "augment": [True, False]}
    assert len(combinations(axes)) == 8
    assert combinations(axes)[1] == {"lr": 0.1, "train.ema_decay": 0, "augment": False}
    assert default_name(axes) == default_name(parse_axes(["lr=0.1,0.2", "train.ema_decay=0,0.99", "augment=true,false"]))
    assert default_name(axes) != default_name(parse_axes(["lr=0.1,0.3", "train.ema_decay=0,0.99", "augment=true,false"]))
    for bad in (["lr"], ["lr="], ["=1,2"], ["lr=1", "lr=2"]):
        with pytest.raises(PipelineError):
            parse_axes(bad)


def test_config_keys_go_into_the_overrides():
    parameters = notebook_parameters({"epochs": 2, "overrides": {"train.mix_p": 0.5}}, {"lr": 0.1, "train.ema_decay": 0})
    assert parameters == {"epochs": 2, "lr": 0.1, "overrides": {"train.mix_p": 0.5, "train.ema_decay": 0}}


def test_a_bad_combination_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(PipelineError, match="train.epochs must be at least 1"):
        run_sweep(tmp_path / "data", {"train.epochs": [2, 0]}, runs_root=tmp_path / "runs")
    with pytest.raises(PipelineError, match="unknown parameter"):
        run_sweep(tmp_path / "data", {"epochz": [1, 2]}, runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_config_differences():
    default = flat_config(preset_config("default").resolved().to_dict())
    other = default | {"train.lr": 0.1, "data.data_dir": "/elsewhere", "model.widths": (8, 16)}
    assert differing_keys([default, other]) == ["model.widths", "train.lr"]
    assert differences_from_default(other) == {"model.widths": (8, 16), "train.lr": 0.1}
    assert differences_from_default(default) == {}


TRAINING = ["02_training"]  # each run of the sweep trains; the comparison page evaluates


def test_sweep_runs_each_combination_resumes_after_a_failure_and_compares(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", per_class=(8, 4), test=3)
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    axes = {"train.ema_decay": [0.0, 0.9]}
    base = {"epochs": 2, "image_size": 32, "overrides": {"model.widths": [8, 16], "model.blocks": [1, 1]}}
    real_run_pipeline = sweep_module.run_pipeline

    def fails_for_the_second(data_dir, parameters, run_dir, steps, **kwargs):
        if parameters["overrides"]["train.ema_decay"] == 0.9:  # after writing part of the run, as a crash would
            (Path(run_dir) / "checkpoints").mkdir(parents=True)
            (Path(run_dir) / "checkpoints" / "best.pt").write_text("from the failed attempt")
            raise PipelineError("injected failure")
        return real_run_pipeline(data_dir, parameters, run_dir, steps, **kwargs)

    monkeypatch.setattr(sweep_module, "run_pipeline", fails_for_the_second)
    with pytest.raises(PipelineError, match="1 combination"):
        run_sweep(data, axes, base, name="ema", runs_root=runs, reports_root=reports, steps=TRAINING)
    record = json.loads((runs / "sweeps" / "ema.json").read_text())
    assert [entry["status"] for entry in record["runs"]] == ["done", "failed"]
    first_run_invocations = (runs / "version_0" / "pipeline.json").read_text()

    monkeypatch.setattr(sweep_module, "run_pipeline", real_run_pipeline)
    page = run_sweep(data, axes, base, name="ema", runs_root=runs, reports_root=reports, steps=TRAINING)
    record = json.loads((runs / "sweeps" / "ema.json").read_text())
    assert [entry["status"] for entry in record["runs"]] == ["done", "done"]
    # the failed attempt was set aside whole and retried in a fresh folder: one folder never mixes two attempts
    assert sorted(p.name for p in runs.glob("version_*")) == ["version_0", "version_1"]
    assert (runs / "failed" / "version_1.attempt1" / "checkpoints" / "best.pt").read_text() == "from the failed attempt"
    assert (runs / "version_1" / "checkpoints" / "best.pt").read_bytes() != b"from the failed attempt"
    assert record["runs"][1]["set_aside"] == [str((runs / "failed" / "version_1.attempt1").resolve())]
    assert (runs / "version_0" / "pipeline.json").read_text() == first_run_invocations  # the done one did not re-run
    for run, decay in (("version_0", 0.0), ("version_1", 0.9)):
        record = load_run(runs / run)
        assert record.sweep == "ema" and record.config["train.ema_decay"] == decay
    table = comparison_table([load_run(runs / "version_0"), load_run(runs / "version_1")])
    assert list(table.columns[:1]) == ["train.ema_decay"] and table["epochs"].tolist() == [2, 2]

    html = page.read_text()
    assert "train.ema_decay" in html and "data:image/png;base64" in html and "Traceback" not in html
    assert "Accuracy per class" in html and "Where the runs disagree" in html
    index = (reports / "index.html").read_text()
    assert 'href="compare/ema.html"' in index and "train.ema_decay=0.9" in index
    with pytest.raises(PipelineError, match="exists with other axes"):
        run_sweep(data, {"train.ema_decay": [0.5]}, base, name="ema", runs_root=runs, reports_root=reports)
    other_data = make_dataset(tmp_path / "other", per_class=(8, 4), test=3)
    with pytest.raises(PipelineError, match="exists with other data_dir"):  # it reported A's runs as done
        run_sweep(other_data, axes, base, name="ema", runs_root=runs, reports_root=reports, steps=TRAINING)


def test_the_default_sweep_name_covers_everything_that_defines_the_runs():
    axes = {"lr": [0.1, 0.2]}
    settings = {"data_dir": "/data/a", "parameters": {"epochs": 2}, "quick": False, "steps": ["02_training"]}
    names = {default_name(axes, settings)} | {
        default_name(axes, settings | {key: value})
        for key, value in (
            ("data_dir", "/data/b"),
            ("parameters", {"epochs": 3}),
            ("parameters", {"preset": "fast"}),
            ("quick", True),
        )
    }
    assert len(names) == 5 and all(name.startswith("lr-") for name in names)


def test_a_sweep_that_is_running_is_not_run_twice(tmp_path):
    runs = tmp_path / "runs"
    (runs / "sweeps").mkdir(parents=True)
    with open(runs / "sweeps" / "ema.lock", "a+") as held:  # what the first command holds while it runs
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(PipelineError, match="running in another process"):
            run_sweep(tmp_path / "data", {"train.ema_decay": [0.0]}, name="ema", runs_root=runs, steps=TRAINING)
    assert not (runs / "sweeps" / "ema.json").exists()


def test_compare_any_runs_from_the_command_line(tiny_data, tmp_path, capsys):
    from conftest import tiny_config

    import run_pipeline
    from classifier_lib.training.engine import train

    runs = [train(tiny_config(tiny_data, **{"train.lr": lr}), runs_root=tmp_path / "runs").run_dir for lr in (0.05, 0.1)]
    code = run_pipeline.main(
        ["--compare", *map(str, runs), "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")]
    )
    assert code == 0
    page = tmp_path / "reports" / "compare" / "version_0-version_1.html"
    html = page.read_text()
    assert "train.lr" in html and "data:image/png;base64" in html and "Traceback" not in html
    assert str(page) in capsys.readouterr().out
    capsys.readouterr()
    assert run_pipeline.main(["--compare", str(tmp_path / "nowhere")]) == 1
    assert "is not a training run folder" in capsys.readouterr().err


def test_the_comparison_page_escapes_class_and_setting_names(tmp_path):
    """pandas' Styler writes cells and labels as markup: a class folder named like an HTML tag ran in the page."""
    from conftest import tiny_config

    from classifier_lib.training.engine import train
    from classifier_lib.workflow.pipeline import compare_runs

    evil = "<img src=x onerror=alert(1)>"
    data = make_dataset(tmp_path / "data", per_class=(8, 4), test=0, classes={"cat": (200, 60, 60), evil: (60, 60, 200)})
    runs = [
        train(tiny_config(data, **{"train.lr": lr, "train.epochs": 1}), runs_root=tmp_path / "runs").run_dir for lr in (0.05, 0.1)
    ]
    html = compare_runs(runs, "evil", tmp_path / "runs", tmp_path / "reports").read_text()
    assert "Accuracy per class" in html and "Traceback" not in html
    # nbconvert re-serialises markup (`<img alt=... onerror="alert(1)" src="x"/>`): look for the live attribute
    assert 'onerror="alert(1)"' not in html and evil not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
