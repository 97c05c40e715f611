"""Exceptions that tell the user what to fix.

Every error names the file, the row or field, the offending value and the expected form. The CLI prints the
message of any `CxrdetError` and exits non-zero; library code never calls `exit()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class CxrdetError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class DicomError(CxrdetError):
    """A DICOM file cannot be used: unreadable, truncated, no pixels, wrong shape or colour."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class TableError(CxrdetError):
    """One or more rows of a table (labels, folds, submission) are invalid.

    Args:
        path: The file the table came from (or a description when it was built in memory).
        problems: One message per problem, each naming the row (1-based line number in the file where known),
            the field, the value and what was expected.
    """

    def __init__(self, path: str | Path, problems: Sequence[str], max_shown: int = 50) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        shown = self.problems[:max_shown]
        more = len(self.problems) - len(shown)
        lines = [f"{self.path}: {len(self.problems)} problem(s)"] + [f"  - {p}" for p in shown]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


class ConfigError(CxrdetError):
    """A config file or option has a missing or invalid value."""


class CheckpointError(CxrdetError):
    """A checkpoint file cannot be used: unreadable, or holding objects that only arbitrary code can rebuild."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
