"""Running the numbered notebooks with papermill for one run, and rendering them to HTML reports.

Every notebook of a run gets the same `data_dir` and `run_dir` parameters; executed notebooks go
to `runs/version_N/notebooks/`, their HTML to `reports/version_N/`, and `reports/index.html`
lists every run.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import nbformat
import papermill
from nbconvert import HTMLExporter
from tqdm.auto import tqdm

from .config import Config, ConfigError
from .progress import progress_bar_wanted
from .runs import list_runs, new_run_dir

PIPELINE = ("01_data_stats", "02_training", "03_evaluation", "04_activations", "05_submission")
QUICK_PARAMETERS = {"epochs": 6, "image_size": 48, "eval_size": 48}  # a smoke run that still learns: ~65 % on Valid
NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"


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
    try:
        Config().override(overrides).validate()
    except ConfigError as error:
        raise PipelineError(f"overrides: {error}") from None


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
        return list(PIPELINE[PIPELINE.index(resolve(start_from)):])
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
) -> Path:
    """Execute the notebooks for one run and render their reports; returns the run folder."""
    notebooks_dir = Path(notebooks_dir)
    steps = steps or list(PIPELINE)
    sources = [notebooks_dir / f"{name}.ipynb" for name in steps]
    check_parameters(dict(parameters or {}), sources)  # the quick ones go only where they are declared
    user_parameters = (QUICK_PARAMETERS if quick else {}) | dict(parameters or {})
    run_dir = (Path(run_dir) if run_dir else new_run_dir(runs_root)).resolve()
    data_dir = Path(data_dir).resolve()
    if not run_dir.is_dir():
        raise PipelineError(f"run folder {run_dir} does not exist")
    reports_dir = Path(reports_root) / run_dir.name
    _save_pipeline_parameters(run_dir, data_dir, user_parameters, quick, [source.stem for source in sources])
    progress = tqdm(sources, desc="pipeline", unit="notebook", disable=not progress_bar_wanted())
    for source in progress:
        step = Step(source.stem, source, run_dir / "notebooks" / source.name, reports_dir / f"{source.stem}.html")
        progress.set_postfix_str(step.name)
        declared = declared_parameters(source)
        notebook_parameters = {"data_dir": str(data_dir), "run_dir": str(run_dir)} | user_parameters
        _execute(step, {k: v for k, v in notebook_parameters.items() if k in declared})
    write_index(runs_root, reports_root)
    return run_dir


def _execute(step: Step, parameters: dict[str, Any]) -> None:
    step.executed.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(step.source), str(step.executed), parameters=parameters, kernel_name="python3",
            progress_bar=False, cwd=str(step.source.parent),
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


def render_html(notebook: Path, target: Path) -> Path | None:
    """Render an executed notebook to standalone HTML (figures embedded as data URIs)."""
    if not notebook.exists():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    body, _ = HTMLExporter(embed_images=True).from_notebook_node(nbformat.read(notebook, as_version=4))
    target.write_text(body, encoding="utf-8")
    return target


INDEX_TEMPLATE = """<!doctype html><html><head><meta charset="utf-8"><title>classifier runs</title>
<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 12px;border-bottom:1px solid #ddd}</style>
</head><body><h1>Runs</h1><table>
<tr><th>run</th><th>date</th><th>final valid acc</th><th>best valid acc</th><th>epochs</th>
<th>evaluated acc</th><th>reports</th></tr>
{% for row in rows %}<tr><td>{{ row.name }}</td><td>{{ row.date }}</td><td>{{ row.final }}</td>
<td>{{ row.best }}</td><td>{{ row.epochs }}</td><td>{{ row.evaluated }}</td>
<td>{% for page in row.pages %}<a href="{{ row.name }}/{{ page }}.html">{{ page }}</a>
{% else %}(no reports){% endfor %}</td></tr>
{% endfor %}</table></body></html>
"""


def write_index(runs_root: str | Path = "runs", reports_root: str | Path = "reports") -> Path:
    """`reports/index.html`: every run with its date, headline metrics and links to its reports.

    Rendered by jinja2 with autoescaping: run and report names are text, never markup.
    """
    reports_root = Path(reports_root)
    reports_root.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in reversed(list_runs(runs_root)):
        metrics = _read_json(run / "metrics.json")
        rows.append({
            "name": run.name,
            "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(run.stat().st_mtime)),
            "final": _fmt(metrics.get("final_valid_acc")),
            "best": _fmt(metrics.get("best_valid_acc")),
            "epochs": metrics.get("epochs_done", ""),
            "evaluated": _fmt(_read_json(run / "evaluation.json").get("accuracy")),
            "pages": [page.stem for page in sorted((reports_root / run.name).glob("*.html"))],
        })
    template = jinja2.Environment(autoescape=True).from_string(INDEX_TEMPLATE)
    index = reports_root / "index.html"
    index.write_text(template.render(rows=rows), encoding="utf-8")
    return index


def _save_pipeline_parameters(run_dir: Path, data_dir, parameters: dict[str, Any], quick: bool,
                              steps: list[str]) -> None:
    """Append this invocation to `pipeline.json`: a partial re-run adds to the record, never replaces it."""
    path = run_dir / "pipeline.json"
    invocations = _read_json(path).get("invocations", [])
    invocations.append({"data_dir": str(data_dir), "parameters": parameters, "quick": quick, "steps": steps,
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    path.write_text(json.dumps({"invocations": invocations}, indent=2) + "\n")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ""


def _log_step(step: Step, seconds: float) -> None:
    tqdm.write(f"{step.name}: {seconds:.0f}s -> {step.report}")
