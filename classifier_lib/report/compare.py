"""Comparing runs: what differs between their configs, their headline figures, their curves, their
per-class accuracy, and the validation images on which their models disagree.

Used by the `07_compare_runs` notebook (a sweep's comparison page) and by `reports/index.html`.
"""

from __future__ import annotations

import pandas as pd
from pandas.io.formats.style import Styler

from classifier_lib.report.evaluation import Evaluation, evaluate_checkpoint
from classifier_lib.report.runs_table import RunRecord
from classifier_lib.report.tables import escaped


def evaluate_runs(runs: list[RunRecord], checkpoint: str = "last.pt") -> dict[str, Evaluation]:
    """Each run's checkpoint evaluated on its own validation split."""
    return {run.name: evaluate_checkpoint(run.run_dir / "checkpoints" / checkpoint) for run in runs}


def per_class_accuracy(evaluations: dict[str, Evaluation]) -> pd.DataFrame:
    """Recall of every class (rows) for every run (columns), and the overall accuracy; empty where a run's
    validation images hold none of a class."""
    columns = {}
    for name, evaluation in evaluations.items():
        report = evaluation.report()
        columns[name] = report["recall"].reindex(evaluation.class_names).to_dict() | {"all": evaluation.accuracy}
    return pd.DataFrame(columns)


def disagreements(evaluations: dict[str, Evaluation]) -> pd.DataFrame:
    """The validation images that not all runs label alike: path, true class, each run's prediction.

    Only runs evaluated on the same images (same files in the same order) can be compared; others
    raise a clear error.
    """
    runs = list(evaluations.items())
    if not runs:
        return pd.DataFrame()
    first = runs[0][1]
    for name, evaluation in runs[1:]:
        if evaluation.data.paths != first.data.paths:
            raise ValueError(f"{name} was validated on other images than {runs[0][0]}: nothing to compare")
    predicted = pd.DataFrame({name: [evaluation.class_names[i] for i in evaluation.predictions] for name, evaluation in runs})
    differ = predicted.nunique(axis=1) > 1
    table = pd.DataFrame({"path": first.data.paths, "true": [first.class_names[i] for i in first.labels]})
    return pd.concat([table, predicted], axis=1)[differ]


def styled_per_class(frame: pd.DataFrame) -> Styler:
    """`per_class_accuracy` for a report: percentages shaded per class, everything escaped."""
    return escaped(frame.style, "{:.2%}", na_rep="–").background_gradient(axis=1, cmap="Greens")
