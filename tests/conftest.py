"""Shared fixtures: tiny generated image folders and a tiny trained checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classifier_lib.config import Config

REAL_DATA = Path(os.environ.get("CLASSIFIER_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "datasets" / "animals")
COLOURS = {"cat": (200, 60, 60), "dog": (60, 200, 60), "panda": (60, 60, 200)}


def make_image(path: Path, colour, size=(40, 32), seed=0, mode="RGB") -> Path:
    """A noisy image of one dominant colour, so a tiny model can learn the classes."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def make_dataset(root: Path, per_class=(12, 6), test=6, classes=COLOURS, valid=True) -> Path:
    """root/Train/<class>/*.png, root/Valid/<class>/*.png (optional) and a nested root/Test/."""
    splits = [("Train", per_class[0])] + ([("Valid", per_class[1])] if valid else [])
    seed = 0
    for split, count in splits:
        for name, colour in classes.items():
            for i in range(count):
                seed += 1
                make_image(root / split / name / f"{name}_{i}.png", colour, (36 + i % 9, 32 + i % 5), seed)
    for i in range(test):
        seed += 1
        folder = root / "Test" / ("nested" if i % 2 else "")
        make_image(folder / f"img_{i}.png", list(classes.values())[i % len(classes)], seed=seed)
    return root


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep each test's decoded-image cache out of the user's home."""
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


# tiny_config's network, as command-line flags (for tests that train through the CLI)
TINY_MODEL_FLAGS = ["--set", "model.widths", "8,16", "--set", "model.blocks", "1,1"]


def tiny_train_args(data_dir, runs, epochs: int) -> list[str]:
    """`-m classifier_lib train ...` for a tiny run: the arguments after `python` (or torchrun)."""
    return [
        "-m", "classifier_lib", "train", "--data-dir", str(data_dir), "--runs-dir", str(runs), "--epochs", str(epochs),
        "--image-size", "32", "--batch-size", "8", "--lr", "0.05", *TINY_MODEL_FLAGS, "--set", "data.workers", "1",
    ]  # fmt: skip


def tiny_config(data_dir: Path, **overrides) -> Config:
    """A config that trains in a second or two on tiny data."""
    values = {
        "data.data_dir": str(data_dir),
        "data.image_size": 32,
        "data.eval_size": 32,
        "data.batch_size": 8,
        "data.workers": 1,
        "model.widths": (8, 16),
        "model.blocks": (1, 1),
        "train.epochs": 2,
        "train.lr": 0.05,
        "system.threads": 1,
    }
    return Config().override(values | overrides)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny training run shared by the tests that only read its outputs."""
    from classifier_lib.training.engine import train

    root = tmp_path_factory.mktemp("trained")
    os.environ.setdefault("CLASSIFIER_CACHE_DIR", str(root / "cache"))
    data_dir = make_dataset(root / "data")
    result = train(tiny_config(data_dir, **{"train.epochs": 3}), runs_root=root / "runs")
    return result, data_dir


needs_real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real data set not found at {REAL_DATA}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a skipped test is a failure: the slow, real-data and browser tests must run there.
    Only tests marked `cuda` may skip, since CI has no GPU."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI", "").lower() in ("1", "true") and item.get_closest_marker("cuda") is None:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome, report.longrepr = "failed", f"skipped in CI, where it must run: {reason}"
