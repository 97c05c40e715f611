"""One progress-bar factory for every long loop, so all of them behave the same in a terminal and in a log file."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr: live in a terminal, one line every 30 s when stderr is a file or a CI log.

    Args:
        iterable: What to iterate over, or None for a manually updated bar.
        total: Number of steps when it cannot be taken from `iterable`.
        desc: Short label shown before the bar.
        enabled: False turns the bar off entirely (library use, tests).
        **kwargs: Passed to tqdm.
    """
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, unit=kwargs.pop("unit", "it"), disable=not enabled, **kwargs)
