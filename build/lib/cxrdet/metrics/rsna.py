"""The RSNA Pneumonia Detection Challenge metric, exact and vectorised.

Definition (Kaggle evaluation page and background.md):

- IoU thresholds t = 0.40, 0.45, ..., 0.75 (`IOU_THRESHOLDS`).
- Within an image, predictions are visited in descending confidence. Each one matches the still unmatched
  ground-truth box with the highest IoU, if that IoU is strictly above t ("an IoU *above* the threshold": an IoU
  exactly equal to t is not a match). A matched prediction is a TP, an unmatched one a FP, and every ground-truth
  box left unmatched at the end a FN.
- Per image and threshold: TP / (TP + FP + FN). The image's score is the mean over the 8 thresholds; the final
  score is the mean over images.
- An image with neither ground truth nor predictions is left out (it counts towards nothing). An image with no
  ground truth and any prediction scores 0; so does an image with ground truth and no prediction.
- Boxes are xyxy in continuous pixel coordinates (area = (x2 - x1) * (y2 - y1), no +1).

Ties, which the competition does not define: predictions of one image with equal confidence are visited in row
order (for a submission file, their order inside the PredictionString), as a stable sort by confidence does; among
unmatched ground-truth boxes with equal IoU the first in ascending `(x1, y1, x2, y2)` order is taken, so ground-truth
row order never matters (on real labels such ties only occur between identical boxes, where the choice is moot).

Speed: `RsnaEvaluator` groups the ground truth once; each `score` call sorts the predictions, computes the IoU of
every (prediction, ground truth) pair of the same image in one pass, and runs the greedy matching once per
"rank of the prediction within its image", each step vectorised over all images and all 8 thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet.boxes import paired_iou
from cxrdet.errors import TableError

IOU_THRESHOLDS: npt.NDArray[np.float64] = np.array([0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75])
IOU_THRESHOLDS.setflags(write=False)
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
_MAX_LISTED = 10


@dataclass(frozen=True)
class RsnaResult:
    """The RSNA score of one prediction set.

    Attributes:
        score: Mean over the counted images of the per-image score (NaN when no image counts).
        per_image: Score of every image of the image set, indexed by image id; NaN for left-out images (no ground
            truth and no prediction).
        per_threshold: Shape (8,): mean over the counted images of TP / (TP + FP + FN) at each of `IOU_THRESHOLDS`.
        n_images: Number of images that counted (had ground truth or predictions).
        n_gt: Ground-truth boxes per image, aligned with `per_image`.
        n_pred: Predicted boxes per image, aligned with `per_image`.
        tp: Shape (n, 8): true positives per image and IoU threshold, aligned with `per_image`.
    """

    score: float
    per_image: pd.Series
    per_threshold: npt.NDArray[np.float64]
    n_images: int
    n_gt: npt.NDArray[np.int64]
    n_pred: npt.NDArray[np.int64]
    tp: npt.NDArray[np.int64]


@dataclass(frozen=True)
class _Matched:
    """Predictions sorted in visiting order, with their per-threshold match flags."""

    image: npt.NDArray[np.int64]  # image index of each prediction
    score: npt.NDArray[np.float64]  # its confidence
    hit: npt.NDArray[np.bool_]  # (P, T): True where it is a TP at that threshold
    row: npt.NDArray[np.int64]  # its positional row in the prediction table
    gt: npt.NDArray[np.int64]  # (P, T): the ground-truth row (positional, in the table given) it matched, or -1


def _table_problems(df: pd.DataFrame, name: str, with_score: bool) -> list[str]:
    """Describe what is wrong with an in-memory box table (missing columns, non-finite values, inverted boxes)."""
    columns = ["image_id", *BOX_COLUMNS] + (["score"] if with_score else [])
    missing = [c for c in columns if c not in df.columns]
    if missing:
        return [f"{name} lacks column(s) {missing}; expected columns {columns}"]
    problems: list[str] = []
    numeric = columns[1:]
    values = df[numeric].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    for j in np.flatnonzero(bad.any(axis=0)):
        rows = df.index[bad[:, j]]
        problems.append(f"{name}: {bad[:, j].sum()} non-finite value(s) in column {numeric[j]!r} at row index "
                        f"{list(rows[:_MAX_LISTED])}; expected finite numbers")
    inverted = (values[:, 2] < values[:, 0]) | (values[:, 3] < values[:, 1])
    if inverted.any():
        rows = df.index[inverted]
        problems.append(f"{name}: {inverted.sum()} box(es) with x2 < x1 or y2 < y1 at row index "
                        f"{list(rows[:_MAX_LISTED])}; expected xyxy boxes")
    if df["image_id"].isna().any():
        problems.append(f"{name}: {df['image_id'].isna().sum()} row(s) without image_id")
    return problems


def _gt_order(image: npt.NDArray[np.int64], boxes: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Ground-truth row order: by image, then ascending (x1, y1, x2, y2), so that IoU ties never depend on row order."""
    return np.lexsort([boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], image])


def _pred_order(image: npt.NDArray[np.int64], score: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Prediction visiting order: by image, then descending score; equal scores keep their row order (stable)."""
    return np.lexsort([-score, image])


def _image_index(ids: pd.Index, image_id: pd.Series) -> npt.NDArray[np.int64]:
    """Position of each row's image id in `ids` (-1 if absent); fast for categorical columns."""
    if isinstance(image_id.dtype, pd.CategoricalDtype):
        return ids.get_indexer(image_id.cat.categories)[image_id.cat.codes.to_numpy()]
    return ids.get_indexer(image_id)


class RsnaEvaluator:
    """Scores prediction sets against one fixed ground truth (grouped once, so repeated calls are cheap).

    Args:
        gt: Ground-truth boxes, columns `image_id, x1, y1, x2, y2` (xyxy, pixels of the original image); one row per
            box, negative images have no row.
        image_ids: The full image set, negatives included. Default: the images that have ground truth (then every
            prediction must be on one of them).

    Raises:
        TableError: `gt` has missing columns or invalid boxes, `image_ids` has duplicates, or a ground-truth image
            is not in `image_ids`.
    """

    def __init__(self, gt: pd.DataFrame, image_ids: Sequence[str] | pd.Index | None = None) -> None:
        problems = _table_problems(gt, "ground truth", with_score=False)
        if problems:
            raise TableError("ground truth", problems)
        ids = pd.Index(pd.unique(gt["image_id"]) if image_ids is None else image_ids)
        if ids.has_duplicates:
            dup = ids[ids.duplicated()].unique()
            raise TableError("image_ids", [f"{len(dup)} duplicated image id(s), e.g. {list(dup[:_MAX_LISTED])}"])
        self.image_ids = ids
        gt_image = ids.get_indexer(gt["image_id"])
        if (gt_image < 0).any():
            unknown = pd.unique(gt["image_id"][gt_image < 0])
            raise TableError("ground truth", [f"{len(unknown)} image id(s) not in image_ids, e.g. "
                                              f"{list(unknown[:_MAX_LISTED])}"])
        boxes = gt[BOX_COLUMNS].to_numpy(dtype=np.float64)
        order = _gt_order(gt_image, boxes)
        self._gt_row = order  # sorted position -> positional row of `gt`
        self._gt_boxes = boxes[order]
        self._n_gt = np.bincount(gt_image, minlength=len(ids)).astype(np.int64)
        self._gt_start = np.cumsum(self._n_gt) - self._n_gt

    @property
    def n_gt(self) -> npt.NDArray[np.int64]:
        """Ground-truth boxes per image, aligned with `image_ids`."""
        return self._n_gt

    def _match(self, pred: pd.DataFrame, thresholds: npt.NDArray[np.float64] = IOU_THRESHOLDS) -> _Matched:
        """Sort `pred` in visiting order and run the greedy matching at every IoU threshold of `thresholds`."""
        problems = _table_problems(pred, "predictions", with_score=True)
        if problems:
            raise TableError("predictions", problems)
        image = _image_index(self.image_ids, pred["image_id"])
        if (image < 0).any():
            unknown = pd.unique(pred["image_id"][image < 0])
            raise TableError("predictions", [f"{len(unknown)} image id(s) not in the evaluated image set, e.g. "
                                             f"{list(unknown[:_MAX_LISTED])}"])
        boxes = pred[BOX_COLUMNS].to_numpy(dtype=np.float64)
        score = pred["score"].to_numpy(dtype=np.float64)
        order = _pred_order(image, score)
        image, boxes, score = image[order], boxes[order], score[order]
        thresholds = np.asarray(thresholds, dtype=np.float64)
        n_thr = len(thresholds)
        hit = np.zeros((len(image), n_thr), dtype=bool)
        gt_of = np.full((len(image), n_thr), -1, dtype=np.int64)

        # Only predictions on images with ground truth can match; the rest are FPs by construction.
        n_gt_of_pred = self._n_gt[image]
        cand = np.flatnonzero(n_gt_of_pred > 0)
        if len(cand) == 0:
            return _Matched(image, score, hit, order, gt_of)
        first_of_image = np.r_[True, image[1:] != image[:-1]]
        start = np.maximum.accumulate(np.where(first_of_image, np.arange(len(image)), 0))
        rank = (np.arange(len(image)) - start)[cand]

        # One row per (candidate prediction, ground-truth box of its image), grouped by prediction.
        per_pred = n_gt_of_pred[cand]
        pair_pred = np.repeat(np.arange(len(cand)), per_pred)
        within = np.arange(len(pair_pred)) - np.repeat(np.cumsum(per_pred) - per_pred, per_pred)
        pair_gt = self._gt_start[image[cand]][pair_pred] + within
        iou = paired_iou(boxes[cand][pair_pred], self._gt_boxes[pair_gt])

        # Regroup by rank within image (stable, so each prediction's pairs stay together and in GT order).
        by_rank = np.argsort(rank[pair_pred], kind="stable")
        pair_pred, pair_gt, iou = pair_pred[by_rank], pair_gt[by_rank], iou[by_rank]
        rank_bounds = np.searchsorted(rank[pair_pred], np.arange(rank.max() + 2))

        matched = np.zeros((len(self._gt_boxes), n_thr), dtype=bool)
        cols = np.arange(n_thr)
        for k in range(rank.max() + 1):
            lo, hi = rank_bounds[k], rank_bounds[k + 1]
            pp, pg = pair_pred[lo:hi], pair_gt[lo:hi]
            seg_start = np.flatnonzero(np.r_[True, pp[1:] != pp[:-1]])
            seg_of_pair = np.cumsum(np.r_[True, pp[1:] != pp[:-1]]) - 1
            # IoU against still-unmatched GT only; matched GT get -1 so they can never be chosen.
            val = np.where(matched[pg], -1.0, iou[lo:hi, None])
            best = np.maximum.reduceat(val, seg_start, axis=0)
            is_best = (val == best[seg_of_pair]) & (best[seg_of_pair] > thresholds)
            # The first best pair of each prediction (lowest GT position in the image's sorted GT).
            pos = np.where(is_best, np.arange(hi - lo)[:, None], hi - lo)
            first = np.minimum.reduceat(pos, seg_start, axis=0)
            seg_hit, thr_hit = np.nonzero(first < hi - lo)
            chosen_gt = pg[first[seg_hit, thr_hit]]
            matched[chosen_gt, cols[thr_hit]] = True
            hit[cand[pp[seg_start[seg_hit]]], thr_hit] = True
            gt_of[cand[pp[seg_start[seg_hit]]], thr_hit] = self._gt_row[chosen_gt]
        return _Matched(image, score, hit, order, gt_of)

    def _result(self, image: npt.NDArray[np.int64], hit: npt.NDArray[np.bool_]) -> RsnaResult:
        """Aggregate per-prediction hits of the kept predictions into per-image and overall scores."""
        n = len(self.image_ids)
        n_thr = len(IOU_THRESHOLDS)
        n_pred = np.bincount(image, minlength=n).astype(np.int64)
        hit_pred, hit_thr = np.nonzero(hit)
        tp = np.bincount(image[hit_pred] * n_thr + hit_thr, minlength=n * n_thr).reshape(n, n_thr).astype(np.int64)
        denom = (n_pred + self._n_gt)[:, None] - tp
        counted = (n_pred + self._n_gt) > 0
        precision = np.full((n, n_thr), np.nan)
        np.divide(tp, denom, out=precision, where=counted[:, None])
        per_image = precision.mean(axis=1)
        n_counted = int(counted.sum())
        if n_counted:
            score = float(per_image[counted].mean())
            per_threshold = precision[counted].mean(axis=0)
        else:
            score = float("nan")
            per_threshold = np.full(n_thr, np.nan)
        return RsnaResult(
            score=score,
            per_image=pd.Series(per_image, index=self.image_ids, name="score"),
            per_threshold=per_threshold,
            n_images=n_counted,
            n_gt=self._n_gt,
            n_pred=n_pred,
            tp=tp,
        )

    def score(self, pred: pd.DataFrame) -> RsnaResult:
        """Score one prediction set.

        Args:
            pred: Predicted boxes, columns `image_id, x1, y1, x2, y2, score` (xyxy, pixels of the original image), any
                row order; every image id must be in `image_ids`.

        Returns:
            The overall, per-image and per-threshold scores.
        """
        matched = self._match(pred)
        return self._result(matched.image, matched.hit)

    def score_vs_threshold(self, pred: pd.DataFrame, thresholds: Sequence[float] | npt.ArrayLike) -> pd.DataFrame:
        """Score `pred` keeping only boxes with confidence >= c, for each c in `thresholds`, in one matching pass.

        Dropping every box below a confidence cut keeps a prefix of each image's visiting order, so the matches of
        the kept boxes are those of the full run; only the counts are redone per cut.

        Args:
            pred: As in `score`.
            thresholds: Confidence cuts c (a box is kept when its score >= c).

        Returns:
            One row per cut: `threshold`, `score`, `n_images` and the per-IoU-threshold means `iou_0.40` ... `iou_0.75`.
        """
        matched = self._match(pred)
        rows = []
        for c in np.asarray(thresholds, dtype=np.float64).ravel():
            keep = matched.score >= c
            res = self._result(matched.image[keep], matched.hit[keep])
            rows.append({"threshold": float(c), "score": res.score, "n_images": res.n_images,
                         **{f"iou_{t:.2f}": v for t, v in zip(IOU_THRESHOLDS, res.per_threshold, strict=True)}})
        return pd.DataFrame(rows)


def rsna_score(gt: pd.DataFrame, pred: pd.DataFrame, image_ids: Sequence[str] | pd.Index | None = None) -> RsnaResult:
    """Score predictions against ground truth with the RSNA metric (see the module docstring for the rules).

    Args:
        gt: Ground-truth boxes, columns `image_id, x1, y1, x2, y2` (xyxy, pixels of the original image).
        pred: Predicted boxes, columns `image_id, x1, y1, x2, y2, score` (xyxy, pixels of the original image).
        image_ids: The full image set (images without ground-truth rows are negatives). Default: the union of the
            image ids in `gt` and `pred`.

    Returns:
        The overall, per-image and per-threshold scores.
    """
    if image_ids is None:
        image_ids = pd.Index(pd.unique(pd.concat([gt["image_id"], pred["image_id"]], ignore_index=True)))
    return RsnaEvaluator(gt, image_ids).score(pred)


def match_boxes(gt: pd.DataFrame, pred: pd.DataFrame, iou_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """The metric's own greedy matching at one IoU threshold, as pairs of rows (for reports: precision-recall curves,
    error analysis, box-size ratios).

    Predictions of an image are visited in descending score (ties in row order); each takes the unmatched
    ground-truth box of highest IoU if that IoU is strictly above `iou_thr`, ties going to the box first in ascending
    `(x1, y1, x2, y2)` order: the rules of `RsnaEvaluator`, by the same code.

    Args:
        gt: `image_id, x1, y1, x2, y2` (xyxy, pixels of the original image).
        pred: `image_id, x1, y1, x2, y2, score`, same units.
        iou_thr: The IoU a match must exceed.

    Returns:
        For each row of `pred`, the positional index of its matched `gt` row or -1; for each row of `gt`, the
        positional index of its matching `pred` row or -1.
    """
    ids = pd.Index(pd.unique(pd.concat([gt["image_id"].astype(str), pred["image_id"].astype(str)],
                                       ignore_index=True)))
    evaluator = RsnaEvaluator(gt.assign(image_id=gt["image_id"].astype(str)), ids)
    matched = evaluator._match(pred.assign(image_id=pred["image_id"].astype(str)), np.array([float(iou_thr)]))
    pred_match = np.full(len(pred), -1, dtype=np.int64)
    gt_match = np.full(len(gt), -1, dtype=np.int64)
    hit = matched.gt[:, 0] >= 0
    pred_match[matched.row[hit]] = matched.gt[hit, 0]
    gt_match[matched.gt[hit, 0]] = matched.row[hit]
    return pred_match, gt_match


def score_vs_threshold(evaluator: RsnaEvaluator, pred: pd.DataFrame,
                       thresholds: Sequence[float] | npt.ArrayLike) -> pd.DataFrame:
    """RSNA score of `pred` cut at each confidence threshold (box kept when score >= c); see
    `RsnaEvaluator.score_vs_threshold`."""
    return evaluator.score_vs_threshold(pred, thresholds)
