"""Time to accuracy of the default recipe on the real data, and its peak memory.

    python bench/time_to_accuracy.py [--data-dir ../shared/datasets/animals] [--target 0.85] [-s KEY VALUE ...]

Trains with the default config (plus any `-s key value` overrides) in a new run folder and prints the
wall time at which validation accuracy first reached the target, the final and best validation
accuracy, the total wall time (decoding included) and the peak resident memory.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from classifier_lib.config import Config  # noqa: E402
from classifier_lib.data import load_data  # noqa: E402
from classifier_lib.engine import train  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "animals"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("CLASSIFIER_DATA_DIR", DEFAULT_DATA))
    parser.add_argument("--target", type=float, nargs="+", default=[0.85, 0.88, 0.90, 0.95])
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("-s", "--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    args = parser.parse_args()
    config = Config().override({"data.data_dir": str(args.data_dir)} | dict(args.set))

    start = time.perf_counter()
    data = load_data(config.data, config.system.seed)
    decode_s = time.perf_counter() - start
    result = train(config, data=data, runs_root=args.runs_dir)
    total_s = time.perf_counter() - start

    print(f"\nrun {result.run_dir}: {len(result.history)} epochs, data loading {decode_s:.0f} s")
    for target in args.target:
        reached = next((row for row in result.history if row["valid_acc"] >= target), None)
        when = f"{decode_s + reached['elapsed_s']:.0f} s (epoch {reached['epoch']})" if reached else "not reached"
        print(f"validation accuracy >= {target:.0%}: {when}")
    print(f"final validation accuracy {result.history[-1]['valid_acc']:.4f}, best {result.best_valid_acc:.4f} "
          f"(epoch {result.best_epoch}); wall time {total_s:.0f} s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
