"""Reading the public repositories the data-set scripts in bench/ build their folders from."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path


def repository_files(source: Path, subtree: str) -> dict[str, bytes]:
    """Every file under `subtree` at HEAD of the repository at `source` (a clone or a bare mirror, such as
    the fetch tool's): {path in the repository: bytes}."""
    git_dir = source / ".git" if (source / ".git").exists() else source
    archive = subprocess.run(
        ["git", f"--git-dir={git_dir}", "archive", "--format=tar", "HEAD", subtree], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers() if member.isfile()}
