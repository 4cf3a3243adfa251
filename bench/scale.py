"""How the data path scales: decoding into the memory-mapped cache, one training epoch, and a submission
over a nested test folder, at several data set sizes, with each phase's peak memory.

    python bench/scale.py                       # 10,000 and 50,000 images at 64 px
    python bench/scale.py --sizes 2000 --image-size 48
    python bench/scale.py --sizes 10000 --no-valid     # Train/ alone: the held-out split is rows of the cache

For each size N it writes N synthetic 160x120 JPEGs (Train/ and Valid/ of three classes, 80 / 20 %,
in a temporary folder; a nested Test/ of N more, hard links to the same files), then runs each phase
in a fresh process and prints: decode throughput (images/s), the cache's size on disk, the time and
throughput of one training epoch at the default recipe (and the test size), and of the submission;
for each phase the peak resident memory of the process (VmHWM: it counts the pages of the mapped
cache that are in RAM, which the kernel can drop at will) and the peak of its anonymous memory
(RssAnon, sampled every 50 ms: what the process itself holds). The machine's matmul peak is
printed beside the times. Target (issue 11): peak RSS <= 2 GiB at 50,000 images and 64 px, time
linear in N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from machine import peak_line  # bench/machine.py, beside this script
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
CLASSES = ("a", "b", "c")


def write_jpeg(job: tuple[Path, int]) -> None:
    path, seed = job
    rng = np.random.default_rng(seed)
    base = np.array([(200, 60, 60), (60, 200, 60), (60, 60, 200)][seed % 3], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-60, 60, (120, 160, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=85)


def make_images(root: Path, count: int, valid: bool = True) -> None:
    """count JPEGs in Train/ and Valid/ (80 / 20 %; all in Train/ without `valid`), and a nested Test/ of
    hard links to them."""
    jobs = []
    for index in range(count):
        split = "Valid" if valid and index % 5 == 0 else "Train"
        folder = root / split / CLASSES[index % 3]
        jobs.append((folder / f"{index:06d}.jpg", index))
    for folder in {path.parent for path, _ in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    with Pool(os.cpu_count()) as pool:
        pool.map(write_jpeg, jobs, chunksize=500)
    for path, index in jobs:
        target = root / "Test" / f"part{index % 10}" / f"sub{index % 7}" / f"{index:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)


class MemoryWatch:
    """Peak anonymous resident memory of this process, sampled in a thread."""

    def __init__(self):
        self.peak_anon = 0
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while self.running:
            self.peak_anon = max(self.peak_anon, status_kib("RssAnon"))
            time.sleep(0.05)

    def report(self) -> dict[str, float]:
        self.running = False
        self.thread.join()
        return {"peak_rss_gib": status_kib("VmHWM") / 2**20, "peak_anon_gib": self.peak_anon / 2**20}


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_phase(phase: str, root: Path, image_size: int) -> dict:
    """One phase in this (fresh) process; returns its figures."""
    from classifier_lib.config import Config
    from classifier_lib.data.dataset import load_data

    watch = MemoryWatch()
    config = Config().override({"data.data_dir": str(root), "data.image_size": image_size})
    start = time.perf_counter()
    data = load_data(config.data)
    figures = {"images": len(data.train) + len(data.valid)}
    if phase == "decode":
        figures["seconds"] = time.perf_counter() - start
        figures["cache_gib"] = sum(f.stat().st_size for f in Path(os.environ["CLASSIFIER_CACHE_DIR"]).glob("*")) / 2**30
    elif phase == "train":
        from classifier_lib.inference.checkpoint import save_checkpoint
        from classifier_lib.training.trainer import Trainer, setup_system

        trainer = Trainer(config, data, setup_system(config))
        start = time.perf_counter()
        trainer.train_epoch()
        figures["seconds"] = time.perf_counter() - start
        figures["images"] = len(data.train)
        trainer.state.epoch = 1
        save_checkpoint(root / "run" / "checkpoints" / "last.pt", trainer.state.state_dict(trainer.data))
    elif phase == "submit":
        from classifier_lib.inference.predictor import Predictor, write_submission

        predictor = Predictor(root / "run" / "checkpoints" / "last.pt", device="cpu")
        start = time.perf_counter()
        predictions = predictor.predict_folder(root / "Test")
        write_submission(predictions, root / "submission.csv")
        figures["seconds"] = time.perf_counter() - start
        figures["images"] = len(predictions.ids)
    return figures | watch.report()


def measure(count: int, image_size: int, scratch: Path, valid: bool = True) -> dict[str, dict]:
    root = scratch / f"n{count}"
    start = time.perf_counter()
    make_images(root, count, valid)
    print(f"\n{count:,} images written in {time.perf_counter() - start:.0f} s", flush=True)
    env = os.environ | {"CLASSIFIER_CACHE_DIR": str(scratch / f"cache{count}"), "CLASSIFIER_NO_BARS": "1"}
    results = {}
    for phase in ("decode", "train", "submit"):
        command = [sys.executable, __file__, "--phase", phase, "--root", str(root), "--image-size", str(image_size)]
        completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"phase {phase} failed:\n{completed.stderr[-3000:]}")
        results[phase] = figures = json.loads(completed.stdout.strip().splitlines()[-1])
        extra = f"  cache {figures['cache_gib']:.2f} GiB" if "cache_gib" in figures else ""
        print(
            f"  {phase:6s} {figures['images']:7,} images  {figures['seconds']:6.1f} s  "
            f"{figures['images'] / figures['seconds']:6.0f} img/s  peak RSS {figures['peak_rss_gib']:.2f} GiB  "
            f"peak anon {figures['peak_anon_gib']:.2f} GiB{extra}",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--scratch", help="folder for the images and caches (default: a temporary one)")
    parser.add_argument("--no-valid", action="store_true", help="Train/ alone: a held-out split of it validates")
    parser.add_argument("--phase", choices=["decode", "train", "submit"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, Path(args.root), args.image_size)))
        return
    layout = "Train/ alone (held-out split)" if args.no_valid else "Train/ and Valid/"
    print(f"{peak_line()}; training at {args.image_size} px; {layout}")
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        results = {count: measure(count, args.image_size, Path(scratch), not args.no_valid) for count in args.sizes}
    if len(results) > 1:
        small, large = min(results), max(results)
        print(f"\ntime ratio {large:,} / {small:,} images (linear would be {large / small:.1f}x):")
        for phase in ("decode", "train", "submit"):
            print(f"  {phase:6s} {results[large][phase]['seconds'] / results[small][phase]['seconds']:.1f}x")


if __name__ == "__main__":
    main()
