"""Inference speed, PyTorch beside ONNX Runtime: batched images/s from decoded tensors, and one
image from JPEG file to label, in one run on this machine (its matmul peak printed beside).

    python bench/inference.py [--checkpoint runs/version_N/checkpoints/last.pt] [--data-dir DIR]

Without --checkpoint a randomly initialised model of the default config is used: speed does not
depend on the weights. The ONNX file is exported from the same checkpoint (fp32, flip TTA inside).
With a checkpoint it also counts, on the checkpoint's validation images, the labels on which each
backend differs from ONNX Runtime's fp32 (PyTorch's default is bf16 autocast: near-ties can flip).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from machine import peak_line  # bench/machine.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from classifier_lib.config import Config  # noqa: E402
from classifier_lib.data.folders import find_splits, list_images  # noqa: E402
from classifier_lib.inference.base import ClassifierBase
from classifier_lib.inference.checkpoint import held_out_of, save_checkpoint  # noqa: E402
from classifier_lib.inference.export import export, parity_images  # noqa: E402
from classifier_lib.inference.onnx import OnnxPredictor
from classifier_lib.inference.predictor import Predictor  # noqa: E402
from classifier_lib.model.resnet import ResNet  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "animals"


def random_checkpoint(folder: Path) -> Path:
    config = Config()
    path = folder / "random.pt"
    save_checkpoint(
        path,
        {
            "model": ResNet(3, config.model).state_dict(),
            "class_names": ["cat", "dog", "panda"],
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
            "decode_size": config.data.decode_size,
            "eval_size": config.data.effective_eval_size,
            "config": config.to_dict(),
        },
    )
    return path


def batched(predictor: ClassifierBase, count: int = 2048, batch_size: int = 256) -> float:
    images = torch.randint(0, 256, (count, 3, predictor.decode_size, predictor.decode_size), dtype=torch.uint8)
    predictor.probabilities(images[:batch_size], batch_size)  # warm-up
    start = time.perf_counter()
    predictor.probabilities(images, batch_size)
    return count / (time.perf_counter() - start)


def single_latencies(predictor: ClassifierBase, files: list[Path]) -> np.ndarray:
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
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, onnxruntime {onnxruntime.__version__}; "
            f"{peak_line()}; checkpoint {args.checkpoint or '(random weights)'}"
        )
        onnx_file = export(checkpoint, Path(tmp) / "model.onnx").path
        predictors = {
            "PyTorch fp32": Predictor(checkpoint, device="cpu", precision="fp32"),
            "PyTorch bf16 (default)": Predictor(checkpoint, device="cpu"),
            "ONNX Runtime fp32": OnnxPredictor(onnx_file),
        }
        for name, predictor in predictors.items():
            speed = batched(predictor)
            latencies = single_latencies(predictor, files)
            print(
                f"{name:24s} batched {speed:7.0f} images/s at {predictor.decode_size} px (batch 256); one JPEG file "
                f"to label: median {np.median(latencies):.1f} ms, p95 {np.percentile(latencies, 95):.1f} ms"
            )
        if args.checkpoint:
            label_agreement(predictors, args.checkpoint)


def label_agreement(predictors: dict[str, ClassifierBase], checkpoint: str) -> None:
    """How many validation labels each backend gives otherwise than ONNX Runtime fp32, and the accuracy of each."""
    images, source = parity_images(checkpoint)
    if images is None:
        print(source)
        return
    loaded = Predictor(checkpoint, device="cpu").loaded
    labels = held_out_of(loaded.config)[0].labels
    probabilities = {name: predictor.probabilities(images) for name, predictor in predictors.items()}
    reference = probabilities["ONNX Runtime fp32"].argmax(1)
    for name, probs in probabilities.items():
        predicted = probs.argmax(1)
        print(
            f"{name:24s} accuracy {(predicted == labels).float().mean():.4f}; labels unlike ONNX Runtime fp32: "
            f"{int((predicted != reference).sum())} of {len(images)} {source}"
        )


if __name__ == "__main__":
    main()
