"""Ensembles: several checkpoints (seeds, recipes) in one self-describing file whose model averages the
members' class probabilities.

    python -m classifier_lib ensemble runs/version_3/checkpoints/last.pt runs/version_4/checkpoints/last.pt -o ensemble.pt

The file is an ordinary checkpoint to everything that reads one (`evaluate`, `predict`, `submit`,
`export`, the notebooks and the image tester): `checkpoint.load_model` builds an `EnsembleModel`,
which takes the images normalised as the first member was and returns the log of the mean of the
members' probabilities, so a softmax of its output is that mean. The members must know the same
classes and decode and test images alike (sizes, TTA); `make_ensemble` refuses them otherwise.
"""

from __future__ import annotations

from pathlib import Path

from classifier_lib.data.folders import DataLayoutError, find_splits
from classifier_lib.inference.checkpoint import CheckpointError, decode_size_of, read_checkpoint, save_checkpoint

INFERENCE_KEYS = ("model", "class_names", "mean", "std", "decode_size", "image_size", "eval_size", "config", "epoch")


def make_ensemble(checkpoints: list[str | Path], output: str | Path) -> Path:
    """Write one file holding every member's inference state; refuses members that do not match.

    Every member must be a single model that knows the same classes and decodes and tests images alike
    (decode size, test size, flip and multi-size TTA). When a member trained on validation images
    (`train_on_all`, or another held-out split of Train than the others) the file says so, and every
    evaluation of it carries that caveat."""
    if len(checkpoints) < 2:
        raise CheckpointError("an ensemble needs at least two checkpoints")
    states = [read_checkpoint(path) for path in checkpoints]
    first, first_path = states[0], checkpoints[0]
    for path, state in zip(checkpoints, states):
        if "members" in state:
            raise CheckpointError(f"{path} is an ensemble already: give its member checkpoints")
    for path, state in zip(checkpoints[1:], states[1:]):
        for key, what in MUST_MATCH.items():
            if _setting(state, key) != _setting(first, key):
                raise CheckpointError(
                    f"{path} and {first_path} differ in {what} ({_setting(state, key)} against "
                    f"{_setting(first, key)}): ensemble members must share it"
                )
    members = [{key: state[key] for key in INFERENCE_KEYS if key in state} for state in states]
    summary = {key: first[key] for key in INFERENCE_KEYS if key in first and key != "model"}
    leak = validation_leak(checkpoints, states)
    if leak:
        summary["config"] = _with_train_on_all(first["config"])  # every reader then treats Valid as seen
    save_checkpoint(
        output,
        summary
        | {
            "members": members,
            "ensemble_of": [str(path) for path in checkpoints],
            "selected_on_valid": any(s.get("selected_on_valid") for s in states),
            "valid_trained_on": leak,
        },
    )
    return Path(output)


# what every member must share, as (checkpoint key or config path) -> what it is in words
MUST_MATCH = {
    "class_names": "classes",
    "decode_size": "decode size",
    "eval_size": "test size",
    "data.flip_tta": "flip TTA",
    "data.mirror": "mirroring",
    "data.tta_sizes": "multi-size TTA",
}


def _setting(state: dict, key: str):
    if "." in key:
        section, name = key.split(".")
        return state["config"][section][name]
    if key == "decode_size":
        return decode_size_of(state)
    return list(state[key]) if isinstance(state.get(key), (list, tuple)) else state.get(key)


def validation_leak(checkpoints: list, states: list[dict]) -> str:
    """Why the members' validation images are not unseen by the ensemble, in words ("" when they are)."""
    for path, state in zip(checkpoints, states):
        if state["config"]["data"]["train_on_all"] or state.get("valid_trained_on"):
            return f"member {path} was trained on the validation images (train_on_all)"
    held_out = {_held_out_identity(state) for state in states}
    if len(held_out) > 1:
        return (
            "the members validated on different images (a held-out part of Train chosen by other seeds or data): "
            "each member trained on validation images of the others"
        )
    return ""


def _held_out_identity(state: dict) -> tuple:
    """Which validation images a checkpoint held out: their digest, or for older checkpoints the settings
    that choose them (data folder, seed, fraction)."""
    split = state.get("data_split") or {}
    if split.get("valid_digest"):
        return ("digest", split["valid_digest"])
    config = state["config"]
    data_dir = str(Path(config["data"]["data_dir"]).resolve())
    try:
        if find_splits(data_dir).valid is not None:
            return ("valid folder", data_dir)
    except DataLayoutError:
        pass
    return ("settings", data_dir, config["system"]["seed"], config["data"]["val_fraction"])


def _with_train_on_all(config: dict) -> dict:
    return config | {"data": config["data"] | {"train_on_all": True}}
