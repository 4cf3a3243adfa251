"""The committed notebooks: clean, parameterised, and runnable end to end by the pipeline."""
import re
from datetime import datetime, timezone
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest

from classifier_lib.pipeline import PIPELINE, PipelineError, check_parameters, run_pipeline, select_steps
from classifier_lib.widgets import ImageTester

from conftest import REAL_DATA, needs_real_data

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
ROOT = Path(__file__).resolve().parents[1]


def test_there_are_six_numbered_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


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
    assert tester.checkpoint.value.endswith("best.pt")
    image = next((data_dir / "Valid" / "panda").iterdir())
    tester.upload.value = ({"name": image.name, "type": "image/png", "size": image.stat().st_size,
                            "content": memoryview(image.read_bytes()),
                            "last_modified": datetime.now(timezone.utc)},)
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
def test_rerun_from_a_step_reuses_the_run(quick_pipeline):
    run_dir, reports = quick_pipeline
    before = (run_dir / "checkpoints" / "best.pt").stat().st_mtime_ns
    run_pipeline(REAL_DATA, run_dir=run_dir, steps=select_steps(start_from="05"),
                 runs_root=run_dir.parent, reports_root=reports.parent)
    assert (run_dir / "checkpoints" / "best.pt").stat().st_mtime_ns == before


@needs_real_data
@pytest.mark.slow
def test_report_renders_in_a_headless_browser(quick_pipeline, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    _, reports = quick_pipeline
    shot = tmp_path / "report.png"
    completed = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400", "--enable-logging=stderr", "--v=0",
         f"--screenshot={shot}", (reports / "03_evaluation.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 50_000, completed.stderr[-2000:]
    console_errors = [line for line in completed.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert console_errors == []


def test_failing_notebook_names_the_cell_and_keeps_a_partial_report(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    broken = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("data_dir = ''\nrun_dir = ''", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print('fine so far')"),
        nbformat.v4.new_code_cell("raise ValueError('deliberate failure')"),
    ])
    broken.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(broken, notebooks / "01_data_stats.ipynb")
    # cell [4] as numbered in the executed notebook: papermill inserts the injected-parameters cell
    with pytest.raises(PipelineError, match=r"01_data_stats failed in cell \[4\]: ValueError: deliberate failure"):
        run_pipeline(tmp_path, steps=["01_data_stats"], runs_root=tmp_path / "runs",
                     reports_root=tmp_path / "reports", notebooks_dir=notebooks)
    partial = (tmp_path / "reports" / "version_0" / "01_data_stats.html").read_text()
    assert "fine so far" in partial and "deliberate failure" in partial


def test_run_pipeline_script_exits_non_zero_on_bad_parameter(tmp_path):
    completed = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "--data-dir", str(tmp_path),
                                "-p", "epochz", "3", "--runs-dir", str(tmp_path / "runs")],
                               capture_output=True, text=True, cwd=tmp_path)
    assert completed.returncode == 1 and "unknown parameter(s) ['epochz']" in completed.stderr


def test_parameters_file_is_read_and_checked(tmp_path, capsys):
    import run_pipeline

    params = tmp_path / "params.yaml"
    params.write_text("epochs: 3\nlearning_rate: 0.1\n")
    code = run_pipeline.main(["--data-dir", str(tmp_path), "-f", str(params), "--runs-dir", str(tmp_path / "runs")])
    assert code == 1 and "unknown parameter(s) ['learning_rate']" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made


def test_partial_rerun_needs_an_existing_run(tmp_path, capsys):
    import run_pipeline

    assert run_pipeline.main(["--data-dir", str(tmp_path), "--from", "03"]) == 1
    assert "also pass --run" in capsys.readouterr().err


def test_image_tester_notebook_executes(trained_run, tmp_path):
    result, data_dir = trained_run
    source = [p for p in NOTEBOOKS if p.stem == "06_image_tester"][0]
    executed = tmp_path / "06.ipynb"
    papermill.execute_notebook(str(source), str(executed), kernel_name="python3", progress_bar=False,
                               parameters={"data_dir": str(data_dir), "runs_dir": str(result.run_dir.parent)},
                               cwd=str(source.parent))
    outputs = [o for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
