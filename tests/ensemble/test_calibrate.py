"""Per-fold score calibration: quantile maps fitted on each fold model's OOF boxes, applied to OOF and test boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from cxrdet import paths
from cxrdet.ensemble.calibrate import apply_map, calibrate_member, fit_maps
from cxrdet.ensemble.problem import load_oof
from cxrdet.ensemble.spec import load_ensemble, resolve
from cxrdet.ensemble.submit import predict_test
from cxrdet.ensemble.tune import tune
from cxrdet.errors import ConfigError
from cxrdet.io import write_parquet
from tests.helpers.ensemble_world import write_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


def boxes(scores: np.ndarray, label: int = 0) -> pd.DataFrame:
    n = len(scores)
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "x1": 0.0, "y1": 0.0, "x2": 10.0, "y2": 10.0,
                         "score": scores, "label": label})


def test_a_less_confident_fold_model_is_mapped_onto_the_pooled_scale() -> None:
    rng = np.random.default_rng(0)
    confident = rng.beta(4, 2, 300)
    parts = {0: boxes(confident), 1: boxes(confident * 0.5)}  # fold 1's model: the same boxes, half the score
    calibrated, maps = calibrate_member(parts, "quantile")
    a, b = calibrated[0]["score"].to_numpy(), calibrated[1]["score"].to_numpy()
    # Same boxes, same calibrated scores: the scale difference between the fold models is gone.
    np.testing.assert_allclose(a, b, atol=1e-5)
    # Monotone: each fold model's own ranking of its boxes is kept.
    assert (np.argsort(b, kind="stable") == np.argsort(confident, kind="stable")).all()
    # At its knots, fold k's q-th quantile lands on the pooled q-th quantile.
    pooled = np.concatenate([confident, confident * 0.5])
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):
        mapped = apply_map(boxes(np.array([np.quantile(confident * 0.5, q)])), maps["1"], "test")["score"].iloc[0]
        assert mapped == pytest.approx(np.quantile(pooled, q), abs=2e-6)
    assert set(maps) == {"0", "1"} and set(maps["0"]) == {"0"}
    assert calibrate_member(parts, None) == (parts, None)


def test_rate_calibration_matches_a_model_whose_low_scores_fell_below_the_prediction_cut() -> None:
    rng = np.random.default_rng(3)
    confident = rng.beta(2, 3, 4000)
    halved = confident * 0.5
    survives = halved >= 0.1  # the prediction cut: the weak model keeps fewer boxes per image
    parts = {0: boxes(confident), 1: boxes(halved[survives])}
    n_images = {0: 1000, 1: 1000}
    for method, tolerance in (("rate", 0.01), ("quantile", None)):
        maps = fit_maps(parts, method, n_images)
        a = apply_map(boxes(confident[survives]), maps["0"], "t")["score"].to_numpy()
        b = apply_map(parts[1], maps["1"], "t")["score"].to_numpy()
        gap = np.abs(a - b).max()  # one box scored by both fold models, after calibration
        if tolerance is not None:
            assert gap < tolerance, (method, gap)
        else:
            assert gap > 0.05, (method, gap)  # equal quantiles assume equal box counts: biased here
    with pytest.raises(ConfigError, match="calibration='rate' needs each fold's image count"):
        fit_maps(parts, "rate")


def test_classes_are_mapped_separately_and_sparse_classes_kept() -> None:
    rng = np.random.default_rng(1)
    low, high = rng.uniform(0.1, 0.3, 50), rng.uniform(0.6, 0.9, 50)
    parts = {0: pd.concat([boxes(low, 0), boxes(high, 1), boxes(np.array([0.42]), 2)], ignore_index=True),
             1: pd.concat([boxes(low * 0.8, 0), boxes(high, 1)], ignore_index=True)}
    maps = fit_maps(parts, "quantile")
    # Class 1 is alike in both folds: its map is the identity at every knot; class 0 of fold 1 is lifted.
    np.testing.assert_allclose(maps["1"]["1"]["x"], np.quantile(high, np.linspace(0, 1, 101)).round(6), atol=1e-6)
    out = apply_map(parts[1], maps["1"], "test")
    assert out.loc[out["label"] == 0, "score"].mean() > parts[1].loc[parts[1]["label"] == 0, "score"].mean()
    assert out.loc[out["label"] == 0, "score"].max() <= max(low.max(), (low * 0.8).max()) + 1e-6
    # One box of class 2 (fold 0 only): too few to map, its score is kept.
    assert "2" not in maps["0"] and "2" not in maps["1"]
    kept = apply_map(parts[0], maps["0"], "test")
    assert kept.loc[kept["label"] == 2, "score"].tolist() == [0.42]


def test_a_malformed_map_is_refused_naming_its_source() -> None:
    with pytest.raises(ConfigError, match=r"params.json of m fold 2: calibration map of class 0: .*strictly"):
        apply_map(boxes(np.array([0.5])), {"0": {"x": [0.2, 0.1], "y": [0.0, 1.0]}}, "params.json of m fold 2")
    with pytest.raises(ConfigError, match="expected dict"):
        apply_map(boxes(np.array([0.5])), {"0": {"y": [0.0, 1.0]}}, "params.json")


@pytest.mark.slow
def test_calibration_is_tuned_stored_and_applied_to_each_fold_models_test_boxes(world, tmp_path: Path) -> None:
    # det_a's fold-1 model is less confident on its OOF and test images alike.
    for split in ("oof", "test"):
        path = paths.predictions_path("det_a", 1, split)
        frame = pd.read_parquet(path)
        write_parquet(path, frame.assign(score=frame["score"] * 0.4))
    spec = load_ensemble(write_config(tmp_path / "cal.py", world, n_trials=4, extra="calibration = 'quantile'"))
    plain = load_ensemble(write_config(tmp_path / "plain.py", world, n_trials=4))
    oof, raw = load_oof(spec), load_oof(plain)
    # OOF: fold 1's boxes lifted back towards the other folds', through the map kept in `oof.calibration`.
    maps = oof.calibration["det_a"]
    fold1 = pd.read_parquet(paths.predictions_path("det_a", 1, "oof"))
    np.testing.assert_allclose(
        oof.members["det_a"].loc[oof.members["det_a"]["image_id"].isin(fold1["image_id"]), "score"].to_numpy(),
        apply_map(fold1, maps["1"], "t")["score"].to_numpy())
    assert fold1["score"].mean() < oof.members["det_a"].loc[
        oof.members["det_a"]["image_id"].isin(fold1["image_id"]), "score"].mean()
    assert raw.calibration is None
    tune(spec, honest=False)
    record = json.loads((paths.ensemble_dir("cal") / "params.json").read_text())
    assert set(record["calibration"]) == {"det_a", "det_b"} and set(record["calibration"]["det_a"]) == {"0", "1", "2"}
    params = resolve(spec, record["params"])
    calibrated, _ = predict_test(spec, params, world["test_ids"], calibration=record["calibration"])
    with pytest.raises(ConfigError, match="hold no calibration maps"):
        predict_test(spec, params, world["test_ids"])
    # The same boxes as an uncalibrated ensemble over test files already passed through each fold model's own map.
    for m in ("det_a", "det_b"):
        for k in range(3):
            path = paths.predictions_path(m, k, "test")
            write_parquet(path, apply_map(pd.read_parquet(path), record["calibration"][m][str(k)], str(path)))
    with pytest.raises(ConfigError, match=r"cal/params.json: calibration holds no map of member 'det_b' fold 0"):
        predict_test(spec, params, world["test_ids"], calibration={"det_a": record["calibration"]["det_a"]})
    by_hand, _ = predict_test(plain, params, world["test_ids"])
    np.testing.assert_allclose(calibrated.score, by_hand.score, atol=1e-12)
    np.testing.assert_allclose(calibrated.boxes, by_hand.boxes, atol=1e-9)
