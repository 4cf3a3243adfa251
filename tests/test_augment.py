import pytest
import torch

from classifier_lib.config import Config, ConfigError, DataConfig, ModelConfig
from classifier_lib.data.augment import ERASE_VALUE, BatchAugment, normalize
from classifier_lib.inference.predict import predict_logits
from classifier_lib.model.resnet import ResNet

# the random affine, colour jitter and equalisation switched off: what remains is the option under test
NO_CHANGE = dict(
    zoom=(1.0, 1.0), aspect=0.0, rotate_degrees=0.0, shift=0.0, brightness=0.0, contrast=0.0, saturation=0.0, equalize_p=0.0
)


def test_batch_augment_is_seeded_per_sample_and_in_range():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    augment = BatchAugment()
    first = augment(images, torch.Generator().manual_seed(0))
    again = augment(images, torch.Generator().manual_seed(0))
    other = augment(images, torch.Generator().manual_seed(1))
    assert first.shape == (16, 3, 32, 32) and first.dtype == torch.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    assert torch.equal(first, again) and not torch.equal(first, other)
    # every sample gets its own transform: two copies of one image come out different
    twins = augment(images[:1].repeat(2, 1, 1, 1), torch.Generator().manual_seed(0))
    assert not torch.equal(twins[0], twins[1])


def test_identity_settings_change_nothing():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    augment = BatchAugment(
        zoom=(1.0, 1.0), aspect=0.0, rotate_degrees=0.0, shift=0.0, brightness=0.0, contrast=0.0, saturation=0.0, equalize_p=0.0
    )
    out = augment(images, torch.Generator().manual_seed(0))
    flipped = images.float().flip(dims=[3]) / 255
    for original, result, mirrored in zip(images.float() / 255, out, flipped):
        assert torch.allclose(result, original, atol=1e-5) or torch.allclose(result, mirrored, atol=1e-5)


def test_mirror_off_never_flips_in_training_or_at_test_time():
    """data.mirror false (traffic signs, text: left and right are different classes): no training image is
    mirrored, and flip TTA is off whatever flip_tta says."""
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    unmirrored = BatchAugment(**NO_CHANGE, mirror=False)(images, torch.Generator().manual_seed(0))
    assert torch.allclose(unmirrored, images.float() / 255, atol=1e-5)
    mirrored = BatchAugment(**NO_CHANGE)(images, torch.Generator().manual_seed(0))
    assert not torch.allclose(mirrored, images.float() / 255, atol=1e-5)
    assert DataConfig().mirror_tta and not DataConfig(mirror=False).mirror_tta and not DataConfig(flip_tta=False).mirror_tta


def test_normalize_uses_mean_and_std():
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(images, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert out[0, :, 0, 0].tolist() == [2.0, 1.0, 0.5]


def test_flip_tta_averages_the_image_and_its_mirror():
    model = ResNet(3).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    plain = predict_logits(model, images, (0.5,) * 3, (0.25,) * 3)
    mirrored = predict_logits(model, images.flip(dims=[3]), (0.5,) * 3, (0.25,) * 3)
    both = predict_logits(model, images, (0.5,) * 3, (0.25,) * 3, flip=True)
    assert torch.allclose(both, (plain + mirrored) / 2, atol=1e-5)


def test_tta_over_sizes_averages_the_logits_of_each_size():
    torch.manual_seed(0)
    model = ResNet(3, ModelConfig(widths=(8, 16), blocks=(1, 1))).eval()
    images = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    stats = ((0.5,) * 3, (0.25,) * 3)
    each = [predict_logits(model, images, *stats, size, flip=True) for size in (32, 48)]
    assert torch.allclose(predict_logits(model, images, *stats, [32, 48], flip=True), (each[0] + each[1]) / 2, atol=1e-5)


def test_tta_sizes_are_on_the_stride_grid_and_decoded_large_enough():
    data = DataConfig(image_size=64, eval_size=80, tta_sizes=3)
    assert data.tta_size_list == [64, 80, 96] and data.decode_size == 96
    assert DataConfig(image_size=64, eval_size=64).tta_size_list == [64]


def seeded_twice(augment: BatchAugment, images: torch.Tensor) -> torch.Tensor:
    """The batch augmented with seed 0, checked to be the same the second time and to leave the global
    random state alone (torchvision's transforms draw from it)."""
    global_state = torch.random.get_rng_state()
    first = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), global_state)
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(0)))
    return first


def test_grey_and_blur_touch_only_the_chosen_images():
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    grey = BatchAugment(**NO_CHANGE, grey_p=0.5)(images, torch.Generator().manual_seed(0))
    is_grey = [bool((image[0] == image[1]).all() and (image[1] == image[2]).all()) for image in grey]
    assert 10 < sum(is_grey) < 54  # about half
    always = BatchAugment(**NO_CHANGE, blur_p=1.0)(images, torch.Generator().manual_seed(0))
    plain = BatchAugment(**NO_CHANGE)(images, torch.Generator().manual_seed(0))
    assert always.std() < plain.std()  # blurred noise is smoother


@pytest.mark.parametrize("share", ["trivial_p", "randaugment_p", "augmix_p"])
def test_an_augmentation_policy_changes_the_chosen_images_reproducibly_and_leaves_the_global_generator_alone(share):
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    augment = BatchAugment(**NO_CHANGE, **{share: 0.5}, mirror=False)
    first = seeded_twice(augment, images)
    changed = sum(not torch.allclose(out, image.float() / 255, atol=1e-5) for out, image in zip(first, images))
    assert 10 < changed < 54  # about half (an "identity" operation leaves some unchanged)
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(1)))


def test_random_erasing_greys_one_rectangle_in_a_share_of_the_images_reproducibly():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    first = seeded_twice(BatchAugment(**NO_CHANGE, erase_p=0.5, mirror=False), images)
    erased = (first == ERASE_VALUE).all(dim=1)  # pixels grey in every channel (noise is almost never exactly that)
    shares = erased.float().mean(dim=(1, 2))
    assert 10 < int((shares > 0).sum()) < 54  # about half the images
    assert shares.max() <= 0.34 and shares[shares > 0].min() >= 0.02  # one rectangle of 2-33 % of the image
    rows, cols = erased[int(shares.argmax())].nonzero().unbind(1)
    assert int(erased[int(shares.argmax())].sum()) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


@pytest.mark.parametrize("share", ["grey_p", "blur_p", "trivial_p", "randaugment_p", "augmix_p", "erase_p"])
def test_an_augmentation_share_outside_0_to_1_is_refused(share):
    Config().override({f"data.{share}": 1.0}).validate()
    with pytest.raises(ConfigError, match=f"data.{share} must be in \\[0, 1\\], got 1.5"):
        Config().override({f"data.{share}": 1.5}).validate()
