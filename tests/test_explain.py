"""explain.py on its own: forward hooks record the named layers, Grad-CAM points at the evidence."""

import pytest
import torch

from classifier_lib.config import ModelConfig
from classifier_lib.model.explain import conv_layers, grad_cam, record_activations, top_filters
from classifier_lib.model.resnet import ResNet


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ResNet(3, ModelConfig(widths=(8, 16), blocks=(1, 2))).eval()


def test_layers_are_the_stem_and_every_block(model):
    assert list(conv_layers(model)) == ["stem", "stage1.block1", "stage2.block1", "stage2.block2"]


def test_activations_are_recorded_inside_the_block_only(model):
    inputs = torch.randn(2, 3, 32, 32)
    with record_activations(model, ["stem", "stage2.block2"]) as activations, torch.no_grad():
        model(inputs)
    assert activations["stem"].shape == (2, 8, 16, 16) and activations["stage2.block2"].shape == (2, 16, 8, 8)
    activations.clear()
    with torch.no_grad():
        model(inputs)
    assert activations == {}  # the hooks are gone after the block
    with pytest.raises(ValueError, match="unknown layers"):
        with record_activations(model, ["stage9.block1"]):
            pass


def test_top_filters_are_the_most_active_channels():
    activation = torch.zeros(5, 4, 4)
    activation[3] = 2.0
    activation[1] = 1.0
    assert top_filters(activation, k=2).tolist() == [3, 1]


def test_grad_cam_highlights_where_the_class_evidence_is():
    """A model whose class-0 score is the brightness of the top-left quarter: the heat lies there."""
    model = ResNet(2, ModelConfig(widths=(4, 4), blocks=(1, 1), stem_stride=1)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.zero_()
        model.stem[0].weight[:, :, 1, 1] = 1.0  # the stem passes brightness through...
        model.stages[1][0].shortcut[0].weight[:, :, 0, 0] = torch.eye(4)  # ...and so do the shortcuts
        model.head[-1].weight.zero_()
        model.head[-1].weight[0] = 1.0
        model.head[-1].bias.zero_()
    inputs = torch.zeros(1, 3, 32, 32)
    inputs[:, :, :16, :16] = 1.0
    heatmap, target = grad_cam(model, inputs, target=0)
    assert target == 0 and heatmap.shape == (32, 32)
    assert 0.0 <= heatmap.min() and heatmap.max() == pytest.approx(1.0)
    assert heatmap[:16, :16].mean() > 2 * heatmap[16:, 16:].mean()
    assert not model.training
