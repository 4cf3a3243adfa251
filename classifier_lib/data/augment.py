"""Batched augmentation and normalisation on tensors, run on the training device.

Augmenting a whole uint8 batch at once (one `grid_sample` for every sample's random affine)
replaces the per-image PIL transforms of DataLoader workers, which on a 2-core machine would
compete with the model for the same cores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from classifier_lib.config import SIZE_STEP, Config, DataConfig

PROGRESSIVE_END = 0.75  # progressive resizing reaches the full image size at 75 % of the epochs
POLICY_GROUP = 8  # torchvision's augmentation policies draw their operations once per call: one call per this many images
ERASE_VALUE = 0.5  # RandomErasing fills its rectangle with mid-grey, about the images' mean


def normalize(images: torch.Tensor, mean, std, channels_last: bool = False) -> torch.Tensor:
    """uint8 (or [0, 1] float) N x 3 x H x W batch to the normalised float32 the model expects."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    images = (images - mean) / std
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """A float [0, 1] (or uint8) square batch resized to `size` x `size` (bilinear, antialiased when
    shrinking); unchanged when it already has that size or `size` is None."""
    if size is None or images.shape[-1] == size and images.shape[-2] == size:
        return images
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


def model_input(images: torch.Tensor, size: int | None, mean, std, channels_last: bool = False) -> torch.Tensor:
    """Decoded uint8 images to what the model sees at test time: resized to `size`, then normalised."""
    return normalize(resize(images, size), mean, std, channels_last)


class BatchAugment:
    """Per-sample random affine (zoom, aspect, rotation, shift, horizontal flip unless `mirror` is off), colour jitter
    and histogram equalisation, applied to a whole uint8 batch; returns floats in [0, 1]. Optionally, for photos
    unlike the training set's: torchvision's TrivialAugmentWide, RandAugment and AugMix, each on its share
    (`trivial_p`, `randaugment_p`, `augmix_p`), greyscale, blur, and torchvision's RandomErasing (one grey
    rectangle, 2-33 % of the image) on an `erase_p` share.

    Randomness comes from `generator`, so a seeded epoch sees the same augmentations every time.
    """

    def __init__(
        self,
        zoom: tuple[float, float] = (1.0, 1.6),
        aspect: float = 0.2,
        rotate_degrees: float = 15.0,
        shift: float = 0.1,
        brightness: float = 0.3,
        contrast: float = 0.3,
        saturation: float = 0.3,
        equalize_p: float = 0.1,
        grey_p: float = 0.0,
        blur_p: float = 0.0,
        trivial_p: float = 0.0,
        randaugment_p: float = 0.0,
        augmix_p: float = 0.0,
        erase_p: float = 0.0,
        mirror: bool = True,
    ):
        self.zoom, self.aspect, self.rotate, self.shift = zoom, aspect, math.radians(rotate_degrees), shift
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.equalize_p, self.grey_p, self.blur_p = equalize_p, grey_p, blur_p
        policies = ((trivial_p, v2.TrivialAugmentWide()), (randaugment_p, v2.RandAugment()), (augmix_p, v2.AugMix()))
        self.policies = [(share, policy) for share, policy in policies if share > 0]
        self.erase_p, self.erase = erase_p, v2.RandomErasing(p=1.0, value=ERASE_VALUE)
        self.mirror = mirror

    @classmethod
    def from_config(cls, data: DataConfig) -> BatchAugment:
        return cls(
            zoom=(1.0, data.zoom),
            rotate_degrees=data.rotate,
            brightness=data.jitter,
            contrast=data.jitter,
            saturation=data.jitter,
            equalize_p=data.equalize_p,
            grey_p=data.grey_p,
            blur_p=data.blur_p,
            trivial_p=data.trivial_p,
            randaugment_p=data.randaugment_p,
            augmix_p=data.augmix_p,
            erase_p=data.erase_p,
            mirror=data.mirror,
        )

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None, size: int | None = None) -> torch.Tensor:
        """Augment a uint8 batch, resized to `size` (progressive resizing) before the random affine."""
        n = images.shape[0]

        def uniform(low, high, size=(n,)):
            return torch.rand(size, generator=generator).mul_(high - low).add_(low).to(images.device)

        if self.equalize_p > 0:
            chosen = (uniform(0, 1) < self.equalize_p).view(-1, 1, 1, 1)
            images = torch.where(chosen, TF.equalize(images), images)
        for share, policy in self.policies:  # TrivialAugmentWide, RandAugment, AugMix: operations drawn per group
            images = self._on_a_share(images, policy, share, POLICY_GROUP, generator)
        images = resize(images.float().div_(255.0), size)
        images = self._affine(images, uniform)
        images = self._colour(images, uniform).clamp_(0.0, 1.0)
        images = self._grey_and_blur(images, uniform)
        if self.erase_p > 0:  # after the affine, so that the rectangle is not zoomed out of the crop
            images = self._on_a_share(images, self.erase, self.erase_p, 1, generator)
        return images

    @staticmethod
    def _on_a_share(images: torch.Tensor, transform, p: float, group_size: int, generator: torch.Generator | None):
        """A torchvision transform on the images chosen with chance `p`, one call (one random draw) per
        `group_size` of them. torchvision draws from the global generator: it is seeded from `generator`
        inside `fork_rng`, so a seeded epoch stays reproducible and the global random state is left as it was."""
        chosen = (torch.rand(images.shape[0], generator=generator) < p).nonzero().flatten()
        seed = int(torch.randint(2**31, (1,), generator=generator))
        images = images.clone()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for group in chosen.to(images.device).split(group_size):
                images[group] = transform(images[group])
        return images

    def _grey_and_blur(self, images, uniform):
        """Photos unlike the training set's: some turned grey, some blurred (no random draw when off,
        so recipes without them keep their exact randomness)."""
        n = images.shape[0]
        if self.grey_p > 0:
            chosen = (uniform(0, 1) < self.grey_p).view(n, 1, 1, 1)
            images = torch.where(chosen, TF.rgb_to_grayscale(images).expand_as(images), images)
        if self.blur_p > 0:
            chosen = (uniform(0, 1) < self.blur_p).view(n, 1, 1, 1)
            sigma = float(uniform(0.3, 1.5, (1,)))  # pixels at the training size; one strength per batch
            images = torch.where(chosen, TF.gaussian_blur(images, kernel_size=5, sigma=sigma), images)
        return images

    def _affine(self, images, uniform):
        zoom = torch.exp(uniform(math.log(self.zoom[0]), math.log(self.zoom[1])))
        stretch = torch.exp(uniform(-self.aspect, self.aspect))
        angle = uniform(-self.rotate, self.rotate)
        flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if self.mirror else torch.ones(len(angle), device=angle.device)
        cos, sin = torch.cos(angle), torch.sin(angle)
        sx, sy = flip * stretch / zoom, 1.0 / (stretch * zoom)
        # theta maps output coordinates to input coordinates in [-1, 1]; |scale| < 1 zooms in.
        theta = torch.stack(
            [
                torch.stack([cos * sx, -sin * sy, uniform(-self.shift, self.shift)], dim=1),
                torch.stack([sin * sx, cos * sy, uniform(-self.shift, self.shift)], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _colour(self, images, uniform):
        n = images.shape[0]
        images = images * uniform(1 - self.brightness, 1 + self.brightness).view(n, 1, 1, 1)
        grey = TF.rgb_to_grayscale(images)
        images = grey.mean(dim=(2, 3), keepdim=True).lerp(images, uniform(1 - self.contrast, 1 + self.contrast).view(n, 1, 1, 1))
        grey = TF.rgb_to_grayscale(images)
        return grey.lerp(images, uniform(1 - self.saturation, 1 + self.saturation).view(n, 1, 1, 1))


def train_size(config: Config, epoch: int) -> int:
    """The training resolution of `epoch` (0-based): with progressive resizing it grows linearly from
    `data.min_size` to `data.image_size` over the first 75 % of the epochs, in steps of 16 px."""
    data, epochs = config.data, config.train.epochs
    if not data.min_size or data.min_size >= data.image_size:
        return data.image_size
    progress = min(1.0, epoch / max(1.0, PROGRESSIVE_END * epochs))
    size = data.min_size + progress * (data.image_size - data.min_size)
    return min(data.image_size, max(data.min_size, int(size) // SIZE_STEP * SIZE_STEP))


class Mixer:
    """CutMix or MixUp (torchvision's, half each) on a `p` share of the batches; labels become soft."""

    def __init__(self, num_classes: int, p: float, mixup_alpha: float, cutmix_alpha: float):
        self.p = p
        self.mix = v2.RandomChoice(
            [v2.CutMix(num_classes=num_classes, alpha=cutmix_alpha), v2.MixUp(num_classes=num_classes, alpha=mixup_alpha)]
        )

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        if torch.rand((), generator=generator) < self.p:
            return self.mix(images, labels)
        return images, labels
