"""Ensembles: several checkpoints (seeds, recipes) in one self-describing file whose model averages the
members' class probabilities.

    python -m classifier_lib ensemble runs/version_3/checkpoints/last.pt runs/version_4/checkpoints/last.pt -o ensemble.pt

The file is an ordinary checkpoint to everything that reads one (`evaluate`, `predict`, `submit`,
`export`, the notebooks and the image tester): `checkpoint.load_model` builds an `EnsembleModel`,
which takes the images normalised as the first member was and returns the log of the mean of the
members' probabilities, so a softmax of its output is that mean. The members must know the same
classes and decode images at the same size; their test sizes and TTA are the first member's.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint

INFERENCE_KEYS = ("model", "class_names", "mean", "std", "image_size", "eval_size", "config", "epoch")


class EnsembleModel(nn.Module):
    """Members' probabilities, averaged; each member sees the input in its own normalisation."""

    def __init__(self, members: list[nn.Module], means: list, stds: list):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("means", torch.tensor(means, dtype=torch.float32))  # members x 3
        self.register_buffer("stds", torch.tensor(stds, dtype=torch.float32))

    @property
    def stem(self) -> nn.Module:  # what the activation notebook and Grad-CAM look at: the first member's
        return self.members[0].stem

    @property
    def stages(self) -> nn.ModuleList:
        return self.members[0].stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means, stds = self.means[:, :, None, None], self.stds[:, :, None, None]
        pixels = x * stds[0] + means[0]  # the input is normalised as for the first member
        probabilities = [member((pixels - mean) / std).float().softmax(dim=1)
                         for member, mean, std in zip(self.members, means, stds)]
        return torch.stack(probabilities).mean(dim=0).clamp_min(1e-12).log()


def make_ensemble(checkpoints: list[str | Path], output: str | Path) -> Path:
    """Write one file holding every member's inference state; refuses members that do not match."""
    if len(checkpoints) < 2:
        raise CheckpointError("an ensemble needs at least two checkpoints")
    states = [read_checkpoint(path) for path in checkpoints]
    first = states[0]
    for path, state in zip(checkpoints[1:], states[1:]):
        if "members" in state:
            raise CheckpointError(f"{path} is an ensemble already: give its member checkpoints")
        if list(state["class_names"]) != list(first["class_names"]):
            raise CheckpointError(f"{path} knows classes {state['class_names']}, {checkpoints[0]} {first['class_names']}")
        if int(state["image_size"]) != int(first["image_size"]):
            raise CheckpointError(f"{path} decodes images at {state['image_size']} px, {checkpoints[0]} at "
                                  f"{first['image_size']} px: ensemble members must share the decode size")
    members = [{key: state[key] for key in INFERENCE_KEYS if key in state} for state in states]
    summary = {key: first[key] for key in INFERENCE_KEYS if key in first and key != "model"}
    save_checkpoint(output, summary | {"members": members, "ensemble_of": [str(path) for path in checkpoints],
                                       "selected_on_valid": any(s.get("selected_on_valid") for s in states)})
    return Path(output)
