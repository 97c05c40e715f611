"""Per-fold score calibration: make each fold model's confidences comparable before they are pooled or merged.

A member's OOF boxes come from k fold models, each scoring its own held-out fold. Fold models trained on different
data disagree in calibration: in the demo, FCOS's fold-2 model scored every box lower, so one pooled confidence cut
(tuned on all folds) dropped all its boxes. The same cut then meets that model's test boxes in the fold merge.

Two label-free maps, per fold model and class, both monotone (each model's ranking of its own boxes is unchanged; only
the scale across fold models is aligned). Images are assigned to folds at random (stratified), so the fold models
see exchangeable images and should score alike.

- `quantile`: a score at the q-th quantile of fold model k's OOF boxes of class c becomes the q-th quantile of all
  folds' OOF boxes of class c.
- `rate`: a score above which fold model k keeps r boxes per image becomes the pooled score above which all fold
  models together keep r boxes per image. Unlike `quantile` it does not assume the fold models output as many boxes
  per image: a less confident model whose low scores fell below the prediction cut has fewer boxes, and matching
  quantiles would then lift its top boxes too little.

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

METHODS: tuple[str, ...] = ("quantile", "rate")
N_KNOTS = 101  # quantiles 0, 0.01, ..., 1 of each fold model's scores
DECIMALS = 6  # the knots as stored (prediction files hold float32 scores: about 7 significant digits)

ClassMap = dict[str, list[float]]
"""One fold model's map of one class: `x` (its own score quantiles, increasing) -> `y` (the pooled quantiles)."""


def _knots(own: npt.NDArray[np.float64], pooled: npt.NDArray[np.float64], density: float = 1.0) -> ClassMap | None:
    """The map of one fold model's scores `own` onto `pooled` (None: too few boxes to map).

    `density`: the fold model's boxes per image over the pooled boxes per image (1: `quantile`). A score with a share
    1 - q of the model's boxes above it keeps (1 - q) x density of the pooled boxes' share above its image.
    """
    if len(own) < 2 or len(pooled) < 2:
        return None
    q = np.linspace(0.0, 1.0, N_KNOTS)
    x = np.round(np.quantile(own, q), DECIMALS)
    y = np.round(np.quantile(pooled, np.clip(1.0 - (1.0 - q) * density, 0.0, 1.0)), DECIMALS)
    # Tied knots (many boxes with one score): one knot per distinct x, its y the mean of the tied ones, so that
    # np.interp sees strictly increasing abscissae.
    ux, inverse = np.unique(x, return_inverse=True)
    uy = np.round(np.bincount(inverse, weights=y) / np.bincount(inverse), DECIMALS)
    if len(ux) < 2:
        return None
    return {"x": ux.tolist(), "y": uy.tolist()}


def fit_maps(parts: Mapping[int, pd.DataFrame], method: str = "quantile",
             n_images: Mapping[int, int] | None = None) -> dict[str, dict[str, ClassMap]]:
    """Maps of one member's fold models from their OOF boxes (`parts`: fold -> frame with `score` and `label`).

    Args:
        method: `quantile` or `rate` (see the module docstring).
        n_images: Images of each fold (boxes or not), needed by `rate`.

    Returns:
        fold (as a string, a JSON key) -> class label (string) -> `ClassMap`; a class a fold model has fewer than two
        boxes of (or only one distinct score) has no map and keeps its scores.
    """
    if method not in METHODS:
        raise ConfigError(f"calibration={method!r}: expected None or one of {list(METHODS)}")
    frames = {int(k): f for k, f in parts.items()}
    if method == "rate" and (n_images is None or any(n_images.get(k, 0) < 1 for k in frames)):
        raise ConfigError(f"calibration='rate' needs each fold's image count; got {dict(n_images or {})} for folds "
                          f"{sorted(frames)}")
    labels = sorted({int(v) for f in frames.values() for v in _labels(f)})
    pooled = {c: np.concatenate([f["score"].to_numpy(np.float64)[_labels(f) == c] for f in frames.values()])
              for c in labels}
    total_images = sum(n_images[k] for k in frames) if method == "rate" and n_images is not None else 0
    out: dict[str, dict[str, ClassMap]] = {}
    for k, f in frames.items():
        maps = {}
        scores, lab = f["score"].to_numpy(np.float64), _labels(f)
        for c in labels:
            own = scores[lab == c]
            density = 1.0
            if method == "rate" and n_images is not None and len(pooled[c]):
                density = (len(own) / n_images[k]) / (len(pooled[c]) / total_images)
            m = _knots(own, pooled[c], density)
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


def calibrate_member(parts: Mapping[int, pd.DataFrame], method: str | None,
                     n_images: Mapping[int, int] | None = None
                     ) -> tuple[dict[int, pd.DataFrame], dict[str, Any] | None]:
    """One member's OOF fold parts calibrated by `method` (None: unchanged), and the maps to store."""
    if method is None:
        return dict(parts), None
    maps = fit_maps(parts, method, n_images)
    return {k: apply_map(f, maps[str(int(k))], f"fold {k}") for k, f in parts.items()}, maps
