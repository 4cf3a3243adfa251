"""Exporting a checkpoint to ONNX or TorchScript, proven identical, and predicting with ONNX Runtime.

The exported graph holds everything between decoded pixels and class probabilities: it takes RGB
images as decoded by `images.load_image` at the checkpoint's size (uint8, or float in [0, 1]; any
batch size), scales and (when the model's test size differs) resizes them, normalises them, runs
the network on each image and its mirror image when the checkpoint uses flip TTA, and returns
softmax probabilities. Class names, sizes, normalisation and the preprocessing rule travel with the
file as metadata. Multi-size TTA (`data.tta_sizes 3`) is not exported: the file predicts at the test
size alone, and says so in its metadata.

An export is checked before it is written: on validation images (or generated ones) the exported
model's probabilities must match PyTorch's in fp32 within `PARITY_TOLERANCE`, with identical labels.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from classifier_lib import __version__
from classifier_lib.config import Config, ConfigError
from classifier_lib.data.augment import model_input
from classifier_lib.data.folders import DataLayoutError
from classifier_lib.inference.checkpoint import LoadedModel, held_out_of, load_model, read_checkpoint
from classifier_lib.inference.onnx import OnnxPredictor
from classifier_lib.utils.fileio import atomic_write

PARITY_TOLERANCE = 1e-4  # max |difference| of any class probability, fp32
PREPROCESSING = (
    "JPEGs decoded with Pillow's draft mode (reduced DCT scale, still at least {size} px); EXIF orientation "
    "applied; 16-bit greyscale scaled from 0..65535; alpha laid over white; RGB; shorter side resized to "
    "{size} px with bilinear filtering, centre-cropped to {size}x{size} (classifier_lib.images.load_image)"
)
FORMATS = ("onnx", "torchscript")


class ExportError(ValueError):
    """An export that cannot be made or that failed its parity check; nothing was written."""


class DeployedClassifier(nn.Module):
    """A checkpoint's network with its preprocessing and flip TTA inside: images in, probabilities out."""

    def __init__(self, loaded: LoadedModel, uint8_input: bool = True):
        super().__init__()
        self.model = loaded.model.float().eval()
        self.uint8_input = uint8_input
        self.eval_size = loaded.eval_size if loaded.eval_size != loaded.decode_size else None
        self.flip = loaded.config.data.mirror_tta
        self.register_buffer("mean", torch.tensor(loaded.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(loaded.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float() / 255.0 if self.uint8_input else images
        inputs = model_input(images, self.eval_size, self.mean, self.std)
        logits = self.model(inputs)
        if self.flip:
            logits = (logits + self.model(inputs.flip(dims=[3]))) / 2
        return logits.softmax(dim=1)


@dataclass
class ExportReport:
    path: Path
    images: int  # how many images the parity check used
    max_abs_diff: float
    labels_identical: bool
    notes: list[str] = dataclasses.field(default_factory=list)  # how the file predicts otherwise than `predict`


def fidelity_notes(loaded: LoadedModel) -> list[str]:
    """Where an exported file's predictions can differ from the checkpoint's in `predict`, in words."""
    notes = [
        "the file computes in fp32; `predict` on a checkpoint uses bf16 autocast on CPUs and GPUs that have it, "
        "so a near-tie can get the other label (docs/deploy.md measures how often)"
    ]
    if loaded.config.data.tta_sizes > 1:
        notes.append(
            f"multi-size TTA (data.tta_sizes {loaded.config.data.tta_sizes}) is not exported: the file "
            f"predicts at the test size {loaded.eval_size} px alone"
        )
    return notes


def metadata(loaded: LoadedModel, uint8_input: bool) -> dict[str, str]:
    """What a user of the exported file needs, as strings (ONNX metadata_props / a TorchScript extra file)."""
    data = loaded.config.data
    return {
        "class_names": json.dumps(loaded.class_names),
        "decode_size": str(loaded.decode_size),
        "input": f"N x 3 x {loaded.decode_size} x {loaded.decode_size} RGB, "
        + ("uint8 0..255" if uint8_input else "float32 0..1"),
        "output": "N x classes softmax probabilities, in the order of class_names",
        "preprocessing": PREPROCESSING.format(size=loaded.decode_size),
        "mean": json.dumps(list(loaded.mean)),
        "std": json.dumps(list(loaded.std)),
        "eval_size": str(loaded.eval_size),
        "tta": "flip" if data.mirror_tta else "none",
        "not_exported": "multi-size TTA (data.tta_sizes 3)" if data.tta_sizes > 1 else "",
        "precision": "fp32",
        "classifier_lib_version": __version__,
        "config": json.dumps(loaded.config.to_dict()),
    }


def export(
    checkpoint: str | Path,
    output: str | Path,
    fmt: str = "onnx",
    images: torch.Tensor | None = None,
    uint8_input: bool = True,
    count: int = 64,
) -> ExportReport:
    """Export `checkpoint` to `output` after checking it against PyTorch on `images` (uint8 N x 3 x S x S;
    `count` generated ones when None). A file that fails the check is not written."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format must be onnx or torchscript, got {fmt!r}")
    loaded = load_model(checkpoint, "cpu")
    deployed = DeployedClassifier(loaded, uint8_input).eval()
    size = loaded.decode_size
    if images is None:
        images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    if tuple(images.shape[1:]) != (3, size, size):
        raise ExportError(f"parity images must be N x 3 x {size} x {size}, got {tuple(images.shape)}")
    inputs = images if uint8_input else images.float() / 255.0
    with torch.no_grad():
        expected = deployed(inputs)
    output = Path(output)
    with tempfile.TemporaryDirectory() as scratch:  # the exporters write to a path; checked, then copied into place
        tmp = Path(scratch) / output.name
        info = metadata(loaded, uint8_input)
        (_write_onnx if fmt == "onnx" else _write_torchscript)(deployed, inputs[:2], tmp, info)
        got = (OnnxPredictor(tmp) if fmt == "onnx" else _TorchScriptRunner(tmp)).run(inputs)
        report = ExportReport(
            output,
            len(images),
            float((got - expected).abs().max()),
            bool(torch.equal(got.argmax(1), expected.argmax(1))),
            fidelity_notes(loaded),
        )
        if report.max_abs_diff > PARITY_TOLERANCE or not report.labels_identical:
            raise ExportError(
                f"the {fmt} export does not match PyTorch: max |dp| {report.max_abs_diff:.2e} "
                f"(limit {PARITY_TOLERANCE:.0e}), labels identical: {report.labels_identical}; nothing written"
            )
        atomic_write(output, tmp.read_bytes())
    return report


def parity_images(checkpoint: str | Path, data_dir: str | Path | None = None) -> tuple[torch.Tensor | None, str]:
    """The images to check an export on, and what they are: the validation split of `data_dir` (default:
    the checkpoint's data folder), or None (generated images) when that default folder is not there."""
    config = Config.from_dict(read_checkpoint(checkpoint)["config"])
    folder = data_dir or config.data.data_dir
    try:
        images, source = held_out_of(config, folder)
    except DataLayoutError:
        if data_dir:
            raise
        return None, f"generated images (no data folder at {folder})"
    return images.images[:], f"validation images of {source}"  # one tensor (rows of the cache are gathered)


def _write_onnx(deployed: nn.Module, example: torch.Tensor, path: Path, info: dict[str, str]) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        deployed,
        (example,),
        dynamo=True,
        input_names=["images"],
        output_names=["probabilities"],
        dynamic_shapes={"images": {0: batch}},
    )
    assert program is not None  # dynamo=True returns the program
    program.save(str(path))
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, info)
    onnx.save(model, str(path))


def _write_torchscript(deployed: nn.Module, example: torch.Tensor, path: Path, info: dict[str, str]) -> None:
    with warnings.catch_warnings():  # the image size is fixed by design: the traced size checks are meant
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(deployed, example)
    torch.jit.save(traced, str(path), _extra_files={"metadata.json": json.dumps(info)})


class _TorchScriptRunner:
    def __init__(self, path: str | Path):
        self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(images)
