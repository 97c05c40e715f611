"""Per-fold score calibration: make each fold model's confidences comparable before they are pooled or merged.

A member's OOF boxes come from k fold models, each scoring its own held-out fold. Fold models trained on different
data disagree in calibration: in the demo, FCOS's fold-2 model scored every box lower, so one pooled confidence cut
(tuned on all folds) dropped all its boxes. The same cut then meets that model's test boxes in the fold merge.

`quantile` calibration (`calibration='quantile'` in an ensemble config) maps each fold model's scores, per class,
through its own score distribution onto the member's pooled one: a score at the q-th quantile of fold model k's OOF
boxes of class c becomes the q-th quantile of all folds' OOF boxes of class c. The map is monotone, so each model's
ranking of its own boxes is unchanged; only the scale across fold models is aligned. Images are assigned to folds at
random (stratified), so the fold models see exchangeable images and should score alike.

No label is used: the maps are fitted on the predictions alone, so the honest estimate stays honest (the study
tuned without fold k sees fold k's unlabelled scores in the pooled target, never its labels). A map fitted against
the fold's own validation cut would need fold k's labels and leak them into the held-out fold.

Each fold model's map is kept in `params.json` (`calibration`), and `cxrdet submit` (so also the offline bundle,
which runs it) applies that fold model's map to its test boxes before the fold merge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet.errors import ConfigError

METHODS: tuple[str, ...] = ("quantile",)
N_KNOTS = 101  # quantiles 0, 0.01, ..., 1 of each fold model's scores
DECIMALS = 6  # the knots as stored (prediction files hold float32 scores: about 7 significant digits)

ClassMap = dict[str, list[float]]
"""One fold model's map of one class: `x` (its own score quantiles, increasing) -> `y` (the pooled quantiles)."""


def _knots(own: npt.NDArray[np.float64], pooled: npt.NDArray[np.float64]) -> ClassMap | None:
    """The quantile map of one fold model's scores `own` onto `pooled` (None: too few boxes to map)."""
    if len(own) < 2 or len(pooled) < 2:
        return None
    q = np.linspace(0.0, 1.0, N_KNOTS)
    x = np.round(np.quantile(own, q), DECIMALS)
    y = np.round(np.quantile(pooled, q), DECIMALS)
    # Tied knots (many boxes with one score): one knot per distinct x, its y the mean of the tied ones, so that
    # np.interp sees strictly increasing abscissae.
    ux, inverse = np.unique(x, return_inverse=True)
    uy = np.round(np.bincount(inverse, weights=y) / np.bincount(inverse), DECIMALS)
    if len(ux) < 2:
        return None
    return {"x": ux.tolist(), "y": uy.tolist()}


def fit_quantile_maps(parts: Mapping[int, pd.DataFrame]) -> dict[str, dict[str, ClassMap]]:
    """Maps of one member's fold models from their OOF boxes (`parts`: fold -> frame with `score` and `label`).

    Returns:
        fold (as a string, a JSON key) -> class label (string) -> `ClassMap`; a class a fold model has fewer than two
        boxes of (or only one distinct score) has no map and keeps its scores.
    """
    frames = {int(k): f for k, f in parts.items()}
    labels = sorted({int(v) for f in frames.values() for v in _labels(f)})
    pooled = {c: np.concatenate([f["score"].to_numpy(np.float64)[_labels(f) == c] for f in frames.values()])
              for c in labels}
    out: dict[str, dict[str, ClassMap]] = {}
    for k, f in frames.items():
        maps = {}
        scores, lab = f["score"].to_numpy(np.float64), _labels(f)
        for c in labels:
            m = _knots(scores[lab == c], pooled[c])
            if m is not None:
                maps[str(c)] = m
        out[str(k)] = maps
    return out


def _labels(frame: pd.DataFrame) -> npt.NDArray[np.int64]:
    return frame["label"].to_numpy(np.int64) if "label" in frame.columns else np.zeros(len(frame), np.int64)


def apply_map(frame: pd.DataFrame, maps: Mapping[str, ClassMap], source: str) -> pd.DataFrame:
    """`frame` (one fold model's boxes) with its scores mapped through that model's class maps.

    Raises:
        ConfigError: A map is malformed (naming `source`, where it was read).
    """
    if frame.empty or not maps:
        return frame
    scores = frame["score"].to_numpy(np.float64).copy()
    lab = _labels(frame)
    for c, m in maps.items():
        try:
            x, y = np.asarray(m["x"], np.float64), np.asarray(m["y"], np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{source}: calibration map of class {c}: {err}; "
                              "expected dict(x=[...], y=[...])") from err
        if len(x) != len(y) or len(x) < 2 or np.any(np.diff(x) <= 0):
            raise ConfigError(f"{source}: calibration map of class {c}: expected x and y of one length >= 2 with x "
                              f"strictly increasing, got {len(x)} x and {len(y)} y")
        rows = lab == int(c)
        scores[rows] = np.interp(scores[rows], x, y)
    return frame.assign(score=scores)


def calibrate_member(parts: Mapping[int, pd.DataFrame], method: str | None
                     ) -> tuple[dict[int, pd.DataFrame], dict[str, Any] | None]:
    """One member's OOF fold parts calibrated by `method` (None: unchanged), and the maps to store."""
    if method is None:
        return dict(parts), None
    if method not in METHODS:
        raise ConfigError(f"calibration={method!r}: expected None or one of {list(METHODS)}")
    maps = fit_quantile_maps(parts)
    return {k: apply_map(f, maps[str(int(k))], f"fold {k}") for k, f in parts.items()}, maps
