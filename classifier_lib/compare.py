"""Comparing runs: what differs between their configs, their headline figures, their curves, their
per-class accuracy, and the validation images on which their models disagree.

Used by the `07_compare_runs` notebook (a sweep's comparison page) and by `reports/index.html`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pandas.io.formats.style import Styler

from .config import Config
from .evaluation import Evaluation, evaluate_checkpoint
from .fileio import read_json
from .presets import preset_config

NOT_A_SETTING = {"train.resume", "data.data_dir"}  # where a run came from, not how it was trained


@dataclass
class RunRecord:
    """One run folder's config (flattened to `section.field` keys) and metrics."""

    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    pipeline: dict[str, Any]

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def history(self) -> list[dict[str, float]]:
        return self.metrics.get("history", [])

    @property
    def sweep(self) -> str:
        """The sweep this run belongs to, if any (recorded by `run_pipeline.py --sweep`)."""
        return self.pipeline.get("sweep", {}).get("name", "")


def load_run(run_dir: str | Path) -> RunRecord:
    """A run folder's record; a clear error when it holds no training config."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a training run folder (no config.json)")
    return RunRecord(run_dir, flat_config(Config.load(run_dir / "config.json").to_dict()),
                     read_json(run_dir / "metrics.json"), read_json(run_dir / "pipeline.json"))


def flat_config(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`{"train": {"lr": 0.4}}` -> `{"train.lr": 0.4}`; lists (from JSON) become tuples, as in the config."""
    return {f"{section}.{name}": tuple(value) if isinstance(value, list) else value
            for section, values in config.items() for name, value in values.items()}


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The settings whose values are not the same in every config, in config order."""
    keys = [key for key in configs[0] if key not in NOT_A_SETTING] if configs else []
    return [key for key in keys if len({repr(config.get(key)) for config in configs}) > 1]


def differences_from_default(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run that differ from the default recipe (with its automatic values resolved)."""
    default = flat_config(preset_config("default").resolved().to_dict())
    return {key: value for key, value in config.items()
            if key not in NOT_A_SETTING and repr(default.get(key)) != repr(value)}


def comparison_table(runs: list[RunRecord]) -> pd.DataFrame:
    """One row per run: the settings that differ between the runs, then last-epoch and best validation
    accuracy, the best epoch, epochs trained, training time and why training stopped."""
    keys = differing_keys([run.config for run in runs])
    rows = []
    for run in runs:
        history = run.history
        rows.append({"run": run.name} | {key: run.config.get(key) for key in keys} | {
            "final valid acc": run.metrics.get("final_valid_acc"),
            "best valid acc": run.metrics.get("best_valid_acc"),
            "best epoch": run.metrics.get("best_epoch"),
            "epochs": run.metrics.get("epochs_done"),
            "train s": round(history[-1]["elapsed_s"]) if history else None,
            "stopped": run.metrics.get("stop_reason", ""),
        })
    return pd.DataFrame(rows).set_index("run")


def evaluate_runs(runs: list[RunRecord], checkpoint: str = "last.pt") -> dict[str, Evaluation]:
    """Each run's checkpoint evaluated on its own validation split."""
    return {run.name: evaluate_checkpoint(run.run_dir / "checkpoints" / checkpoint) for run in runs}


def per_class_accuracy(evaluations: dict[str, Evaluation]) -> pd.DataFrame:
    """Recall of every class (rows) for every run (columns), and the overall accuracy."""
    columns = {}
    for name, evaluation in evaluations.items():
        report = evaluation.report()
        columns[name] = report.loc[evaluation.class_names, "recall"].to_dict() | {"all": evaluation.accuracy}
    return pd.DataFrame(columns)


def disagreements(evaluations: dict[str, Evaluation]) -> pd.DataFrame:
    """The validation images that not all runs label alike: path, true class, each run's prediction.

    Only runs evaluated on the same images (same files in the same order) can be compared; others
    raise a clear error.
    """
    evaluations = list(evaluations.items())
    if not evaluations:
        return pd.DataFrame()
    first = evaluations[0][1]
    for name, evaluation in evaluations[1:]:
        if evaluation.data.paths != first.data.paths:
            raise ValueError(f"{name} was validated on other images than {evaluations[0][0]}: nothing to compare")
    predicted = pd.DataFrame({name: [evaluation.class_names[i] for i in evaluation.predictions]
                              for name, evaluation in evaluations})
    differ = predicted.nunique(axis=1) > 1
    table = pd.DataFrame({"path": first.data.paths, "true": [first.class_names[i] for i in first.labels]})
    return pd.concat([table, predicted], axis=1)[differ]


def escaped(styler: Styler, formatter=None, **format_options) -> Styler:
    """A Styler whose cells, row and column labels are HTML-escaped: pandas' Styler writes them as markup,
    so a run or class folder named `<img onerror=...>` would run in the comparison page."""
    return (styler.format(formatter, escape="html", **format_options)
            .format_index(escape="html", axis=0).format_index(escape="html", axis=1))


def styled_comparison(table: pd.DataFrame) -> Styler:
    """`comparison_table` for a report: accuracies as percentages, everything escaped."""
    percentages = {column: "{:.2%}" for column in ("final valid acc", "best valid acc") if column in table}
    return escaped(table.style, percentages, precision=4, na_rep="")


def styled_per_class(frame: pd.DataFrame) -> Styler:
    """`per_class_accuracy` for a report: percentages shaded per class, everything escaped."""
    return escaped(frame.style, "{:.2%}").background_gradient(axis=1, cmap="Greens")
