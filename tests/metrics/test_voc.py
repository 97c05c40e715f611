"""PASCAL VOC mAP at IoU > 0.4 (the VinBigData metric): hand-computed cases, the devkit's loop, faster-coco-eval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrdet.errors import TableError
from cxrdet.metrics.voc import VocEvaluator, all_point_ap, voc_map
from tests.helpers.reference import reference_voc_map

GT_COLS = ["image_id", "x1", "y1", "x2", "y2", "label"]
PRED_COLS = [*GT_COLS, "score"]
CLASSES = ("a", "b", "c")


def gt_df(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=GT_COLS)


def pred_df(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=PRED_COLS)


def test_all_point_ap_by_hand() -> None:
    # Two true boxes; ranked TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # Envelope: 1 up to recall 1/2, then 2/3: AP = 0.5 * 1 + 0.5 * 2/3.
    assert all_point_ap([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]) == pytest.approx(0.5 + 1 / 3)
    # A later, higher precision lifts the envelope before it (the VOC 2010 interpolation).
    assert all_point_ap([0.5, 0.5, 1.0], [0.5, 1 / 3, 0.5]) == pytest.approx(0.5)
    assert all_point_ap([], []) == 0.0


def test_map_by_hand_with_a_duplicate_and_an_empty_class() -> None:
    gt = gt_df(("i1", 0, 0, 10, 10, 0), ("i2", 0, 0, 10, 10, 0), ("i1", 50, 50, 60, 60, 1))
    pred = pred_df(
        ("i1", 0, 0, 10, 10, 0, 0.9),    # class a: TP on i1's box
        ("i1", 1, 0, 11, 10, 0, 0.8),    # its best box is i1's, already taken: a duplicate, FP
        ("i2", 0, 0, 10, 12, 0, 0.7),    # IoU 100/120: TP on i2's box
        ("i1", 50, 50, 60, 60, 1, 0.3),  # class b: TP
        ("i2", 0, 0, 5, 5, 2, 0.6),      # class c has no ground truth: counts nowhere
    )
    result = voc_map(gt, pred, ["i1", "i2"], CLASSES)
    # Class a: TP, FP, TP over 2 boxes -> 0.5 + 0.5 * 2/3; class b: 1.0; class c left out.
    ap_a = 0.5 + 0.5 * 2 / 3
    assert result.per_class["ap"].tolist()[:2] == pytest.approx([ap_a, 1.0])
    assert np.isnan(result.per_class["ap"].iloc[2])
    assert result.map == pytest.approx((ap_a + 1.0) / 2)
    assert result.tp.tolist() == [True, False, True, True, False]
    assert result.per_class[["n_gt", "n_pred", "tp"]].to_numpy().tolist() == [[2, 3, 2], [1, 1, 1], [0, 1, 0]]


def test_the_iou_must_be_strictly_above_the_threshold() -> None:
    gt = gt_df(("i", 0, 0, 10, 10, 0))
    exact = pred_df(("i", 0, 0, 10, 4, 0, 0.9))  # IoU 40/100 = 0.4 exactly
    assert voc_map(gt, exact, ["i"], CLASSES).map == 0.0
    assert voc_map(gt, exact, ["i"], CLASSES, iou_thr=0.39).map == 1.0


def test_a_prediction_takes_its_best_box_even_when_it_is_taken() -> None:
    # VOC's rule (not COCO's): the second prediction's best box is the taken one, so it is a FP although it overlaps
    # the other true box above the threshold.
    gt = gt_df(("i", 0, 0, 10, 10, 0), ("i", 6, 0, 16, 10, 0))
    pred = pred_df(("i", 0, 0, 10, 10, 0, 0.9), ("i", 2, 0, 12, 10, 0, 0.8))
    # The second box: IoU 8/12 with the first true box, 6/14 with the second (above 0.4): VOC says FP.
    assert voc_map(gt, pred, ["i"], CLASSES).tp.tolist() == [True, False]
    assert voc_map(gt, pred, ["i"], CLASSES).map == pytest.approx(0.5)


def test_ties_follow_row_order_of_predictions_and_of_ground_truth() -> None:
    gt = gt_df(("i", 1, 0, 11, 10, 0), ("i", -1, 0, 9, 10, 0))  # both IoU 90/110 with the prediction below
    pred = pred_df(("i", 0, 0, 10, 10, 0, 0.5), ("i", 0, 0, 10, 10, 0, 0.5))
    result = voc_map(gt, pred, ["i"], CLASSES)
    # Equal scores: the first row is visited first and takes the first true box; the second row's best box is the
    # same (first on ties), so it is a duplicate.
    assert result.tp.tolist() == [True, False]


def test_a_class_with_ground_truth_and_no_prediction_scores_zero() -> None:
    gt = gt_df(("i", 0, 0, 10, 10, 0), ("i", 0, 0, 10, 10, 1))
    pred = pred_df(("i", 0, 0, 10, 10, 0, 0.9))
    assert voc_map(gt, pred, ["i"], CLASSES).map == pytest.approx(0.5)
    assert np.isnan(voc_map(gt_df(), pred_df(), ["i"], CLASSES).map)


def _random_case(rng: np.random.Generator, n_images: int = 40, n_classes: int = 3) -> tuple[pd.DataFrame, ...]:
    ids = [f"im{i}" for i in range(n_images)]
    gts, preds = [], []
    for image_id in ids:
        for _ in range(rng.poisson(1.5)):
            x, y = rng.uniform(0, 80, 2)
            w, h = rng.uniform(5, 30, 2)
            c = int(rng.integers(n_classes))
            gts.append((image_id, x, y, x + w, y + h, c))
            for _ in range(rng.poisson(1.2)):  # jittered detections, some duplicates
                jx, jy = rng.normal(0, 3, 2)
                preds.append((image_id, x + jx, y + jy, x + w + jx, y + h + jy, c, float(rng.random())))
        for _ in range(rng.poisson(1.0)):  # false positives
            x, y = rng.uniform(0, 80, 2)
            preds.append((image_id, x, y, x + 15, y + 15, int(rng.integers(n_classes)), float(rng.random())))
    return gt_df(*gts), pred_df(*preds), pd.Index(ids)


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_devkit_loop_on_random_cases(seed: int) -> None:
    gt, pred, ids = _random_case(np.random.default_rng(seed))
    ref_map, ref_aps = reference_voc_map(gt, pred, len(CLASSES))
    result = voc_map(gt, pred, ids, CLASSES)
    assert result.map == pytest.approx(ref_map, abs=1e-12)
    assert np.allclose(result.per_class["ap"].to_numpy(), ref_aps, equal_nan=True, atol=1e-12)


def test_agrees_with_faster_coco_eval_where_the_definitions_coincide() -> None:
    from cxrdet.metrics.coco import coco_map

    # One true box per class: recall is 0 or 1, so the 101-point and the all-point interpolation agree, and with
    # one box there is nothing to fall back to. The detections' ranks and overlaps vary.
    rng = np.random.default_rng(3)
    for trial in range(5):
        ids = [f"im{i}" for i in range(6)]
        gt = gt_df(*[(ids[c + trial % 3], 10.0 * c, 5.0, 10.0 * c + 20, 30.0, c) for c in range(3)])
        rows = []
        for c in range(3):
            image = ids[c + trial % 3]
            for k in range(4):
                shift = rng.choice([0.0, 2.0, 30.0])  # exact, close (IoU well above 0.4), or far
                rows.append((image, 10.0 * c + shift, 5.0, 10.0 * c + 20 + shift, 30.0, c, float(rng.random())))
            rows.append((ids[(c + 3) % 6], 0.0, 0.0, 9.0, 9.0, c, float(rng.random())))  # an FP on another image
        pred = pred_df(*rows)
        ours = voc_map(gt, pred, ids, CLASSES).map
        assert ours == pytest.approx(coco_map(gt, pred, ids, CLASSES)["map_40"], abs=1e-9)


def test_bad_tables_are_named() -> None:
    gt = gt_df(("i", 0, 0, 10, 10, 0))
    with pytest.raises(TableError, match="label outside 0..2"):
        VocEvaluator(gt_df(("i", 0, 0, 10, 10, 3)), ["i"], CLASSES)
    with pytest.raises(TableError, match="x2 < x1"):
        VocEvaluator(gt_df(("i", 10, 0, 0, 10, 0)), ["i"], CLASSES)
    evaluator = VocEvaluator(gt, ["i"], CLASSES)
    with pytest.raises(TableError, match="not in the evaluated image set"):
        evaluator.score(pred_df(("j", 0, 0, 10, 10, 0, 0.5)))
    with pytest.raises(TableError, match=r"lacks column\(s\) \['score'\]"):
        evaluator.score(gt)


@pytest.mark.parametrize("seed", range(4))
def test_ap_vs_threshold_equals_scoring_each_cut(seed: int) -> None:
    """One matching for every cut against scoring each cut's kept boxes: unsorted cuts, cuts equal to a box's
    score (kept), tied scores, and cuts that keep everything or nothing."""
    rng = np.random.default_rng(seed)
    gt, pred, ids = _random_case(rng, n_images=50)
    if seed % 2:
        pred["score"] = (pred["score"] * 5).round() / 5  # ties
    evaluator = VocEvaluator(gt, ids, CLASSES)
    cuts = [0.5, 0.0, 1.01, *rng.choice(pred["score"].to_numpy(), 3), 0.25, 0.5]
    table = evaluator.ap_vs_threshold(pred, cuts)
    assert table.shape == (len(cuts), len(CLASSES))
    for j, cut in enumerate(cuts):
        expected = evaluator.score(pred[pred["score"] >= cut]).per_class["ap"].to_numpy()
        np.testing.assert_allclose(table[j], expected, atol=1e-12, equal_nan=True)
