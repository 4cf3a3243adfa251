"""Running the numbered notebooks with papermill for one run, and rendering them to HTML reports.

Every notebook of a run gets the same `data_dir` and `run_dir` parameters; executed notebooks go
to `runs/version_N/notebooks/`, their HTML to `reports/version_N/`, and `reports/index.html`
lists every run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import nbformat
import papermill
from nbconvert import HTMLExporter
from tqdm.auto import tqdm

from classifier_lib.config import ConfigError
from classifier_lib.presets import NAMED_SETTINGS, run_config
from classifier_lib.report.index import COMPARE_DIR, write_index
from classifier_lib.report.runs_table import load_run
from classifier_lib.utils.fileio import atomic_write, read_json, write_json
from classifier_lib.utils.paths import PROJECT_ROOT
from classifier_lib.utils.progress import progress_bar_wanted
from classifier_lib.utils.runs import new_run_dir

PIPELINE = ("01_data_stats", "02_training", "03_evaluation", "04_activations", "05_submission")
COMPARE_NOTEBOOK = "07_compare_runs"
# a smoke run that still learns (~65 % on Valid): the plain recipe, validated every epoch, on 6 epochs at 48 px
QUICK_PARAMETERS = {"preset": "plain", "epochs": 6, "image_size": 48, "eval_size": 48}
NOTEBOOKS_DIR = Path(PROJECT_ROOT) / "notebooks"


class PipelineError(RuntimeError):
    """A notebook failed; the message names it, the failing cell and where its partial report is."""


@dataclass
class Step:
    name: str
    source: Path
    executed: Path
    report: Path


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The names (and inferred types) in a notebook's `parameters` cell."""
    return papermill.inspect_notebook(str(notebook))


def check_parameters(parameters: dict[str, Any], notebooks: list[Path]) -> None:
    """papermill only warns about unknown names; refuse a name that no notebook declares, and config
    overrides that the config does not know, before anything runs."""
    declared = set()
    for notebook in notebooks:
        declared |= set(declared_parameters(notebook))
    unknown = sorted(set(parameters) - declared)
    if unknown:
        raise PipelineError(f"unknown parameter(s) {unknown}; the notebooks declare {sorted(declared)}")
    overrides = parameters.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise PipelineError(f"overrides must be a mapping of config keys to values, got {overrides!r}")
    try:  # the config notebook 02 will build, from the chosen preset
        run_config(
            parameters.get("preset"),
            None,
            overrides,
            **{name: value for name, value in parameters.items() if name in NAMED_SETTINGS},
        ).validate()
    except ConfigError as error:
        raise PipelineError(f"parameters: {error}") from None


def select_steps(only: list[str] | None = None, start_from: str | None = None) -> list[str]:
    """Notebook names to run: all, `only` some (by number or name), or everything `start_from` one on."""

    def resolve(key: str) -> str:
        matches = [name for name in PIPELINE if name == key or name.split("_")[0] == key.zfill(2)]
        if not matches:
            raise PipelineError(f"no notebook {key!r}; the pipeline is {', '.join(PIPELINE)}")
        return matches[0]

    if only:
        wanted = {resolve(key) for key in only}
        return [name for name in PIPELINE if name in wanted]
    if start_from:
        return list(PIPELINE[PIPELINE.index(resolve(start_from)) :])
    return list(PIPELINE)


def run_pipeline(
    data_dir: str | Path,
    parameters: dict[str, Any] | None = None,
    run_dir: str | Path | None = None,
    steps: list[str] | None = None,
    quick: bool = False,
    runs_root: str | Path = "runs",
    reports_root: str | Path = "reports",
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    sweep: dict[str, Any] | None = None,
) -> Path:
    """Execute the notebooks for one run and render their reports; returns the run folder.

    `sweep` (name and this run's values) is recorded in the run's `pipeline.json` when the run is
    one combination of a sweep."""
    notebooks_dir = Path(notebooks_dir)
    steps = steps or list(PIPELINE)
    sources = [notebooks_dir / f"{name}.ipynb" for name in steps]
    check_parameters(dict(parameters or {}), sources)  # the quick ones go only where they are declared
    user_parameters = (QUICK_PARAMETERS if quick else {}) | dict(parameters or {})
    if "eval_dirs" in user_parameters:  # the notebooks run in notebooks/: relative folders are the caller's
        user_parameters["eval_dirs"] = labelled_folders(user_parameters["eval_dirs"])
    run_dir = (Path(run_dir) if run_dir else new_run_dir(runs_root)).resolve()
    data_dir = Path(data_dir).resolve()
    if not run_dir.is_dir():
        raise PipelineError(f"run folder {run_dir} does not exist")
    reports_dir = Path(reports_root) / run_dir.name
    _save_pipeline_parameters(run_dir, data_dir, user_parameters, quick, [source.stem for source in sources], sweep)
    progress = tqdm(sources, desc="pipeline", unit="notebook", disable=not progress_bar_wanted())
    for source in progress:
        step = Step(source.stem, source, run_dir / "notebooks" / source.name, reports_dir / f"{source.stem}.html")
        progress.set_postfix_str(step.name)
        declared = declared_parameters(source)
        notebook_parameters = {"data_dir": str(data_dir), "run_dir": str(run_dir)} | user_parameters
        _execute(step, {k: v for k, v in notebook_parameters.items() if k in declared})
    write_index(runs_root, reports_root)
    return run_dir


def labelled_folders(value: Any) -> list[str]:
    """The `eval_dirs` parameter (a folder or a list of them) as absolute paths; a missing one is refused
    before anything runs."""
    folders = [value] if isinstance(value, (str, Path)) else list(value or [])
    missing = [str(folder) for folder in folders if not Path(folder).expanduser().is_dir()]
    if missing:
        raise PipelineError(f"eval_dirs: {', '.join(missing)} {'is not a folder' if len(missing) == 1 else 'are not folders'}")
    return [str(Path(folder).expanduser().resolve()) for folder in folders]


def _execute(step: Step, parameters: dict[str, Any]) -> None:
    step.executed.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(step.source),
            str(step.executed),
            parameters=parameters,
            kernel_name="python3",
            progress_bar=False,
            cwd=str(step.source.parent),
            stdout_file=LineEcho(),
        )
    except papermill.PapermillExecutionError as error:
        render_html(step.executed, step.report)
        raise PipelineError(
            f"notebook {step.name} failed in cell [{error.exec_count}]: {error.ename}: {error.evalue}\n"
            f"  executed notebook: {step.executed}\n  partial report:    {step.report}"
        ) from None
    finally:
        _log_step(step, time.perf_counter() - started)
    render_html(step.executed, step.report)


def compare_runs(
    run_dirs: list[str | Path],
    name: str,
    runs_root: str | Path = "runs",
    reports_root: str | Path = "reports",
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
) -> Path:
    """Execute the comparison notebook over `run_dirs` and render it to `reports/compare/<name>.html`."""
    for run in run_dirs:
        load_run(run)  # a clear error for a folder that is not a training run, before any notebook starts
    source = Path(notebooks_dir) / f"{COMPARE_NOTEBOOK}.ipynb"
    step = Step(name, source, Path(runs_root) / "compare" / f"{name}.ipynb", Path(reports_root) / COMPARE_DIR / f"{name}.html")
    _execute(step, {"runs": [str(Path(run).resolve()) for run in run_dirs], "title": name})
    write_index(runs_root, reports_root)
    return step.report


class LineEcho:
    """Where papermill writes a notebook's stdout as it runs: complete lines go to the terminal (the
    epoch lines), progress-bar redraws (carriage returns) do not."""

    def __init__(self):
        self.pending = ""

    def write(self, text: str) -> None:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            if line.strip() and "\r" not in line:
                tqdm.write(f"  {line}")

    def flush(self) -> None:
        pass


# JupyterLab's report template without the scripts it fetches from CDNs (require.js, MathJax, mermaid
# and the widget manager, which would only redraw the progress bars): the reports hold figures, tables
# and text, no LaTeX and no live widgets, and must open offline without errors.
OFFLINE_TEMPLATE = jinja2.DictLoader(
    {
        "offline.html.j2": "{%- extends 'lab/index.html.j2' -%}"
        + "".join(
            f"{{%- block {name} -%}}{{%- endblock {name} -%}}"
            for name in ("html_head_js_requirejs", "jupyter_widgets", "html_head_js_mathjax", "html_head_js_mermaidjs")
        )
    }
)


def render_html(notebook: Path, target: Path) -> Path | None:
    """Render an executed notebook to standalone HTML (figures embedded as data URIs)."""
    if not notebook.exists():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(embed_images=True, extra_loaders=[OFFLINE_TEMPLATE], template_file="offline.html.j2")
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    atomic_write(target, body)
    return target


def _save_pipeline_parameters(
    run_dir: Path, data_dir, parameters: dict[str, Any], quick: bool, steps: list[str], sweep: dict[str, Any] | None
) -> None:
    """Append this invocation to `pipeline.json`: a partial re-run adds to the record, never replaces it."""
    path = run_dir / "pipeline.json"
    record = read_json(path)
    record.setdefault("invocations", []).append(
        {
            "data_dir": str(data_dir),
            "parameters": parameters,
            "quick": quick,
            "steps": steps,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    if sweep:
        record["sweep"] = sweep
    write_json(path, record)


def _log_step(step: Step, seconds: float) -> None:
    tqdm.write(f"{step.name}: {seconds:.0f}s -> {step.report}")
