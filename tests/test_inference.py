import csv
import json

import pytest
import torch

from classifier_lib import cli
from classifier_lib.data import find_splits
from classifier_lib.evaluation import evaluate_checkpoint
from classifier_lib.inference import Predictor, write_submission


def test_predictions_are_deterministic(trained_run):
    """Dropout and BatchNorm must be in eval mode: the same image gives the same answer every time."""
    result, data_dir = trained_run
    predictor = Predictor(result.best_checkpoint, device="cpu")
    image = next((data_dir / "Valid" / "cat").iterdir())
    first = predictor.predict(image)
    for _ in range(3):
        assert predictor.predict(image) == first
    batch = torch.stack([predictor.preprocess(image)] * 4)
    probs = predictor.probabilities(batch)
    assert torch.allclose(probs, probs[0].expand_as(probs))
    assert first.label == "cat"
    assert sum(first.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_from_bytes_matches_predict_from_path(trained_run):
    result, data_dir = trained_run
    predictor = Predictor(result.best_checkpoint, device="cpu")
    image = next((data_dir / "Valid" / "dog").iterdir())
    assert predictor.predict(image.read_bytes()) == predictor.predict(image)


def test_preprocessing_matches_training(trained_run):
    """Inference decodes exactly as the training cache did."""
    from classifier_lib.data import load_split

    result, data_dir = trained_run
    predictor = Predictor(result.best_checkpoint, device="cpu")
    splits = find_splits(data_dir)
    valid = load_split(splits.valid, splits.class_names, predictor.image_size)
    assert torch.equal(predictor.preprocess(valid.paths[0]), valid.images[0])


def test_submission_over_nested_test_folder(trained_run, tmp_path):
    result, data_dir = trained_run
    predictions = Predictor(result.best_checkpoint, device="cpu").predict_folder(data_dir / "Test")
    csv_path, probs_path = write_submission(predictions, tmp_path / "submission.csv")
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 6
    assert {"img_0.png", "nested/img_1.png"} <= {row["id"] for row in rows}
    assert {row["label"] for row in rows} <= {"cat", "dog", "panda"}
    header = next(csv.reader(probs_path.open()))
    assert header == ["id", "cat", "dog", "panda"]


def test_evaluation_report_and_confusion(trained_run):
    result, data_dir = trained_run
    evaluation = evaluate_checkpoint(result.best_checkpoint, data_dir, device="cpu")
    assert evaluation.accuracy == pytest.approx(result.best_valid_acc, abs=1e-6)
    report = evaluation.report()
    assert list(report.index[:3]) == ["cat", "dog", "panda"]
    assert evaluation.confusion().sum() == len(evaluation.labels)
    losses = evaluation.losses[evaluation.misclassified()]
    assert list(losses) == sorted(losses, reverse=True)


def test_cli_train_evaluate_predict_submit(tiny_data, tmp_path, capsys):
    assert cli.main(["train", "--data-dir", str(tiny_data), "--runs-dir", str(tmp_path / "runs"), "--epochs", "2",
                     "--image-size", "32", "--set", "model.widths", "8,16", "--set", "model.blocks", "1,1"]) == 0
    out = capsys.readouterr().out
    assert "run folder:" in out
    best = tmp_path / "runs" / "version_0" / "checkpoints" / "best.pt"
    assert cli.main(["evaluate", str(best), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 18
    image = next((tiny_data / "Valid" / "cat").iterdir())
    assert cli.main(["predict", str(best), str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["label"] in {"cat", "dog", "panda"}
    assert cli.main(["submit", str(best), str(tiny_data / "Test"), "-o", str(tmp_path / "sub.csv")]) == 0
    assert len((tmp_path / "sub.csv").read_text().splitlines()) == 7


def test_cli_accepts_the_seed_flags(tiny_data):
    args = cli.build_parser().parse_args(
        ["train", "--data-dir", str(tiny_data), "--epochs", "3", "--run-just-a-subset", "--half-precision",
         "--use-scheduler", "--data-augmentation", "--init-learning-rate", "0.01", "--checkpoint-every", "2"])
    config = cli.config_from_args(args)
    assert (config.train.epochs, config.data.subset, config.train.lr, config.train.checkpoint_every) == (3, 0.05, 0.01, 2)
    assert config.train.precision == "auto" and config.train.scheduler == "onecycle" and config.data.augment


def test_cli_missing_data_dir_is_a_clear_message(tmp_path, capsys):
    assert cli.main(["train", "--data-dir", str(tmp_path / "missing"), "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "expected DATA_DIR/Train/<class>" in err
