"""Inference speed: batched images/s from decoded tensors, and one image from JPEG file to label.

    python bench/inference.py [--checkpoint runs/version_N/checkpoints/best.pt] [--data-dir DIR]

Without --checkpoint a randomly initialised model of the default config is used: speed does not
depend on the weights.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from classifier_lib.checkpoint import save_checkpoint  # noqa: E402
from classifier_lib.config import Config  # noqa: E402
from classifier_lib.data import find_splits, list_images  # noqa: E402
from classifier_lib.inference import Predictor  # noqa: E402
from classifier_lib.model import ResNet  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "animals"


def random_checkpoint(folder: Path) -> Path:
    config = Config()
    path = folder / "random.pt"
    save_checkpoint(path, {"model": ResNet(3, config.model).state_dict(), "class_names": ["cat", "dog", "panda"],
                           "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": config.data.image_size,
                           "config": config.to_dict()})
    return path


def batched(predictor: Predictor, count: int = 2048, batch_size: int = 256) -> float:
    images = torch.randint(0, 256, (count, 3, predictor.image_size, predictor.image_size), dtype=torch.uint8)
    predictor.probabilities(images[:batch_size], batch_size)  # warm-up
    start = time.perf_counter()
    predictor.probabilities(images, batch_size)
    return count / (time.perf_counter() - start)


def single_latencies(predictor: Predictor, files: list[Path]) -> np.ndarray:
    for path in files[:5]:
        predictor.predict(path)  # warm-up
    times = []
    for path in files:
        start = time.perf_counter()
        predictor.predict(path)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint")
    parser.add_argument("--data-dir", default=os.environ.get("CLASSIFIER_DATA_DIR", DEFAULT_DATA))
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    files = list_images(find_splits(args.data_dir).test or find_splits(args.data_dir).train)[0][: args.files]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or random_checkpoint(Path(tmp))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; checkpoint {args.checkpoint or '(random weights)'}")
        for precision in ("fp32", "bf16"):
            predictor = Predictor(checkpoint, device="cpu", precision=precision)
            print(f"batched {precision}: {batched(predictor):8.0f} images/s at {predictor.image_size} px (batch 256)")
        predictor = Predictor(checkpoint, device="cpu")
        latencies = single_latencies(predictor, files)
        print(f"one JPEG file to label ({len(files)} files, default precision): median {np.median(latencies):.1f} ms, "
              f"p95 {np.percentile(latencies, 95):.1f} ms")


if __name__ == "__main__":
    main()
