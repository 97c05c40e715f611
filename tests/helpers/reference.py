"""Independent references for the tests (and the metric benchmark): plain loops, written for clarity, not speed.

`reference_rsna_score` is the RSNA metric as a per-image loop; `simulate_predictions` a realistic prediction set
built from ground truth.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd

REF_THRESHOLDS = (0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two xyxy boxes, continuous pixel coordinates."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_rsna_score(gt: pd.DataFrame, pred: pd.DataFrame,
                         image_ids: Sequence[str]) -> tuple[float, dict[str, float]]:
    """The RSNA metric as a plain loop over images, thresholds, predictions and ground-truth boxes.

    Same rules and tie-breaks as `cxrdet.metrics.rsna`: predictions by descending score (stable), IoU strictly
    above the threshold, the unmatched ground-truth box with the highest IoU (first in (x1, y1, x2, y2) order on
    ties), images without ground truth and predictions left out. Boxes are xyxy pixels.

    Returns:
        The score and the per-image scores of the counted images.
    """
    gt_by_image: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    for r in gt.itertuples(index=False):
        gt_by_image[r.image_id].append((r.x1, r.y1, r.x2, r.y2))
    pred_by_image: dict[str, list[tuple[float, tuple[float, ...]]]] = defaultdict(list)
    for r in pred.itertuples(index=False):
        pred_by_image[r.image_id].append((r.score, (r.x1, r.y1, r.x2, r.y2)))

    per_image = {}
    for image_id in image_ids:
        gts = sorted(gt_by_image.get(image_id, []))
        preds = [box for _, box in sorted(pred_by_image.get(image_id, []), key=lambda p: -p[0])]
        if not gts and not preds:
            continue
        total = 0.0
        for t in REF_THRESHOLDS:
            used = [False] * len(gts)
            tp = 0
            for box in preds:
                best, best_j = -1.0, -1
                for j, g in enumerate(gts):
                    if not used[j]:
                        v = _iou(box, g)
                        if v > best:
                            best, best_j = v, j
                if best_j >= 0 and best > t:
                    used[best_j] = True
                    tp += 1
            fp, fn = len(preds) - tp, len(gts) - tp
            total += tp / (tp + fp + fn)
        per_image[image_id] = total / len(REF_THRESHOLDS)
    score = sum(per_image.values()) / len(per_image) if per_image else float("nan")
    return score, per_image


def simulate_predictions(gt: pd.DataFrame, image_ids: Sequence[str], seed: int = 0) -> pd.DataFrame:
    """A realistic prediction set: each ground-truth box kept with p=0.8 and jittered (~10% of its size), plus
    Poisson(1.5) random false positives per image, scores uniform in [0, 1]; xyxy pixels of a 1024 x 1024 image."""
    rng = np.random.default_rng(seed)
    keep = gt[rng.random(len(gt)) < 0.8]
    xyxy = keep[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
    size = np.repeat(xyxy[:, 2:] - xyxy[:, :2], 2, axis=0).reshape(-1, 4)
    xyxy = xyxy + rng.normal(0.0, 0.1, xyxy.shape) * size
    n_fp = rng.poisson(1.5, len(image_ids))
    fp_ids = np.repeat(np.asarray(image_ids, dtype=object), n_fp)
    corner = rng.uniform(0, 800, (len(fp_ids), 2))
    fp = np.concatenate([corner, corner + rng.uniform(60, 300, (len(fp_ids), 2))], axis=1)
    boxes = np.clip(np.concatenate([xyxy, fp]), 0, 1024)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1.0)
    ids = np.concatenate([keep["image_id"].to_numpy(dtype=object), fp_ids])
    pred = pd.DataFrame({"image_id": ids, "x1": boxes[:, 0], "y1": boxes[:, 1], "x2": boxes[:, 2], "y2": boxes[:, 3]})
    pred["score"] = rng.random(len(pred))
    return pred


def reference_voc_map(gt: pd.DataFrame, pred: pd.DataFrame, n_classes: int,
                      iou_thr: float = 0.4) -> tuple[float, list[float]]:
    """PASCAL VOC mAP as the devkit's loops (`VOCevaldet.m`, `VOCap.m`), with IoU strictly above `iou_thr` and
    continuous pixel boxes: per class, predictions by descending score (stable); each takes the ground-truth box of
    highest IoU in its image (first on ties); TP if above the threshold and that box is unmatched.

    Returns:
        The mAP over classes with ground truth (NaN if none) and the AP of every class (NaN without ground truth).
    """
    aps = []
    for c in range(n_classes):
        gts: dict[str, list[tuple[float, ...]]] = defaultdict(list)
        for r in gt[gt["label"] == c].itertuples(index=False):
            gts[r.image_id].append((r.x1, r.y1, r.x2, r.y2))
        n_gt = sum(len(v) for v in gts.values())
        if n_gt == 0:
            aps.append(float("nan"))
            continue
        used = {k: [False] * len(v) for k, v in gts.items()}
        ranked = sorted(pred[pred["label"] == c].itertuples(index=False), key=lambda r: -r.score)
        tp, fp = [], []
        for r in ranked:
            best, best_j = -1.0, -1
            for j, g in enumerate(gts.get(r.image_id, [])):
                v = _iou((r.x1, r.y1, r.x2, r.y2), g)
                if v > best:
                    best, best_j = v, j
            hit = best > iou_thr and not used[r.image_id][best_j]
            if hit:
                used[r.image_id][best_j] = True
            tp.append(1 if hit else 0)
            fp.append(0 if hit else 1)
        rec, prec, t, f = [], [], 0, 0
        for a, b in zip(tp, fp, strict=True):
            t, f = t + a, f + b
            rec.append(t / n_gt)
            prec.append(t / (t + f))
        mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        aps.append(sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]))
    scored = [a for a in aps if a == a]
    return (sum(scored) / len(scored) if scored else float("nan")), aps


def reference_siim_score(image_truth: dict[str, list[tuple[float, float, float, float]]],
                         study_of: dict[str, str], study_truth: dict[str, str],
                         rows: dict[str, list[tuple[str, float, float, float, float, float]]]) -> float:
    """The SIIM-COVID metric from plain dicts, by the devkit loops (`reference_voc_map`) at IoU > 0.5: the six classes
    (`negative typical indeterminate atypical` on `<study>_study` rows, each study's truth one `0 0 1 1` box of its
    class; `opacity none` on `<image>_image` rows, an image without opacity having one `none 0 0 1 1`) weigh alike.

    Args:
        image_truth: Image id -> its opacity boxes (xyxy).
        study_of: Image id -> study id.
        study_truth: Study id -> its class name.
        rows: Submission row id (`<study>_study`, `<image>_image`) -> `(class, confidence, x1, y1, x2, y2)` groups.
    """
    names = ["opacity", "none", "negative", "typical", "indeterminate", "atypical"]
    gt, pred = [], []
    for image_id, boxes in image_truth.items():
        key = f"{image_id}_image"
        gt += [(key, *b, 0) for b in boxes] or [(key, 0.0, 0.0, 1.0, 1.0, 1)]
    for study_id in set(study_of.values()):
        gt.append((f"{study_id}_study", 0.0, 0.0, 1.0, 1.0, names.index(study_truth[study_id])))
    for key, groups in rows.items():
        pred += [(key, x1, y1, x2, y2, names.index(name), conf) for name, conf, x1, y1, x2, y2 in groups]
    gt_frame = pd.DataFrame(gt, columns=["image_id", "x1", "y1", "x2", "y2", "label"])
    pred_frame = pd.DataFrame(pred, columns=["image_id", "x1", "y1", "x2", "y2", "label", "score"])
    return reference_voc_map(gt_frame, pred_frame, len(names), iou_thr=0.5)[0]
