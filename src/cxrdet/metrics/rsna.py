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

Speed: `RsnaEvaluator` groups the ground truth once; each `score` call puts the predictions in visiting order and
runs the greedy matching at all 8 thresholds in one compiled (numba) pass over the images, computing each IoU as
`cxrdet.boxes.paired_iou` does. `score_vs_threshold` reuses one matching for every confidence cut and adds each
image's score to all cuts in one more walk over its sorted predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt
import pandas as pd

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


def _table_values(df: pd.DataFrame, name: str, with_score: bool) -> npt.NDArray[np.float64]:
    """The box columns (and `score`) of an in-memory box table as one float64 array.

    Raises:
        TableError: Naming every problem: missing columns, non-finite values, inverted boxes, rows without image id.
    """
    columns = ["image_id", *BOX_COLUMNS] + (["score"] if with_score else [])
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TableError(name, [f"{name} lacks column(s) {missing}; expected columns {columns}"])
    problems: list[str] = []
    numeric = columns[1:]
    values = np.empty((len(df), len(numeric)), dtype=np.float64)
    for j, column in enumerate(numeric):
        values[:, j] = df[column].to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(values)
    if not finite.all():
        for j in np.flatnonzero(~finite.all(axis=0)):
            rows = df.index[~finite[:, j]]
            problems.append(f"{name}: {len(rows)} non-finite value(s) in column {numeric[j]!r} at row index "
                            f"{list(rows[:_MAX_LISTED])}; expected finite numbers")
    inverted = (values[:, 2] < values[:, 0]) | (values[:, 3] < values[:, 1])
    if inverted.any():
        rows = df.index[inverted]
        problems.append(f"{name}: {inverted.sum()} box(es) with x2 < x1 or y2 < y1 at row index "
                        f"{list(rows[:_MAX_LISTED])}; expected xyxy boxes")
    if df["image_id"].hasnans:
        problems.append(f"{name}: {df['image_id'].isna().sum()} row(s) without image_id")
    if problems:
        raise TableError(name, problems)
    return values


def _gt_order(image: npt.NDArray[np.int64], boxes: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Ground-truth row order: by image, then ascending (x1, y1, x2, y2), so that IoU ties never depend on row order."""
    return np.lexsort([boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], image])


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
        boxes = _table_values(gt, "ground truth", with_score=False)
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
        order = _gt_order(gt_image, boxes)
        self._gt_row = order.astype(np.int64)  # sorted position -> positional row of `gt`
        self._gt_boxes = np.ascontiguousarray(boxes[order])
        self._n_gt = np.bincount(gt_image, minlength=len(ids)).astype(np.int64)
        self._gt_start = np.cumsum(self._n_gt) - self._n_gt

    @property
    def n_gt(self) -> npt.NDArray[np.int64]:
        """Ground-truth boxes per image, aligned with `image_ids`."""
        return self._n_gt

    def _match(self, pred: pd.DataFrame, thresholds: npt.NDArray[np.float64] = IOU_THRESHOLDS) -> _Matched:
        """Sort `pred` in visiting order and run the greedy matching at every IoU threshold of `thresholds`."""
        values = _table_values(pred, "predictions", with_score=True)
        image = _image_index(self.image_ids, pred["image_id"])
        if (image < 0).any():
            unknown = pd.unique(pred["image_id"][image < 0])
            raise TableError("predictions", [f"{len(unknown)} image id(s) not in the evaluated image set, e.g. "
                                             f"{list(unknown[:_MAX_LISTED])}"])
        thresholds = np.ascontiguousarray(thresholds, dtype=np.float64)
        order, hit, gt_of = _greedy_match(image.astype(np.int64), values, self._gt_start, self._n_gt,
                                          self._gt_boxes, self._gt_row, thresholds)
        return _Matched(image[order], values[order, 4], hit, order, gt_of)

    def _result(self, image: npt.NDArray[np.int64], hit: npt.NDArray[np.bool_]) -> RsnaResult:
        """Aggregate per-prediction hits of the kept predictions into per-image and overall scores."""
        n_pred, tp, per_image, sums, total, n_counted = _tally(image.astype(np.int64), hit, self._n_gt)
        score = total / n_counted if n_counted else float("nan")
        per_threshold = sums / n_counted if n_counted else np.full(hit.shape[1], np.nan)
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
        """Score `pred` keeping only boxes with confidence >= c, for each c in `thresholds`, in one pass.

        Dropping every box below a confidence cut keeps a prefix of each image's visiting order, so the matches of
        the kept boxes are those of the full run: the matching runs once, then one walk over each image's sorted
        predictions adds the image's score for every cut at once (`_sweep`), instead of re-counting per cut.

        Args:
            pred: As in `score`.
            thresholds: Confidence cuts c (a box is kept when its score >= c), any order.

        Returns:
            One row per cut, in the order given: `threshold`, `score`, `n_images` and the per-IoU-threshold means
            `iou_0.40` ... `iou_0.75`.
        """
        cuts = np.asarray(thresholds, dtype=np.float64).ravel()
        matched = self._match(pred)
        rank = np.argsort(cuts, kind="stable")
        # Bucket of a box: how many (ascending) cuts it passes; it is kept at cut j (ascending) iff j < bucket.
        bucket = np.searchsorted(cuts[rank], matched.score, side="right").astype(np.int64)
        sums, counts = _sweep(matched.image.astype(np.int64), bucket, matched.hit, self._n_gt, len(cuts))
        per_threshold = np.full((len(cuts), matched.hit.shape[1]), np.nan)
        np.divide(sums, counts[:, None], out=per_threshold, where=counts[:, None] > 0)
        score = np.full(len(cuts), np.nan)
        np.divide(sums.mean(axis=1), counts, out=score, where=counts > 0)
        back = np.empty_like(rank)
        back[rank] = np.arange(len(rank))
        out = pd.DataFrame({"threshold": cuts, "score": score[back], "n_images": counts[back]})
        for t, thr in enumerate(IOU_THRESHOLDS):
            out[f"iou_{thr:.2f}"] = per_threshold[back, t]
        return out


@numba.njit(cache=True, error_model="numpy")
def _greedy_match(image: npt.NDArray[np.int64], values: npt.NDArray[np.float64], gt_start: npt.NDArray[np.int64],
                  n_gt: npt.NDArray[np.int64], gt_boxes: npt.NDArray[np.float64], gt_row: npt.NDArray[np.int64],
                  thresholds: npt.NDArray[np.float64]):  # pragma: no cover - compiled
    """The metric's matching, compiled.

    Predictions (`values`: x1, y1, x2, y2, score per row) are put in visiting order: by image, inside an image by
    descending score with equal scores in row order (a stable counting sort by image, then a stable insertion sort
    of each image's few boxes). Then, per image and IoU threshold, each prediction takes the still unmatched
    ground-truth box of highest IoU (the first in the image's sorted ground truth on ties) when that IoU is strictly
    above the threshold. The IoU is `cxrdet.boxes.paired_iou`'s, operation for operation, so ties at a threshold fall
    as they do in numpy.

    Returns:
        `order` (visiting order: positional rows of the predictions), `hit` (P, T) and `gt_of` (P, T): the
        ground-truth row (`gt_row` of the sorted position) each visited prediction matched, or -1.
    """
    n_pred = len(image)
    n_images = len(n_gt)
    n_thr = len(thresholds)
    start = np.zeros(n_images + 1, dtype=np.int64)
    for i in range(n_pred):
        start[image[i] + 1] += 1
    for k in range(n_images):
        start[k + 1] += start[k]
    fill = start[:-1].copy()
    order = np.empty(n_pred, dtype=np.int64)
    for i in range(n_pred):
        k = image[i]
        j = fill[k]
        # Insertion by descending score inside the image's segment; strict `<` keeps equal scores in row order.
        while j > start[k] and values[order[j - 1], 4] < values[i, 4]:
            order[j] = order[j - 1]
            j -= 1
        order[j] = i
        fill[k] += 1
    hit = np.zeros((n_pred, n_thr), dtype=np.bool_)
    gt_of = np.full((n_pred, n_thr), -1, dtype=np.int64)
    taken = np.zeros((len(gt_boxes), n_thr), dtype=np.bool_)
    iou = np.empty(max(1, n_gt.max()) if n_images else 1, dtype=np.float64)
    for p in range(n_pred):
        r = order[p]
        k = image[r]
        g0 = gt_start[k]
        ng = n_gt[k]
        if ng == 0:
            continue
        ax1, ay1, ax2, ay2 = values[r, 0], values[r, 1], values[r, 2], values[r, 3]
        area = (ax2 - ax1) * (ay2 - ay1)
        for j in range(ng):
            bx1, by1, bx2, by2 = gt_boxes[g0 + j, 0], gt_boxes[g0 + j, 1], gt_boxes[g0 + j, 2], gt_boxes[g0 + j, 3]
            iw = min(ax2, bx2) - max(ax1, bx1)
            iw = iw if iw > 0.0 else 0.0
            ih = min(ay2, by2) - max(ay1, by1)
            ih = ih if ih > 0.0 else 0.0
            inter = iw * ih
            union = area + (bx2 - bx1) * (by2 - by1) - inter
            iou[j] = inter / union if union > 0 else 0.0
        for t in range(n_thr):
            best = -1.0
            choice = -1
            for j in range(ng):
                if not taken[g0 + j, t] and iou[j] > best:
                    best = iou[j]
                    choice = j
            if choice >= 0 and best > thresholds[t]:
                taken[g0 + choice, t] = True
                hit[p, t] = True
                gt_of[p, t] = gt_row[g0 + choice]
    return order, hit, gt_of


@numba.njit(cache=True, error_model="numpy")
def _tally(image: npt.NDArray[np.int64], hit: npt.NDArray[np.bool_], n_gt: npt.NDArray[np.int64]
           ):  # pragma: no cover - compiled
    """Per image: predictions, true positives per IoU threshold and score (mean over thresholds of
    TP / (TP + FP + FN); NaN for an image with neither ground truth nor prediction); over the counted images: the
    sum of TP / (TP + FP + FN) per threshold, the sum of the image scores and their number."""
    n_images = len(n_gt)
    n_thr = hit.shape[1]
    n_pred = np.zeros(n_images, dtype=np.int64)
    tp = np.zeros((n_images, n_thr), dtype=np.int64)
    for p in range(len(image)):
        n_pred[image[p]] += 1
        for t in range(n_thr):
            if hit[p, t]:
                tp[image[p], t] += 1
    per_image = np.full(n_images, np.nan)
    sums = np.zeros(n_thr, dtype=np.float64)
    total = 0.0
    n_counted = 0
    for k in range(n_images):
        m = n_pred[k] + n_gt[k]
        if m == 0:
            continue
        acc = 0.0
        for t in range(n_thr):
            v = tp[k, t] / (m - tp[k, t])
            sums[t] += v
            acc += v
        per_image[k] = acc / n_thr
        total += per_image[k]
        n_counted += 1
    return n_pred, tp, per_image, sums, total, n_counted


@numba.njit(cache=True, error_model="numpy")
def _sweep(image: npt.NDArray[np.int64], bucket: npt.NDArray[np.int64], hit: npt.NDArray[np.bool_],
           n_gt: npt.NDArray[np.int64], n_cuts: int):  # pragma: no cover - compiled
    """Per confidence cut (ascending), the sum over counted images of TP / (TP + FP + FN) per IoU threshold, and the
    number of counted images, in one walk over the predictions in visiting order.

    The kept boxes of an image at cut j are the prefix of its visiting order whose bucket exceeds j (scores, hence
    buckets, do not increase along it). Walking an image's boxes, the prefix of the first m boxes holds for the cuts
    in [bucket[m], bucket[m - 1]) (bucket[-1] = n_cuts, bucket[m] = 0 past the end), so every cut gets exactly one
    prefix of every image. An image without ground truth or kept boxes counts nowhere; one with ground truth and no
    kept box scores 0 (and counts).
    """
    n_thr = hit.shape[1]
    sums = np.zeros((n_cuts, n_thr), dtype=np.float64)
    counts = np.zeros(n_cuts, dtype=np.int64)
    n_images = len(n_gt)
    first = np.full(n_images + 1, len(image), dtype=np.int64)
    for p in range(len(image) - 1, -1, -1):
        first[image[p]] = p
    tp = np.zeros(n_thr, dtype=np.int64)
    p = 0
    for k in range(n_images):
        g = n_gt[k]
        hi = n_cuts
        tp[:] = 0
        m = 0
        p = first[k]
        while True:
            lo = bucket[p] if (p < len(image) and image[p] == k) else 0
            if lo < hi and (g > 0 or m > 0):
                for j in range(lo, hi):
                    counts[j] += 1
                    for t in range(n_thr):
                        sums[j, t] += tp[t] / (m + g - tp[t])
            hi = min(hi, lo)
            if not (p < len(image) and image[p] == k):
                break
            for t in range(n_thr):
                if hit[p, t]:
                    tp[t] += 1
            m += 1
            p += 1
    return sums, counts


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
