"""PASCAL VOC mean average precision at one IoU threshold, multi-class, exact and vectorised.

The VinBigData Chest X-ray Abnormalities Detection metric is "the standard PASCAL VOC 2010 mean Average Precision
(mAP) at IoU > 0.4" (the competition's evaluation page, copied in github.com/grapestone5321/
Kaggle-Prj-VinBigData_Chest_X-ray_Abnormalities_Detection README.md). The rules, from the VOC devkit's
`VOCevaldet.m` (matching) and `VOCap.m` (all-point interpolated AP, the VOC 2010 change from 11-point):

- Per class, the predictions of every image are visited in descending confidence (equal confidences in row order:
  a stable sort).
- A prediction's candidate is the ground-truth box of its image and class with the highest IoU (the first in
  ground-truth row order on ties), whether or not that box is already matched. If that IoU is above the threshold
  and the box is unmatched, the prediction is a true positive and the box becomes matched; if the box is already
  matched, the prediction is a false positive (a duplicate); below the threshold it is a false positive.
- Precision and recall are accumulated down the ranked list; AP is the area under the precision envelope (precision
  made non-increasing from the right), summed over the recall steps: `sum((r[i] - r[i-1]) * p_env[i])`.
- The mAP is the mean AP over the classes that have at least one ground-truth box; a class with ground truth and no
  prediction has AP 0; predictions of a class without ground truth count nowhere.

Two choices where the devkit and the competition's statement differ, each stated by the competition: the IoU must
be strictly above the threshold ("IoU > 0.4"; the devkit tests `>=`), and boxes are continuous pixel coordinates
(area = (x2 - x1) * (y2 - y1); the devkit adds 1 pixel to each side for its integer boxes).

Where this differs from COCO-style evaluation (`cxrdet.metrics.coco`, faster-coco-eval): COCO lets a prediction whose
best box is taken fall back to the best unmatched box above the threshold, interpolates precision at 101 recall
points instead of integrating the envelope, keeps at most 100 predictions per image and tests IoU `>=`. The two agree
exactly when every class has one ground-truth box and no prediction overlaps a box at exactly the threshold.

Speed: the ground truth is grouped once by (image, class). Because a candidate box does not depend on which boxes
are already matched, the whole matching is vectorised: one IoU per (prediction, ground-truth box of the same image
and class) pair, the best pair of each prediction by segment reductions, and the first candidate of each box in
ranked order is its true positive. Since that does not depend on the boxes ranked below, a sweep over confidence cuts
matches once and scores each cut's prefix (`VocEvaluator.ap_vs_threshold`, `completed_ap_vs_threshold`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet.boxes import paired_iou
from cxrdet.errors import TableError

BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
_MAX_LISTED = 10


def all_point_ap(recall: npt.ArrayLike, precision: npt.ArrayLike) -> float:
    """VOC 2010+ AP of one ranked list: the area under the non-increasing envelope of precision over recall.

    Args:
        recall: Recall after each ranked prediction (non-decreasing).
        precision: Precision after each ranked prediction.
    """
    r = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    p = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    step = np.flatnonzero(r[1:] != r[:-1]) + 1
    return float(np.sum((r[step] - r[step - 1]) * p[step]))


@dataclass(frozen=True)
class VocResult:
    """The VOC mAP of one prediction set.

    Attributes:
        map: Mean AP over the classes with ground truth (NaN when no class has any).
        per_class: One row per class index of `classes`: `label, class, ap, n_gt, n_pred, tp` (AP NaN without
            ground truth).
        tp: For each row of the predictions given, whether it is a true positive.
    """

    map: float
    per_class: pd.DataFrame
    tp: npt.NDArray[np.bool_]


def _problems(df: pd.DataFrame, name: str, n_classes: int, scored: bool) -> list[str]:
    columns = ["image_id", *BOX_COLUMNS, "label", *(["score"] if scored else [])]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        return [f"{name} lacks column(s) {missing}; expected columns {columns}"]
    problems = []
    values = df[columns[1:]].to_numpy(dtype=np.float64, na_value=np.nan)
    for j in np.flatnonzero((~np.isfinite(values)).any(axis=0)):
        rows = df.index[~np.isfinite(values[:, j])]
        problems.append(f"{name}: non-finite {columns[1 + j]!r} at row index {list(rows[:_MAX_LISTED])}")
    label = values[:, 4]
    bad = np.isfinite(label) & ((label != np.round(label)) | (label < 0) | (label >= n_classes))
    if bad.any():
        problems.append(f"{name}: label outside 0..{n_classes - 1} at row index {list(df.index[bad][:_MAX_LISTED])}")
    inverted = (values[:, 2] < values[:, 0]) | (values[:, 3] < values[:, 1])
    if inverted.any():
        problems.append(f"{name}: x2 < x1 or y2 < y1 (expected xyxy) at row index "
                        f"{list(df.index[inverted][:_MAX_LISTED])}")
    return problems


class VocEvaluator:
    """Scores prediction sets against one fixed ground truth (grouped once, so repeated calls are cheap).

    Args:
        gt: Ground-truth boxes `image_id, x1, y1, x2, y2, label` (xyxy, pixels of the original image; `label` an
            index into `classes`).
        image_ids: The full image set (images without ground truth included); every prediction must be on one.
        classes: Class names, indexed by `label`.
        iou_thr: A match needs an IoU strictly above this.

    Raises:
        TableError: Missing columns, non-finite values, labels out of range, inverted boxes, duplicated image ids,
            or a ground-truth box on an image outside `image_ids`.
    """

    def __init__(self, gt: pd.DataFrame, image_ids: Sequence[str] | pd.Index, classes: Sequence[str],
                 iou_thr: float = 0.4) -> None:
        self.classes = tuple(str(c) for c in classes)
        self.iou_thr = float(iou_thr)
        ids = pd.Index(image_ids)
        if ids.has_duplicates:
            raise TableError("image_ids", [f"duplicated image id(s), e.g. {list(ids[ids.duplicated()][:_MAX_LISTED])}"])
        self.image_ids = ids
        problems = _problems(gt, "ground truth", len(self.classes), scored=False)
        if problems:
            raise TableError("ground truth", problems)
        image = ids.get_indexer(gt["image_id"])
        if (image < 0).any():
            unknown = pd.unique(gt["image_id"][image < 0])
            raise TableError("ground truth", [f"{len(unknown)} image id(s) not in image_ids, e.g. "
                                              f"{list(unknown[:_MAX_LISTED])}"])
        key = image.astype(np.int64) * len(self.classes) + gt["label"].to_numpy(dtype=np.int64)
        order = np.argsort(key, kind="stable")  # grouped by (image, class), row order kept inside a group
        self._gt_key = key[order]
        self._gt_boxes = gt[BOX_COLUMNS].to_numpy(dtype=np.float64)[order]
        self.n_gt = np.bincount(gt["label"].to_numpy(dtype=np.int64), minlength=len(self.classes))

    def _rank_and_match(self, pred: pd.DataFrame) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                                                            npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Rank `pred` per class and find its true positives.

        Returns:
            `order` (ranked rows: by class, then descending score, ties in row order), and in that order the labels,
            scores and true-positive flags.
        """
        problems = _problems(pred, "predictions", len(self.classes), scored=True)
        if problems:
            raise TableError("predictions", problems)
        image = self.image_ids.get_indexer(pred["image_id"])
        if (image < 0).any():
            unknown = pd.unique(pred["image_id"][image < 0])
            raise TableError("predictions", [f"{len(unknown)} image id(s) not in the evaluated image set, e.g. "
                                             f"{list(unknown[:_MAX_LISTED])}"])
        n_classes = len(self.classes)
        label = pred["label"].to_numpy(dtype=np.int64)
        score = pred["score"].to_numpy(dtype=np.float64)
        # Ranked per class: by class, then descending score; lexsort is stable, so ties keep row order.
        order = np.lexsort((-score, label))
        label, score = label[order], score[order]
        key = image[order].astype(np.int64) * n_classes + label
        boxes = pred[BOX_COLUMNS].to_numpy(dtype=np.float64)[order]

        # The ground-truth boxes of each prediction's (image, class): a contiguous run of the sorted ground truth.
        start = np.searchsorted(self._gt_key, key, side="left")
        count = np.searchsorted(self._gt_key, key, side="right") - start
        has = np.flatnonzero(count > 0)
        tp_sorted = np.zeros(len(key), dtype=bool)
        if len(has):
            per = count[has]
            pair_pred = np.repeat(np.arange(len(has)), per)
            offset = np.arange(len(pair_pred)) - np.repeat(np.cumsum(per) - per, per)
            pair_gt = start[has][pair_pred] + offset
            iou = paired_iou(boxes[has][pair_pred], self._gt_boxes[pair_gt])
            seg = np.cumsum(per) - per
            best = np.maximum.reduceat(iou, seg)
            # The first pair of highest IoU of each prediction (ground-truth row order on ties).
            first = np.minimum.reduceat(np.where(iou == best[pair_pred], np.arange(len(iou)), len(iou)), seg)
            candidate_gt = pair_gt[first]
            above = best > self.iou_thr
            # A box's true positive is its first candidate in ranked order; later ones are duplicates.
            ranked = has[above]
            _, first_of_box = np.unique(candidate_gt[above], return_index=True)
            tp_sorted[ranked[first_of_box]] = True
        return order, label, score, tp_sorted

    def score(self, pred: pd.DataFrame) -> VocResult:
        """mAP of `pred` (`image_id, x1, y1, x2, y2, label, score`; xyxy pixels, any row order)."""
        order, label, _, tp_sorted = self._rank_and_match(pred)
        n_classes = len(self.classes)
        rows = []
        class_start = np.searchsorted(label, np.arange(n_classes + 1))
        for c in range(n_classes):
            hits = tp_sorted[class_start[c]:class_start[c + 1]]
            n_gt, n_pred = int(self.n_gt[c]), len(hits)
            rows.append({"label": c, "class": self.classes[c], "ap": _ap(hits, n_gt), "n_gt": n_gt,
                         "n_pred": n_pred, "tp": int(hits.sum())})
        per_class = pd.DataFrame(rows, columns=["label", "class", "ap", "n_gt", "n_pred", "tp"])
        scored = per_class["ap"].dropna()
        tp = np.zeros(len(pred), dtype=bool)
        tp[order] = tp_sorted
        return VocResult(map=float(scored.mean()) if len(scored) else float("nan"), per_class=per_class, tp=tp)

    def ap_vs_threshold(self, pred: pd.DataFrame, thresholds: Sequence[float] | npt.ArrayLike
                        ) -> npt.NDArray[np.float64]:
        """The AP of every class keeping only the boxes with score >= c, for each cut c, from one matching.

        A box's true positive is its box's first candidate in ranked order, so dropping every box below a cut (a
        prefix of each class's ranking) leaves the matches of the kept boxes as they were: the matching runs once
        and each cut's AP is that of its prefix.

        Returns:
            Shape (n_cuts, n_classes), cuts in the order given: the AP (NaN for a class without ground truth, 0 for
            one with ground truth and no kept box).
        """
        _, label, score, tp_sorted = self._rank_and_match(pred)
        cuts = np.asarray(thresholds, dtype=np.float64).ravel()
        n_classes = len(self.classes)
        out = np.empty((len(cuts), n_classes), dtype=np.float64)
        class_start = np.searchsorted(label, np.arange(n_classes + 1))
        for c in range(n_classes):
            lo, hi = class_start[c], class_start[c + 1]
            hits = tp_sorted[lo:hi]
            # Scores descend inside the class: the kept boxes at cut x are the first (number of scores >= x).
            kept = np.searchsorted(-score[lo:hi], -cuts, side="right")
            cum = np.cumsum(hits)
            precision = cum / np.arange(1, len(hits) + 1)
            for j, m in enumerate(kept):
                out[j, c] = _prefix_ap(cum[:m], precision[:m], int(self.n_gt[c]))
        return out


def _prefix_ap(cum: npt.NDArray[np.int64], precision: npt.NDArray[np.float64], n_gt: int) -> float:
    """The AP of a ranked list from its running true-positive count and precision (see `_ap`)."""
    if n_gt == 0:
        return float("nan")
    if len(cum) == 0:
        return 0.0
    return all_point_ap(cum / n_gt, precision)


def _ap(hits: npt.NDArray[np.bool_], n_gt: int) -> float:
    """The AP of one class's ranked true-positive flags: NaN without ground truth, 0 without predictions."""
    cum = np.cumsum(hits)
    return _prefix_ap(cum, cum / np.arange(1, len(hits) + 1), n_gt)


def completed_ap_vs_threshold(evaluator: VocEvaluator, pred: pd.DataFrame, thresholds: Sequence[float] | npt.ArrayLike,
                              swept: Sequence[int], completed: Callable[[pd.DataFrame], pd.DataFrame],
                              varies: bool) -> npt.NDArray[np.float64]:
    """Per confidence cut, the AP of every class when the boxes of the `swept` classes below the cut are dropped and
    the other classes' rows are what `completed` makes of the kept boxes (a competition's completion: VinBigData's
    no-finding box, SIIM's none and study rows, which follow each image's top box of the swept classes).

    The swept classes come from one matching (`VocEvaluator.ap_vs_threshold`). The other classes are scored per cut
    on their own rows only (a class's AP depends on its own rows alone), completed from each image's single
    highest-scoring swept box: the completions read nothing else of the boxes, and that box is kept at a cut
    exactly when any swept box of the image is. With `varies` False (the other rows are given, not derived) they
    are scored once.

    Returns:
        Shape (n_cuts, n_classes), cuts in the order given.
    """
    cuts = np.asarray(thresholds, dtype=np.float64).ravel()
    is_swept = np.isin(pred["label"].to_numpy(), np.asarray(swept))
    boxes, rest = pred[is_swept], pred[~is_swept]
    ap = evaluator.ap_vs_threshold(boxes, cuts)
    others = ~np.isin(np.arange(len(evaluator.classes)), np.asarray(swept))

    def other_ap(kept: pd.DataFrame) -> npt.NDArray[np.float64]:
        full = completed(pd.concat([kept, rest], ignore_index=True) if len(rest) and len(kept) else
                         (kept if len(kept) else rest))
        part = full[~np.isin(full["label"].to_numpy(), np.asarray(swept))]
        return evaluator.score(part).per_class["ap"].to_numpy(dtype=np.float64)[others]

    if not varies:
        ap[:, others] = other_ap(boxes.iloc[:0])
        return ap
    top = boxes.iloc[np.lexsort((-boxes["score"].to_numpy(dtype=np.float64),))]
    top = top[~pd.Series(np.asarray(top["image_id"], dtype=object)).duplicated().to_numpy()]
    score = top["score"].to_numpy(dtype=np.float64)
    for j, cut in enumerate(cuts):
        ap[j, others] = other_ap(top[score >= cut])
    return ap


def voc_map(gt: pd.DataFrame, pred: pd.DataFrame, image_ids: Sequence[str] | pd.Index, classes: Sequence[str],
            iou_thr: float = 0.4) -> VocResult:
    """VOC mAP of `pred` against `gt` (see the module docstring; `VocEvaluator` for repeated scoring)."""
    return VocEvaluator(gt, image_ids, classes, iou_thr).score(pred)
