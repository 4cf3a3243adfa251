import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COLOURS, TINY_MODEL_FLAGS, make_image

from classifier_lib import cli
from classifier_lib.data.folders import find_splits
from classifier_lib.data.images import load_image
from classifier_lib.inference.checkpoint import CheckpointError
from classifier_lib.inference.predictor import Predictor, write_submission
from classifier_lib.report.evaluation import evaluate_checkpoint


def test_predictions_are_deterministic(trained_run):
    """BatchNorm (and any dropout) must be in eval mode: an image's answer cannot depend on the batch.

    In train mode BatchNorm normalises with the batch's own statistics, so the same image alone and
    inside a batch of other images would get different probabilities.
    """
    result, data_dir = trained_run
    predictor = Predictor(result.best_checkpoint, device="cpu", precision="fp32")
    predictor.model.train()  # whatever mode the model was left in, prediction must use eval mode
    image = next((data_dir / "Valid" / "cat").iterdir())
    first = predictor.predict(image)
    for _ in range(3):
        assert predictor.predict(image) == first
    others = [predictor.preprocess(p) for p in sorted((data_dir / "Valid" / "dog").iterdir())[:3]]
    batch = torch.stack([predictor.preprocess(image), *others])
    in_batch = predictor.probabilities(batch)[0]
    alone = torch.tensor([first.probabilities[name] for name in predictor.class_names])
    assert torch.allclose(in_batch, alone, atol=1e-6)
    assert first.label == "cat"
    assert sum(first.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_from_bytes_matches_predict_from_path(trained_run):
    result, data_dir = trained_run
    predictor = Predictor(result.best_checkpoint, device="cpu")
    image = next((data_dir / "Valid" / "dog").iterdir())
    assert predictor.predict(image.read_bytes()) == predictor.predict(image)


def test_preprocessing_matches_an_independent_reference_and_the_training_cache(trained_run, tmp_path):
    """Inference decodes as a plain PIL pipeline would (shorter side to S, centre crop, bilinear),
    and exactly as the training cache did."""
    from PIL import Image, ImageOps

    from classifier_lib.data.dataset import load_split

    result, data_dir = trained_run
    predictor = Predictor(result.best_checkpoint, device="cpu")
    size = predictor.decode_size
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)).save(photo)
    reference = np.asarray(ImageOps.fit(Image.open(photo).convert("RGB"), (size, size), Image.Resampling.BILINEAR))
    assert np.array_equal(predictor.preprocess(photo).permute(1, 2, 0).numpy(), reference)
    splits = find_splits(data_dir)
    valid = load_split(splits.valid, splits.class_names, size).data
    for index in (0, len(valid) - 1):
        assert torch.equal(predictor.preprocess(valid.paths[index]), valid.images[index])


def test_validation_during_training_and_evaluation_agree(trained_run):
    """The last epoch's validation accuracy is what `evaluate` reports for last.pt: one prediction path."""
    result, data_dir = trained_run
    evaluation = evaluate_checkpoint(result.last_checkpoint, data_dir, device="cpu")
    assert evaluation.accuracy == pytest.approx(result.final_valid_acc, abs=1e-6)


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
    assert (
        cli.main(
            [
                "train",
                "--data-dir",
                str(tiny_data),
                "--runs-dir",
                str(tmp_path / "runs"),
                "--epochs",
                "2",
                "--image-size",
                "32",
                *TINY_MODEL_FLAGS,
            ]
        )
        == 0
    )
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
        [
            "train",
            "--data-dir",
            str(tiny_data),
            "--epochs",
            "3",
            "--run-just-a-subset",
            "--half-precision",
            "--use-scheduler",
            "--data-augmentation",
            "--init-learning-rate",
            "0.01",
            "--checkpoint-every",
            "2",
        ]
    )
    config = cli.config_from_args(args)
    assert (config.train.epochs, config.data.subset, config.train.lr, config.train.checkpoint_every) == (3, 0.05, 0.01, 2)
    assert config.train.precision == "auto" and config.train.scheduler == "onecycle" and config.data.augment


def test_cli_missing_data_dir_is_a_clear_message(tmp_path, capsys):
    assert cli.main(["train", "--data-dir", str(tmp_path / "missing"), "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "expected DATA_DIR/Train/<class>" in err


def test_submission_ids_never_become_spreadsheet_formulas(tmp_path):
    from classifier_lib.inference.base import FolderPredictions

    ids = ["=cmd|' /C calc'!A0.jpg", "+1.jpg", "-2.jpg", "@sum.jpg", "plain.jpg"]
    predictions = FolderPredictions(ids, torch.eye(3)[[0, 1, 2, 0, 1]], ["cat", "dog", "panda"], [])
    csv_path, probs_path = write_submission(predictions, tmp_path / "sub.csv")
    for path in (csv_path, probs_path):
        written = [row[0] for row in csv.reader(path.open())][1:]
        assert written == ["'=cmd|' /C calc'!A0.jpg", "'+1.jpg", "'-2.jpg", "'@sum.jpg", "plain.jpg"]


def test_a_folder_of_only_unreadable_images_is_a_clear_error(trained_run, tmp_path):
    from classifier_lib.data.folders import DataLayoutError

    result, _ = trained_run
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(DataLayoutError, match="none of the 2 image files .* could be read"):
        Predictor(result.best_checkpoint, device="cpu").predict_folder(tmp_path)


def test_evaluation_says_which_split_and_what_chose_the_checkpoint(trained_run):
    result, data_dir = trained_run
    best = evaluate_checkpoint(result.best_checkpoint, data_dir, device="cpu")
    last = evaluate_checkpoint(result.last_checkpoint, data_dir, device="cpu")
    assert best.split.endswith("Valid") and f"epoch {result.best_epoch} scored best" in best.chosen_on
    assert "optimistic" in best.caveat
    assert "last epoch" in last.chosen_on and last.caveat == ""
    assert "training images" in evaluate_checkpoint(result.last_checkpoint, data_dir, "train", "cpu").caveat


def test_cli_unexpected_errors_keep_their_traceback(tiny_data, monkeypatch, capsys):
    """A bug is not a user error: it must not shrink to one line (CUDA out-of-memory, a RuntimeError...)."""

    def broken(args):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cli, "cmd_predict", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        cli.main(["predict", "some.pt", "image.jpg"])


def test_cli_expected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: checkpoint {tmp_path} is a folder; give a checkpoint file in it, e.g. {tmp_path / 'last.pt'}"
    )
    with pytest.raises(CheckpointError):
        cli.main(["--debug", "evaluate", str(tmp_path)])


def test_cli_refuses_zero_epochs_without_making_a_run_folder(tiny_data, tmp_path, capsys):
    assert cli.main(["train", "--data-dir", str(tiny_data), "--runs-dir", str(tmp_path / "runs"), "--epochs", "0"]) == 2
    assert "train.epochs must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_cli_evaluate_on_the_held_out_part_of_train_without_valid(tmp_path, capsys):
    from conftest import make_dataset

    data = make_dataset(tmp_path / "data", per_class=(10, 0), valid=False)
    assert (
        cli.main(
            [
                "train",
                "--data-dir",
                str(data),
                "--runs-dir",
                str(tmp_path / "runs"),
                "--epochs",
                "1",
                "--image-size",
                "32",
                *TINY_MODEL_FLAGS,
            ]
        )
        == 0
    )
    last = tmp_path / "runs" / "version_0" / "checkpoints" / "last.pt"
    capsys.readouterr()
    assert cli.main(["evaluate", str(last), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] >= 3 and "held out" in report["split"]  # about 20 %, at least one per class
    assert cli.main(["evaluate", str(last), "--split", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 30 - report["images"]


def test_clear_cache_command(tiny_data, tmp_path, capsys):
    from classifier_lib.config import DataConfig
    from classifier_lib.data.dataset import load_data

    load_data(DataConfig(data_dir=str(tiny_data), image_size=16))
    assert cli.main(["clear-cache"]) == 0
    assert "removed 4 cache files" in capsys.readouterr().out  # pixels and index of 2 splits


def test_folder_prediction_streams_a_batch_at_a_time(trained_run, tmp_path):
    """Decode a batch, predict it, keep its probabilities: never the whole folder's pixels at once."""
    result, _ = trained_run
    for i in range(10):
        make_image(tmp_path / "test" / f"sub{i % 2}" / f"{i}.png", COLOURS["panda"], seed=i)
    (tmp_path / "test" / "broken.jpg").write_bytes(b"not an image")
    predictor = Predictor(result.last_checkpoint, device="cpu")
    whole = predictor.predict_folder(tmp_path / "test", workers=1)
    seen = []
    original = predictor.probabilities
    predictor.probabilities = lambda images: seen.append(len(images)) or original(images)
    streamed = predictor.predict_folder(tmp_path / "test", workers=1, batch_size=4)
    assert max(seen) <= 4 and sum(seen) == 10
    assert streamed.ids == whole.ids and torch.allclose(streamed.probabilities, whole.probabilities, atol=1e-6)
    assert [Path(p).name for p, _ in streamed.skipped] == ["broken.jpg"]


def test_an_ensemble_file_predicts_the_average_of_its_members(tiny_data, tmp_path, capsys):
    from conftest import tiny_config

    from classifier_lib.training.engine import train

    # without flip TTA: each view's probabilities are averaged over the members exactly (with TTA the
    # views are then averaged on the log scale, as logits are)
    members = [
        train(
            tiny_config(tiny_data, **{"system.seed": seed, "train.epochs": 2, "data.flip_tta": False}),
            runs_root=tmp_path / "runs",
        ).last_checkpoint
        for seed in (0, 1)
    ]
    ensemble = tmp_path / "ensemble.pt"
    assert cli.main(["ensemble", *map(str, members), "-o", str(ensemble)]) == 0
    images = find_splits(tiny_data)
    batch = torch.stack([load_image(p, 32) for p in sorted((images.valid / "cat").iterdir())[:4]])
    expected = torch.stack([Predictor(m, device="cpu", precision="fp32").probabilities(batch) for m in members]).mean(0)
    together = Predictor(ensemble, device="cpu", precision="fp32").probabilities(batch)
    assert torch.allclose(together, expected, atol=1e-5)
    assert not torch.allclose(together, Predictor(members[0], device="cpu", precision="fp32").probabilities(batch))
    capsys.readouterr()
    assert cli.main(["evaluate", str(ensemble), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 18
    assert cli.main(["submit", str(ensemble), str(tiny_data / "Test"), "-o", str(tmp_path / "sub.csv")]) == 0


def test_an_ensemble_refuses_members_that_do_not_match(trained_run, tiny_data, tmp_path):
    from conftest import tiny_config

    from classifier_lib.inference.ensembles import make_ensemble
    from classifier_lib.training.engine import train

    result, _ = trained_run
    other_size = train(
        tiny_config(tiny_data, **{"data.image_size": 48, "data.eval_size": 48, "train.epochs": 1}), runs_root=tmp_path / "runs"
    ).last_checkpoint
    with pytest.raises(CheckpointError, match="differ in decode size"):
        make_ensemble([result.last_checkpoint, other_size], tmp_path / "e.pt")
    with pytest.raises(CheckpointError, match="at least two"):
        make_ensemble([result.last_checkpoint], tmp_path / "e.pt")
    no_flip = train(
        tiny_config(tiny_data, **{"data.flip_tta": False, "train.epochs": 1}), runs_root=tmp_path / "runs"
    ).last_checkpoint
    with pytest.raises(CheckpointError, match="differ in flip TTA"):  # it was silently replaced by the first's
        make_ensemble([result.last_checkpoint, no_flip], tmp_path / "e.pt")
    pair = make_ensemble([result.last_checkpoint, result.best_checkpoint], tmp_path / "pair.pt")
    with pytest.raises(CheckpointError, match="is an ensemble already"):  # given first, it was let through
        make_ensemble([pair, result.last_checkpoint], tmp_path / "e.pt")
    assert not (tmp_path / "e.pt").exists()


@pytest.mark.parametrize("second", ["train_on_all", "other seed without Valid"])
def test_an_ensemble_that_trained_on_validation_images_says_so(tmp_path, second, capsys):
    """A member trained on Train + Valid, or members that held out different parts of Train, have each
    seen validation images: evaluating the ensemble is no score, and the report says so."""
    from conftest import make_dataset, tiny_config

    from classifier_lib.inference.ensembles import make_ensemble
    from classifier_lib.training.engine import train

    data = make_dataset(tmp_path / "data", per_class=(10, 4), valid=second == "train_on_all")
    first = train(tiny_config(data, **{"train.epochs": 1}), runs_root=tmp_path / "runs").last_checkpoint
    changes = {"data.train_on_all": True} if second == "train_on_all" else {"system.seed": 1}
    other = train(tiny_config(data, **{"train.epochs": 1} | changes), runs_root=tmp_path / "runs").last_checkpoint
    same_split = train(tiny_config(data, **{"train.epochs": 1, "train.lr": 0.01}), runs_root=tmp_path / "runs")
    assert make_ensemble([first, same_split.last_checkpoint], tmp_path / "clean.pt")
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "clean.pt")]) == 0 and "note:" not in capsys.readouterr().out
    make_ensemble([first, other], tmp_path / "ensemble.pt")  # the seen member second: member 0 alone was checked
    assert cli.main(["evaluate", str(tmp_path / "ensemble.pt")]) == 0
    note = capsys.readouterr().out
    assert "note:" in note and "this is not a score" in note


def test_every_cell_of_a_submission_is_guarded_unless_asked_not_to(tmp_path):
    """A class named like a formula reached the label column and the probability header unguarded; ids
    that a grader compares can be written exactly."""
    from classifier_lib.inference.base import FolderPredictions

    formula = '=HYPERLINK("http://x")'
    predictions = FolderPredictions(["-1.jpg", "a.jpg"], torch.tensor([[0.9, 0.1], [0.2, 0.8]]), [formula, "cat"], [])
    guarded, probs = write_submission(predictions, tmp_path / "guarded.csv")
    rows = list(csv.reader(guarded.open()))
    assert rows == [["id", "label"], ["'-1.jpg", "'" + formula], ["a.jpg", "cat"]]
    assert next(csv.reader(probs.open())) == ["id", "'" + formula, "cat"]
    exact, _ = write_submission(predictions, tmp_path / "exact.csv", formula_guard=False)
    assert list(csv.reader(exact.open()))[1] == ["-1.jpg", formula]


@pytest.mark.parametrize("names", [["../../x", "cat"], ["/tmp/x", "cat"], ["cat", "cat"], ["", "cat"], [".", "cat"]])
def test_class_names_that_cannot_be_folders_are_refused_when_a_checkpoint_is_read(trained_run, tmp_path, names, capsys):
    """Pseudo-labelling writes OUT/<class>/: a crafted `../../x` would have written outside OUT."""
    result, data_dir = trained_run
    state = torch.load(result.last_checkpoint, weights_only=True)
    state["class_names"] = names + ["panda"]
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    with pytest.raises(CheckpointError, match="class"):
        Predictor(crafted)
    assert cli.main(["pseudo-label", str(crafted), str(data_dir / "Test"), "-o", str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_evaluation_says_when_the_rebuilt_split_is_not_the_one_training_held_out(tmp_path, capsys):
    """Files added to Train after training: the rebuilt held-out split (stable per file) gains some of them,
    and the evaluation no longer matches the recorded validation files: it says so instead of a silent score."""
    from conftest import make_dataset, tiny_config

    from classifier_lib.training.engine import train

    data = make_dataset(tmp_path / "data", per_class=(10, 0), valid=False)
    last = train(tiny_config(data, **{"train.epochs": 1}), runs_root=tmp_path / "runs").last_checkpoint
    assert evaluate_checkpoint(last).caveat == ""
    for i in range(30):
        make_image(data / "Train" / "cat" / f"later_{i}.png", COLOURS["cat"], seed=500 + i)
    evaluation = evaluate_checkpoint(last)
    recorded = torch.load(last, weights_only=True)["data_split"]["valid_files"]
    assert len(evaluation.labels) > recorded
    assert f"not the {recorded} that training validated on" in evaluation.caveat
