"""Validating a model during training: loss and accuracy on the validation split at the test size, with
the test-time augmentation that `evaluate` and `predict` use, after recomputing BatchNorm statistics
at the end of the run when asked (`train.recalibrate_bn`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import multiclass_accuracy

from classifier_lib.config import Config
from classifier_lib.data.dataset import DataBundle
from classifier_lib.inference.predict import predict_logits, recalibrate_bn
from classifier_lib.report.metrics import balanced_accuracy


@torch.no_grad()
def validate(
    model: nn.Module, data: DataBundle, config: Config, device: torch.device, dtype: torch.dtype | None, final: bool = False
) -> tuple[dict[str, float], torch.Tensor]:
    """({valid_loss, valid_acc, valid_balanced_acc}, the logits of every validation image, for the epoch's
    figures)."""
    settings = config.data
    if final and config.train.recalibrate_bn:
        recalibrate_bn(model, data.train.images, data.mean, data.std, settings.effective_eval_size, device, dtype)
    logits = predict_logits(
        model,
        data.valid.images,
        data.mean,
        data.std,
        size=settings.tta_size_list,
        device=device,
        dtype=dtype,
        flip=settings.mirror_tta,
    )
    labels = data.valid.labels
    accuracy = multiclass_accuracy(logits, labels, len(data.class_names), average="micro")
    metrics = {
        "valid_loss": F.cross_entropy(logits, labels).item(),
        "valid_acc": accuracy.item(),
        "valid_balanced_acc": balanced_accuracy(logits.argmax(dim=1).numpy(), labels.numpy()),
    }
    return metrics, logits
