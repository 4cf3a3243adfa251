"""Starting a training run in several processes with torchrun from Python (the training notebook's
`nproc` parameter): the same run folder, config and result as `engine.train` in one process."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from classifier_lib.config import Config
from classifier_lib.training.engine import TrainResult, run_dir_for


def train_with_torchrun(
    config: Config, nproc: int, run_dir: str | Path | None = None, runs_root: str | Path = "runs"
) -> TrainResult:
    """`torchrun --standalone --nproc_per_node=nproc -m classifier_lib train` on `config`, its output
    echoed line by line; returns the run's result read back from its folder."""
    run_dir = Path(run_dir) if run_dir else run_dir_for(config.train.resume, runs_root)  # as in one process
    run_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        config_file = Path(scratch) / "config.json"
        config.save(config_file)
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "classifier_lib",
            "train",
            "--config",
            str(config_file),
            "--run-dir",
            str(run_dir),
        ]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as job:
            tail: list[str] = []
            assert job.stdout is not None  # stdout=PIPE
            for line in job.stdout:
                print(line, end="", flush=True)
                tail = (tail + [line])[-40:]
        if job.returncode != 0:
            raise RuntimeError(f"torchrun training failed (exit {job.returncode}):\n{''.join(tail)}")
    return read_result(run_dir)


def read_result(run_dir: str | Path) -> TrainResult:
    """A finished (or interrupted) run's result from its `metrics.json`."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return TrainResult(
        run_dir,
        metrics["history"],
        metrics["best_valid_acc"],
        metrics["best_epoch"],
        metrics.get("interrupted", False),
        metrics.get("stop_reason", ""),
    )
