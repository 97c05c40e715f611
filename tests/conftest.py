"""Shared pytest fixtures: isolated outputs folder and the real-data skip rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cxrdet import paths
from tests.helpers import squares


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny RetinaNet trained 2 epochs on fold 0 of the squares data (`tests.helpers.squares`), with its OOF
    predictions (for the report, export and inference tests).

    Returns:
        `outputs` (the CXRDET_OUTPUTS folder holding the run: point the variable there to use `cxrdet.paths`),
        `options` (the `--cfg-options` of the run), `config` (its experiment config) and `experiment`.
    """
    import torch

    from cxrdet.config import load_config
    from cxrdet.tasks import predict, train

    folder = tmp_path_factory.mktemp("tiny_run")
    options = squares.tiny_options(squares.write_squares_dataset(folder / "data"), **{"train.epochs": 2})
    config = squares.TINY
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRDET_OUTPUTS", str(folder / "outputs"))
        cfg = load_config(config, options)
        train(cfg, fold=0)
        predict(cfg, 0, split="oof")
    return {"outputs": folder / "outputs", "options": options, "config": config, "experiment": cfg["experiment"]}


@pytest.fixture(scope="session")
def tiny_classifier_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny binary classifier (cls_regnetx002_128_tiny12e with ResNet-10t at 64 px) trained 3 epochs on folds 0
    and 1 of the squares data, with both folds' OOF probabilities (for the classifier report, Grad-CAM and
    export tests).

    The squares fold file puts every third image in one fold, which makes whole folds positive or negative; this
    fixture writes its own fold file that mixes both in every fold (an AUROC needs both).

    Returns:
        `outputs` (the CXRDET_OUTPUTS folder holding the runs), `options` (their `--cfg-options`), `config` (the
        experiment config), `experiment`, and `data` (the squares data options).
    """
    import pandas as pd
    import torch

    from cxrdet.config import load_config
    from cxrdet.tasks import predict, train

    folder = tmp_path_factory.mktemp("tiny_classifier_run")
    data = squares.write_squares_dataset(folder / "data")
    folds = pd.read_csv(data["data.folds"])
    folds["fold"] = [(i // 3) % 3 for i in range(len(folds))]  # image i is positive unless i % 3 == 2
    folds.to_csv(data["data.folds"], index=False)
    # ResNet-10t rather than the config's MobileNet-V3-Small: from scratch on batches of 4 the latter's loss climbs
    # (0.5 -> 9 in 3 epochs) and its probabilities collapse to ~1e-19, which leaves Grad-CAM nothing to show.
    options = squares.tiny_options(data, **{"train.epochs": 3, "model.name": "resnet10t"})
    config = paths.CONFIGS_DIR / "experiments" / "cls_regnetx002_128_tiny12e.py"
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRDET_OUTPUTS", str(folder / "outputs"))
        cfg = load_config(config, options)
        for fold in (0, 1):
            train(cfg, fold=fold)
            predict(cfg, fold, split="oof")
    return {"outputs": folder / "outputs", "options": options, "config": config, "experiment": cfg["experiment"],
            "data": data}
