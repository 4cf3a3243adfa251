"""Self-describing checkpoints: weights plus everything inference needs, loadable with weights_only=True.

A checkpoint holds the model weights, the class names, the normalisation, the image size, the whole
run config (model config included) and the library version; training checkpoints also hold the
optimizer, scheduler and gradient-scaler states and the epoch, so training can resume from them.
Files are written atomically: a temporary file in the same folder, then a rename.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .config import Config
from .model import ResNet

FORMAT = "classifier_lib.checkpoint/1"


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint; the message says why."""


@dataclass
class LoadedModel:
    model: nn.Module  # a ResNet, or an EnsembleModel of several
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int  # images are decoded to this size (the single preprocessing path)...
    eval_size: int  # ...then resized to this one, the model's test-time input
    config: Config
    checkpoint: dict[str, Any]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` atomically; on failure the previous file at `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, "library_version": __version__, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint's dict safely (weights_only=True), turning every failure into CheckpointError."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give a checkpoint file in it, e.g. {path / 'last.pt'}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} was refused by safe loading (weights_only=True): it holds pickled code or objects "
            f"that are not plain tensors and containers, so it was not written by classifier_lib ({_first_line(error)})"
        ) from None
    except Exception as error:  # torch.load fails in many ways on arbitrary bytes; all mean "not readable"
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupted?): {_first_line(error)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a classifier_lib checkpoint (no '{FORMAT}' marker)")
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model described by a checkpoint, in eval mode, on `device`."""
    state = read_checkpoint(path, map_location=device)
    config = Config.from_dict(state["config"])
    if "eval_size" not in state:  # written before test sizes existed: it tested at its training size
        config.data.eval_size = int(state["image_size"])
    classes = len(state["class_names"])
    if "members" in state:  # an ensemble file (ensemble.py)
        from .ensemble import EnsembleModel

        members = [_resnet(member["model"], Config.from_dict(member["config"]), classes, path)
                   for member in state["members"]]
        model = EnsembleModel(members, [m["mean"] for m in state["members"]], [m["std"] for m in state["members"]])
    else:
        model = _resnet(state["model"], config, classes, path)
    model.to(device).eval()
    image_size = int(state["image_size"])
    return LoadedModel(
        model, list(state["class_names"]), tuple(state["mean"]), tuple(state["std"]), image_size,
        int(state.get("eval_size", image_size)), config, state,
    )


def _resnet(weights: dict, config: Config, classes: int, path) -> ResNet:
    model = ResNet(classes, config.model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes: {_first_line(error)}") from None
    return model


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
