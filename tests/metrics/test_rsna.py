"""The RSNA metric: one hand-computed case per rule, properties, and agreement with a plain-loop reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxrdet.errors import TableError
from cxrdet.metrics.rsna import IOU_THRESHOLDS, RsnaEvaluator, rsna_score, score_vs_threshold
from tests.helpers import reference

GT_COLS = ["image_id", "x1", "y1", "x2", "y2"]
PRED_COLS = [*GT_COLS, "score"]




def gt_df(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=GT_COLS)


def pred_df(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=PRED_COLS)


# ---- hand-computed cases (boxes xyxy pixels; unit-height strips make IoUs easy: [a, b] x [0, 10]) ----


def test_thresholds_are_the_competitions() -> None:
    np.testing.assert_allclose(IOU_THRESHOLDS, [0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75])


@pytest.mark.parametrize(
    ("pred_y2", "n_matched"),
    [
        (5.0, 2),  # IoU exactly 0.50: matches at 0.40 and 0.45, not at 0.50 (strictly above the threshold)
        (4.0, 0),  # IoU exactly 0.40: matches nowhere
        (7.5, 7),  # IoU exactly 0.75: matches at 0.40..0.70, not at 0.75
        (10.0, 8),  # IoU 1
    ],
)
def test_iou_must_be_strictly_above_the_threshold(pred_y2: float, n_matched: int) -> None:
    gt = gt_df(("a", 0, 0, 10, 10))
    pred = pred_df(("a", 0, 0, 10, pred_y2, 0.9))
    res = rsna_score(gt, pred)
    # Matched: TP=1 -> 1/1; not matched: TP=0, FP=1, FN=1 -> 0.
    assert res.score == pytest.approx(n_matched / 8, abs=1e-15)
    np.testing.assert_array_equal(res.per_threshold, [1.0] * n_matched + [0.0] * (8 - n_matched))


def test_predictions_are_visited_by_descending_confidence() -> None:
    # G1=[0,10], G2=[6,16]; X=[2,12] has IoU 8/12=0.667 with G1 and 6/14=0.429 with G2; Y=[0,10] has IoU 1 with G1.
    gt = gt_df(("a", 0, 0, 10, 10), ("a", 6, 0, 16, 10))
    # Y first: Y takes G1 everywhere; X then takes G2 only at 0.40 (0.429 > 0.40): 2/2 there, 1/3 elsewhere.
    y_first = pred_df(("a", 2, 0, 12, 10, 0.5), ("a", 0, 0, 10, 10, 0.9))
    assert rsna_score(gt, y_first).score == pytest.approx((1 + 7 / 3) / 8, abs=1e-15)
    # X first: X takes G1 up to 0.65, Y is then a FP; at 0.70 and 0.75 X misses and Y takes G1: 1/3 everywhere.
    x_first = pred_df(("a", 2, 0, 12, 10, 0.9), ("a", 0, 0, 10, 10, 0.5))
    assert rsna_score(gt, x_first).score == pytest.approx(1 / 3, abs=1e-15)


def test_a_prediction_takes_the_unmatched_gt_with_the_highest_iou() -> None:
    # Gb=[6,16] is listed first but X=[2,12] overlaps Ga=[0,10] more (0.667 vs 0.429), so X takes Ga and leaves
    # Gb to Y=[6,16] (IoU 1): 2/2 at 0.40..0.65; at 0.70 and 0.75 X misses: TP=1, FP=1, FN=1 -> 1/3.
    gt = gt_df(("a", 6, 0, 16, 10), ("a", 0, 0, 10, 10))
    pred = pred_df(("a", 2, 0, 12, 10, 0.9), ("a", 6, 0, 16, 10, 0.8))
    assert rsna_score(gt, pred).score == pytest.approx((6 * 1 + 2 / 3) / 8, abs=1e-15)


def test_matched_gt_cannot_be_matched_again() -> None:
    # Two predictions on one GT box: one TP and one FP at every threshold -> 1/2.
    gt = gt_df(("a", 0, 0, 10, 10))
    pred = pred_df(("a", 0, 0, 10, 10, 0.9), ("a", 0, 0, 10, 10, 0.8))
    assert rsna_score(gt, pred).score == pytest.approx(0.5, abs=1e-15)


def test_image_without_gt_and_predictions_is_left_out() -> None:
    gt = gt_df(("a", 0, 0, 10, 10))
    pred = pred_df(("a", 0, 0, 10, 10, 0.9))
    res = rsna_score(gt, pred, image_ids=["a", "b"])
    assert res.score == 1.0
    assert res.n_images == 1
    assert res.per_image["a"] == 1.0
    assert np.isnan(res.per_image["b"])


def test_negative_image_with_a_prediction_scores_zero() -> None:
    gt = gt_df(("a", 0, 0, 10, 10))
    pred = pred_df(("a", 0, 0, 10, 10, 0.9), ("b", 0, 0, 10, 10, 0.1))
    res = rsna_score(gt, pred, image_ids=["a", "b"])
    assert res.per_image["b"] == 0.0
    assert res.score == pytest.approx(0.5, abs=1e-15)
    assert res.n_images == 2


def test_score_is_the_mean_over_images() -> None:
    # a: perfect (1); c: GT, no prediction (0); d: one prediction X=[2,12] on Ga=[0,10], Gb=[6,16]: TP=1, FN=1 at
    # 0.40..0.65 (1/2), TP=0, FP=1, FN=2 at 0.70, 0.75 (0) -> 6/16 = 0.375; e: nothing (left out).
    gt = gt_df(("a", 0, 0, 10, 10), ("c", 5, 5, 50, 50), ("d", 0, 0, 10, 10), ("d", 6, 0, 16, 10))
    pred = pred_df(("a", 0, 0, 10, 10, 0.3), ("d", 2, 0, 12, 10, 0.8))
    res = rsna_score(gt, pred, image_ids=["a", "c", "d", "e"])
    assert res.per_image.to_dict() == pytest.approx({"a": 1.0, "c": 0.0, "d": 0.375, "e": np.nan}, nan_ok=True)
    assert res.score == pytest.approx((1.0 + 0.0 + 0.375) / 3, abs=1e-15)
    assert res.n_images == 3
    np.testing.assert_allclose(res.per_threshold, [1.5 / 3] * 6 + [1 / 3] * 2, atol=1e-15)
    np.testing.assert_array_equal(res.n_gt, [1, 1, 2, 0])
    np.testing.assert_array_equal(res.n_pred, [1, 0, 1, 0])


def test_no_image_counts_gives_nan() -> None:
    res = rsna_score(gt_df(), pred_df(), image_ids=["a"])
    assert np.isnan(res.score)
    assert res.n_images == 0


def test_equal_confidences_are_visited_in_row_order() -> None:
    # Same boxes as the confidence-order test, equal scores: the first row is visited first.
    gt = gt_df(("a", 0, 0, 10, 10), ("a", 6, 0, 16, 10))
    y_then_x = pred_df(("a", 0, 0, 10, 10, 0.5), ("a", 2, 0, 12, 10, 0.5))
    x_then_y = pred_df(("a", 2, 0, 12, 10, 0.5), ("a", 0, 0, 10, 10, 0.5))
    assert rsna_score(gt, y_then_x).score == pytest.approx((1 + 7 / 3) / 8, abs=1e-15)
    assert rsna_score(gt, x_then_y).score == pytest.approx(1 / 3, abs=1e-15)


def test_evaluator_reuses_gt_and_rejects_unknown_images() -> None:
    ev = RsnaEvaluator(gt_df(("a", 0, 0, 10, 10)), image_ids=["a", "b"])
    assert ev.score(pred_df(("a", 0, 0, 10, 10, 0.9))).score == 1.0
    assert ev.score(pred_df(("b", 0, 0, 10, 10, 0.9))).score == 0.0
    with pytest.raises(TableError, match="not in the evaluated image set.*'zz'"):
        ev.score(pred_df(("zz", 0, 0, 10, 10, 0.9)))


def test_invalid_tables_are_reported() -> None:
    with pytest.raises(TableError, match="lacks column"):
        rsna_score(gt_df(), pd.DataFrame({"image_id": ["a"]}))
    with pytest.raises(TableError, match=r"x2 < x1.*\[1\]"):
        rsna_score(gt_df(), pred_df(("a", 0, 0, 10, 10, 0.5), ("a", 10, 0, 5, 10, 0.5)))
    with pytest.raises(TableError, match="non-finite value.*'score'"):
        rsna_score(gt_df(), pred_df(("a", 0, 0, 10, 10, np.nan)))
    with pytest.raises(TableError, match="duplicated image id"):
        RsnaEvaluator(gt_df(), image_ids=["a", "a"])


def test_categorical_image_ids_give_the_same_result() -> None:
    gt = gt_df(("a", 0, 0, 10, 10), ("b", 6, 0, 16, 10))
    pred = pred_df(("b", 2, 0, 12, 10, 0.9), ("a", 0, 0, 10, 9, 0.5), ("c", 0, 0, 1, 1, 0.2))
    ev = RsnaEvaluator(gt, ["a", "b", "c"])
    cat = pred.assign(image_id=pred["image_id"].astype(pd.CategoricalDtype(["c", "b", "a", "unused"])))
    assert ev.score(cat).score == ev.score(pred).score


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_score_vs_threshold_matches_scoring_each_cut(seed: int) -> None:
    """The one-pass sweep against scoring each cut's kept boxes from scratch: unsorted cuts, cuts equal to a box's
    score (kept: score >= cut), integer boxes (IoU ties) and cuts that keep everything or nothing."""
    rng = np.random.default_rng(seed)
    gt, pred, ids = random_case(rng, n_images=60, integer=seed % 2 == 0)
    ev = RsnaEvaluator(gt, ids)
    on_a_box = [float(v) for v in rng.choice(pred["score"].to_numpy(), 3)]
    cuts = [0.5, 0.0, 0.2, 0.5001, 1.1, 0.9, *on_a_box, 0.2]
    table = score_vs_threshold(ev, pred, cuts)
    assert list(table.columns[:3]) == ["threshold", "score", "n_images"]
    for c, row in zip(cuts, table.itertuples(index=False), strict=True):
        expected = ev.score(pred[pred["score"] >= c])
        assert row.score == pytest.approx(expected.score, abs=1e-12, nan_ok=True)
        assert row.n_images == expected.n_images
        np.testing.assert_allclose(table.iloc[:, 3:].to_numpy()[cuts.index(c)], expected.per_threshold, atol=1e-12)


# ---- agreement with the plain-loop reference ----


def random_case(rng: np.random.Generator, n_images: int, integer: bool = False) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                                           list[str]]:
    """Random GT (0-4 boxes per image) and predictions (jittered GT, some dropped, plus random FPs)."""
    ids = [f"img{i}" for i in range(n_images)]
    gt_rows, pred_rows = [], []
    for image_id in ids:
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(5, 80, 2)
            box = np.array([x, y, x + w, y + h])
            gt_rows.append((image_id, *box))
            if rng.random() < 0.8:
                p = box + rng.normal(0, 0.15 * w, 4)
                pred_rows.append((image_id, *p, rng.random()))
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(5, 80, 2)
            pred_rows.append((image_id, x, y, x + w, y + h, rng.random()))
    gt = pd.DataFrame(gt_rows, columns=GT_COLS)
    pred = pd.DataFrame(pred_rows, columns=PRED_COLS)
    pred["x2"] = np.maximum(pred["x2"], pred["x1"])
    pred["y2"] = np.maximum(pred["y2"], pred["y1"])
    if integer:  # exact IoU ties and threshold hits, and equal scores
        gt[["x1", "y1", "x2", "y2"]] = gt[["x1", "y1", "x2", "y2"]].round()
        pred[["x1", "y1", "x2", "y2", "score"]] = pred[["x1", "y1", "x2", "y2"]].round().assign(
            score=(pred["score"] * 4).round() / 4)
    return gt, pred, ids


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_plain_loop_reference(seed: int, integer: bool) -> None:
    rng = np.random.default_rng(seed)
    gt, pred, ids = random_case(rng, n_images=200, integer=integer)
    res = rsna_score(gt, pred, ids)
    ref_score, ref_per_image = reference.reference_rsna_score(gt, pred, ids)
    assert res.score == pytest.approx(ref_score, abs=1e-12)
    counted = res.per_image.dropna()
    assert set(counted.index) == set(ref_per_image)
    np.testing.assert_allclose(counted.to_numpy(), [ref_per_image[i] for i in counted.index], atol=1e-12)


@pytest.mark.real_data
def test_agrees_with_reference_on_real_labels(real_rsna_labels: Path) -> None:
    from cxrdet.data.labels import read_rsna_labels

    labels = read_rsna_labels(real_rsna_labels)
    pred = reference.simulate_predictions(labels.boxes, labels.image_ids, seed=1)
    res = rsna_score(labels.boxes, pred, labels.image_ids)
    ref_score, _ = reference.reference_rsna_score(labels.boxes, pred, labels.image_ids)
    assert res.score == pytest.approx(ref_score, abs=1e-12)
    assert 0.0 < res.score < 1.0


# ---- properties ----

coord = st.integers(min_value=0, max_value=60).map(float)


@st.composite
def boxes_xyxy(draw: st.DrawFn, offset: float = 0.0) -> tuple[float, float, float, float]:
    """A box with positive area, xyxy pixels, inside [offset, offset + 100]."""
    x, y = draw(coord), draw(coord)
    w = draw(st.integers(min_value=1, max_value=40))
    h = draw(st.integers(min_value=1, max_value=40))
    return (x + offset, y + offset, x + w + offset, y + h + offset)


@st.composite
def cases(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Up to 5 images with 0-3 GT boxes and 0-4 predictions each, distinct scores."""
    n_images = draw(st.integers(min_value=1, max_value=5))
    ids = [f"i{k}" for k in range(n_images)]
    gt_rows, pred_rows = [], []
    for image_id in ids:
        gt_rows += [(image_id, *b) for b in draw(st.lists(boxes_xyxy(), max_size=3))]
        pred_rows += [(image_id, *b) for b in draw(st.lists(boxes_xyxy(), max_size=4))]
    scores = draw(st.lists(st.floats(0, 1), min_size=len(pred_rows), max_size=len(pred_rows), unique=True))
    gt = pd.DataFrame(gt_rows, columns=GT_COLS)
    pred = pd.DataFrame([(*r, s) for r, s in zip(pred_rows, scores, strict=True)], columns=PRED_COLS)
    return gt, pred, ids


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(cases(), st.randoms())
def test_perfect_predictions_score_one(case, rnd) -> None:
    gt, _, ids = case
    pred = gt.assign(score=[rnd.random() for _ in range(len(gt))])
    res = rsna_score(gt, pred, ids)
    if len(gt):
        assert res.score == 1.0
    else:
        assert res.n_images == 0


@PROPERTY
@given(cases(), st.randoms())
def test_row_order_does_not_matter(case, rnd) -> None:
    gt, pred, ids = case
    shuffled_gt = gt.sample(frac=1.0, random_state=rnd.randrange(2**31)).reset_index(drop=True)
    shuffled_pred = pred.sample(frac=1.0, random_state=rnd.randrange(2**31)).reset_index(drop=True)
    a = rsna_score(gt, pred, ids)
    b = rsna_score(shuffled_gt, shuffled_pred, ids)
    assert a.score == b.score or (np.isnan(a.score) and np.isnan(b.score))
    pd.testing.assert_series_equal(a.per_image, b.per_image)


@PROPERTY
@given(cases(), boxes_xyxy(offset=200.0), st.floats(0, 1), st.data())
def test_adding_a_false_positive_never_raises_the_score(case, fp_box, fp_score, data) -> None:
    # The extra box lies in [200, 300]^2, away from every GT box (all inside [0, 100]^2), so it can never match.
    gt, pred, ids = case
    image_id = data.draw(st.sampled_from(ids))
    more = pd.concat([pred, pred_df((image_id, *fp_box, fp_score))], ignore_index=True)
    before, after = rsna_score(gt, pred, ids), rsna_score(gt, more, ids)
    assert after.per_image[image_id] <= before.per_image[image_id] or np.isnan(before.per_image[image_id])
    if not np.isnan(before.score):
        assert after.score <= before.score + 1e-12


@PROPERTY
@given(cases(), st.sampled_from([0.25, 0.5, 2.0, 8.0]))
def test_scaling_all_coordinates_does_not_change_the_score(case, factor) -> None:
    # Powers of two scale exactly in floating point, so every IoU, and every threshold comparison, is unchanged.
    gt, pred, ids = case
    cols = ["x1", "y1", "x2", "y2"]
    a = rsna_score(gt, pred, ids)
    b = rsna_score(gt.assign(**{c: gt[c] * factor for c in cols}), pred.assign(**{c: pred[c] * factor for c in cols}),
                   ids)
    pd.testing.assert_series_equal(a.per_image, b.per_image)


@PROPERTY
@given(cases())
def test_property_cases_agree_with_reference(case) -> None:
    gt, pred, ids = case
    res = rsna_score(gt, pred, ids)
    ref_score, _ = reference.reference_rsna_score(gt, pred, ids)
    assert res.score == pytest.approx(ref_score, abs=1e-12, nan_ok=True)


def test_match_boxes_is_the_metrics_own_matching_with_its_tie_rule() -> None:
    from cxrdet.metrics.rsna import match_boxes

    # The prediction overlaps both true boxes equally (IoU 90/110): the metric takes the one first in ascending
    # (x1, y1, x2, y2) order, whatever the rows' order; a first-in-row-order rule would follow the rows.
    pred = pred_df(("a", 0, 0, 10, 10, 0.9))
    right, left = ("a", 1, 0, 11, 10), ("a", -1, 0, 9, 10)
    assert match_boxes(gt_df(right, left), pred, 0.4)[0].tolist() == [1]
    assert match_boxes(gt_df(left, right), pred, 0.4)[0].tolist() == [0]
    # And the matches are the ones the score counts: one TP at every threshold below 0.818, one FN.
    pred_match, gt_match = match_boxes(gt_df(right, left), pred, 0.75)
    assert pred_match.tolist() == [1] and gt_match.tolist() == [-1, 0]
    assert rsna_score(gt_df(right, left), pred).score == pytest.approx(1 / 2)
