"""A residual CNN written with torch.nn only (no pretrained weights, no model zoo)."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from classifier_lib.config import ConfigError, ModelConfig
from classifier_lib.model.modes import evaluating


class Blur(nn.Module):
    """A fixed 3x3 binomial low-pass filter on every channel (stride 1, edges reflected): run before a
    strided convolution, the subsampled result no longer aliases (Zhang, "Making convolutional networks
    shift-invariant again", 2019; the blur commutes with the convolution, which is linear)."""

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps) / 16
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = cast(torch.Tensor, self.kernel).to(x.dtype)
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        if x.is_contiguous(memory_format=torch.channels_last):  # the padding drops it: CPU convolutions are then far slower
            padded = padded.contiguous(memory_format=torch.channels_last)
        return F.conv2d(padded, kernel, groups=x.shape[1])


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with a skip connection (1x1 projection when the shape changes). With
    `antialias`, a stride-2 block blurs before its strided convolution and average-pools before its
    projection (ResNet-D's shortcut) instead of skipping three pixels in four."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0, antialias: bool = False):
        super().__init__()
        last_norm = nn.BatchNorm2d(out_channels)
        nn.init.zeros_(last_norm.weight)  # each block starts as the identity: trains faster
        blur = antialias and stride > 1
        self.blur: nn.Module = Blur(in_channels) if blur else nn.Identity()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            last_norm,
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            pool = [nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False)] if blur else []
            projection = nn.Conv2d(in_channels, out_channels, 1, 1 if blur else stride, bias=False)
            self.shortcut = nn.Sequential(*pool, projection, nn.BatchNorm2d(out_channels))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.relu(self.body(self.blur(x)) + self.shortcut(x)))


class ResNet(nn.Module):
    """Stem, then one stage per width (the first block of every stage after the first halves the
    resolution), global average pooling and a dropout + linear head. Works for inputs of 32 px and up."""

    def __init__(self, num_classes: int, config: ModelConfig | None = None):
        super().__init__()
        config = config or ModelConfig()
        if len(config.widths) != len(config.blocks):
            raise ConfigError(f"model widths {config.widths} and blocks {config.blocks} differ in length")
        self.config = config
        widths = config.widths
        stride = config.stem_stride
        # Up to stride 2 a 3x3 kernel; beyond, a patchify kernel as large as the stride, so no pixel is skipped.
        kernel = 3 if stride <= 2 else stride
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], kernel, stride, kernel // 2 if kernel == 3 else 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, in_channels = [], widths[0]
        deep_from = max(0, len(widths) - 2)  # Dropout2d in the two deepest stages
        for index, (width, depth) in enumerate(zip(widths, config.blocks)):
            dropout = config.block_dropout if index >= deep_from else 0.0
            blocks = [ResidualBlock(in_channels, width, 1 if index == 0 else 2, dropout, config.antialias)]
            blocks += [ResidualBlock(width, width, 1, dropout) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(config.head_dropout), nn.Linear(in_channels, num_classes)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@torch.no_grad()
def whiten_stem(model: ResNet, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set the stem's convolution to a fixed patch-whitening filter bank, from normalised images.

    The filters are the leading eigenvectors of the covariance of the images' patches (as large as
    the stem's kernel), each divided by the square root of its eigenvalue, and their negations, so
    that the ReLU after the stem keeps both signs. The first layer then starts from decorrelated
    inputs instead of learning them: an epoch-saving trick of the fastest small-image trainers.
    """
    conv = cast(nn.Conv2d, model.stem[0])
    half = conv.out_channels // 2
    patches = F.unfold(images.float(), conv.kernel_size, stride=conv.stride)  # N x (3*k*k) x L
    patches = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    if half > patches.shape[1]:
        raise ConfigError(
            f"a whitening stem has at most {2 * patches.shape[1]} channels for "
            f"{tuple(conv.kernel_size)} patches, not {conv.out_channels}"
        )
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0)[:half], eigenvectors.flip(1)[:, :half]
    filters = (eigenvectors / (eigenvalues + eps).sqrt()).T.reshape(half, *conv.weight.shape[1:])
    conv.weight.copy_(torch.cat([filters, -filters]))
    conv.weight.requires_grad_(False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, image_size: int) -> int:
    """Forward-pass FLOPs for one image (a multiply-add counts as two), as counted by torch."""
    device = next(model.parameters()).device
    with evaluating(model), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    return counter.get_total_flops()


def summary(model: nn.Module, image_size: int) -> str:
    return (
        f"{type(model).__name__}: {count_parameters(model) / 1e6:.2f} M parameters, "
        f"{flops_per_image(model, image_size) / 1e9:.3f} GFLOPs per {image_size}x{image_size} image"
    )


@torch.no_grad()
def layer_table(model: ResNet, image_size: int) -> list[dict[str, object]]:
    """The network part by part (stem, each stage, head) for one image of `image_size`: output shape,
    parameters and forward FLOPs: what a person reads instead of the module's 150-line repr."""
    device = next(model.parameters()).device
    parts = [("stem", model.stem)] + [(f"stage {i + 1}", stage) for i, stage in enumerate(model.stages)]
    parts.append(("head", model.head))
    rows: list[dict[str, object]] = []
    total_flops = 0
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    with evaluating(model):
        for name, part in parts:
            with FlopCounterMode(display=False) as counter:
                x = part(x)
            total_flops += counter.get_total_flops()
            rows.append(
                {
                    "part": name,
                    "output": " x ".join(map(str, x.shape[1:])),
                    "parameters": count_parameters(part),
                    "MFLOPs": round(counter.get_total_flops() / 1e6, 1),
                }
            )
    rows.append({"part": "total", "output": "", "parameters": count_parameters(model), "MFLOPs": round(total_flops / 1e6, 1)})
    return rows
