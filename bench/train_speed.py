"""Training throughput: our engine against a seed-style pipeline, and FLOP/s against the matmul peak.

    python bench/train_speed.py [--data-dir ../shared/datasets/animals] [--steps 12]

The seed-style baseline is the pipeline the seed project used: every image decoded from JPEG and
transformed with PIL (random affine, flip, colour jitter, equalize) in DataLoader worker processes,
fp32, no channels_last. Its model is the same residual CNN as ours, so the comparison measures the
pipeline, not the architecture. Both run on the same images in the same process, each at the same
image size and each at its own default (ours 96 px, the seed 238 px).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import training_peak  # bench/machine.py, beside this script
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from classifier_lib.config import Config  # noqa: E402
from classifier_lib.data.augment import BatchAugment, normalize  # noqa: E402
from classifier_lib.data.dataset import load_split  # noqa: E402
from classifier_lib.data.folders import find_splits  # noqa: E402
from classifier_lib.model.resnet import ResNet, flops_per_image  # noqa: E402
from classifier_lib.training.optim import make_optimizer  # noqa: E402
from classifier_lib.utils.device import autocast, autocast_dtype, usable_cpus  # noqa: E402

SEED_SIZE, OUR_SIZE, BATCH = 238, Config().data.image_size, 64
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "animals"


def seed_style_loader(train_dir: Path, size: int) -> DataLoader:
    tf = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.RandomAffine(15, translate=(0.1, 0.1), scale=(0.8, 1.2)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.3, 0.3, 0.3),
            transforms.RandomEqualize(0.1),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.25] * 3),
        ]
    )
    dataset = datasets.ImageFolder(str(train_dir), transform=tf)
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=usable_cpus(), drop_last=True, persistent_workers=True)


def time_steps(batches, step, steps: int, warmup: int = 2) -> float:
    """Images per second over `steps` training steps after `warmup` steps."""
    iterator = iter(batches)
    for _ in range(warmup):
        step(*next(iterator))
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(iterator))
    return steps * BATCH / (time.perf_counter() - start)


def endless(loader):
    while True:
        yield from loader


def seed_style(train_dir: Path, size: int, steps: int) -> float:
    model = ResNet(3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(images, labels):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return time_steps(endless(seed_style_loader(train_dir, size)), step, steps)


def ours(train_dir: Path, class_names, size: int, steps: int) -> tuple[float, int]:
    config = Config()
    data = load_split(train_dir, class_names, size).data
    model = ResNet(len(class_names), config.model).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    augment, generator, device = BatchAugment.from_config(config.data), torch.Generator().manual_seed(0), torch.device("cpu")

    def batches():
        while True:
            for index in torch.randperm(len(data), generator=generator).split(BATCH)[:-1]:
                yield data.images[index], data.labels[index]

    def step(images, labels):
        inputs = normalize(augment(images, generator), (0.5,) * 3, (0.25,) * 3, channels_last=True)
        with autocast(device, autocast_dtype("auto", device)):  # what training uses on this CPU
            loss = F.cross_entropy(model(inputs).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return time_steps(batches(), step, steps), flops_per_image(model, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("CLASSIFIER_DATA_DIR", DEFAULT_DATA))
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    splits = find_splits(args.data_dir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {usable_cpus()} cores, batch {BATCH}")
    precision, peak = training_peak()
    print(f"{precision} matmul peak: {peak / 1e9:.0f} GFLOP/s")

    results = {}
    for size in sorted({OUR_SIZE, SEED_SIZE}):
        results["seed", size] = seed_style(splits.train, size, args.steps)
        results["ours", size], flops = ours(splits.train, splits.class_names, size, args.steps)
        train_flops = 3 * flops * results["ours", size]  # backward costs about twice the forward pass
        print(
            f"{size:4d} px  seed-style {results['seed', size]:7.1f} img/s   ours {results['ours', size]:7.1f} img/s   "
            f"ratio {results['ours', size] / results['seed', size]:5.1f}x   ours {train_flops / 1e9:.0f} GFLOP/s "
            f"= {train_flops / peak:.0%} of the {precision} matmul peak"
        )
    print(
        f"each at its default: ours {OUR_SIZE} px {results['ours', OUR_SIZE]:.1f} img/s vs seed {SEED_SIZE} px "
        f"{results['seed', SEED_SIZE]:.1f} img/s = {results['ours', OUR_SIZE] / results['seed', SEED_SIZE]:.1f}x"
    )


if __name__ == "__main__":
    main()
