"""Self-describing checkpoints: weights plus everything inference needs, loadable with weights_only=True.

A checkpoint holds the model weights, the class names, the normalisation, the decode size, the whole
run config (model config included) and the library version; training checkpoints also hold the
optimizer, scheduler and gradient-scaler states and the epoch, so training can resume from them.
Files are written atomically (`fileio.atomic_write`).
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from classifier_lib import __version__
from classifier_lib.config import Config
from classifier_lib.data.dataset import CachedImages, load_held_out
from classifier_lib.model.ensemble import EnsembleModel
from classifier_lib.model.resnet import ResNet
from classifier_lib.utils.fileio import atomic_write

FORMAT = "classifier_lib.checkpoint/1"


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint; the message says why."""


@dataclass
class LoadedModel:
    model: ResNet | EnsembleModel  # an EnsembleModel averages several
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    decode_size: int  # images are decoded to this size (the single preprocessing path)...
    eval_size: int  # ...then resized to this one, the model's test-time input
    config: Config
    checkpoint: dict[str, Any]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` atomically; on failure the previous file at `path` is left as it was."""
    atomic_write(path, lambda handle: torch.save({"format": FORMAT, "library_version": __version__, **state}, handle))


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
    check_class_names(state.get("class_names"), path)
    return state


def check_class_names(names, source) -> list[str]:
    """Class names become folder names (pseudo-labels) and CSV cells: refuse any that could not be one
    folder of a data set: not a list of unique, non-empty names without path separators, or `.`/`..`."""
    if not isinstance(names, (list, tuple)) or len(names) < 2 or not all(isinstance(name, str) for name in names):
        raise CheckpointError(f"{source}: class_names must be a list of at least two names, got {names!r}")
    bad = [name for name in names if not name.strip() or name in (".", "..") or "/" in name or "\\" in name or "\0" in name]
    if bad:
        raise CheckpointError(f"{source}: class names {bad!r} cannot be folder names (empty, '.', '..' or a path)")
    if len(set(names)) != len(names):
        raise CheckpointError(f"{source}: class names are not unique: {names!r}")
    return list(names)


def decode_size_of(state: dict[str, Any]) -> int:
    """The size a checkpoint's images are decoded to (`decode_size`; `image_size` in files written before
    the name said what it holds)."""
    return int(state["decode_size"] if "decode_size" in state else state["image_size"])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model described by a checkpoint, in eval mode, on `device`."""
    state = read_checkpoint(path, map_location=device)
    config = Config.from_dict(state["config"])
    decode_size = decode_size_of(state)
    if "eval_size" not in state:  # written before test sizes existed: it tested at its training size
        config.data.eval_size = decode_size
    classes = len(state["class_names"])
    model: ResNet | EnsembleModel
    if "members" in state:  # an ensemble file (inference/ensembles.py)
        members = [_resnet(member["model"], Config.from_dict(member["config"]), classes, path) for member in state["members"]]
        model = EnsembleModel(members, [m["mean"] for m in state["members"]], [m["std"] for m in state["members"]])
    else:
        model = _resnet(state["model"], config, classes, path)
    model.to(device).eval()
    return LoadedModel(
        model,
        list(state["class_names"]),
        tuple(state["mean"]),
        tuple(state["std"]),
        decode_size,
        int(state.get("eval_size", decode_size)),
        config,
        state,
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


def held_out_of(config: Config, data_dir: str | Path | None = None, split: str = "valid") -> tuple[CachedImages, str]:
    """The one place a checkpoint's held-out split is rebuilt: the whole `valid` (or `train`) split of the
    run whose config this is, from its data folder or `data_dir`, with its seed (no `data.subset`), and
    which images those are, in words."""
    data = dataclasses.replace(config.data, data_dir=str(data_dir or config.data.data_dir), subset=1.0)
    return load_held_out(data, config.system.seed, split)
