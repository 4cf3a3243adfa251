import pytest
import torch

from classifier_lib.config import ConfigError, ModelConfig
from classifier_lib.model.resnet import ResNet, count_parameters, flops_per_image, summary, whiten_stem


@pytest.mark.parametrize("size", [32, 64, 97, 160])
def test_any_input_size_from_32_px(size):
    model = ResNet(5).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 5)


def test_default_widths_and_residual_structure():
    model = ResNet(3)
    assert [stage[0].body[0].out_channels for stage in model.stages] == [32, 64, 128, 256]
    for index, stage in enumerate(model.stages):
        first, rest = stage[0], list(stage)[1:]
        if index == 0:  # same width and resolution: the identity shortcut
            assert isinstance(first.shortcut, torch.nn.Identity)
        else:  # a strided 1x1 projection where the stage halves the resolution and widens
            conv = first.shortcut[0]
            assert isinstance(conv, torch.nn.Conv2d) and conv.stride == (2, 2) and conv.kernel_size == (1, 1)
        assert all(isinstance(block.shortcut, torch.nn.Identity) for block in rest)
    block = model.stages[1][0].eval()
    x = torch.randn(1, 32, 16, 16)
    with torch.no_grad():  # the residual really is added: output = relu(body(x) + shortcut(x))
        assert torch.allclose(block(x), torch.relu(block.body(x) + block.shortcut(x)))


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
    with pytest.raises(ConfigError, match="differ in length"):
        ResNet(3, ModelConfig(widths=(8, 16), blocks=(1,)))


def test_default_config_is_not_shared_between_models():
    first, second = ResNet(3), ResNet(3)
    assert first.config == second.config and first.config is not second.config


def test_a_stem_stride_of_4_patchifies_without_skipping_pixels():
    model = ResNet(3, ModelConfig(stem_stride=4)).eval()
    conv = model.stem[0]
    assert conv.kernel_size == (4, 4) and conv.stride == (4, 4)
    assert model.stem(torch.randn(1, 3, 128, 128)).shape[-1] == 32
    assert flops_per_image(model, 128) == pytest.approx(flops_per_image(ResNet(3), 64), rel=0.05)


def test_whitening_stem_decorrelates_image_patches():
    torch.manual_seed(0)
    # correlated "images": smooth noise, so neighbouring pixels and channels covary strongly
    images = torch.nn.functional.interpolate(torch.randn(64, 3, 8, 8), size=32, mode="bilinear")
    images = images + 0.5 * images.mean(1, keepdim=True)
    model = ResNet(3, ModelConfig(whiten_stem=True))
    whiten_stem(model, images, eps=0.0)
    conv = model.stem[0]
    assert not conv.weight.requires_grad
    half = conv.out_channels // 2
    assert torch.allclose(conv.weight[half:], -conv.weight[:half])  # each filter beside its negation
    patches = torch.nn.functional.unfold(images, 3, stride=2).transpose(1, 2).reshape(-1, 27)
    responses = patches @ conv.weight[:half].reshape(half, -1).T
    covariance = responses.T @ responses / len(responses)
    assert torch.allclose(covariance, torch.eye(half), atol=1e-3)  # unit variance, uncorrelated
    before = patches.T @ patches / len(patches)
    assert (before - torch.diag(before.diagonal())).abs().max() > 0.1  # the input patches were correlated


def test_whitening_stem_needs_enough_patch_dimensions():
    model = ResNet(3, ModelConfig(widths=(64, 128), blocks=(1, 1), whiten_stem=True))
    with pytest.raises(ConfigError, match="at most 54 channels"):
        whiten_stem(model, torch.randn(2, 3, 16, 16))


def test_antialiased_downsampling_low_passes_before_every_stride():
    model = ResNet(3, ModelConfig(antialias=True)).eval()
    checkerboard = (torch.arange(16).view(1, -1) + torch.arange(16).view(-1, 1)) % 2 * 2.0 - 1  # the highest frequency
    images = checkerboard.expand(1, 32, 16, 16).contiguous(memory_format=torch.channels_last)
    block = model.stages[1][0]
    with torch.no_grad():
        blurred = block.blur(images)
        # a strided convolution alone folds the checkerboard into a constant; blurred first, nothing of it is left
        assert images[..., ::2, ::2].abs().min() == 1 and blurred.abs().max() < 1e-6
        assert block.blur(torch.ones(1, 32, 16, 16)).allclose(torch.ones(1, 32, 16, 16))  # flat areas pass unchanged
        assert block.shortcut(images).shape == block.body(blurred).shape == (1, 64, 8, 8)
        assert isinstance(block.shortcut[0], torch.nn.AvgPool2d) and block.shortcut[1].stride == (1, 1)
    assert blurred.is_contiguous(memory_format=torch.channels_last)  # kept, or CPU convolutions slow down
    assert model(torch.randn(2, 3, 97, 97)).shape == (2, 3)
    # off by default, and then the same modules under the same names as before: older checkpoints still load
    keys = ResNet(3).state_dict().keys()
    assert "stages.1.0.shortcut.0.weight" in keys and not any("blur" in key for key in keys)
    assert len(keys) == len(model.state_dict())  # the blur's kernel is a fixed buffer, not saved
