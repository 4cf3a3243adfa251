"""Versioned run folders: runs/version_N, never reused, also when two runs start at once."""

from __future__ import annotations

import re
from pathlib import Path

RUN_PATTERN = re.compile(r"version_(\d+)$")


def new_run_dir(runs_root: str | Path = "runs") -> Path:
    """Create and return the next free `runs_root/version_N`.

    `mkdir` without `exist_ok` is atomic, so of two processes racing for the same N one wins and
    the other moves on to N + 1.
    """
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    number = max((run_number(p) for p in root.iterdir()), default=-1) + 1
    while True:
        candidate = root / f"version_{number}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1


def run_number(path: Path) -> int:
    match = RUN_PATTERN.match(path.name)
    return int(match.group(1)) if match else -1


def list_runs(runs_root: str | Path = "runs") -> list[Path]:
    """Run folders, oldest first."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and run_number(p) >= 0), key=run_number)


def latest_run(runs_root: str | Path = "runs") -> Path:
    """The newest run folder, or a clear error when there is none."""
    runs = list_runs(runs_root)
    if not runs:
        raise FileNotFoundError(f"no run folders under {runs_root}/: train a model first")
    return runs[-1]


def resolve_run(run_dir: str | Path | None, runs_root: str | Path = "runs") -> Path:
    """`run_dir` if given (it must exist), else the newest run."""
    if not run_dir:
        return latest_run(runs_root)
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist")
    return path
