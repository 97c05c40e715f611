"""COCO-style mean average precision (multi-class), computed by faster-coco-eval.

`coco_map` reports mAP at IoU 0.50:0.95 (COCO's primary metric), at 0.50, and at 0.40 (VinBigData Chest X-ray's
metric). It follows COCO's rules: per class, detections are ranked by score over all images, precision is
interpolated at 101 recall points and averaged; classes without any ground-truth box are left out of the mean; at
most 100 detections per image and class are kept (the highest scored); no area ranges (every box counts).
Boxes are xyxy in continuous pixels of the original image (COCO computes box IoU without +1).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxrdet.boxes import xyxy_to_xywh
from cxrdet.errors import TableError

MAP_IOU_THRESHOLDS = np.array([0.40, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95])
MAX_DETECTIONS = 100
_MAX_LISTED = 10


def _quiet(*args: Any, **kwargs: Any) -> None:
    """faster-coco-eval's progress messages ('Loading and preparing results...') are not for our users."""


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Mute faster-coco-eval's logger (it logs progress even where `print_function` is not passed through) and
    any stray stdout print, for the duration of one evaluation; the previous logger state is restored."""
    logger = logging.getLogger("faster_coco_eval")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)  # its module loggers inherit this level
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        logger.setLevel(level)


def _label_problems(df: pd.DataFrame, name: str, n_classes: int, columns: Sequence[str]) -> list[str]:
    """What is wrong with an in-memory box table: missing columns, non-finite values, bad labels, inverted boxes."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        return [f"{name} lacks column(s) {missing}; expected columns {list(columns)}"]
    problems: list[str] = []
    numeric = [c for c in columns if c != "image_id"]
    values = df[numeric].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    for j in np.flatnonzero(bad.any(axis=0)):
        problems.append(f"{name}: non-finite {numeric[j]!r} at row index {list(df.index[bad[:, j]][:_MAX_LISTED])}")
    label = df["label"].to_numpy(dtype=np.float64, na_value=np.nan)
    bad_label = np.isfinite(label) & ((label != np.round(label)) | (label < 0) | (label >= n_classes))
    if bad_label.any():
        problems.append(f"{name}: label outside 0..{n_classes - 1} (an index into classes) at row index "
                        f"{list(df.index[bad_label][:_MAX_LISTED])}")
    x1, y1, x2, y2 = (df[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in ("x1", "y1", "x2", "y2"))
    inverted = (x2 < x1) | (y2 < y1)
    if inverted.any():
        problems.append(f"{name}: x2 < x1 or y2 < y1 (expected xyxy) at row index "
                        f"{list(df.index[inverted][:_MAX_LISTED])}")
    return problems


def _annotations(df: pd.DataFrame, image_index: np.ndarray, scored: bool) -> list[dict[str, Any]]:
    """COCO annotation dicts (bbox xywh pixels, 1-based image and category ids) of a validated box table."""
    xywh = xyxy_to_xywh(df[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64))
    category = df["label"].to_numpy(dtype=np.int64) + 1
    score = df["score"].to_numpy(dtype=np.float64) if scored else None
    anns = []
    for i in range(len(df)):
        ann: dict[str, Any] = {"id": i + 1, "image_id": int(image_index[i]) + 1, "category_id": int(category[i]),
                               "bbox": xywh[i].tolist(), "area": float(xywh[i, 2] * xywh[i, 3]), "iscrowd": 0}
        if score is not None:
            ann["score"] = float(score[i])
        anns.append(ann)
    return anns


def coco_map(gt: pd.DataFrame, pred: pd.DataFrame, image_ids: Sequence[str] | pd.Index,
             classes: Sequence[str]) -> dict[str, float]:
    """COCO mAP of multi-class box predictions at IoU 0.50:0.95, 0.50 and 0.40.

    Args:
        gt: Ground-truth boxes `image_id, x1, y1, x2, y2, label` (xyxy, pixels of the original image; `label` an
            integer index into `classes`).
        pred: Predicted boxes `image_id, x1, y1, x2, y2, label, score`, same conventions.
        image_ids: The full image set, negatives included (their predictions are false positives).
        classes: Class names; only their number matters here.

    Returns:
        `{"map_50_95", "map_50", "map_40"}`; NaN when no class has a ground-truth box.

    Raises:
        TableError: Missing columns, non-finite values, labels out of range, inverted boxes, duplicated image ids,
            or a box on an image outside `image_ids`.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    ids = pd.Index(image_ids)
    if ids.has_duplicates:
        raise TableError("image_ids", [f"duplicated image id(s), e.g. {list(ids[ids.duplicated()][:_MAX_LISTED])}"])
    box_cols = ["image_id", "x1", "y1", "x2", "y2", "label"]
    for name, df, cols in (("ground truth", gt, box_cols), ("predictions", pred, [*box_cols, "score"])):
        problems = _label_problems(df, name, len(classes), cols)
        if problems:
            raise TableError(name, problems)
    index = {}
    for name, df in (("ground truth", gt), ("predictions", pred)):
        index[name] = ids.get_indexer(df["image_id"])
        if (index[name] < 0).any():
            unknown = pd.unique(df["image_id"][index[name] < 0])
            raise TableError(name, [f"{len(unknown)} image id(s) not in image_ids, e.g. {list(unknown[:_MAX_LISTED])}"])

    dataset = {
        "images": [{"id": i + 1} for i in range(len(ids))],
        "annotations": _annotations(gt, index["ground truth"], scored=False),
        "categories": [{"id": k + 1, "name": str(c)} for k, c in enumerate(classes)],
    }
    with _silenced():
        coco_gt = COCO(dataset, print_function=_quiet)
        coco_dt = coco_gt.loadRes(_annotations(pred, index["predictions"], scored=True))
        ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=_quiet)
        ev.params.iouThrs = MAP_IOU_THRESHOLDS.copy()
        ev.params.areaRng = [[0.0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.params.maxDets = [MAX_DETECTIONS]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (IoU thresholds, recall points, classes)

    def mean_ap(thr_mask: np.ndarray) -> float:
        p = precision[thr_mask]
        valid = p > -1  # -1 marks classes without ground truth
        return float(p[valid].mean()) if valid.any() else float("nan")

    return {
        "map_50_95": mean_ap(MAP_IOU_THRESHOLDS >= 0.5),
        "map_50": mean_ap(np.isclose(MAP_IOU_THRESHOLDS, 0.5)),
        "map_40": mean_ap(np.isclose(MAP_IOU_THRESHOLDS, 0.4)),
    }
