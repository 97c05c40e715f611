"""VinBigData's metric at real scale: `cxrdet.metrics.voc` (VOC mAP at IoU > 0.4) against the common COCO-based
evaluation (faster-coco-eval, `cxrdet.metrics.coco`) and the devkit's plain loop (`tests/helpers/reference.py`).

Simulated, fixed seed, at the competition's size: 15,000 images; each finding image gets findings of the 14 classes
(about 30% of the images are normal, their ground truth one class-14 box `0 0 1 1`); each finding drawn by 3
readers with jitter, fused per class by WBF (`cxrdet.data.readers.fuse_readers`) into the ground truth; about 30
predicted boxes per image (jittered true boxes, duplicates and false positives, random scores). Prints the seconds of
one evaluation of each and the ratios, and the scores (VOC and COCO differ by definition: see `cxrdet.metrics.voc`);
then the competition metric swept over confidence cuts (as validation and reports do) in one pass against per cut.

Run: .venv/bin/python benchmarks/bench_voc.py [--images 15000] [--boxes 30] [--reference-images 1500]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.helpers
from tests.helpers.reference import reference_voc_map  # noqa: E402


def simulate(n_images: int, boxes_per_image: float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Readers' boxes (`image_id, x1, y1, x2, y2, label, reader`) and predictions of a VinBigData-sized set."""
    rng = np.random.default_rng(seed)
    ids = [f"img{i:05d}" for i in range(n_images)]
    size = rng.integers(2000, 3000, (n_images, 2)).astype(np.float64)
    n_find = np.where(rng.random(n_images) < 0.3, 0, rng.poisson(2.5, n_images) + 1)
    image = np.repeat(np.arange(n_images), n_find)
    label = rng.integers(0, 14, len(image))
    wh = rng.uniform(0.05, 0.35, (len(image), 2)) * size[image]
    xy = rng.uniform(0.0, 1.0, (len(image), 2)) * (size[image] - wh)
    truth = np.column_stack([xy, xy + wh])
    readers = []
    for r in range(3):  # each reader finds 85% of the findings, jittered by ~5% of the box
        seen = rng.random(len(image)) < 0.85
        jitter = rng.normal(0, 0.05, (seen.sum(), 4)) * np.tile(wh[seen], 2)
        readers.append(pd.DataFrame({"image_id": np.asarray(ids)[image[seen]], "x1": truth[seen, 0] + jitter[:, 0],
                                     "y1": truth[seen, 1] + jitter[:, 1], "x2": truth[seen, 2] + jitter[:, 2],
                                     "y2": truth[seen, 3] + jitter[:, 3], "label": label[seen], "reader": f"R{r}"}))
    boxes = pd.concat(readers, ignore_index=True)
    boxes[["x2", "y2"]] = np.maximum(boxes[["x2", "y2"]].to_numpy(), boxes[["x1", "y1"]].to_numpy() + 1.0)
    # Predictions: every true box 1-3 times jittered, the rest of ~boxes_per_image false positives, scores random.
    copies = rng.integers(1, 4, len(image))
    p_img = np.repeat(image, copies)
    p_box = np.repeat(truth, copies, axis=0) + rng.normal(0, 0.08, (len(p_img), 4)) * np.tile(np.repeat(wh, copies,
                                                                                                        axis=0), 2)
    p_lab = np.repeat(label, copies)
    n_fp = np.maximum(rng.poisson(boxes_per_image, n_images) - np.bincount(p_img, minlength=n_images), 0)
    f_img = np.repeat(np.arange(n_images), n_fp)
    f_wh = rng.uniform(0.05, 0.3, (len(f_img), 2)) * size[f_img]
    f_xy = rng.uniform(0.0, 1.0, (len(f_img), 2)) * (size[f_img] - f_wh)
    pred = pd.DataFrame({
        "image_id": np.asarray(ids)[np.concatenate([p_img, f_img])],
        **dict(zip(("x1", "y1", "x2", "y2"), np.concatenate([p_box, np.column_stack([f_xy, f_xy + f_wh])]).T,
                   strict=True)),
        "label": np.concatenate([p_lab, rng.integers(0, 15, len(f_img))]),
    })  # fmt: skip
    pred[["x2", "y2"]] = np.maximum(pred[["x2", "y2"]].to_numpy(), pred[["x1", "y1"]].to_numpy() + 1.0)
    normal = pred["label"] == 14
    pred.loc[normal, ["x1", "y1", "x2", "y2"]] = [0.0, 0.0, 1.0, 1.0]
    pred["score"] = rng.random(len(pred))
    return boxes, pred, ids


def main() -> None:
    from cxrdet.competitions.vinbigdata import METRIC_CLASSES, VinBigDataEvaluator, metric_ground_truth
    from cxrdet.data.readers import fuse_readers
    from cxrdet.metrics.coco import coco_map
    from cxrdet.metrics.voc import VocEvaluator, voc_map

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=15000)
    parser.add_argument("--boxes", type=float, default=30.0, help="predicted boxes per image")
    parser.add_argument("--reference-images", type=int, default=1500,
                        help="images the plain loop is timed on (it is slow), scaled to --images")
    parser.add_argument("--cuts", type=int, default=50, help="confidence cuts of the sweep")
    args = parser.parse_args()

    readers, pred, ids = simulate(args.images, args.boxes)
    t0 = time.perf_counter()
    fused = fuse_readers(readers, iou_thr=0.4)
    t_fuse = time.perf_counter() - t0
    gt = metric_ground_truth(fused, ids)
    print(f"{args.images} images, {len(readers)} readers' boxes fused into {len(gt)} ground-truth boxes (class 14 "
          f"included) in {t_fuse:.1f} s; {len(pred)} predicted boxes ({len(pred) / args.images:.1f} per image)")

    t0 = time.perf_counter()
    ours = voc_map(gt, pred, ids, METRIC_CLASSES)
    t_ours = time.perf_counter() - t0
    evaluator = VocEvaluator(gt, ids, METRIC_CLASSES)
    t0 = time.perf_counter()
    evaluator.score(pred)
    t_again = time.perf_counter() - t0
    t0 = time.perf_counter()
    coco = coco_map(gt, pred, ids, METRIC_CLASSES)
    t_coco = time.perf_counter() - t0

    sub_ids = set(ids[: args.reference_images])
    sub_gt, sub_pred = gt[gt["image_id"].isin(sub_ids)], pred[pred["image_id"].isin(sub_ids)]
    t0 = time.perf_counter()
    ref_map, _ = reference_voc_map(sub_gt, sub_pred, len(METRIC_CLASSES))
    t_ref = (time.perf_counter() - t0) * args.images / args.reference_images
    sub = voc_map(sub_gt, sub_pred, sorted(sub_ids), METRIC_CLASSES).map

    print(f"cxrdet VOC mAP@0.4       {ours.map:.6f}  {t_ours:7.2f} s (grouped ground truth reused: {t_again:.2f} s)")
    print(f"faster-coco-eval mAP@0.4 {coco['map_40']:.6f}  {t_coco:7.2f} s  (COCO rules: 101-point, fallback matching)")
    print(f"devkit loop, {args.reference_images} images: {ref_map:.6f} (cxrdet on them {sub:.6f}, |diff| "
          f"{abs(ref_map - sub):.1e}); scaled to {args.images} images {t_ref:7.1f} s")
    print(f"ratios: faster-coco-eval / cxrdet = {t_coco / t_ours:.1f}x, devkit loop / cxrdet = {t_ref / t_ours:.0f}x")

    # The confidence-cut sweep of validation and reports: one matching (no-finding boxes derived per cut from each
    # image's top finding) against completing and scoring every cut's kept boxes.
    findings = pred[pred["label"] != 14]
    competition = VinBigDataEvaluator(fused[["image_id", "x1", "y1", "x2", "y2", "label"]], ids)
    cuts = np.linspace(0.0, 0.98, args.cuts)
    t0 = time.perf_counter()
    curve = competition.score_vs_threshold(findings, cuts)["score"].to_numpy()
    t_sweep = time.perf_counter() - t0
    t0 = time.perf_counter()
    score = findings["score"].to_numpy()
    per_cut = np.array([competition.score(findings[score >= c]).score for c in cuts])
    t_per_cut = time.perf_counter() - t0
    print(f"sweep over {len(cuts)} cuts: one pass {t_sweep:.2f} s, scored per cut {t_per_cut:.2f} s "
          f"({t_per_cut / t_sweep:.1f}x), max |difference| {np.max(np.abs(curve - per_cut)):.1e}")


if __name__ == "__main__":
    main()
