"""COCO-style mAP through faster-coco-eval: hand-computed APs, class handling, and silence."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from cxrdet.errors import TableError
from cxrdet.metrics.coco import coco_map

COLS = ["image_id", "x1", "y1", "x2", "y2", "label"]
CLASSES = ["opacity", "nodule", "effusion"]
# COCO interpolates precision at the 101 recall points 0, 0.01, ..., 1: recall <= 0.5 covers 51 of them.
HALF_RECALL = 51 / 101


def boxes(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COLS)


def preds(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=[*COLS, "score"])


def test_perfect_predictions_give_one() -> None:
    gt = boxes(("a", 0, 0, 10, 10, 0), ("a", 50, 50, 80, 90, 1), ("b", 5, 5, 25, 15, 0))
    res = coco_map(gt, gt.assign(score=[0.9, 0.8, 0.7]), ["a", "b", "c"], CLASSES)
    assert res == {"map_50_95": 1.0, "map_50": 1.0, "map_40": 1.0}


def test_half_recall_with_a_lower_ranked_false_positive() -> None:
    # Ranked: TP (precision 1, recall 0.5), then FP (0.5, 0.5); interpolated precision is 1 up to recall 0.5, then 0.
    gt = boxes(("a", 0, 0, 10, 10, 0), ("b", 0, 0, 10, 10, 0))
    pred = preds(("a", 0, 0, 10, 10, 0, 0.9), ("c", 0, 0, 10, 10, 0, 0.8))
    res = coco_map(gt, pred, ["a", "b", "c"], CLASSES[:1])
    assert res == pytest.approx({"map_50_95": HALF_RECALL, "map_50": HALF_RECALL, "map_40": HALF_RECALL}, abs=1e-12)


def test_higher_ranked_false_positive_halves_precision() -> None:
    # Ranked: FP (0, 0), then TP (0.5, 0.5): interpolated precision 0.5 up to recall 0.5.
    gt = boxes(("a", 0, 0, 10, 10, 0), ("b", 0, 0, 10, 10, 0))
    pred = preds(("a", 0, 0, 10, 10, 0, 0.8), ("c", 0, 0, 10, 10, 0, 0.9))
    assert coco_map(gt, pred, ["a", "b", "c"], CLASSES[:1])["map_50"] == pytest.approx(0.5 * HALF_RECALL, abs=1e-12)


def test_iou_045_counts_at_040_only() -> None:
    gt = boxes(("a", 0, 0, 10, 10, 0))
    pred = preds(("a", 0, 0, 10, 4.5, 0, 0.9))  # IoU 45/100
    assert coco_map(gt, pred, ["a"], CLASSES[:1]) == {"map_50_95": 0.0, "map_50": 0.0, "map_40": 1.0}


def test_classes_are_separate_and_classes_without_gt_are_left_out() -> None:
    # Class 0 perfect (AP 1), class 1 missed (AP 0), class 2 has no GT (left out, its FP changes nothing): 0.5.
    gt = boxes(("a", 0, 0, 10, 10, 0), ("a", 30, 30, 60, 60, 1))
    pred = preds(("a", 0, 0, 10, 10, 0, 0.9), ("a", 30, 30, 60, 60, 2, 0.9))
    assert coco_map(gt, pred, ["a"], CLASSES)["map_50"] == pytest.approx(0.5, abs=1e-12)


def test_no_gt_at_all_gives_nan() -> None:
    res = coco_map(boxes(), preds(("a", 0, 0, 10, 10, 0, 0.9)), ["a"], CLASSES)
    assert all(np.isnan(v) for v in res.values())


def test_invalid_input_is_reported() -> None:
    gt = boxes(("a", 0, 0, 10, 10, 0))
    with pytest.raises(TableError, match="label outside 0..2"):
        coco_map(gt, preds(("a", 0, 0, 10, 10, 3, 0.9)), ["a"], CLASSES)
    with pytest.raises(TableError, match="not in image_ids.*'zz'"):
        coco_map(gt, preds(("zz", 0, 0, 10, 10, 0, 0.9)), ["a"], CLASSES)
    with pytest.raises(TableError, match="lacks column"):
        coco_map(gt, gt, ["a"], CLASSES)


def test_nothing_leaks_to_the_user(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    gt = boxes(("a", 0, 0, 10, 10, 0), ("b", 0, 0, 10, 10, 1))
    pred = preds(("a", 1, 1, 10, 10, 0, 0.9), ("b", 0, 0, 5, 5, 0, 0.3))
    library_logger = logging.getLogger("faster_coco_eval")
    level = library_logger.level
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings():
        warnings.simplefilter("error")
        coco_map(gt, pred, ["a", "b"], CLASSES)
    assert [r for r in caplog.records if r.name.startswith("faster_coco_eval")] == []
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert library_logger.level == level  # restored
