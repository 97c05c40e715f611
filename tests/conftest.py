"""Shared pytest fixtures: isolated outputs folder and the real-data skip rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrdet import paths


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point `CXRDET_OUTPUTS` at a temporary folder so tests never touch the repository's outputs."""
    out = tmp_path_factory.mktemp("outputs")
    monkeypatch.setenv("CXRDET_OUTPUTS", str(out))
    return out


def require_real(path: Path) -> Path:
    """Skip the calling test, with the reason, when a real label table in ../shared/data is absent."""
    if not path.exists():
        pytest.skip(f"real label table not found at {path} (set CXRDET_SHARED_DATA or place ../shared/data)")
    return path


@pytest.fixture
def real_rsna_labels() -> Path:
    return require_real(paths.real_rsna_labels())


@pytest.fixture
def real_rsna_headers() -> Path:
    return require_real(paths.real_rsna_headers())


@pytest.fixture
def real_nih_labels() -> Path:
    return require_real(paths.real_nih_labels())
