import pytest
import torch

from classifier_lib.config import ModelConfig
from classifier_lib.model import ResNet, count_parameters, flops_per_image, summary


@pytest.mark.parametrize("size", [32, 64, 97, 160])
def test_any_input_size_from_32_px(size):
    model = ResNet(5).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 5)


def test_default_widths_and_residual_structure():
    model = ResNet(3)
    assert [stage[0].body[0].out_channels for stage in model.stages] == [32, 64, 128, 256]
    assert all(hasattr(block, "shortcut") for stage in model.stages for block in stage)


def test_dropout_after_the_two_deepest_stages_and_in_the_head():
    model = ResNet(3, ModelConfig(block_dropout=0.1, head_dropout=0.2))
    with_dropout = [isinstance(stage[-1].dropout, torch.nn.Dropout2d) for stage in model.stages]
    assert with_dropout == [False, False, True, True]
    assert isinstance(model.head[2], torch.nn.Dropout) and model.head[2].p == 0.2


def test_parameter_and_flop_counts():
    small, large = ResNet(3, ModelConfig(widths=(8, 16), blocks=(1, 1))), ResNet(3)
    assert 0 < count_parameters(small) < count_parameters(large)
    assert flops_per_image(large, 64) * 4 == pytest.approx(flops_per_image(large, 128), rel=0.02)
    assert "M parameters" in summary(large, 96) and "GFLOPs" in summary(large, 96)


def test_mismatched_config_is_a_clear_error():
    with pytest.raises(ValueError, match="differ in length"):
        ResNet(3, ModelConfig(widths=(8, 16), blocks=(1,)))
