"""RSNA metric: the vectorised `cxrdet.metrics.rsna` against a straightforward per-image Python loop.

On the real RSNA stage-2 label table (26,684 images) with simulated predictions (fixed seed: ground-truth boxes
jittered, some dropped, random false positives, random scores), prints the time of one full evaluation of each,
their ratio, both scores and their absolute difference (they must agree to 1e-9).

`reference_rsna_score` is also the independent reference of tests/metrics/test_rsna.py.

Run: .venv/bin/python benchmarks/bench_metric.py
"""

from __future__ import annotations

import sys
import time
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


def main() -> None:
    from cxrdet import paths
    from cxrdet.data.labels import read_rsna_labels
    from cxrdet.metrics.rsna import RsnaEvaluator, rsna_score

    labels_path = paths.real_rsna_labels()
    if not labels_path.exists():
        sys.exit(f"bench_metric: real RSNA labels not found at {labels_path} (set CXRDET_SHARED_DATA or place "
                 "../shared/data); nothing measured")
    labels = read_rsna_labels(labels_path)
    gt, ids = labels.boxes, labels.image_ids
    pred = simulate_predictions(gt, ids)
    print(f"real RSNA labels: {len(ids)} images, {len(gt)} boxes; simulated predictions: {len(pred)} boxes")

    t0 = time.perf_counter()
    fast = rsna_score(gt, pred, ids)
    t_fast = time.perf_counter() - t0
    evaluator = RsnaEvaluator(gt, ids)
    t0 = time.perf_counter()
    evaluator.score(pred)
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_score, _ = reference_rsna_score(gt, pred, ids)
    t_ref = time.perf_counter() - t0

    print(f"cxrdet rsna_score (groups GT too):  {t_fast:8.3f} s  score {fast.score:.12f}  ({fast.n_images} images)")
    print(f"cxrdet RsnaEvaluator.score:         {t_eval:8.3f} s")
    print(f"per-image Python loop reference:    {t_ref:8.3f} s  score {ref_score:.12f}")
    print(f"speed-up (reference / rsna_score):  {t_ref / t_fast:8.1f} x")
    print(f"speed-up (reference / evaluator):   {t_ref / t_eval:8.1f} x")
    diff = abs(fast.score - ref_score)
    print(f"|score difference|:                 {diff:.3e}  ({'OK' if diff <= 1e-9 else 'MISMATCH'} at 1e-9)")
    if diff > 1e-9:
        sys.exit(1)


if __name__ == "__main__":
    main()
