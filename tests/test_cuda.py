"""The CUDA path: run only where a GPU exists (skipped elsewhere, also in CI)."""

import math

import pytest
import torch
from conftest import needs_cuda, tiny_config

from classifier_lib.data.dataset import load_data
from classifier_lib.inference.predictor import Predictor
from classifier_lib.training.engine import train
from classifier_lib.training.trainer import Trainer

pytestmark = [pytest.mark.cuda, needs_cuda]


@pytest.mark.parametrize("precision", ["auto", "fp16", "fp32"])
def test_training_on_cuda_and_predicting_on_the_cpu(tiny_data, tmp_path, precision):
    config = tiny_config(tiny_data, **{"system.device": "cuda", "train.precision": precision, "train.epochs": 3})
    result = train(config, runs_root=tmp_path)
    assert result.final_valid_acc >= 0.9
    image = next((tiny_data / "Valid" / "dog").iterdir())
    on_gpu = Predictor(result.last_checkpoint, device="cuda", precision="fp32").predict(image)
    on_cpu = Predictor(result.last_checkpoint, device="cpu", precision="fp32").predict(image)
    assert on_gpu.label == on_cpu.label == "dog"
    assert on_gpu.confidence == pytest.approx(on_cpu.confidence, abs=1e-3)


def test_auto_precision_is_bf16_where_the_gpu_supports_it(tiny_data, tmp_path):
    trainer = Trainer(
        tiny_config(tiny_data, **{"system.device": "cuda"}),
        load_data(tiny_config(tiny_data).data),
        torch.device("cuda"),
    )
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert trainer.dtype is expected and trainer.state.scaler.is_enabled() == (expected is torch.float16)


def test_fp16_overflow_skips_steps_without_advancing_schedule_or_ema(tiny_data, tmp_path):
    config = tiny_config(
        tiny_data, **{"system.device": "cuda", "train.precision": "fp16", "train.ema_decay": 0.9, "data.batch_size": 2}
    )  # 18 steps
    trainer = Trainer(config, load_data(config.data), torch.device("cuda"))
    trainer.state.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**24)  # fp16 gradients overflow until it halves
    row = trainer.train_epoch()
    stepped = trainer.state.scheduler.last_epoch
    assert 0 < stepped < trainer.state.steps_per_epoch  # some steps were skipped, and only those
    assert trainer.state.ema.updates == stepped
    assert math.isfinite(row["train_loss"])  # skipped steps are not counted


def test_a_data_set_that_fits_lives_on_the_gpu_and_trains_there(tiny_data, tmp_path):
    config = tiny_config(tiny_data, **{"system.device": "cuda"})
    trainer = Trainer(config, load_data(config.data), torch.device("cuda"))
    assert trainer.data.train.images.is_cuda and trainer.data.valid.images.is_cuda
    assert math.isfinite(trainer.train_epoch()["train_loss"])
    assert 0 <= trainer.validate()["valid_acc"] <= 1
