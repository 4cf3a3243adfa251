"""Export to ONNX and TorchScript: checked against PyTorch before writing, usable without this package."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from classifier_lib import cli
from classifier_lib.inference import export
from classifier_lib.inference.checkpoint import CheckpointError
from classifier_lib.inference.predictor import Predictor
from classifier_lib.training.engine import train

DEPLOY_DOC = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"


@pytest.fixture(scope="module")
def resized_run(tmp_path_factory):
    """A tiny model whose test size (32) differs from its decode size (48): the graph must resize; with
    anti-aliased downsampling, whose reflect-padded blur must export too."""
    from conftest import make_dataset

    root = tmp_path_factory.mktemp("export")
    data = make_dataset(root / "data")
    config = tiny_config(data, **{"data.image_size": 48, "data.eval_size": 32, "model.antialias": True})
    return train(config, runs_root=root / "runs"), data


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("uint8_input", [True, False])
def test_export_matches_pytorch_and_carries_its_metadata(trained_run, tmp_path, fmt, uint8_input):
    result, _ = trained_run
    report = export.export(result.last_checkpoint, tmp_path / f"model.{fmt}", fmt, uint8_input=uint8_input)
    assert report.max_abs_diff <= export.PARITY_TOLERANCE and report.labels_identical and report.images == 64
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        assert session.get_inputs()[0].type == ("tensor(uint8)" if uint8_input else "tensor(float)")
    else:
        files = {"metadata.json": ""}
        torch.jit.load(str(report.path), _extra_files=files)
        meta = json.loads(files["metadata.json"])
    assert json.loads(meta["class_names"]) == ["cat", "dog", "panda"] and meta["decode_size"] == "32"
    assert meta["tta"] == "flip" and "centre-cropped" in meta["preprocessing"]


def test_onnx_predictor_agrees_with_pytorch_on_any_batch_size(resized_run, tmp_path):
    result, data = resized_run
    path = export.export(result.last_checkpoint, tmp_path / "m.onnx").path
    onnx_predictor, torch_predictor = export.OnnxPredictor(path), Predictor(result.last_checkpoint, "cpu", "fp32")
    assert onnx_predictor.decode_size == torch_predictor.decode_size == 48
    images = torch.stack([torch_predictor.preprocess(p) for p in sorted((data / "Valid").rglob("*.png"))[:5]])
    for batch in (images[:1], images):
        assert torch.allclose(onnx_predictor.probabilities(batch), torch_predictor.probabilities(batch), atol=1e-4)
    assert onnx_predictor.predict_folder(data / "Test").labels == torch_predictor.predict_folder(data / "Test").labels


def test_a_failed_parity_check_writes_nothing(trained_run, tmp_path, monkeypatch):
    result, _ = trained_run
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # nothing can pass
    with pytest.raises(export.ExportError, match="does not match PyTorch.*nothing written"):
        export.export(result.last_checkpoint, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_then_submit_with_onnxruntime_gives_the_same_csv(trained_run, tmp_path, capsys):
    result, data = trained_run
    model = tmp_path / "model.onnx"
    assert cli.main(["export", str(result.last_checkpoint), "-o", str(model)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"parity on 18 validation images of .*Valid: max \|dp\| \S+, labels identical: True", out)
    assert "note: the file computes in fp32" in out and "multi-size TTA" not in out
    assert cli.main(["submit", str(model), str(data / "Test"), "--backend", "onnxruntime", "-o", str(tmp_path / "onnx.csv")]) == 0
    assert cli.main(["submit", str(result.last_checkpoint), str(data / "Test"), "-o", str(tmp_path / "torch.csv")]) == 0
    rows = [list(csv.reader((tmp_path / name).open())) for name in ("onnx.csv", "torch.csv")]
    assert rows[0] == rows[1] and len(rows[0]) == 7
    image = next((data / "Valid" / "dog").iterdir())
    assert cli.main(["predict", str(model), str(image), "--backend", "onnxruntime", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["label"] == "dog"


def test_a_file_that_is_not_an_exported_model_is_a_clear_error(tmp_path, capsys):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        export.OnnxPredictor(bogus)
    assert cli.main(["predict", str(bogus), "x.jpg", "--backend", "onnxruntime"]) == 2


def test_the_readme_example_runs_without_this_package(trained_run, tmp_path):
    """docs/deploy.md's few lines of onnxruntime + Pillow give the probabilities our predictor gives."""
    result, data = trained_run
    model = export.export(result.last_checkpoint, tmp_path / "model.onnx").path
    example = re.search(
        r"```python\n(import json\nimport numpy as np\nimport onnxruntime.*?)```", DEPLOY_DOC.read_text(), re.S
    ).group(1)
    photo = next((data / "Valid" / "panda").iterdir())
    transparent = tmp_path / "transparent.png"  # a panda-blue square on a transparent canvas
    canvas = np.zeros((40, 40, 4), dtype=np.uint8)
    canvas[8:32, 8:32] = (60, 60, 200, 255)
    Image.fromarray(canvas, "RGBA").save(transparent)
    deep = tmp_path / "sixteen_bit.png"
    Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)).save(deep)
    assert Image.open(deep).mode.startswith("I;16")
    predictor = export.OnnxPredictor(model)
    for image in (photo, transparent, deep):
        script = example.replace('"model.onnx"', repr(str(model))).replace('"photo.jpg"', repr(str(image)))
        assert "classifier_lib" not in script
        completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert completed.returncode == 0, completed.stderr[-2000:]
        label, confidence = completed.stdout.split()
        expected = predictor.predict(image)
        assert label == expected.label, image.name
        assert float(confidence) == pytest.approx(expected.confidence, abs=1e-6), image.name
    assert predictor.predict(photo).label == "panda"


def test_export_says_what_it_leaves_out(tiny_data, tmp_path, capsys):
    """Multi-size TTA is not in the file: the command says so, and the metadata names the decoding."""
    run = train(
        tiny_config(tiny_data, **{"data.tta_sizes": 3, "data.eval_size": 48, "train.epochs": 1}), runs_root=tmp_path / "runs"
    )
    model = tmp_path / "model.onnx"
    assert cli.main(["export", str(run.last_checkpoint), "-o", str(model)]) == 0
    assert "note: multi-size TTA (data.tta_sizes 3) is not exported" in capsys.readouterr().out
    meta = onnxruntime.InferenceSession(str(model)).get_modelmeta().custom_metadata_map
    assert "draft" in meta["preprocessing"] and "alpha laid over white" in meta["preprocessing"]
    assert meta["precision"] == "fp32"
