"""Run folders as records and tables: their configs (flattened), what differs between them and from the
default recipe, their headline figures. Plain pandas: the report index builds on it without torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pandas.io.formats.style import Styler

from classifier_lib.config import Config, flat_config
from classifier_lib.presets import preset_config
from classifier_lib.report.tables import escaped
from classifier_lib.utils.fileio import read_json

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
    return RunRecord(
        run_dir,
        flat_config(Config.load(run_dir / "config.json").to_dict()),
        read_json(run_dir / "metrics.json"),
        read_json(run_dir / "pipeline.json"),
    )


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The settings whose values are not the same in every config, in config order."""
    keys = [key for key in configs[0] if key not in NOT_A_SETTING] if configs else []
    return [key for key in keys if len({repr(config.get(key)) for config in configs}) > 1]


def differences_from_default(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run that differ from the default recipe (with its automatic values resolved)."""
    default = flat_config(preset_config("default").resolved().to_dict())
    return {key: value for key, value in config.items() if key not in NOT_A_SETTING and repr(default.get(key)) != repr(value)}


def comparison_table(runs: list[RunRecord]) -> pd.DataFrame:
    """One row per run: the settings that differ between the runs, then last-epoch and best validation
    accuracy, the best epoch, epochs trained, training time and why training stopped."""
    keys = differing_keys([run.config for run in runs])
    rows = []
    for run in runs:
        history = run.history
        rows.append(
            {"run": run.name}
            | {key: run.config.get(key) for key in keys}
            | {
                "final valid acc": run.metrics.get("final_valid_acc"),
                "final balanced acc": run.metrics.get("final_valid_balanced_acc"),
                "best valid acc": run.metrics.get("best_valid_acc"),
                "best epoch": run.metrics.get("best_epoch"),
                "epochs": run.metrics.get("epochs_done"),
                "train s": round(history[-1]["elapsed_s"]) if history else None,
                "stopped": run.metrics.get("stop_reason", ""),
            }
        )
    return pd.DataFrame(rows).set_index("run")


def styled_comparison(table: pd.DataFrame) -> Styler:
    """`comparison_table` for a report: accuracies as percentages, everything escaped."""
    percentages = {column: "{:.2%}" for column in ("final valid acc", "final balanced acc", "best valid acc") if column in table}
    return escaped(table.style, percentages, precision=4, na_rep="")


def settings_frame(settings: dict[str, Any]) -> pd.DataFrame:
    """Flat `section.field` settings as a one-column table of readable values (None as `none`)."""
    return pd.DataFrame({"value": {key: "none" if value is None else str(value) for key, value in settings.items()}})
