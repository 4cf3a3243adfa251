import json
import multiprocessing
import shutil

import pytest
import torch
from conftest import make_dataset, make_image, tiny_config

from classifier_lib.config import Config, ConfigError, DataConfig, ModelConfig
from classifier_lib.data.augment import Mixer, model_input, train_size
from classifier_lib.inference.checkpoint import load_model, read_checkpoint
from classifier_lib.inference.predict import recalibrate_bn
from classifier_lib.inference.predictor import Predictor
from classifier_lib.model.ema import ModelEMA
from classifier_lib.model.resnet import ResNet
from classifier_lib.training.engine import train
from classifier_lib.training.optim import make_optimizer, make_scheduler
from classifier_lib.utils.device import DeviceError, autocast_dtype
from classifier_lib.utils.runs import new_run_dir


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
    config = tiny_config(
        tiny_data, **{"train.epochs": 4, "train.checkpoint_every": 2, "data.augment": True, "train.ema_decay": ema_decay}
    )
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


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_resume_from_last_after_a_finished_run_can_extend_training(tiny_data, tmp_path, scheduler):
    """--resume last.pt --epochs N (N larger) trains the extra epochs on the schedule of an N-epoch run,
    joined at the step reached: the learning rate is the longer schedule's, never a restart."""
    config = tiny_config(tiny_data, **{"train.epochs": 3, "train.scheduler": scheduler})
    short = train(config, run_dir=tmp_path / "short")
    longer = train(config.override({"train.epochs": 5}), run_dir=tmp_path / "reference")
    extended = train(config.override({"train.resume": str(short.last_checkpoint), "train.epochs": 5}))
    assert extended.run_dir == short.run_dir
    assert [r["epoch"] for r in extended.history] == [1, 2, 3, 4, 5]
    assert read_checkpoint(extended.last_checkpoint)["epoch"] == 5
    assert [r["lr"] for r in extended.history[3:]] == pytest.approx([r["lr"] for r in longer.history[3:]])
    assert extended.history[-1]["lr"] < extended.history[3]["lr"]  # annealing towards the new end


def test_resume_with_fewer_epochs_than_done_is_refused(trained_run, tmp_path):
    result, _ = trained_run
    config = Config.from_dict(read_checkpoint(result.last_checkpoint)["config"])
    with pytest.raises(ConfigError, match="already trained 3 epochs"):
        train(config.override({"train.resume": str(result.last_checkpoint), "train.epochs": 2}), run_dir=tmp_path)


def test_resume_of_a_finished_run_with_the_same_epochs_does_nothing(trained_run, tmp_path):
    result, _ = trained_run
    run = shutil.copytree(result.run_dir, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    config = Config.from_dict(read_checkpoint(last)["config"]).override({"train.resume": str(last)})
    again = train(config)
    assert again.run_dir == run and again.history == result.history  # restored, not retrained
    assert last.read_bytes() == before  # no epoch ran: the weights and the file are as they were
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.pt", "last.pt"}


def _resume(checkpoint, **changes):
    return Config.from_dict(read_checkpoint(checkpoint)["config"]).override({"train.resume": str(checkpoint)} | changes)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"system.seed": 1}, "system.seed"),  # a new seed: another held-out split without a Valid folder
        ({"data.batch_size": 4}, "steps per epoch"),  # OneCycle's total steps would no longer fit (a traceback before)
        ({"data.val_fraction": 0.3}, "data.val_fraction"),
    ],
)
def test_resume_refuses_what_would_redefine_the_run(trained_run, tmp_path, changes, field):
    result, _ = trained_run
    run = shutil.copytree(result.run_dir, tmp_path / "run")
    config_before = (run / "config.json").read_text()
    with pytest.raises(ConfigError, match=f"cannot be resumed with other {field} "):
        train(_resume(run / "checkpoints" / "last.pt", **changes, **{"train.epochs": 5}))
    assert (run / "config.json").read_text() == config_before  # the refused resume changed nothing


def test_resume_refuses_a_data_folder_that_changed(tmp_path):
    """Without Valid/, a file added to Train changes what trained: the resumed run would not be the same run."""
    data = make_dataset(tmp_path / "data", per_class=(10, 0), valid=False)
    first = train(tiny_config(data), runs_root=tmp_path / "runs")
    make_image(data / "Train" / "cat" / "added.png", (200, 60, 60), seed=77)
    with pytest.raises(ConfigError, match="other training files"):
        train(_resume(first.last_checkpoint, **{"train.epochs": 4}))


@pytest.mark.parametrize("epochs", [0, -1])
def test_zero_or_negative_epochs_are_refused_before_a_run_folder_is_made(tiny_data, tmp_path, epochs):
    with pytest.raises(ConfigError, match="train.epochs must be at least 1"):
        train(tiny_config(tiny_data, **{"train.epochs": epochs}), runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_progressive_resizing_grows_the_training_size():
    config = Config().override({"data.min_size": 32, "data.image_size": 96, "train.epochs": 100})
    sizes = [train_size(config, epoch) for epoch in range(100)]
    assert sizes[0] == 32 and sizes[-1] == 96 and sizes[75:] == [96] * 25
    assert sizes == sorted(sizes) and all(size % 16 == 0 for size in sizes)
    assert set(sizes) == {32, 48, 64, 80, 96}
    assert {train_size(Config(), e) for e in range(250)} == {Config().data.image_size}  # off by default
    # a minimum at or above the training size (a preset's 64 px with --image-size 48) turns it off
    small = Config().override({"data.min_size": 64, "data.image_size": 48}).validate()
    assert {train_size(small, e) for e in range(250)} == {48}


def test_progressive_training_switches_resolution_and_tests_at_eval_size(tiny_data, tmp_path):
    config = tiny_config(tiny_data, **{"data.min_size": 16, "data.image_size": 32, "data.eval_size": 48, "train.epochs": 4})
    result = train(config, runs_root=tmp_path)
    assert [row["image_size"] for row in result.history] == [16, 16, 16, 32]
    state = read_checkpoint(result.last_checkpoint)
    assert (state["decode_size"], state["eval_size"]) == (48, 48)  # decoded at the largest size needed
    predictor = Predictor(result.last_checkpoint, device="cpu")
    assert predictor.preprocess(next((tiny_data / "Test").glob("*.png"))).shape == (3, 48, 48)


def test_recalibrated_batchnorm_holds_the_statistics_of_the_given_images():
    model = ResNet(3, ModelConfig(widths=(8, 16), blocks=(1, 1))).eval()
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    recalibrate_bn(model, images, (0.5,) * 3, (0.25,) * 3, size=48, batch_size=20)  # equal batches: an exact mean
    inputs = model_input(images, 48, (0.5,) * 3, (0.25,) * 3)
    stem_out = model.stem[0](inputs)  # what the stem's BatchNorm sees
    assert torch.allclose(model.stem[1].running_mean, stem_out.mean(dim=(0, 2, 3)), atol=1e-4)
    assert not model.training


def test_final_epoch_recalibrates_batchnorm(tiny_data, tmp_path):
    on = train(tiny_config(tiny_data, **{"data.eval_size": 48, "train.recalibrate_bn": True}), runs_root=tmp_path)
    off = train(tiny_config(tiny_data, **{"data.eval_size": 48, "train.recalibrate_bn": False}), runs_root=tmp_path)
    mean = "stem.1.running_mean"
    assert not torch.equal(
        read_checkpoint(on.last_checkpoint)["model"][mean], read_checkpoint(off.last_checkpoint)["model"][mean]
    )
    assert read_checkpoint(on.last_checkpoint)["training_model"][mean].equal(
        read_checkpoint(off.last_checkpoint)["training_model"][mean]
    )  # the training weights are untouched


def test_mixing_gives_soft_labels_and_trains(tiny_data, tmp_path):
    mixer = Mixer(3, p=1.0, mixup_alpha=0.2, cutmix_alpha=1.0)
    images, labels = mixer(torch.rand(8, 3, 16, 16), torch.arange(8) % 3, torch.Generator().manual_seed(0))
    assert labels.shape == (8, 3) and torch.allclose(labels.sum(dim=1), torch.ones(8))
    assert Mixer(3, p=0.0, mixup_alpha=0.2, cutmix_alpha=1.0)(images, torch.arange(8) % 3, torch.Generator())[1].ndim == 1
    result = train(tiny_config(tiny_data, **{"train.mix_p": 1.0, "train.epochs": 3}), runs_root=tmp_path)
    assert all(0 <= row["train_acc"] <= 1 for row in result.history) and result.final_valid_acc > 0.5


def test_train_on_all_is_recorded(tiny_data, tmp_path):
    result = train(tiny_config(tiny_data, **{"data.train_on_all": True, "train.epochs": 1}), runs_root=tmp_path)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["valid_in_training"] is True and metrics["train_images"] == 36 + 18


def test_ema_matches_its_formula_without_reading_the_device():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = ModelEMA(model, decay=0.9)
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    expected = 1.0
    for n, value in ((1, 2.0), (2, 3.0)):
        decay = min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * value
    assert ema.updates == 3 and isinstance(ema.updates, int)
    assert ema.module.weight.flatten().tolist() == pytest.approx([expected, expected])


def test_ema_update_with_a_given_decay_and_copy_back():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = ModelEMA(model, decay=0.9)
    ema.update(model)  # the first update copies
    with torch.no_grad():
        model.weight.fill_(1.0)
    before = ema.module.weight.clone()
    ema.update(model, decay=0.25)
    assert torch.allclose(ema.module.weight, 0.25 * before + 0.75)
    with torch.no_grad():
        model.weight.fill_(5.0)
    ema.copy_to(model)
    assert torch.equal(model.weight, ema.module.weight)


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_batchnorm_and_biases_get_their_own_learning_rate(scheduler):
    config = Config().override({"train.lr": 0.1, "train.bias_lr_scale": 4.0, "train.epochs": 2, "train.scheduler": scheduler})
    model = ResNet(3, ModelConfig(widths=(8, 16), blocks=(1, 1)))
    optimizer = make_optimizer(model, config)
    weights, biases = optimizer.param_groups
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim <= 1 for p in biases["params"])
    schedule = make_scheduler(optimizer, config, steps_per_epoch=8)
    peaks = [0.0, 0.0]
    for _ in range(16):
        optimizer.step()
        schedule.step()
        peaks = [max(peak, group["lr"]) for peak, group in zip(peaks, optimizer.param_groups)]
        assert biases["lr"] == pytest.approx(4.0 * weights["lr"])
    assert peaks == pytest.approx([0.1, 0.4] if scheduler == "onecycle" else [0.1 * 0.99, 0.4 * 0.99], rel=0.02)


def test_precision_choices_on_the_cpu(monkeypatch):
    """auto is bf16 only on a CPU with bf16 kernels: on an AVX2-only CPU bf16 is ~80x slower than fp32."""
    from classifier_lib.utils import device

    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_runs_bf16", lambda: True)
    assert autocast_dtype("auto", cpu) is torch.bfloat16 and autocast_dtype("fp32", cpu) is None
    monkeypatch.setattr(device, "cpu_runs_bf16", lambda: False)
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16  # asked for: kept
    with pytest.raises(DeviceError, match="fp16 autocast needs CUDA"):
        autocast_dtype("fp16", cpu)


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


def _new_run_dir_after(barrier, root, queue):
    barrier.wait()
    queue.put(str(new_run_dir(root)))


def test_concurrent_runs_get_different_folders(tmp_path):
    """Eight processes (as two notebooks or shells would be) asking for a run folder at the same moment."""
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(8), context.Queue()
    processes = [context.Process(target=_new_run_dir_after, args=(barrier, tmp_path, queue)) for _ in range(8)]
    for process in processes:
        process.start()
    folders = [queue.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert len(set(folders)) == 8 and all(process.exitcode == 0 for process in processes)


def test_best_checkpoint_is_self_describing(trained_run):
    result, _ = trained_run
    state = torch.load(result.best_checkpoint, weights_only=True)
    assert state["class_names"] == ["cat", "dog", "panda"]
    assert len(state["mean"]) == 3 and len(state["std"]) == 3 and state["decode_size"] == 32
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


def test_the_test_size_is_larger_than_the_training_crops_by_default_and_saved_explicitly(tiny_data, tmp_path):
    assert [DataConfig(image_size=size).effective_eval_size for size in (32, 48, 64, 128)] == [48, 64, 80, 160]
    assert DataConfig(image_size=64, eval_size=64).effective_eval_size == 64
    result = train(tiny_config(tiny_data, **{"data.eval_size": 0, "train.epochs": 1}), runs_root=tmp_path)
    assert Config.load(result.run_dir / "config.json").data.eval_size == 48
    assert read_checkpoint(result.last_checkpoint)["eval_size"] == 48


def test_a_checkpoint_from_before_test_sizes_tests_at_its_training_size(trained_run, tmp_path):
    result, _ = trained_run
    state = torch.load(result.last_checkpoint, weights_only=True)
    del state["eval_size"]
    state["config"]["data"].pop("eval_size")
    old = tmp_path / "old.pt"
    torch.save(state, old)
    assert load_model(old).eval_size == 32 and load_model(old).config.data.effective_eval_size == 32


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_onecycle_honours_the_configured_momentum(optimizer):
    """OneCycleLR cycles momentum 0.95 -> 0.85 by default, overriding the optimiser's: train.momentum was ignored."""
    config = Config().override({"train.momentum": 0.8, "train.optimizer": optimizer, "train.epochs": 4})
    optimizer_ = make_optimizer(ResNet(3, ModelConfig(widths=(8, 16), blocks=(1, 1))), config)
    scheduler = make_scheduler(optimizer_, config, steps_per_epoch=10)
    key = "momentum" if optimizer == "sgd" else "betas"

    def momentum():
        value = optimizer_.param_groups[0][key]
        return value if optimizer == "sgd" else value[0]

    seen = [momentum()]
    for _ in range(39):
        optimizer_.step()
        scheduler.step()
        seen.append(momentum())
    assert seen[0] == pytest.approx(0.8) and min(seen) == pytest.approx(0.7) and seen[-1] == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(ConfigError, match="train.momentum"):
        Config().override({"train.momentum": 0.05}).validate()


def test_the_average_is_copied_before_syncbatchnorm_replaces_batchnorm(tiny_data, monkeypatch):
    """Under torchrun with train.sync_bn, rank 0 alone validates and recalibrates the EMA: a SyncBatchNorm
    in it would wait for the other ranks forever in BatchNorm recalibration (a hang)."""
    from torch import nn

    import classifier_lib.training.state as state_module
    import classifier_lib.training.trainer as trainer_module
    from classifier_lib.data.dataset import load_data

    config = tiny_config(tiny_data, **{"train.sync_bn": True, "train.ema_decay": 0.9})
    monkeypatch.setattr(trainer_module.distributed, "world_size", lambda: 2)
    monkeypatch.setattr(  # what DDP does to the model, without a process group
        state_module.TrainState,
        "_distributed",
        lambda self, device: setattr(self, "model", nn.SyncBatchNorm.convert_sync_batchnorm(self.model)) or self.model,
    )
    trainer = trainer_module.Trainer(config, load_data(config.data), torch.device("cpu"))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in trainer.state.model.modules())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in trainer.state.inference_model.modules())
