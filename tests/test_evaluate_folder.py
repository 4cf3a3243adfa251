"""`evaluate CHECKPOINT --folder DIR`: any labelled folder scored like Valid, unknown classes refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import COLOURS, make_image

from classifier_lib.data.dataset import CachedImages
from classifier_lib.data.folders import DataLayoutError
from classifier_lib.report.compare import per_class_accuracy, styled_per_class
from classifier_lib.report.evaluation import Evaluation, evaluate_folder, explain_mistakes, side_by_side


def photos_from_elsewhere(root, classes=("dog", "panda"), per_class=4):
    """Labelled photos a level or two below their class folders, of only some of the model's classes."""
    for name in classes:
        for i in range(per_class):
            make_image(root / name / ("indoor" if i % 2 else "outdoor/close-up") / f"{i}.png", COLOURS[name], seed=100 + i)
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_a_folder_is_scored_by_class_name_at_any_depth(trained_run, tmp_path):
    result, _ = trained_run
    folder = photos_from_elsewhere(tmp_path / "photos")
    evaluation = evaluate_folder(result.last_checkpoint, folder)
    names = evaluation.class_names
    assert names == ["cat", "dog", "panda"] and len(evaluation.labels) == 8
    expected = [names.index(Path(path).relative_to(folder).parts[0]) for path in evaluation.data.paths]
    assert evaluation.labels.tolist() == expected  # labels by folder name, whatever the depth
    assert "1 files skipped" in evaluation.split and not evaluation.caveat
    assert evaluation.accuracy == (evaluation.predictions == evaluation.labels).mean()
    assert evaluation.absent == ["cat"] and sorted(evaluation.per_class().index) == ["dog", "panda"]
    # a class the folder does not hold is no row of recall 0, and no part of the averages
    report = evaluation.report()
    assert report.loc["macro avg", "recall"] == pytest.approx(evaluation.balanced_accuracy)
    assert report.loc["dog", "support"] == 4 and "cat" not in report.index
    table = side_by_side({"here": evaluation})
    assert table.loc["here", "images"] == 8 and table.loc["here", "accuracy"] == evaluation.accuracy
    images, heatmaps, titles = explain_mistakes(result.last_checkpoint, evaluation, count=3)
    assert len(images) == len(heatmaps) == len(titles) == min(3, len(evaluation.misclassified()))


def test_a_folder_scores_the_same_by_a_relative_or_an_absolute_path(trained_run, tmp_path, monkeypatch):
    """Both reach one cache entry (keyed by the files): its paths are absolute, so neither way of naming the
    folder finds an index it cannot read (a relative path once cached relative paths, and the absolute path
    then failed with a KeyError deep inside the cache)."""
    result, _ = trained_run
    folder = photos_from_elsewhere(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    relative = evaluate_folder(result.last_checkpoint, "photos")
    absolute = evaluate_folder(result.last_checkpoint, folder)
    assert relative.data.paths == absolute.data.paths and all(Path(p).is_absolute() for p in absolute.data.paths)
    assert relative.labels.tolist() == absolute.labels.tolist() and relative.accuracy == absolute.accuracy


def test_unknown_classes_and_folders_without_classes_are_refused(trained_run, tmp_path):
    result, data_dir = trained_run
    zebras = photos_from_elsewhere(tmp_path / "zoo")
    make_image(zebras / "zebra" / "z.png", (0, 0, 0))
    with pytest.raises(DataLayoutError, match=r"class folders \['zebra'\] that the training data does not have"):
        evaluate_folder(result.last_checkpoint, zebras)
    make_image(tmp_path / "flat" / "a.png", (0, 0, 0))
    with pytest.raises(DataLayoutError, match="no folder named after a class the model knows"):
        evaluate_folder(result.last_checkpoint, tmp_path / "flat")
    own = evaluate_folder(result.last_checkpoint, data_dir / "Train")
    assert "overlaps the run's training images" in own.caveat  # its training images: not a score
    assert not evaluate_folder(result.last_checkpoint, data_dir / "Valid").caveat  # held out: a score


def test_the_command_line_scores_a_folder(trained_run, tmp_path):
    result, _ = trained_run
    folder = photos_from_elsewhere(tmp_path / "photos")
    run = [sys.executable, "-m", "classifier_lib", "evaluate", str(result.last_checkpoint), "--folder"]
    shown = subprocess.run([*run, str(folder), "--json"], capture_output=True, text=True, check=True)
    record = json.loads(shown.stdout)
    assert record["images"] == 8 and {"dog", "panda"} <= set(record["per_class"]) and "cat" not in record["per_class"]
    printed = subprocess.run([*run, str(folder)], capture_output=True, text=True, check=True).stdout
    assert "no images of cat" in printed and "\ncat " not in printed
    make_image(folder / "zebra" / "z.png", (0, 0, 0))
    refused = subprocess.run([*run, str(folder)], capture_output=True, text=True)
    assert refused.returncode == 2 and "zebra" in refused.stderr and "Traceback" not in refused.stderr


def test_runs_compared_class_by_class_leave_a_class_without_images_empty():
    """A run whose images hold no panda has no panda recall (not 0 %), and the comparison page says so."""

    def scored(labels, predictions):
        images = CachedImages(torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8), torch.tensor(labels), [""] * len(labels))
        return Evaluation(["cat", "dog", "panda"], images, torch.eye(3)[predictions], "images", "nothing")

    every_class = scored([0, 1, 2, 2], [0, 1, 2, 0])
    no_panda = scored([0, 0, 1, 1], [0, 2, 1, 1])  # a cat called a panda still counts against the cats
    table = per_class_accuracy({"a": every_class, "b": no_panda})
    assert table.loc["panda", "a"] == 0.5 and pd.isna(table.loc["panda", "b"])
    assert table.loc["cat", "b"] == 0.5 and table.loc["all", "b"] == 0.75
    assert no_panda.report().loc["macro avg", "recall"] == pytest.approx(0.75)
    assert "–" in styled_per_class(table).to_html()
