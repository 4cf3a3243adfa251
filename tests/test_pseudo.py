"""Pseudo-labels from unlabelled images, and an extra training folder for the student."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_image, tiny_config

from classifier_lib.cli import main as cli_main
from classifier_lib.config import DataConfig
from classifier_lib.data.dataset import load_data, load_split
from classifier_lib.data.folders import DataLayoutError
from classifier_lib.inference.predictor import Predictor
from classifier_lib.inference.pseudo import pseudo_label
from classifier_lib.training.engine import train


def read_rows(out_dir: Path) -> list[dict]:
    with (out_dir / "pseudo_labels.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_confident_images_are_copied_into_their_predicted_class(trained_run, tmp_path):
    result, data_dir = trained_run
    test_dir = data_dir / "Test"
    (test_dir / "notes.txt").write_text("not an image")
    (test_dir / "broken.png").write_bytes(b"\x89PNG\r\n")
    probabilities = Predictor(result.run_dir / "checkpoints" / "last.pt").predict_folder(test_dir)
    confidences = probabilities.probabilities.max(dim=1).values.sort().values
    threshold = float(confidences[2] + confidences[3]) / 2  # the 3 most confident of 6 pass

    out = pseudo_label(result.run_dir / "checkpoints" / "last.pt", test_dir, tmp_path / "pseudo", threshold)

    rows = read_rows(out.out_dir)
    assert [row["id"] for row in rows] == probabilities.ids  # every readable image, kept or not
    assert [row["label"] for row in rows] == probabilities.labels
    kept = [row for row in rows if row["kept"] == "1"]
    assert len(kept) == 3 and all(float(row["confidence"]) >= threshold for row in kept)
    assert all(float(row["confidence"]) < threshold for row in rows if row["kept"] == "0")
    copied = sorted(p.relative_to(out.out_dir).as_posix() for p in out.out_dir.rglob("*.png"))
    assert copied == sorted(f"{row['label']}/{row['id']}" for row in kept)
    assert sum(out.kept.values()) == len(kept) and [Path(p).name for p, _ in out.skipped] == ["broken.png"]


def test_pseudo_labels_never_overwrite_an_earlier_folder(trained_run, tmp_path):
    result, data_dir = trained_run
    (tmp_path / "pseudo").mkdir()
    (tmp_path / "pseudo" / "mine.txt").write_text("keep me")
    with pytest.raises(DataLayoutError, match="already holds files"):
        pseudo_label(result.run_dir / "checkpoints" / "last.pt", data_dir / "Test", tmp_path / "pseudo")
    assert (tmp_path / "pseudo" / "mine.txt").read_text() == "keep me"


def test_extra_folder_joins_training_only_and_may_lack_classes(tiny_data, tmp_path):
    extra = tmp_path / "extra"
    for i in range(3):
        make_image(extra / "dog" / f"extra_{i}.png", (60, 200, 60), seed=100 + i)
    plain = load_data(DataConfig(data_dir=str(tiny_data), image_size=16))
    data = load_data(DataConfig(data_dir=str(tiny_data), image_size=16, extra_train_dir=str(extra)))
    assert len(data.train) == len(plain.train) + 3 and data.valid.paths == plain.valid.paths
    added = [i for i, path in enumerate(data.train.paths) if Path(path).name.startswith("extra_")]
    assert len(added) == data.extra_images == 3 and data.train.labels[added].tolist() == [1, 1, 1]  # dog: class 1
    assert torch.equal(data.train.images[: len(plain.train)], plain.train.images)


def test_extra_folder_with_an_unknown_class_is_refused(tiny_data, tmp_path):
    make_image(tmp_path / "extra" / "horse" / "h.png", (1, 2, 3))
    with pytest.raises(DataLayoutError, match="horse"):
        load_data(DataConfig(data_dir=str(tiny_data), image_size=16, extra_train_dir=str(tmp_path / "extra")))


def test_teacher_to_student_from_the_command_line(trained_run, tmp_path, capsys):
    result, data_dir = trained_run
    out = tmp_path / "pseudo"
    code = cli_main(
        [
            "pseudo-label",
            str(result.run_dir / "checkpoints" / "last.pt"),
            str(data_dir / "Test"),
            "-o",
            str(out),
            "--threshold",
            "0.34",
        ]
    )  # above 1/3: a 3-class model's top label always passes
    assert code == 0 and "data.extra_train_dir" in capsys.readouterr().out
    assert len(list(out.rglob("*.png"))) == len(read_rows(out)) == 6
    train(tiny_config(data_dir, **{"data.extra_train_dir": str(out), "train.epochs": 1}), runs_root=tmp_path / "runs")
    assert f"42 training / 18 validation images (6 of them from {out})" in capsys.readouterr().out  # 36 + 6


def test_nested_and_flattened_names_never_collide(trained_run, tmp_path):
    """`a/b.png` and `a__b.png` were both written to `a__b.png` (the second overwrote the first, both counted)."""
    result, _ = trained_run
    make_image(tmp_path / "unlabelled" / "a" / "b.png", (200, 60, 60), seed=1)
    make_image(tmp_path / "unlabelled" / "a__b.png", (200, 60, 60), seed=2)
    out = pseudo_label(result.run_dir / "checkpoints" / "last.pt", tmp_path / "unlabelled", tmp_path / "p", 1e-6)
    assert sorted(p.relative_to(out.out_dir).as_posix().split("/", 1)[1] for p in out.out_dir.rglob("*.png")) == [
        "a/b.png",
        "a__b.png",
    ]
    assert sum(out.kept.values()) == 2


@pytest.mark.parametrize("inside", ["Valid", "Train", "Valid/cat", "."])
def test_a_folder_overlapping_train_or_valid_is_refused(trained_run, tmp_path, inside):
    result, data_dir = trained_run
    with pytest.raises(DataLayoutError, match="overlaps the teacher's labelled folder"):
        pseudo_label(result.run_dir / "checkpoints" / "last.pt", data_dir / inside, tmp_path / "p")
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


@pytest.mark.parametrize("how", ["hard link", "copy"])
def test_validation_images_in_an_extra_folder_are_refused(tiny_data, tmp_path, how):
    """Pseudo-labels are hard links: comparing paths would not see a validation image among them."""
    source = tiny_data / "Valid" / "dog" / "dog_0.png"
    target = tmp_path / "extra" / "dog" / "x.png"
    target.parent.mkdir(parents=True)
    os.link(source, target) if how == "hard link" else shutil.copy(source, target)
    make_image(tmp_path / "extra" / "dog" / "fresh.png", (60, 200, 60), seed=999)
    with pytest.raises(DataLayoutError, match="1 images of data.extra_train_dir .* are validation images"):
        load_data(DataConfig(data_dir=str(tiny_data), image_size=16, extra_train_dir=str(tmp_path / "extra")))


def test_labels_of_a_cached_extra_folder_follow_todays_classes(tiny_data, tmp_path):
    """The cache stores pixels and paths, not labels: after a class is added, an extra folder's cached
    images take their labels from the class list of the run reading them (they trained as the wrong class)."""
    extra = tmp_path / "extra"
    make_image(extra / "dog" / "d.png", (60, 200, 60), seed=7)
    splits_classes = ["cat", "dog", "panda"]
    first = load_split(extra, splits_classes, 16, every_class=False)
    assert first.data.labels.tolist() == [1]
    again = load_split(extra, ["bird", *splits_classes], 16, every_class=False)  # same files: a cache hit
    assert torch.equal(again.data.images, first.data.images) and again.data.labels.tolist() == [2]
