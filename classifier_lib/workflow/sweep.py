"""Sweeps: one pipeline run per combination of parameter values, one after another, then a comparison page.

    run_pipeline.py --sweep lr=0.1,0.2,0.4 --sweep image_size=64,96
    run_pipeline.py --sweep train.ema_decay=0,0.99 --sweep-name ema

A name is a notebook parameter (`lr`, `image_size`, `epochs`...) or any config key with its section
(`train.ema_decay`), which goes into the notebooks' `overrides`. Every combination gets its own
`runs/version_N`, with the sweep's name and its values in `pipeline.json`. Progress is kept in
`runs/sweeps/<name>.json`, named after the axes and a hash of everything else that defines the runs
(data folder, parameters, quick, notebooks): running the same command again skips the combinations
that finished and retries one that failed or was interrupted, in a fresh run folder (the failed
attempt's files are moved to `runs/failed/`). A sweep holds a lock while it runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from classifier_lib.utils.fileio import read_json, write_json
from classifier_lib.utils.progress import progress_bar_wanted
from classifier_lib.utils.runs import new_run_dir
from classifier_lib.workflow.pipeline import NOTEBOOKS_DIR, PIPELINE, PipelineError, check_parameters, compare_runs, run_pipeline

SWEEPS_DIR = "sweeps"  # runs/sweeps/<name>.json
FAILED_DIR = "failed"  # runs/failed/, reports/failed/: failed attempts of sweep combinations, set aside


def parse_axes(specs: list[str]) -> dict[str, list[Any]]:
    """`["lr=0.1,0.2", "image_size=64,96"]` -> `{"lr": [0.1, 0.2], "image_size": [64, 96]}` (YAML scalars)."""
    axes = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise PipelineError(f"a sweep is NAME=VALUE,VALUE...; got {spec!r}")
        if name.strip() in axes:
            raise PipelineError(f"{name.strip()!r} is swept twice")
        axes[name.strip()] = [yaml.safe_load(value) for value in values.split(",")]
    return axes


def combinations(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the last axis varying fastest."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def default_name(axes: dict[str, list[Any]], settings: dict[str, Any] | None = None) -> str:
    """`lr-image_size-<hash>`: the hash covers the axes' values and everything else that defines the runs
    (data folder, parameters, quick, notebooks), so the same command resumes its sweep and any other
    command (another data folder, say) starts its own."""
    digest = hashlib.sha1(json.dumps([axes, settings or {}], sort_keys=True, default=str).encode()).hexdigest()[:6]
    return "-".join(name.replace(".", "_") for name in axes) + f"-{digest}"


def notebook_parameters(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The pipeline parameters of one combination: config keys (`section.field`) join `overrides`."""
    parameters = dict(base)
    overrides = dict(parameters.get("overrides") or {})
    for name, value in values.items():
        if "." in name:
            overrides[name] = value
        else:
            parameters[name] = value
    if overrides:
        parameters["overrides"] = overrides
    return parameters


def run_sweep(
    data_dir: str | Path,
    axes: dict[str, list[Any]],
    parameters: dict[str, Any] | None = None,
    name: str | None = None,
    quick: bool = False,
    runs_root: str | Path = "runs",
    reports_root: str | Path = "reports",
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    steps: list[str] | None = None,
) -> Path | None:
    """Run (or continue) the sweep (`steps`: the notebooks of each run, default all); returns its
    comparison page. Every combination's parameters are checked before the first run starts."""
    base = dict(parameters or {})
    todo = combinations(axes)
    steps = steps or list(PIPELINE)
    sources = [Path(notebooks_dir) / f"{step}.ipynb" for step in steps]
    for values in todo:
        check_parameters(notebook_parameters(base, values), sources)
    settings = {"data_dir": str(Path(data_dir).resolve()), "parameters": base, "quick": quick, "steps": steps}
    name = name or default_name(axes, settings)
    record_path = Path(runs_root) / SWEEPS_DIR / f"{name}.json"
    with _locked(record_path, name):
        record = _open_record(record_path, name, {"axes": axes, **settings})
        for values in tqdm(todo, desc=f"sweep {name}", unit="run", disable=not progress_bar_wanted()):
            entry = next((e for e in record["runs"] if e["values"] == values), None)
            if entry and entry["status"] == "done":
                tqdm.write(f"sweep {name}: {values} already done in {entry['run_dir']}")
                continue
            if entry is None:
                entry = {"values": values, "run_dir": str(new_run_dir(runs_root).resolve())}
                record["runs"].append(entry)
            else:
                _set_aside(entry, runs_root, reports_root)
            entry["status"] = "started"
            write_json(record_path, record)
            tqdm.write(f"sweep {name}: {values} -> {entry['run_dir']}")
            try:
                run_pipeline(
                    data_dir,
                    notebook_parameters(base, values),
                    entry["run_dir"],
                    steps,
                    quick=quick,
                    runs_root=runs_root,
                    reports_root=reports_root,
                    notebooks_dir=notebooks_dir,
                    sweep={"name": name, "values": values},
                )
                entry["status"] = "done"
            except PipelineError as error:
                entry["status"] = "failed"
                tqdm.write(f"sweep {name}: {values} failed; run the same command again to retry it\n{error}")
            write_json(record_path, record)
    failed = [e["values"] for e in record["runs"] if e["status"] != "done"]
    done = [e["run_dir"] for e in record["runs"] if e["status"] == "done"]
    page = compare_runs(done, name, runs_root, reports_root, notebooks_dir) if done else None
    if failed:
        raise PipelineError(
            f"sweep {name}: {len(failed)} combination(s) failed: {failed}; "
            f"the same command retries them" + (f" (comparison so far: {page})" if page else "")
        )
    return page


def _open_record(path: Path, name: str, settings: dict) -> dict:
    """The sweep's record; refused when a sweep of that name was run with anything else different."""
    record = read_json(path)
    if record and {key: record.get(key) for key in settings} != json.loads(json.dumps(settings)):
        differ = sorted(key for key in settings if record.get(key) != json.loads(json.dumps(settings[key])))
        raise PipelineError(
            f"a sweep named {name!r} exists with other {', '.join(differ)} ({path}): its runs are not "
            "these; choose another --sweep-name (or leave it out: the default name differs)"
        )
    return record or {"name": name, **settings, "runs": []}


def _set_aside(entry: dict, runs_root: str | Path, reports_root: str | Path) -> None:
    """Before retrying a combination, move a failed attempt's files (checkpoints, TensorBoard events,
    evaluation, reports) to `runs/failed/` and `reports/failed/`, and give the retry a fresh run folder:
    one run folder never mixes two attempts."""
    run_dir = Path(entry["run_dir"])
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return  # nothing was written: the same folder serves
    attempt = len(entry.get("set_aside", [])) + 1
    moved = Path(runs_root) / FAILED_DIR / f"{run_dir.name}.attempt{attempt}"
    moved.parent.mkdir(parents=True, exist_ok=True)
    run_dir.rename(moved)
    reports = Path(reports_root) / run_dir.name
    if reports.is_dir():
        (Path(reports_root) / FAILED_DIR).mkdir(parents=True, exist_ok=True)
        reports.rename(Path(reports_root) / FAILED_DIR / moved.name)
    entry.setdefault("set_aside", []).append(str(moved.resolve()))
    entry["run_dir"] = str(new_run_dir(runs_root).resolve())


@contextmanager
def _locked(record_path: Path, name: str):
    """Hold the sweep's lock file while it runs: a second identical command is refused, not interleaved."""
    record_path.parent.mkdir(parents=True, exist_ok=True)
    with open(record_path.with_suffix(".lock"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(
                f"sweep {name} is running in another process (lock {handle.name}); wait for it, or choose another --sweep-name"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
