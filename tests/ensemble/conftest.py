"""The ensemble tests' world: a tiny ensemble on disk (`tests.helpers.ensemble_world`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.ensemble_world import make_world


@pytest.fixture
def world(tmp_path: Path) -> dict[str, object]:
    return make_world(tmp_path)
