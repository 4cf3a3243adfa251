"""Pseudo-labels from unlabelled images, and an extra training folder for the student."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import make_image, tiny_config

from classifier_lib.cli import main as cli_main
from classifier_lib.config import DataConfig
from classifier_lib.data import load_data
from classifier_lib.engine import train
from classifier_lib.folders import DataLayoutError
from classifier_lib.inference import Predictor
from classifier_lib.pseudo import pseudo_label


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
    copied = sorted(p.relative_to(out.out_dir).as_posix() for p in out.out_dir.glob("*/*.png"))
    assert copied == sorted(f"{row['label']}/{row['id'].replace('/', '__')}" for row in kept)
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
    code = cli_main(["pseudo-label", str(result.run_dir / "checkpoints" / "last.pt"), str(data_dir / "Test"),
                     "-o", str(out), "--threshold", "0.34"])  # above 1/3: a 3-class model's top label always passes
    assert code == 0 and "data.extra_train_dir" in capsys.readouterr().out
    assert len(list(out.glob("*/*.png"))) == len(read_rows(out)) == 6
    train(tiny_config(data_dir, **{"data.extra_train_dir": str(out), "train.epochs": 1}), runs_root=tmp_path / "runs")
    assert f"42 training / 18 validation images (6 of them from {out})" in capsys.readouterr().out  # 36 + 6
