"""The committed notebooks: clean, parameterised, and runnable end to end by the pipeline."""

import contextlib
import io
import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import numpy as np
import papermill
import pytest
import torch
from browser import browser_page
from conftest import REAL_DATA, make_image, needs_real_data

from classifier_lib.inference.predictor import Predictor
from classifier_lib.report.widgets import ImageTester
from classifier_lib.workflow.pipeline import PIPELINE, LineEcho, PipelineError, check_parameters, run_pipeline, select_steps

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
ROOT = Path(__file__).resolve().parents[1]
CLASSES = 101  # the train-only pipeline's: reports must stay readable at a hundred classes


def test_there_are_seven_numbered_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_is_visible_to_papermill(path):
    """papermill silently skips a line it cannot parse (e.g. a second '=' in a comment)."""
    notebook = nbformat.read(path, as_version=4)
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assigned = re.findall(r"^(\w+)\s*=", cells[0].source, flags=re.M)
    assert list(papermill.inspect_notebook(str(path))) == assigned


def test_unknown_parameter_is_refused():
    with pytest.raises(PipelineError, match="unknown parameter"):
        check_parameters({"epochz": 3}, [p for p in NOTEBOOKS if p.stem in PIPELINE])


def test_step_selection():
    assert select_steps() == list(PIPELINE)
    assert select_steps(start_from="03") == ["03_evaluation", "04_activations", "05_submission"]
    assert select_steps(only=["4", "03"]) == ["03_evaluation", "04_activations"]
    with pytest.raises(PipelineError, match="no notebook"):
        select_steps(only=["09"])


def test_image_tester_predicts_an_uploaded_image(trained_run):
    result, data_dir = trained_run
    tester = ImageTester(runs_root=result.run_dir.parent, data_dir=data_dir)
    assert tester.checkpoint.value.endswith("last.pt")  # not chosen on Valid: the default
    image = next((data_dir / "Valid" / "panda").iterdir())
    tester.upload.value = (
        {
            "name": image.name,
            "type": "image/png",
            "size": image.stat().st_size,
            "content": memoryview(image.read_bytes()),
            "last_modified": datetime.now(timezone.utc),
        },
    )
    assert tester.last_prediction.label == "panda"
    assert "panda" in tester.result.value
    shown = tester.output.outputs
    assert len(shown) == 2 and all("image/png" in item["data"] for item in shown)  # Grad-CAM, probabilities


def test_image_tester_explains_an_unreadable_upload(trained_run):
    result, data_dir = trained_run
    tester = ImageTester(runs_root=result.run_dir.parent)
    assert tester.show(b"this is not an image") is None
    assert "Cannot read this image" in tester.result.value


@pytest.fixture(scope="module")
def quick_pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    run_dir = run_pipeline(REAL_DATA, quick=True, runs_root=root / "runs", reports_root=root / "reports")
    return run_dir, root / "reports" / run_dir.name


@needs_real_data
@pytest.mark.slow
def test_quick_pipeline_on_real_data(quick_pipeline):
    run_dir, reports = quick_pipeline
    for name in PIPELINE:
        page = (reports / f"{name}.html").read_text()
        assert page.count("data:image/png;base64") >= 1, f"{name}.html has no figures"
        assert "Traceback" not in page
        assert (run_dir / "notebooks" / f"{name}.ipynb").exists()
    assert {"best.pt", "last.pt"} <= {p.name for p in (run_dir / "checkpoints").iterdir()}
    submission = (run_dir / "submission.csv").read_text().splitlines()
    assert submission[0] == "id,label" and len(submission) == 601
    assert (run_dir / "evaluation.json").exists() and (run_dir / "data_stats.json").exists()
    index = (reports.parent / "index.html").read_text()
    assert run_dir.name in index and "03_evaluation" in index


@needs_real_data
@pytest.mark.slow
def test_quick_run_learns_something(quick_pipeline):
    """A smoke run still shows a model that learned: not one class for everything."""
    run_dir, _ = quick_pipeline
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["accuracy"] >= 0.6, evaluation["accuracy"]
    labels = {line.split(",")[1] for line in (run_dir / "submission.csv").read_text().splitlines()[1:]}
    assert labels == {"cat", "dog", "panda"}


def test_notebook_output_is_echoed_line_by_line_without_bar_redraws(capsys):
    echo = LineEcho()
    for chunk in ("epoch   1/2  train loss 0.9", "\nepoch   2/2  train loss 0.8\nbar 10%\r", "bar 20%\n", "\n"):
        echo.write(chunk)
    assert capsys.readouterr().out.splitlines() == ["  epoch   1/2  train loss 0.9", "  epoch   2/2  train loss 0.8"]


@pytest.fixture(scope="module")
def train_only_pipeline(tmp_path_factory):
    """The whole pipeline on the hardest layout, once: Train/ alone, 101 unbalanced classes of 3 to 14 generated
    images, photos from elsewhere for `eval_dirs` (2 classes of 3), a 2-epoch tiny model at 32 px decoded at 64."""
    root = tmp_path_factory.mktemp("train_only")
    rng = np.random.default_rng(0)
    names = [f"class_{i:03d}" for i in range(CLASSES)]
    for index, name in enumerate(names):
        colour = (int(rng.integers(0, 256)), int(rng.integers(0, 256)), int(rng.integers(0, 256)))
        for i in range(3 + index % 12):
            make_image(root / "data" / "Train" / name / f"{i}.png", colour, seed=index * 100 + i)
            if index < 2 and i < 3:
                make_image(root / "photos" / name / "nested" / f"{i}.png", colour, seed=10_000 + index * 100 + i)
    parameters = {
        "epochs": 2,
        "image_size": 32,
        "overrides": {"model.widths": [8, 16], "model.blocks": [1, 1], "data.eval_size": 64, "train.ema_decay": 0.0},
        "eval_dirs": [str(root / "photos")],
    }
    with contextlib.redirect_stdout(io.StringIO()) as echoed:
        run_dir = run_pipeline(root / "data", parameters, runs_root=root / "runs", reports_root=root / "reports")
    return root, run_dir, names, echoed.getvalue()


def test_the_pipeline_runs_on_a_folder_without_valid_or_test(train_only_pipeline, capsys):
    """Train/ alone, the most common layout: evaluation and activations use the part of Train that training held
    out, the submission step says there is nothing to submit (it failed the pipeline before), the other folder is
    scored beside Valid, the data report decodes as training does (its preset and overrides); a partial re-run
    really re-runs its step."""
    root, run_dir, _, echoed = train_only_pipeline
    data, runs, reports, photos = root / "data", root / "runs", root / "reports", root / "photos"
    assert not (data / "Test").exists() and not (data / "Valid").exists()
    for name in PIPELINE[:-1]:
        page = (reports / run_dir.name / f"{name}.html").read_text()
        assert "data:image/png;base64" in page and "Traceback" not in page, name
    assert "epoch   2/2  train loss" in echoed  # training's lines shown as it runs
    submission = (reports / run_dir.name / "05_submission.html").read_text()
    assert "Nothing to submit" in submission and "Traceback" not in submission
    assert not (run_dir / "submission.csv").exists()
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert evaluation["images"] == metrics["valid_images"] == metrics["data_split"]["valid_files"]
    assert "held out" in evaluation["split"] and not evaluation["caveat"]
    assert evaluation["other_folders"][str(photos)]["images"] == 6  # scored beside Valid, with its own section
    page = (reports / run_dir.name / "03_evaluation.html").read_text()
    assert "Valid and the other folders" in page and page.count("data:image/png;base64") >= 3
    assert "held out" in (reports / run_dir.name / "04_activations.html").read_text()
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    stats = json.loads((run_dir / "data_stats.json").read_text())
    assert checkpoint["decode_size"] == 64 and stats["mean"] == checkpoint["mean"]  # decoded alike (at 48 px before)

    checkpoint = (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns
    report = reports / run_dir.name / "03_evaluation.html"
    before = report.stat().st_mtime_ns
    (run_dir / "evaluation.json").unlink()
    capsys.readouterr()
    run_pipeline(data, run_dir=run_dir, steps=select_steps(only=["03"]), runs_root=runs, reports_root=reports)
    assert "03_evaluation:" in capsys.readouterr().out  # the step's time, printed as it ends
    assert (run_dir / "evaluation.json").exists() and report.stat().st_mtime_ns > before  # re-ran
    assert (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns == checkpoint  # training did not
    invocations = json.loads((run_dir / "pipeline.json").read_text())["invocations"]
    assert [inv["steps"] for inv in invocations] == [list(PIPELINE), ["03_evaluation"]]


@needs_real_data
@pytest.mark.slow
def test_reports_open_in_a_browser_with_their_figures_and_no_errors(quick_pipeline):
    """Every report of a quick run, in chromium: figures decoded, no console error; the index sorts."""
    run_dir, reports = quick_pipeline
    with browser_page() as page:
        for name in PIPELINE:
            page.goto((reports / f"{name}.html").as_uri())
            page.wait_for_load_state("load")
            sizes = page.eval_on_selector_all("img", "images => images.map(img => img.naturalWidth)")
            assert sizes and min(sizes) > 50, f"{name}: a figure did not render ({sizes})"
        page.goto((reports.parent / "index.html").as_uri())
        assert page.locator(f"a[href='{run_dir.name}/03_evaluation.html']").count() == 1
        assert page.errors == []


def test_failing_notebook_names_the_cell_and_keeps_a_partial_report(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    broken = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("data_dir = ''\nrun_dir = ''", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("print('fine so far')"),
            nbformat.v4.new_code_cell("raise ValueError('deliberate failure')"),
        ]
    )
    broken.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(broken, notebooks / "01_data_stats.ipynb")
    with pytest.raises(PipelineError) as failure:
        run_pipeline(
            tmp_path,
            steps=["01_data_stats"],
            runs_root=tmp_path / "runs",
            reports_root=tmp_path / "reports",
            notebooks_dir=notebooks,
        )
    executed = nbformat.read(tmp_path / "runs" / "version_0" / "notebooks" / "01_data_stats.ipynb", as_version=4)
    failed = [c for c in executed.cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "deliberate" in failed[0].source  # the cell the message must name
    assert f"01_data_stats failed in cell [{failed[0].execution_count}]: ValueError: deliberate failure" in str(failure.value)
    partial = (tmp_path / "reports" / "version_0" / "01_data_stats.html").read_text()
    assert "fine so far" in partial and "deliberate failure" in partial


def test_run_pipeline_script_exits_non_zero_on_bad_parameter(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run_pipeline.py"),
            "--data-dir",
            str(tmp_path),
            "-p",
            "epochz",
            "3",
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert completed.returncode == 1 and "unknown parameter(s) ['epochz']" in completed.stderr


def test_parameters_file_is_read_and_checked(tmp_path, capsys):
    import run_pipeline

    params = tmp_path / "params.yaml"
    params.write_text("epochs: 3\nlearning_rate: 0.1\n")
    code = run_pipeline.main(["--data-dir", str(tmp_path), "-f", str(params), "--runs-dir", str(tmp_path / "runs")])
    assert code == 1 and "unknown parameter(s) ['learning_rate']" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made


def test_eval_dirs_are_checked_before_anything_runs(tmp_path, capsys, monkeypatch):
    """`-p eval_dirs` (YAML: a list or one folder) is made absolute for the notebooks, which run in
    notebooks/; a missing folder is refused in one line before a run folder is made."""
    import run_pipeline
    from classifier_lib.workflow.pipeline import labelled_folders

    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)
    assert labelled_folders("photos") == labelled_folders(["photos/"]) == [str(tmp_path / "photos")]
    code = run_pipeline.main(["--data-dir", str(tmp_path), "-p", "eval_dirs", '["photos", "nowhere"]', "--runs-dir", "runs"])
    assert code == 1 and "eval_dirs: nowhere is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_partial_rerun_needs_an_existing_run(tmp_path, capsys):
    import run_pipeline

    assert run_pipeline.main(["--data-dir", str(tmp_path), "--from", "03"]) == 1
    assert "also pass --run" in capsys.readouterr().err


def test_image_tester_notebook_executes(trained_run, tmp_path):
    result, data_dir = trained_run
    source = [p for p in NOTEBOOKS if p.stem == "06_image_tester"][0]
    executed = tmp_path / "06.ipynb"
    papermill.execute_notebook(
        str(source),
        str(executed),
        kernel_name="python3",
        progress_bar=False,
        parameters={"data_dir": str(data_dir), "runs_dir": str(result.run_dir.parent)},
        cwd=str(source.parent),
    )
    outputs = [o for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_image_tester_escapes_names_from_a_crafted_checkpoint(trained_run, tmp_path):
    """Class names come from the checkpoint file: shown as text, never run as markup in JupyterLab."""
    import torch

    result, data_dir = trained_run
    state = torch.load(result.last_checkpoint, weights_only=True)
    evil = "<img src=x onerror=alert(1)>"
    state["class_names"] = [evil, "dog", "panda"]
    crafted = tmp_path / "runs" / "version_0" / "checkpoints" / "last.pt"
    crafted.parent.mkdir(parents=True)
    torch.save(state, crafted)
    tester = ImageTester(runs_root=tmp_path / "runs")
    assert evil not in tester.result.value and "&lt;img src=x onerror=alert(1)&gt;" in tester.result.value
    original = Predictor(result.last_checkpoint)
    cat = next(p for p in sorted((data_dir / "Valid" / "cat").iterdir()) if original.predict(p).label == "cat")
    tester.show(cat)  # predicted as class 0, which the crafted file names with markup
    assert tester.last_prediction.label == evil
    assert "<img" not in tester.result.value and "&lt;img src=x onerror=alert(1)&gt;" in tester.result.value


def test_report_index_escapes_run_names(tmp_path):
    from classifier_lib.report.index import write_index

    run = tmp_path / "runs" / "version_0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"final_valid_acc": 0.5, "best_valid_acc": 0.75, "epochs_done": 2}')
    (tmp_path / "reports" / "version_0").mkdir(parents=True)
    (tmp_path / "reports" / "version_0" / "<img src=x onerror=alert(1)>.html").write_text("page")
    page = write_index(tmp_path / "runs", tmp_path / "reports").read_text()
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "0.5000" in page and "0.7500" in page


def test_overrides_reach_the_training_notebook_and_unknown_keys_are_refused(train_only_pipeline):
    with pytest.raises(PipelineError, match=r"parameters: unknown config key 'train.ema_decy'"):
        check_parameters({"overrides": {"train.ema_decy": 0}}, [p for p in NOTEBOOKS if p.stem in PIPELINE])
    with pytest.raises(PipelineError, match="train.epochs must be at least 1"):
        check_parameters({"overrides": {"train.epochs": 0}}, [p for p in NOTEBOOKS if p.stem in PIPELINE])
    _, run_dir, _, _ = train_only_pipeline  # run with overrides of the model, the test size and the EMA
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["widths"] == [8, 16] and config["model"]["blocks"] == [1, 1]
    assert config["data"]["eval_size"] == 64 and config["train"]["ema_decay"] == 0.0 and config["train"]["epochs"] == 2


def test_reports_stay_readable_at_a_hundred_unbalanced_classes(train_only_pipeline):
    """101 classes of 3 to 14 images: one figure per section (no matplotlib warning about too many figures), the
    imbalance said and balanced accuracy headlined, every class in the per-class table (none cut to pandas' first
    and last five), the most confused pairs listed, bounded activations. (3 classes: the real-data reports in
    test_reports_open_in_a_browser_with_their_figures_and_no_errors.)"""
    root, run_dir, names, _ = train_only_pipeline
    pages = {name: (root / "reports" / run_dir.name / f"{name}.html").read_text() for name in PIPELINE[:4]}
    for name, page in pages.items():
        assert "Traceback" not in page and "More than 20 figures" not in page, name
        assert "rows ×" not in page and "rows x" not in page, name  # no truncated table
    assert "Imbalanced: the largest class has 4.7x" in pages["01_data_stats"]
    assert pages["01_data_stats"].count("data:image/png;base64") <= 6
    assert "balanced accuracy" in pages["03_evaluation"] and "top-5 accuracy" in pages["03_evaluation"]
    assert all(f">{name}<" in pages["03_evaluation"] for name in names)  # the complete per-class table
    assert "the most confused pairs" in pages["03_evaluation"]
    assert pages["04_activations"].count("data:image/png;base64") <= 10
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["imbalanced"] and 0 <= evaluation["balanced_accuracy"] <= 1 and "top5_accuracy" in evaluation
    assert len(evaluation["per_class"]) >= CLASSES
    with browser_page() as page:  # as a person opens them: figures decoded, the long table scrolls in its box
        for name in ("01_data_stats", "03_evaluation"):
            page.goto((root / "reports" / run_dir.name / f"{name}.html").as_uri())
            page.wait_for_load_state("load")
            widths = page.eval_on_selector_all("img", "images => images.map(img => img.naturalWidth)")
            assert widths and min(widths) > 50, (name, widths)
        assert max(widths) >= 800  # the confusion matrix is drawn large enough to read
        box = page.locator("div[style*='overflow:auto']").first  # the long per-class table scrolls in its box
        assert box.evaluate("element => element.scrollHeight > element.clientHeight")
        assert page.errors == []
