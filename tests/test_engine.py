import json
import shutil
import threading

import pytest
import torch

from classifier_lib.checkpoint import load_model, read_checkpoint
from classifier_lib.config import Config
from classifier_lib.engine import make_scheduler, train
from classifier_lib.runs import new_run_dir

from conftest import tiny_config


def test_training_writes_a_complete_run_folder(trained_run):
    result, _ = trained_run
    run = result.run_dir
    assert run.name.startswith("version_")
    assert Config.load(run / "config.json").train.epochs == 3
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.pt", "last.pt"}
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3]
    assert metrics["best_valid_acc"] == max(row["valid_acc"] for row in metrics["history"])
    assert metrics["skipped_files"] == 0


def test_tiny_model_learns_the_colours(trained_run):
    result, _ = trained_run
    assert result.best_valid_acc >= 0.9  # three well separated colours


def test_checkpoint_every_n_epochs(tiny_data, tmp_path):
    result = train(tiny_config(tiny_data, **{"train.epochs": 4, "train.checkpoint_every": 2}), runs_root=tmp_path)
    names = {p.name for p in (result.run_dir / "checkpoints").iterdir()}
    assert {"epoch_002.pt", "epoch_004.pt", "best.pt", "last.pt"} <= names


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_continues_exactly_as_the_uninterrupted_run(tiny_data, tmp_path, ema_decay):
    config = tiny_config(tiny_data, **{"train.epochs": 4, "train.checkpoint_every": 2, "data.augment": True,
                                       "train.ema_decay": ema_decay})
    full = train(config, run_dir=tmp_path / "full")
    # an interrupted copy of the same run: its newest checkpoint is the one after epoch 2
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    shutil.copy(full.run_dir / "config.json", interrupted / "config.json")
    shutil.copy(full.run_dir / "checkpoints" / "epoch_002.pt", interrupted / "checkpoints" / "last.pt")
    resumed = train(config.override({"train.resume": str(interrupted / "checkpoints" / "last.pt")}))
    assert resumed.run_dir == interrupted  # a resumed run continues in its own folder
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    for key in ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr"):
        assert [r[key] for r in resumed.history] == [r[key] for r in full.history], key
    final_full = read_checkpoint(full.last_checkpoint)["model"]
    final_resumed = read_checkpoint(resumed.last_checkpoint)["model"]
    for name, tensor in final_full.items():
        assert torch.equal(tensor, final_resumed[name]), name


def test_resume_from_last_after_a_finished_run_can_extend_training(trained_run, tmp_path):
    result, _ = trained_run
    last = result.run_dir / "checkpoints" / "last.pt"
    config = Config.from_dict(read_checkpoint(last)["config"]).override({"train.resume": str(last), "train.epochs": 3})
    again = train(config, run_dir=tmp_path / "copy")
    assert len(again.history) == 3  # nothing left to do: the history is restored, not retrained


@pytest.mark.parametrize("name", ["onecycle", "cosine", "lambda", "none"])
def test_schedulers(name):
    config = Config().override({"train.scheduler": name, "train.epochs": 3, "train.lr": 0.1})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=5)
    lrs = []
    for _ in range(15):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    if name == "none":
        assert set(lrs) == {0.1}
    elif name == "lambda":
        assert lrs[4] == pytest.approx(0.1 * 0.95) and lrs[9] == pytest.approx(0.1 * 0.95**2)
    else:
        assert lrs[-1] < 0.01


def test_concurrent_runs_get_different_folders(tmp_path):
    folders, barrier = [], threading.Barrier(8)

    def make():
        barrier.wait()
        folders.append(new_run_dir(tmp_path))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(folders)) == 8


def test_best_checkpoint_is_self_describing(trained_run):
    result, _ = trained_run
    state = torch.load(result.best_checkpoint, weights_only=True)
    assert state["class_names"] == ["cat", "dog", "panda"]
    assert len(state["mean"]) == 3 and len(state["std"]) == 3 and state["image_size"] == 32
    assert list(state["config"]["model"]["widths"]) == [8, 16]
    assert state["library_version"]
    loaded = load_model(result.best_checkpoint)
    assert not loaded.model.training


def test_ema_weights_are_the_ones_validated_and_saved(tiny_data, tmp_path):
    result = train(tiny_config(tiny_data, **{"train.ema_decay": 0.9}), runs_root=tmp_path)
    state = read_checkpoint(result.last_checkpoint)
    assert set(state["model"]) == set(state["training_model"])
    assert any(not torch.equal(state["model"][k], state["training_model"][k]) for k in state["model"])
    assert load_model(result.last_checkpoint).model.state_dict().keys() == state["model"].keys()
