"""Writing files whole or not at all, and reading the JSON records the project writes.

Every file the project writes (checkpoints, run records, reports, CSVs, cache indexes) goes through
`atomic_write`: a reader never sees a half-written file, and a failed write leaves the previous file
as it was.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o644  # mkstemp makes files private (0600); the project's files are ordinary ones


def atomic_write(path: str | Path, content: str | bytes | Callable[[IO[bytes]], Any]) -> Path:
    """Write `content` (text as UTF-8, bytes, or a function writing to a binary handle) to `path`.

    A uniquely named temporary file in the same folder is written, flushed to disk and renamed over
    `path`, so two writers never share a temporary file and a crash leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, record: Any) -> Path:
    """A JSON record (indented, newline-terminated), written atomically."""
    return atomic_write(path, json.dumps(record, indent=2) + "\n")


def read_json(path: str | Path) -> dict:
    """A record such as metrics.json, or {} when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run such a cell as a formula


def csv_safe(cell: str) -> str:
    """A text cell that a spreadsheet shows as text, never runs as a formula (OWASP: a leading `'`)."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def write_csv(path: str | Path, header: list[str], rows, formula_guard: bool = True) -> Path:
    """A CSV file written atomically. With `formula_guard` every text cell, the header's too, goes
    through `csv_safe`; without it cells are written exactly (for a grader that compares them)."""
    guard = csv_safe if formula_guard else str
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in [header, *rows]:
        writer.writerow([guard(cell) if isinstance(cell, str) else cell for cell in row])
    return atomic_write(path, buffer.getvalue())
