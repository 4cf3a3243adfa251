"""What the notebooks call instead of holding logic themselves, the public names of the package, and
checkpoints written before the package was layered."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_dataset

import classifier_lib
from classifier_lib.data.dataset import load_data
from classifier_lib.data.folders import DataLayoutError, find_splits, find_test_folder
from classifier_lib.data.splits import first_per_class, spread_classes
from classifier_lib.data.stats import data_stats, scan_files, unusable_files
from classifier_lib.inference.checkpoint import held_out_of, load_model
from classifier_lib.inference.predictor import Predictor
from classifier_lib.model.explain import default_layer_names
from classifier_lib.model.modes import evaluating
from classifier_lib.model.resnet import ResNet
from classifier_lib.report.evaluation import evaluate_checkpoint


def test_the_public_names_are_the_library_functions():
    from classifier_lib.inference.export import export
    from classifier_lib.training.engine import train

    assert classifier_lib.train is train and classifier_lib.export is export
    assert classifier_lib.evaluate_folder.__module__ == "classifier_lib.report.evaluation"
    assert classifier_lib.run_config("fast").train.budget_s == 300  # presets are time budgets
    with pytest.raises(AttributeError):
        classifier_lib.no_such_thing  # noqa: B018


def test_evaluating_restores_the_mode_also_after_an_error():
    model = ResNet(3)
    with evaluating(model):
        assert not model.training
    assert model.training
    model.eval()
    with pytest.raises(RuntimeError), evaluating(model):
        raise RuntimeError("inside")
    assert not model.training


def test_first_per_class_and_default_layer_names():
    labels = torch.tensor([2, 0, 0, 1, 0, 2, 1])
    assert first_per_class(labels, 2, range(3)).tolist() == [1, 2, 3, 6, 0, 5]
    assert first_per_class(labels, 5, range(4)).tolist() == [1, 2, 4, 3, 6, 0, 5]  # class 3 has none
    assert first_per_class(labels, 1, [2, 1]).tolist() == [0, 3]
    assert spread_classes(3, 12) == [0, 1, 2] and spread_classes(101, 12)[:2] == [0, 9] and len(spread_classes(101, 12)) == 12
    assert spread_classes(101, 12)[-1] == 100
    assert default_layer_names(ResNet(3)) == ["stem", "stage1.block1", "stage2.block1", "stage3.block2", "stage4.block1"]


def test_data_stats_lists_every_unusable_file_once(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=(6, 2))
    (root / "Train" / "cat" / "notes.txt").write_text("not an image")
    (root / "Train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n")
    files = scan_files(find_splits(root))
    data = load_data(load_model_free_config(root))
    problems, decode_failures = unusable_files(files, data.skipped)
    record = data_stats(files, data)
    skipped = sorted(path.rsplit("/", 1)[-1] for path, _ in record["skipped"])
    assert skipped == ["broken.png", "notes.txt"] and len(problems) + len(decode_failures) == 2
    assert record["counts"]["train"]["cat"] == 6 and record["mean"] == list(data.mean)
    json.dumps(record)  # written as data_stats.json


def load_model_free_config(root):
    from classifier_lib.config import DataConfig

    return DataConfig(data_dir=str(root), image_size=16)


def test_the_test_folder_is_the_parameter_the_data_folder_s_test_or_none(tmp_path):
    with_test = make_dataset(tmp_path / "a")
    without = make_dataset(tmp_path / "b", test=0)
    assert find_test_folder(with_test) == with_test.resolve() / "Test"
    assert find_test_folder(without) is None
    assert find_test_folder(without, with_test / "Test") == with_test / "Test"
    with pytest.raises(DataLayoutError, match="does not exist"):
        find_test_folder(without, tmp_path / "nowhere")


def test_evaluation_record_is_what_the_index_reads(trained_run, tmp_path):
    result, _ = trained_run
    record = evaluate_checkpoint(result.last_checkpoint).record(result.last_checkpoint)
    assert {"accuracy", "images", "split", "caveat", "checkpoint", "per_class"} <= set(record)
    assert set(record["per_class"]) >= {"cat", "dog", "panda"}
    json.dumps(record)


def test_a_checkpoint_written_before_the_layered_package_still_loads_and_predicts(trained_run, tmp_path):
    """Checkpoints of earlier versions have no data_split or run_identity, and call the decode size image_size."""
    result, data_dir = trained_run
    state = torch.load(result.last_checkpoint, weights_only=True)
    old = {key: value for key, value in state.items() if key not in ("data_split", "run_identity", "decode_size")}
    old["image_size"] = state["decode_size"]
    torch.save(old, tmp_path / "old.pt")
    image = next((data_dir / "Valid" / "dog").iterdir())
    now, before = Predictor(result.last_checkpoint), Predictor(tmp_path / "old.pt")
    assert before.predict(image) == now.predict(image)
    assert evaluate_checkpoint(tmp_path / "old.pt").accuracy == evaluate_checkpoint(result.last_checkpoint).accuracy
    assert held_out_of(load_model(tmp_path / "old.pt").config)[0].paths == held_out_of(now.loaded.config)[0].paths


def test_metrics_that_fit_the_data():
    from classifier_lib.report.metrics import balanced_accuracy, headline, most_confused, top_k_accuracy

    labels = [0] * 8 + [1] * 2  # a large and a small class
    predictions = [0] * 8 + [0, 1]
    assert balanced_accuracy(predictions, labels) == pytest.approx((1.0 + 0.5) / 2)  # accuracy would say 0.9
    scores = torch.tensor([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert top_k_accuracy(scores, [0, 1], k=1) == 0.0 and top_k_accuracy(scores, [0, 1], k=2) == 0.5
    pairs = most_confused(np.array([[5, 3, 0], [1, 4, 0], [0, 0, 2]]), ["a", "b", "c"], 5)
    assert pairs[["true", "predicted", "images"]].values.tolist() == [["a", "b", 3], ["b", "a", 1]]
    summary = {"accuracy": 0.9, "balanced_accuracy": 0.75, "imbalanced": True, "top5_accuracy": 0.99}
    assert headline(summary) == "balanced accuracy 0.7500, accuracy 0.9000, top-5 accuracy 0.9900"
    assert headline(summary | {"imbalanced": False}).startswith("accuracy 0.9000")


def test_the_balance_note_says_which_figure_to_read():
    from classifier_lib.data.stats import balance_note

    assert balance_note({"train": {"cat": 650, "dog": 650}}).startswith("Balanced")
    assert balance_note({"train": {"a": 800, "b": 31}}).startswith("Imbalanced: the largest class has 25.8x")


def test_the_validation_note_names_classes_too_small_to_measure(tmp_path):
    from classifier_lib.config import DataConfig
    from classifier_lib.data.stats import validation_note

    root = make_dataset(tmp_path / "d", per_class=(6, 2))
    note = validation_note(load_data(DataConfig(data_dir=str(root), image_size=16)))
    assert note.startswith("3 of 3 classes have fewer than 5 validation images (cat, dog, panda)")
    assert (
        validation_note(load_data(DataConfig(data_dir=str(make_dataset(tmp_path / "e", per_class=(6, 5))), image_size=16))) == ""
    )


def test_tables_are_escaped_complete_and_foldable():
    from classifier_lib.report.runs_table import settings_frame
    from classifier_lib.report.tables import folded, scrollable

    evil = "<img src=x onerror=alert(1)>"
    frame = pd.DataFrame({"recall": [0.5] * 104}, index=[evil] + [f"class_{i}" for i in range(103)])
    box = scrollable(frame, "104 classes", precision=3)
    assert evil not in box and "&lt;img" in box and "class_102" in box and "overflow:auto" in box and "0.500" in box
    fold = folded(settings_frame({"train.resume": None, "data.eval_size": 80}), "all 2 settings")
    assert fold.startswith("<details><summary>all 2 settings</summary>") and ">none<" in fold


def test_the_model_as_a_table_of_parts():
    from classifier_lib.model.resnet import count_parameters, flops_per_image, layer_table

    model = ResNet(3)
    rows = layer_table(model, 64)
    assert [row["part"] for row in rows] == ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "head", "total"]
    assert rows[1]["output"] == "32 x 32 x 32" and rows[-2]["output"] == "3"
    assert rows[-1]["parameters"] == count_parameters(model)
    assert rows[-1]["MFLOPs"] == pytest.approx(flops_per_image(model, 64) / 1e6, abs=0.2)


def test_a_prediction_s_top_five():
    from classifier_lib.inference.base import Prediction

    probabilities = {f"c{i}": p for i, p in enumerate([0.05, 0.4, 0.1, 0.2, 0.15, 0.03, 0.07])}
    assert list(Prediction("c1", 0.4, probabilities).top(5)) == ["c1", "c3", "c4", "c2", "c6"]
