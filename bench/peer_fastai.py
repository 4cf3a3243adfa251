"""The peer a user would compare us with: fastai's `xresnet18`, trained from scratch (no pretrained weights)
for a given wall time on the same Train / Valid folders, scored on the same images as our runs.

    pip install -e ".[peer]"        # fastai, an optional extra
    python bench/peer_fastai.py --data-dir DATA --budget 5m [--seeds 0 1 2] [--folder DIR ...] [--no-mirror]

For every seed: one epoch on a throwaway learner measures fastai's speed on this machine and this data,
then a new learner trains `fit_one_cycle` for as many epochs as fit the budget (the measuring epoch is not
counted against it: the peer gets at least the time our run gets), fastai's standard recipe: Adam, one-cycle
at --lr, batch 64, `aug_transforms` with random-resized crops at --size px, flat cross-entropy. Prints the
last-epoch accuracy and balanced accuracy (mean per-class recall) on Valid and on every --folder
(class sub-folders at any depth, as `evaluate --folder` reads them), the epochs and the training time, then
mean ± std over the seeds; `--json` keeps every figure. Our side: `bench/time_to_accuracy.py` with the
same budget, data and folders.

Precision: bf16 autocast where this CPU runs it (as our `precision auto`), else fp32; `--precision fp32`
runs fastai's own default. Data folders need Train/ and Valid/ (the split both sides use).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import peak_line  # bench/machine.py, beside this script
from sklearn.metrics import balanced_accuracy_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from classifier_lib.config import parse_duration  # noqa: E402
from classifier_lib.data.folders import class_folders, find_splits, list_images  # noqa: E402
from classifier_lib.utils.device import cpu_runs_bf16  # noqa: E402


def fastai_vision():
    """fastai's vision API, or a one-line exit saying how to install it."""
    try:
        import fastai.vision.all as vision
    except ImportError:
        sys.exit('peer_fastai.py needs fastai: pip install -e ".[peer]"')
    return vision


def make_learner(vision, data_dir: Path, size: int, mirror: bool, seed: int, bf16: bool):
    """A fresh fastai Learner: xresnet18 from scratch on DATA/Train, validated on DATA/Valid."""
    vision.set_seed(seed)
    splits = find_splits(data_dir)
    if splits.valid is None:
        sys.exit(f"{data_dir} has no Valid folder: the peer trains on Train/ and scores on Valid/, as our runs do")
    dls = vision.ImageDataLoaders.from_folder(
        splits.root,
        train=splits.train.name,
        valid=splits.valid.name,
        item_tfms=vision.Resize(int(size * 1.25)),
        batch_tfms=[
            *vision.aug_transforms(size=size, min_scale=0.35, do_flip=mirror),
            vision.Normalize.from_stats(*vision.imagenet_stats),
        ],
        bs=64,
        seed=seed,
    )
    callbacks = [cpu_bf16_autocast(vision)] if bf16 else []
    model = vision.xresnet18(n_out=dls.c)
    return vision.Learner(dls, model, loss_func=vision.CrossEntropyLossFlat(), metrics=vision.accuracy, cbs=callbacks)


def cpu_bf16_autocast(vision):
    """A fastai callback running each forward pass under CPU bf16 autocast (fastai's MixedPrecision is for
    CUDA); the loss and the backward pass see fp32 predictions."""

    class CpuBf16Autocast(vision.Callback):
        order = 10

        def before_batch(self):
            self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
            self.autocast.__enter__()

        def after_pred(self):
            self.autocast.__exit__(None, None, None)
            self.learn.pred = self.pred.float()

    return CpuBf16Autocast()


def scores(learn, vision, folder: Path | None) -> dict[str, float]:
    """Accuracy and balanced accuracy on Valid (folder None) or on a labelled folder's known classes."""
    if folder is None:
        probs, targets = learn.get_preds()
    else:
        vocab = list(learn.dls.vocab)
        items, labels = [], []
        for name in class_folders(folder):
            if name in vocab:
                found = list_images(folder / name)[0]
                items += found
                labels += [vocab.index(name)] * len(found)
        probs, _ = learn.get_preds(dl=learn.dls.test_dl(items))
        targets = torch.tensor(labels)
    predicted = probs.argmax(dim=1)
    return {
        "accuracy": float((predicted == targets).float().mean()),
        "balanced_accuracy": float(balanced_accuracy_score(targets.numpy(), predicted.numpy())),
        "images": len(targets),
    }


def run_seed(args, vision, seed: int) -> dict:
    bf16 = args.precision == "auto" and cpu_runs_bf16()
    probe = make_learner(vision, args.data_dir, args.size, args.mirror, seed, bf16)
    with probe.no_bar(), probe.no_logging():
        start = time.perf_counter()
        probe.fit_one_cycle(1, args.lr)
        epoch_s = time.perf_counter() - start
    epochs = max(1, int(args.budget / epoch_s))
    learn = make_learner(vision, args.data_dir, args.size, args.mirror, seed, bf16)
    print(f"seed {seed}: one epoch took {epoch_s:.1f} s -> {epochs} epochs for a {args.budget:.0f} s budget", flush=True)
    start = time.perf_counter()
    with learn.no_bar():
        learn.fit_one_cycle(epochs, args.lr)
    train_s = time.perf_counter() - start
    row = {"seed": seed, "epochs": epochs, "train_s": train_s, "precision": "bf16" if bf16 else "fp32"}
    with learn.no_bar():
        row["valid"] = scores(learn, vision, None)
        for folder in args.folder:
            row[str(folder)] = scores(learn, vision, folder)
    sets = {key: value for key, value in row.items() if isinstance(value, dict)}
    shown = "  ".join(f"{key}: {value['accuracy']:.2%} / {value['balanced_accuracy']:.2%}" for key, value in sets.items())
    print(f"seed {seed}: {epochs} epochs in {train_s:.0f} s ({train_s / args.budget:.1%} of the budget); acc / balanced {shown}")
    return row


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2%} ± {spread:.2%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--budget", type=parse_duration, required=True, help="wall time for training: 300s, 20m")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folder", type=Path, action="append", default=[], help="also score on this labelled folder")
    parser.add_argument("--size", type=int, default=64, help="training crop size (px)")
    parser.add_argument("--lr", type=float, default=1e-2, help="one-cycle peak learning rate (Adam)")
    parser.add_argument("--no-mirror", dest="mirror", action="store_false", help="no horizontal flips (traffic signs, text)")
    parser.add_argument("--precision", choices=["auto", "fp32"], default="auto")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    vision = fastai_vision()
    print(peak_line(), flush=True)
    rows = [run_seed(args, vision, seed) for seed in args.seeds]
    for key in ["valid", *map(str, args.folder)]:
        accuracy = mean_std([row[key]["accuracy"] for row in rows])
        balanced = mean_std([row[key]["balanced_accuracy"] for row in rows])
        print(f"{key}: accuracy {accuracy}, balanced {balanced} over seeds {args.seeds}")
    print(f"training time {statistics.mean(row['train_s'] for row in rows):.0f} s (budget {args.budget:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
