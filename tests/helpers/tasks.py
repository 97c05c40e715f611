"""Swapping a registered task's LightningModule for a test's subclass (a run that dies, a score that worsens)."""

from __future__ import annotations

import dataclasses

import pytest

from cxrdet.tasks import TASKS


def use_module(monkeypatch: pytest.MonkeyPatch, task: str, module_cls: type) -> None:
    """Make task `task` train and predict with `module_cls` until the test ends."""
    monkeypatch.setitem(TASKS._entries, task, dataclasses.replace(TASKS.get(task), module=module_cls))
