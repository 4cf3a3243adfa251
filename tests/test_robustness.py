"""Bad input, interrupted work and untrusted files end in a clear message or a counted skip."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COLOURS, make_dataset, make_image, tiny_config, tiny_train_args
from PIL import Image

from classifier_lib import cli
from classifier_lib.config import DataConfig
from classifier_lib.data.dataset import load_data
from classifier_lib.data.folders import DataLayoutError, find_splits
from classifier_lib.data.images import MAX_PIXELS, UnreadableImage, load_image
from classifier_lib.inference.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from classifier_lib.inference.predictor import Predictor
from classifier_lib.training.engine import train

ROOT = Path(__file__).resolve().parents[1]


# --- single files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "not an image file"),
        (b"just some text, not a JPEG", "not an image file"),
    ],
)
def test_empty_and_text_files_are_refused_with_the_path(tmp_path, content, reason):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(UnreadableImage, match=f"{path}.*{reason}"):
        load_image(path, 32)


def test_truncated_jpeg_is_refused(tmp_path):
    path = make_image(tmp_path / "full.jpg", (10, 200, 30), size=(300, 300))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(path.read_bytes()[:400])
    with pytest.raises(UnreadableImage, match="truncated.jpg"):
        load_image(truncated, 32)


ORANGE = (220, 120, 30)


@pytest.mark.parametrize(
    "mode, expected, tolerance",
    [
        ("RGB", ORANGE, 2),
        ("P", ORANGE, 12),  # a palette keeps the colour up to quantisation
        ("RGBA", ORANGE, 2),  # opaque alpha: the colour itself
        ("CMYK", ORANGE, 12),  # JPEG in CMYK: the same colour back in RGB
        ("L", (round(0.299 * 220 + 0.587 * 120 + 0.114 * 30),) * 3, 2),  # greyscale: luminance in all three channels
        ("LA", (round(0.299 * 220 + 0.587 * 120 + 0.114 * 30),) * 3, 2),
        ("1", (round(0.299 * 220 + 0.587 * 120 + 0.114 * 30),) * 3, 8),  # 1-bit: dithered black and white, same mean
    ],
)
def test_colour_modes_become_the_right_rgb_colours(tmp_path, mode, expected, tolerance):
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = tmp_path / f"image{suffix}"
    Image.new("RGB", (30, 20), ORANGE).convert(mode).save(path, **({"quality": 100} if suffix == ".jpg" else {}))
    tensor = load_image(path, 16)
    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.uint8
    colour = tensor.float().mean(dim=(1, 2))
    assert torch.allclose(colour, torch.tensor(expected, dtype=torch.float), atol=tolerance), colour


def test_half_transparent_pixels_are_blended_over_white(tmp_path):
    path = tmp_path / "half.png"
    Image.new("RGBA", (20, 20), (0, 0, 0, 128)).save(path)  # black at 50 % opacity
    assert torch.allclose(load_image(path, 8).float().mean(dim=(1, 2)), torch.full((3,), 127.0), atol=1.5)


@pytest.mark.parametrize("value, expected", [(257 * 200, 200), (100, 0), (65535, 255)])
def test_16_bit_greyscale_is_scaled_from_its_full_range(tmp_path, value, expected):
    """A dark 16-bit image (all values <= 255) stays dark instead of being read as 8-bit."""
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((12, 12), value, dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    assert load_image(path, 8).unique().tolist() == [expected]


def test_transparent_png_is_laid_over_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (40, 40), (255, 0, 0, 0)).save(path)
    assert load_image(path, 16).min() == 255


def test_palette_gif(tmp_path):
    path = tmp_path / "anim.gif"
    Image.new("RGB", (30, 30), (0, 0, 255)).convert("P").save(path)
    assert load_image(path, 16)[2].float().mean() > 200


def test_one_pixel_image_is_upscaled(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (9, 8, 7)).save(path)
    assert load_image(path, 32).shape == (3, 32, 32)


def test_huge_image_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    side = int(MAX_PIXELS**0.5) + 100
    Image.new("1", (side, side)).save(path)  # 1-bit: small file, huge decoded size
    with pytest.raises(UnreadableImage, match="pixel limit"):
        load_image(path, 32)


def test_exif_orientation_is_honoured(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # left half white: a landscape image
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    tensor = load_image(path, 20)  # displayed upright it is portrait with the white half on top
    assert tensor[:, :5].float().mean() > 200 and tensor[:, -5:].float().mean() < 50


# --- folders ----------------------------------------------------------------------------------


def test_bad_files_in_class_folders_are_skipped_and_counted(tmp_path):
    root = make_dataset(tmp_path / "data")
    cats = root / "Train" / "cat"
    (cats / "empty.jpg").write_bytes(b"")
    (cats / "notes.txt").write_text("not an image")
    (cats / ".DS_Store").write_bytes(b"\0\0")
    (cats / "fake.jpg").write_text("text in disguise")
    make_image(cats / "ünïcode name with spaces.png", COLOURS["cat"])
    os.symlink(next(cats.glob("cat_0.png")), cats / "link.png")
    data = load_data(DataConfig(data_dir=str(root), image_size=16))
    reasons = dict(data.skipped)
    assert set(reasons) == {str(cats / "empty.jpg"), str(cats / "notes.txt"), str(cats / "fake.jpg")}
    assert reasons[str(cats / "notes.txt")] == "not an image file type"
    assert len(data.train) == 12 * 3 + 2  # the unicode file and the symlink are used


def test_skipped_files_are_counted_in_the_run_metrics(tmp_path):
    import json

    root = make_dataset(tmp_path / "data")
    (root / "Train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    result = train(tiny_config(root, **{"train.epochs": 1}), runs_root=tmp_path / "runs")
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["skipped_files"] == 1 and "broken.jpg" in metrics["skipped"][0][0]


def test_empty_class_folder(tmp_path):
    root = make_dataset(tmp_path / "data")
    (root / "Train" / "bird").mkdir()
    (root / "Valid" / "bird").mkdir()
    with pytest.raises(DataLayoutError, match="bird holds no images"):
        load_data(DataConfig(data_dir=str(root)))


def test_only_one_class(tmp_path):
    root = make_dataset(tmp_path / "data", classes={"cat": (1, 2, 3)})
    with pytest.raises(DataLayoutError, match="at least two"):
        find_splits(root)


def test_class_folders_differ_between_train_and_valid(tmp_path):
    root = make_dataset(tmp_path / "data")
    (root / "Valid" / "panda").rename(root / "Valid" / "bear")
    with pytest.raises(DataLayoutError, match="class folders differ"):
        find_splits(root)


def test_class_with_only_unreadable_images(tmp_path):
    root = make_dataset(tmp_path / "data", per_class=(2, 2))
    for path in (root / "Train" / "dog").iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(DataLayoutError, match=r"no readable training images for classes \['dog'\]"):
        load_data(DataConfig(data_dir=str(root), image_size=16))


def test_submission_lists_readable_and_reports_unreadable_test_files(trained_run, tmp_path, capsys):
    result, data_dir = trained_run
    test_dir = tmp_path / "test"
    make_image(test_dir / "a" / "b" / "deep.png", COLOURS["dog"])
    make_image(test_dir / "top.png", COLOURS["cat"])
    (test_dir / "a" / "bad.jpg").write_bytes(b"garbage")
    predictions = Predictor(result.best_checkpoint, device="cpu").predict_folder(test_dir)
    assert predictions.ids == ["a/b/deep.png", "top.png"]
    assert [Path(p).name for p, _ in predictions.skipped] == ["bad.jpg"]
    assert cli.main(["submit", str(result.best_checkpoint), str(test_dir), "-o", str(tmp_path / "s.csv")]) == 0
    assert "1 unreadable files skipped" in capsys.readouterr().out


# --- checkpoints ------------------------------------------------------------------------------


def test_truncated_checkpoint(trained_run, tmp_path):
    result, _ = trained_run
    broken = tmp_path / "broken.pt"
    broken.write_bytes(result.best_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_model(broken)


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a classifier_lib checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "classifier_lib.checkpoint/1", "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused by safe loading"):
        read_checkpoint(path)


def test_checkpoint_of_other_architecture(trained_run, tmp_path):
    result, _ = trained_run
    state = read_checkpoint(result.best_checkpoint)
    state["config"]["model"]["widths"] = [16, 32]
    save_checkpoint(tmp_path / "other.pt", state)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "other.pt")


def test_resume_with_checkpoint_of_other_classes(trained_run, tmp_path):
    result, _ = trained_run
    other = make_dataset(tmp_path / "other", classes={"ant": (1, 1, 1), "bee": (250, 250, 0), "cow": (0, 0, 0)})
    config = tiny_config(other, **{"train.resume": str(result.best_checkpoint), "train.epochs": 5})
    with pytest.raises(CheckpointError, match="trained on classes"):
        train(config, run_dir=tmp_path / "run")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"epoch": 1})
    before = target.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(target, {"epoch": 2})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_training_survives_a_failed_save_and_says_so(tiny_data, tmp_path, monkeypatch, capsys):
    from classifier_lib.training import engine

    def disk_full(path, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine, "save_checkpoint", disk_full)
    result = train(tiny_config(tiny_data, **{"train.epochs": 1}), runs_root=tmp_path)
    assert len(result.history) == 1
    assert "could not save last.pt" in capsys.readouterr().out


# --- interrupted work -------------------------------------------------------------------------


def _train_command(data_dir, runs, epochs, *extra):
    return [sys.executable, *tiny_train_args(data_dir, runs, epochs), "--set", "system.threads", "1", *extra]


def _wait_for(path: Path, process, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture
def slow_data(tmp_path):
    """Enough tiny images that an epoch takes a noticeable moment, so a signal lands mid-training."""
    return make_dataset(tmp_path / "data", per_class=(120, 10), test=0)


def test_sigkill_then_resume_matches_an_uninterrupted_run(slow_data, tmp_path):
    import json

    env = os.environ | {"TQDM_DISABLE": "1"}
    subprocess.run(_train_command(slow_data, tmp_path / "full", 6), check=True, env=env, capture_output=True)
    process = subprocess.Popen(
        _train_command(slow_data, tmp_path / "killed", 6), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    run = tmp_path / "killed" / "version_0"
    _wait_for(run / "metrics.json", process)
    while len(json.loads((run / "metrics.json").read_text())["history"]) < 2:
        assert process.poll() is None
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(json.loads((run / "metrics.json").read_text())["history"])
    assert done < 6, "training finished before it could be killed"
    resumed = subprocess.run(
        _train_command(slow_data, tmp_path / "unused", 6, "--resume", str(run / "checkpoints" / "last.pt")),
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {run / 'checkpoints' / 'last.pt'} after epoch {done}" in resumed.stdout
    full = json.loads((tmp_path / "full" / "version_0" / "metrics.json").read_text())["history"]
    after = json.loads((run / "metrics.json").read_text())["history"]

    def strip(rows):
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]

    assert strip(after) == strip(full)


def test_ctrl_c_keeps_last_checkpoint_and_prints_the_resume_command(slow_data, tmp_path):
    import json

    env = os.environ | {"TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    # A shell starts background jobs with SIGINT ignored (`nohup make test &`), and Python then keeps
    # ignoring it: give the child the default disposition, as a terminal's Ctrl-C would find it.
    process = subprocess.Popen(
        _train_command(slow_data, tmp_path / "runs", 50),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    run = tmp_path / "runs" / "version_0"
    _wait_for(run / "metrics.json", process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, out[-3000:] + err[-3000:]
    assert "Resume with:" in out and f"--resume {run / 'checkpoints' / 'last.pt'}" in out
    epochs_done = json.loads((run / "metrics.json").read_text())["epochs_done"]
    assert read_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == epochs_done >= 1
    assert "Traceback" not in err


def test_a_log_file_gets_epoch_lines_not_progress_bars(tiny_data, tmp_path):
    """Written to a file (CI, nohup), training prints one line per epoch and no bar refreshes."""
    completed = subprocess.run(_train_command(tiny_data, tmp_path / "runs", 3), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "\r" not in completed.stdout + completed.stderr
    assert [line.split()[1] for line in completed.stdout.splitlines() if line.startswith("epoch")] == ["1/3", "2/3", "3/3"]
