"""Training with torchrun: DistributedDataParallel over gloo on the CPU, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAL_DATA, make_dataset, needs_real_data
from conftest import tiny_train_args as shared_tiny_train_args

from classifier_lib.cli import main as cli_main
from classifier_lib.data.dataset import batches

TESTS = Path(__file__).resolve().parent


def torchrun(*args: str, processes: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    env = os.environ | {"OMP_NUM_THREADS": "1", "CLASSIFIER_NO_BARS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


def tiny_train_args(data: Path, runs: Path, epochs: int) -> list[str]:
    return [*shared_tiny_train_args(data, runs, epochs), "--set", "data.eval_size", "32"]


def test_ranks_take_disjoint_equal_shares_of_the_same_order():
    import torch

    data = list(range(37))
    shares = [
        [batch for batch in batches(data, 4, torch.device("cpu"), torch.Generator().manual_seed(3), rank, 2).sampler]
        for rank in (0, 1)
    ]
    assert len(shares[0]) == len(shares[1]) == 4  # 9 full batches: 8 used, 4 each
    flat = [i for share in shares for batch in share for i in batch]
    assert len(flat) == len(set(flat)) == 32
    whole = list(batches(data, 4, torch.device("cpu"), torch.Generator().manual_seed(3)).sampler)
    assert shares[0] == whole[0:8:2] and shares[1] == whole[1:8:2]


def test_two_processes_keep_the_same_weights(tmp_path):
    data = make_dataset(tmp_path / "data")
    completed = torchrun(str(TESTS / "scripts" / "ddp_in_sync.py"), str(data), str(TESTS))
    assert "in sync" in completed.stdout


def test_torchrun_training_writes_one_run_from_rank_0_resumes_and_predicts(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    completed = torchrun(*tiny_train_args(data, runs, 2))
    assert [p.name for p in runs.iterdir()] == ["version_0"]  # one run folder, not one per rank
    assert completed.stdout.count("epoch   2/2") == 1  # rank 1 prints nothing
    assert "2 processes, global batch 16" in completed.stdout
    run = runs / "version_0"
    writers = {path.name.split(".")[-2] for path in (run / "tensorboard").rglob("events.*")}  # ...<host>.<pid>.N
    assert len(writers) == 1, writers  # every TensorBoard file comes from one process
    last = run / "checkpoints" / "last.pt"
    torchrun(*tiny_train_args(data, runs, 3)[:2], "train", "--resume", str(last), "--epochs", "3")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_done"] == 3 and [row["epoch"] for row in metrics["history"]] == [1, 2, 3]
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    # the checkpoint is an ordinary one: single-process predict and evaluate read it
    image = next((data / "Valid" / "dog").iterdir())
    assert cli_main(["predict", str(last), str(image)]) == 0
    assert cli_main(["evaluate", str(last)]) == 0
    assert "accuracy" in capsys.readouterr().out


@needs_real_data
@pytest.mark.slow
def test_two_processes_learn_as_well_as_one_with_the_same_global_batch(tmp_path):
    """On a real subset, 2 processes x 32 images reach the single process's accuracy with 64, within noise."""
    common = [
        "--data-dir",
        str(REAL_DATA),
        "--subset",
        "0.3",
        "--epochs",
        "12",
        "--image-size",
        "48",
        "--set",
        "data.eval_size",
        "48",
    ]
    single = subprocess.run(
        [sys.executable, "-m", "classifier_lib", "train", *common, "--batch-size", "64", "--runs-dir", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ | {"CLASSIFIER_NO_BARS": "1"},
    )
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun("-m", "classifier_lib", "train", *common, "--batch-size", "32", "--runs-dir", str(tmp_path / "two"))
    one = json.loads((tmp_path / "one" / "version_0" / "metrics.json").read_text())["final_valid_acc"]
    two = json.loads((tmp_path / "two" / "version_0" / "metrics.json").read_text())["final_valid_acc"]
    assert one > 0.5 and two > 0.5  # chance is 0.33; 60.7 % and 63.7 % when this test was written
    assert abs(one - two) < 0.1, (one, two)  # 135 validation images: ~4 points of noise per run


def test_the_pipeline_trains_with_torchrun_when_asked(tmp_path, monkeypatch):
    from classifier_lib.workflow.pipeline import run_pipeline

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = make_dataset(tmp_path / "data")
    parameters = {
        "epochs": 2,
        "image_size": 32,
        "nproc": 2,
        "overrides": {"model.widths": [8, 16], "model.blocks": [1, 1], "data.eval_size": 32},
    }
    run_dir = run_pipeline(
        data, parameters, steps=["02_training", "03_evaluation"], runs_root=tmp_path / "runs", reports_root=tmp_path / "reports"
    )
    report = (tmp_path / "reports" / run_dir.name / "02_training.html").read_text()
    assert "2 processes, global batch" in report and "Traceback" not in report
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_done"] == 2
    assert (run_dir / "evaluation.json").exists()
