"""Where a result came from: the git revision, recorded beside every run, tuned ensemble and submission."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from cxrdet import paths


def git_revision(repo: Path = paths.REPO_ROOT) -> dict[str, Any]:
    """The repository's commit and whether tracked files differ from it (None when git or the repo is absent)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}
