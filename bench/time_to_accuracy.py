"""Time to accuracy and final (last-epoch) accuracy of a recipe over several seeds, on the real data.

    python bench/time_to_accuracy.py [--seeds 0 1 2] [--preset fast] [--budget 20m] [-s KEY VALUE ...] [--eval-sizes 64 80 96]
                                     [--folder PHOTOS_DIR ...]
    python bench/time_to_accuracy.py --score runs/version_3 runs/version_4 [--eval-sizes 64 80 96] [--folder PHOTOS_DIR]

For every seed: trains the recipe (the default config, a preset, plus any `-s key value` overrides)
in a new run folder and prints the last-epoch validation accuracy (no epoch is picked on Valid),
the wall time at which validation accuracy first reached 85 / 90 / 95 %, the wall time and the peak
resident memory; then mean ± std over the seeds. The machine's matmul peak (in the precision training uses) is measured in the
same run: machines here differ up to 2x in speed, so a time only means something beside it.

With a time budget (the presets are budgets; `--budget` sets another, `-s train.epochs N` turns it off)
it prints the epochs the budget chose and the time used against it, and, where the budget was too short
for the default recipe and trained `fast`'s instead, the epochs the default recipe would have had.

`--folder DIR` (repeatable) also scores each seed's last.pt on a labelled folder that is neither Train
nor Valid (`evaluate --folder`): accuracy and balanced accuracy, e.g. photos from other collections
(bench/other_collections.py builds such a folder).

`--eval-sizes` also scores each run's last.pt at other test resolutions, as saved and with its
BatchNorm statistics recomputed at each (FixRes), without retraining (set data.eval_size to the
largest, so that images are decoded at least that large).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import training_peak  # bench/machine.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from classifier_lib.config import Config  # noqa: E402
from classifier_lib.data.dataset import load_data  # noqa: E402
from classifier_lib.data.folders import DataLayoutError  # noqa: E402
from classifier_lib.inference.checkpoint import load_model  # noqa: E402
from classifier_lib.inference.predict import predict_logits, recalibrate_bn  # noqa: E402
from classifier_lib.presets import run_config  # noqa: E402
from classifier_lib.report.evaluation import evaluate_folder  # noqa: E402
from classifier_lib.training.engine import train  # noqa: E402
from classifier_lib.utils.device import autocast_dtype  # noqa: E402
from classifier_lib.utils.fileio import read_json  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "animals"
TARGETS = (0.85, 0.90, 0.95)


def accuracy_at_sizes(checkpoint: Path, data, sizes: list[int]) -> dict[str, float]:
    """last.pt's validation accuracy at each test size, as saved ("80") and with its BatchNorm
    statistics recomputed at that size on the un-augmented training images ("80+bn"); with the
    sizes 16 px below and above averaged in too ("80+bn+tta3")."""
    loaded = load_model(checkpoint)
    dtype = autocast_dtype(loaded.config.train.precision, torch.device("cpu"))
    flip = loaded.config.data.flip_tta
    scores = {}

    def score(model, views) -> float:
        logits = predict_logits(model, data.valid.images, loaded.mean, loaded.std, views, dtype=dtype, flip=flip)
        return (logits.argmax(1) == data.valid.labels).float().mean().item()

    for size in sizes:
        scores[str(size)] = score(loaded.model, [size])
        model = copy.deepcopy(loaded.model)
        recalibrate_bn(model, data.train.images, loaded.mean, loaded.std, size, dtype=dtype)
        scores[f"{size}+bn"] = score(model, [size])
        scores[f"{size}+bn+tta3"] = score(model, [size - 16, size, size + 16])
    return scores


def folder_scores(checkpoint: Path, folders: list[str]) -> dict[str, float]:
    """last.pt's accuracy and balanced accuracy on each labelled folder."""
    scores = {}
    for folder in folders:
        try:
            evaluation = evaluate_folder(checkpoint, folder)
        except DataLayoutError as error:  # e.g. the folder went away during the hours of training: keep the run
            print(f"not scored: {error} (later: --score {checkpoint.parents[1]} --folder {folder})", flush=True)
            continue
        name = Path(folder).name
        scores[f"{name} acc"], scores[f"{name} balanced"] = evaluation.accuracy, evaluation.balanced_accuracy
    return scores


def score_runs(run_dirs: list[str], sizes: list[int], folders: list[str]) -> None:
    """Runs already trained: each run's last.pt at each test size and on each folder, then the means."""
    rows = []
    for run in map(Path, run_dirs):
        row = folder_scores(run / "checkpoints" / "last.pt", folders)
        if sizes:
            config = Config.load(run / "config.json")
            needed = max(sizes) + 16  # the largest size with its tta3 view, from images decoded that large
            data = load_data(dataclasses.replace(config.data, eval_size=needed), config.system.seed)
            row |= accuracy_at_sizes(run / "checkpoints" / "last.pt", data, sizes)
        rows.append(row)
        print(run, "  ".join(f"{key} {value:.2%}" for key, value in row.items()), flush=True)
    for key in dict.fromkeys(key for row in rows for key in row):
        print(f"last.pt @ {key:12s} {mean_of_those_scored([row.get(key) for row in rows])}")


def mean_of_those_scored(values: list[float | None]) -> str:
    """mean_std of the runs scored (None: not scored), saying how many they are when not all."""
    scored = [value for value in values if value is not None]
    return mean_std(scored) + ("" if len(scored) == len(values) else f" ({len(scored)} of {len(values)} runs scored)")


def mean_std(values: list[float], unit: str = "%") -> str:
    """`mean ± sample std` of the values, as percentages or as seconds."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    if unit == "%":
        return f"{statistics.mean(values):.2%} ± {spread:.2%}"
    return f"{statistics.mean(values):.0f} ± {spread:.0f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("CLASSIFIER_DATA_DIR", DEFAULT_DATA))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--budget", help="a time budget instead of the preset's (90s, 20m, 1h)")
    parser.add_argument("--folder", action="append", default=[], help="also score last.pt on this labelled folder")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("-s", "--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    parser.add_argument("--eval-sizes", type=int, nargs="*", default=[])
    parser.add_argument("--json", help="also write the per-seed figures to this file")
    parser.add_argument("--score", nargs="+", metavar="RUN_DIR", help="no training: score these runs' last.pt at --eval-sizes")
    args = parser.parse_args()
    missing = [folder for folder in args.folder if not Path(folder).expanduser().is_dir()]
    if missing:  # now, not after the hours of training that would precede scoring it
        parser.error(f"--folder {', '.join(missing)}: not a folder")
    if args.score:
        score_runs(args.score, args.eval_sizes, args.folder)
        return
    precision, peak = training_peak()
    print(f"{precision} matmul peak of this machine: {peak / 1e9:.0f} GFLOP/s")
    rows = []
    for seed in args.seeds:
        overrides = dict(args.set) | {"system.seed": seed} | ({"train.budget_s": args.budget} if args.budget else {})
        config = run_config(args.preset, overrides=overrides, data_dir=str(args.data_dir))
        start = time.perf_counter()
        data = load_data(config.data, seed)
        decode_s = time.perf_counter() - start
        result = train(config, data=data, runs_root=args.runs_dir)
        wall_s = time.perf_counter() - start
        row = {
            "seed": seed,
            "run": str(result.run_dir),
            "final_valid_acc": result.final_valid_acc,
            "best_valid_acc": result.best_valid_acc,
            "train_s": result.history[-1]["elapsed_s"],
            "wall_s": wall_s,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "budget_s": config.train.budget_s,
            "epochs": result.history[-1]["epoch"],
            "default_recipe_epochs": read_json(result.run_dir / "budget.json").get("default_recipe_epochs", 0),
            "folders": folder_scores(result.last_checkpoint, args.folder),
        }
        for target in TARGETS:
            # accuracies are float32 ratios: 405/450 reads 0.89999998, which is 90 %
            reached = next((r for r in result.history if r.get("valid_acc", 0) >= target - 1e-6), None)
            row[f"time_to_{target:.0%}"] = decode_s + reached["elapsed_s"] if reached else None
        if args.eval_sizes:
            row["at_size"] = accuracy_at_sizes(result.last_checkpoint, data, args.eval_sizes)
        rows.append(row)
        reached = "  ".join(
            f"{t:.0%}: " + (f"{row[f'time_to_{t:.0%}']:.0f} s" if row[f"time_to_{t:.0%}"] else "-") for t in TARGETS
        )
        sizes = "  ".join(f"@{s} {a:.2%}" for s, a in row.get("at_size", {}).items())
        sizes += "".join(f"  {name} {value:.2%}" for name, value in row["folders"].items())
        if row["budget_s"]:
            sizes += f"  budget {row['budget_s']:.0f} s: {row['epochs']} epochs, used {row['train_s'] / row['budget_s']:.1%}"
        if row["default_recipe_epochs"]:
            sizes += f" (fast's recipe: the default's fitted {row['default_recipe_epochs']} epochs)"
        print(
            f"seed {seed}: final {row['final_valid_acc']:.2%} (best {row['best_valid_acc']:.2%})  {reached}  "
            f"train {row['train_s']:.0f} s  wall {wall_s:.0f} s  peak RSS {row['peak_rss_gib']:.2f} GiB  {sizes}",
            flush=True,
        )
        if args.json:  # after every seed: a later seed's failure loses none of the hours before it
            Path(args.json).write_text(json.dumps({"matmul_peak_gflops": peak / 1e9, "rows": rows}, indent=2))
    print(f"\n{len(rows)} seeds, {precision} matmul peak {peak / 1e9:.0f} GFLOP/s, overrides {dict(args.set)}")
    print(f"final valid accuracy   {mean_std([r['final_valid_acc'] for r in rows])}")
    print(f"training time          {mean_std([r['train_s'] for r in rows], 's')}")
    for name in dict.fromkeys(name for row in rows for name in row["folders"]):
        print(f"last.pt on {name:12s} {mean_of_those_scored([r['folders'].get(name) for r in rows])}")
    for key in rows[0].get("at_size", {}):
        print(f"last.pt @ {key:7s} {mean_std([r['at_size'][key] for r in rows])}")
    for target in TARGETS:
        times = [r[f"time_to_{target:.0%}"] for r in rows]
        done = [t for t in times if t is not None]
        print(
            f"time to {target:.0%}: reached by {len(done)}/{len(rows)} seeds"
            + (f", mean {statistics.mean(done):.0f} s" if done else "")
        )


if __name__ == "__main__":
    main()
