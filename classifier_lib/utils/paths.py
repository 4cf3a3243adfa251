"""Default locations, one place for the command line and the notebooks (which run from notebooks/)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # classifier_lib/utils/paths.py -> the project
RUNS_DIR = str(PROJECT_ROOT / "runs")
REPORTS_DIR = str(PROJECT_ROOT / "reports")


def default_data_dir() -> str:
    """`$CLASSIFIER_DATA_DIR` if set, else `data/` in the project."""
    return os.environ.get("CLASSIFIER_DATA_DIR") or str(PROJECT_ROOT / "data")
