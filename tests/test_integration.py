"""A short training run on the real data set: the whole command, end to end."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAL_DATA, needs_real_data

from classifier_lib import cli


@needs_real_data
@pytest.mark.slow
def test_train_two_epochs_on_a_subset_of_the_real_data(tmp_path, capsys):
    code = cli.main(["train", "--data-dir", str(REAL_DATA), "--runs-dir", str(tmp_path), "--epochs", "2", "--subset", "0.1"])
    assert code == 0
    run = tmp_path / "version_0"
    assert f"run folder: {run}" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["class_names"] == ["cat", "dog", "panda"]
    assert (metrics["train_images"], metrics["valid_images"]) == (195, 45)
    assert len(metrics["history"]) == 2 and 0.0 <= metrics["best_valid_acc"] <= 1.0
    assert all(math.isfinite(value) for row in metrics["history"] for value in row.values())
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["data_dir"] == str(REAL_DATA) and config["train"]["epochs"] == 2
    assert {"best.pt", "last.pt"} <= {p.name for p in (run / "checkpoints").iterdir()}


BENCH = Path(__file__).resolve().parents[1] / "bench"


BENCH_HELPERS = ("machine", "sources")  # modules the scripts import, not scripts


@pytest.mark.parametrize("script", sorted(p for p in BENCH.glob("*.py") if p.stem not in BENCH_HELPERS), ids=lambda p: p.stem)
def test_benchmark_scripts_start(script):
    """Every benchmark imports what it uses and explains itself (they run for minutes, so not here)."""
    completed = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "usage:" in completed.stdout


def test_time_to_accuracy_refuses_a_missing_folder_first_and_keeps_a_run_it_cannot_score(tiny_data, tmp_path):
    """A --folder that is not there stops the benchmark before any training; one that cannot be scored after
    training (here: no folder named after a class the model knows) is a printed skip, and the seed's row is kept."""
    tiny = ["-s", "data.image_size", "32", "-s", "data.eval_size", "32", "-s", "data.batch_size", "8", "-s", "data.workers", "1"]
    tiny += ["-s", "model.widths", "8,16", "-s", "model.blocks", "1,1", "-s", "system.threads", "1", "-s", "train.epochs", "1"]
    command = [sys.executable, str(BENCH / "time_to_accuracy.py"), "--data-dir", str(tiny_data), "--preset", "plain"]
    command += ["--seeds", "0", "--runs-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "rows.json"), *tiny]

    missing = subprocess.run([*command, "--folder", str(tmp_path / "gone")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "gone: not a folder" in missing.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "rows.json").exists()

    (tmp_path / "photos" / "horse").mkdir(parents=True)
    unknown = subprocess.run([*command, "--folder", str(tmp_path / "photos")], capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 0, unknown.stderr[-2000:]
    assert "not scored:" in unknown.stdout and "no folder named after a class" in unknown.stdout
    assert "last.pt on" not in unknown.stdout  # no mean printed for a folder no run was scored on
    (row,) = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert row["folders"] == {} and row["epochs"] == 1 and (Path(row["run"]) / "checkpoints" / "last.pt").is_file()


def test_time_to_accuracy_says_when_a_mean_leaves_runs_out(monkeypatch):
    """A folder mean over fewer runs than were trained (some not scored) says how many it holds."""
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("time_to_accuracy", BENCH / "time_to_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.mean_of_those_scored([0.8, None, 0.9]) == "85.00% ± 7.07% (2 of 3 runs scored)"
    assert module.mean_of_those_scored([0.8, 0.9]) == "85.00% ± 7.07%"


@needs_real_data
@pytest.mark.slow
def test_export_of_a_real_model_matches_pytorch_on_the_real_validation_images(tmp_path, capsys):
    assert cli.main(["train", "--data-dir", str(REAL_DATA), "--runs-dir", str(tmp_path), "--epochs", "1", "--subset", "0.1"]) == 0
    last = tmp_path / "version_0" / "checkpoints" / "last.pt"
    capsys.readouterr()
    assert cli.main(["export", str(last), "-o", str(tmp_path / "model.onnx")]) == 0
    out = capsys.readouterr().out
    assert "parity on 450 validation images" in out and "labels identical: True" in out
    assert float(out.split("max |dp| ")[1].split(",")[0]) <= 1e-4


def commit_folder(source: Path) -> None:
    """Make `source` a git repository with its files committed (the bench scripts read a repository)."""
    subprocess.run(["git", "init", "-q", str(source)], check=True)
    subprocess.run(["git", "-C", str(source), "add", "."], check=True)
    commit = ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "samples"]
    subprocess.run(commit, check=True)


def test_other_collections_leaves_out_copies_of_the_animals_photos(tmp_path):
    """bench/other_collections.py lays a source repository's cats and dogs out as OUT/<class>/<breed>/ and
    leaves out exact copies and near copies (resized, re-encoded) of any Animals image."""
    from conftest import make_image
    from PIL import Image

    source = tmp_path / "source"
    samples = source / "datasets" / "oxford-pets" / "data" / "sample_images"
    for breed, folder, seed in [("Bengal", "cats", 1), ("Bengal", "cats", 2), ("beagle", "dogs", 3), ("pug", "dogs", 4)]:
        make_image(samples / folder / f"{breed}_{seed}.jpg", (90, 120, 150), size=(64, 48), seed=seed)
    commit_folder(source)
    animals = tmp_path / "animals"
    (animals / "Train" / "cat").mkdir(parents=True)
    (animals / "Train" / "cat" / "same.jpg").write_bytes((samples / "cats" / "Bengal_1.jpg").read_bytes())
    Image.open(samples / "dogs" / "pug_4.jpg").resize((128, 96)).save(animals / "Train" / "cat" / "resized.jpg", quality=70)
    out = tmp_path / "out"
    shown = subprocess.run(
        [
            sys.executable,
            str(BENCH / "other_collections.py"),
            "--source",
            str(source),
            "--out",
            str(out),
            "--animals",
            str(animals),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    kept = sorted(path.relative_to(out).as_posix() for path in out.rglob("*.jpg"))
    assert kept == ["cat/Bengal/Bengal_2.jpg", "dog/beagle/beagle_3.jpg"]
    assert "'exact copy': 1, 'near copy': 1" in shown.stdout


def test_traffic_signs_splits_whole_tracks_and_keeps_the_labelled_test_images(tmp_path):
    """bench/traffic_signs.py puts every frame of a track on one side of Train / Valid (frames of a track are
    near copies), keeps frames evenly spaced along each track, and lays the official test images out by
    their labels in Heldout/."""
    from conftest import make_image

    source = tmp_path / "source"
    training = source / "GTSRB" / "Final_Training" / "Images"
    for class_id, tracks in [(0, 5), (14, 3)]:
        for track in range(tracks):
            for frame in range(6):
                make_image(
                    training / f"{class_id:05d}" / f"{track:05d}_{frame:05d}.ppm", (200, 30, 30), size=(24, 24), seed=frame
                )
    test = source / "GTSRB" / "Final_Test"
    labels = [(f"{i:05d}.ppm", [0, 14][i % 2]) for i in range(6)]
    for name, _ in labels:
        make_image(test / "Images" / name, (30, 30, 200), size=(20, 20))
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"] + [f"{name};20;20;1;1;19;19;{c}" for name, c in labels]
    (test / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    commit_folder(source)
    out = tmp_path / "out"
    script = [sys.executable, str(BENCH / "traffic_signs.py"), "--source", str(source), "--out", str(out), "--test-every", "2"]
    shown = subprocess.run(script, capture_output=True, text=True, check=True)
    assert "2 classes" in shown.stdout and not (out / "Test").exists()

    def tracks(split: str, folder: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for path in sorted((out / split / folder).glob("*.png")):
            found.setdefault(path.stem.split("_")[0], []).append(path.stem.split("_")[1])
        return found

    for folder, count in [("00_speed_20", 5), ("14_stop", 3)]:
        train, valid = tracks("Train", folder), tracks("Valid", folder)
        assert len(train) + len(valid) == count and len(valid) == max(1, round(0.2 * count))
        assert not set(train) & set(valid)
        assert all(frames == ["00000", "00002", "00005"] for frames in [*train.values(), *valid.values()])
    heldout = sorted(path.relative_to(out / "Heldout").as_posix() for path in (out / "Heldout").rglob("*.png"))
    assert heldout == ["00_speed_20/00000.png", "00_speed_20/00002.png", "00_speed_20/00004.png"]
