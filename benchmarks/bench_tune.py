"""Tuning speed at RSNA scale: one trial of the tuned objective against the straightforward baseline.

Simulated member predictions (`tests/helpers/simulate.py`) are built from the real RSNA labels in
`../shared/data/rsna` (26,684 images; 5 members, about 10 candidate boxes per member per image). Both sides score the
same parameter sets drawn by the tuning sampler:

- tuned: `EnsembleProblem.score` (boxes prepared once; per trial a compiled weighted-boxes-fusion pass over all
  images, vectorised post-processing and the vectorised RSNA metric), timed over several trials, and one whole
  Optuna trial (sampling and storage included);
- baseline: per image `ensemble_boxes.weighted_boxes_fusion` on normalised boxes, the same post-processing per image,
  and a per-image Python RSNA metric (members grouped by image once, outside the timing).

Prints seconds per trial, the ratio and both scores. Run: `.venv/bin/python benchmarks/bench_tune.py [--trials N]`.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import ensemble_boxes
import numpy as np
import optuna
import pandas as pd

from cxrdet import paths
from cxrdet.boxes import iou_matrix, shrink_xyxy
from cxrdet.data.labels import read_rsna_labels
from cxrdet.ensemble.fuse import FusionInput
from cxrdet.ensemble.problem import EnsembleProblem
from cxrdet.ensemble.spec import EnsembleParams, parse_ensemble, resolve
from cxrdet.ensemble.tune import TrialSeededTPE, distributions, expanded_space, suggest
from cxrdet.metrics.rsna import IOU_THRESHOLDS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.helpers
from tests.helpers.simulate import simulate_members  # noqa: E402

N_MEMBERS = 5
BOXES_PER_IMAGE = 10.0
SIZE = 1024.0
CONFIG = {
    "members": [{"experiment": f"sim{m}", "folds": [0]} for m in range(N_MEMBERS)],
    "fusion": {"method": "wbf", "iou_thr": 0.5, "skip_box_thr": 0.0, "conf_type": "avg"},
    "postprocess": {"final_thr": 0.3},
    "search_space": {
        "iou_thr": {"type": "float", "low": 0.3, "high": 0.7},
        "skip_box_thr": {"type": "float", "low": 0.0, "high": 0.1},
        "conf_type": {"type": "categorical", "choices": ["avg", "max", "box_and_model_avg"]},
        "weight": {"type": "float", "low": 0.5, "high": 2.0},
        "member_thr": {"type": "float", "low": 0.0, "high": 0.4},
        "shrink": {"type": "float", "low": 0.8, "high": 1.0},
        "final_thr": {"type": "float", "low": 0.1, "high": 0.7},
        "max_boxes": {"type": "int", "low": 1, "high": 4},
    },
    "seed": 0,
}


def baseline_score(by_image: list[list[tuple[np.ndarray, np.ndarray]]], gt_by_image: list[np.ndarray],
                   params: EnsembleParams) -> float:
    """One trial the straightforward way: per image, ensemble-boxes WBF, post-processing and the metric."""
    weights = list(params.fusion.weights)
    post = params.post
    total, counted = 0.0, 0
    for members, gt in zip(by_image, gt_by_image, strict=True):
        boxes, scores, labels = [], [], []
        for (b, s), thr in zip(members, params.member_thr, strict=True):
            keep = s >= thr
            boxes.append(b[keep] / SIZE)
            scores.append(s[keep])
            labels.append(np.zeros(int(keep.sum())))
        if sum(len(s) for s in scores):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fused, fused_scores, _ = ensemble_boxes.weighted_boxes_fusion(
                    boxes, scores, labels, weights=weights, iou_thr=params.fusion.iou_thr,
                    skip_box_thr=params.fusion.skip_box_thr, conf_type=params.fusion.conf_type)
            pred, score = shrink_xyxy(fused * SIZE, post.shrink), np.asarray(fused_scores)
            keep = score >= post.final_thr
            pred, score = pred[keep], score[keep]
        else:
            pred, score = np.zeros((0, 4)), np.zeros(0)
        order = np.lexsort([pred[:, 3], pred[:, 2], pred[:, 1], pred[:, 0], -score])
        pred = pred[order][: post.max_boxes]
        value = image_score(gt, pred)
        if value is not None:
            total += value
            counted += 1
    return total / counted


def image_score(gt: np.ndarray, pred: np.ndarray) -> float | None:
    """RSNA score of one image: `pred` already in visiting order (xyxy pixels)."""
    if len(gt) == 0 and len(pred) == 0:
        return None
    if len(gt) == 0 or len(pred) == 0:
        return 0.0
    gt = gt[np.lexsort([gt[:, 3], gt[:, 2], gt[:, 1], gt[:, 0]])]
    ious = iou_matrix(pred, gt)
    total = 0.0
    for t in IOU_THRESHOLDS:
        matched = np.zeros(len(gt), dtype=bool)
        tp = 0
        for i in range(len(pred)):
            candidates = np.where(matched, -1.0, ious[i])
            j = int(np.argmax(candidates))
            if candidates[j] > t:
                matched[j] = True
                tp += 1
        total += tp / (len(pred) + len(gt) - tp)
    return total / len(IOU_THRESHOLDS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="trials of the tuned objective to time")
    parser.add_argument("--baseline-trials", type=int, default=1, help="trials of the baseline to time")
    args = parser.parse_args()
    labels_path = paths.real_rsna_labels()
    if not labels_path.exists():
        print(f"real RSNA labels not found at {labels_path}: place ../shared/data or set CXRDET_SHARED_DATA")
        return 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ann = read_rsna_labels(labels_path)
    ids = pd.Index(ann.images["image_id"])
    gt = ann.boxes[["image_id", "x1", "y1", "x2", "y2"]]
    members = simulate_members(gt, ids, N_MEMBERS, BOXES_PER_IMAGE, SIZE, seed=0)
    n_boxes = sum(len(m) for m in members)
    print(f"{len(ids)} images, {len(gt)} ground-truth boxes, {N_MEMBERS} members, {n_boxes} candidate boxes "
          f"({n_boxes / len(ids) / N_MEMBERS:.1f} per member per image)")

    t0 = time.perf_counter()
    problem = EnsembleProblem(FusionInput.from_frames(members, ids, SIZE, SIZE), gt)
    print(f"prepare once (normalise, sort, group; metric ground truth): {time.perf_counter() - t0:.2f} s")
    spec = parse_ensemble(CONFIG, Path("bench_tune.py"))
    dists = distributions(expanded_space(spec))
    study = optuna.create_study(direction="maximize", sampler=TrialSeededTPE(spec.seed, multivariate=True))
    drawn: list[EnsembleParams] = []
    times: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        params = resolve(spec, suggest(trial, dists))
        t = time.perf_counter()
        value = problem.score(params)
        times.append(time.perf_counter() - t)
        drawn.append(params)
        return value

    problem.score(resolve(spec, {}))  # compile (numba cache) and warm up
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=args.trials)
    per_trial_optuna = (time.perf_counter() - t0) / args.trials
    tuned = float(np.median(times))
    print(f"tuned objective: median {tuned:.3f} s per trial (min {min(times):.3f}, max {max(times):.3f}) over "
          f"{args.trials} trials; whole Optuna trial (TPE sampling, in-memory storage) {per_trial_optuna:.3f} s")

    gt_image = ids.get_indexer(gt["image_id"])
    gt_boxes = gt[["x1", "y1", "x2", "y2"]].to_numpy()
    order = np.argsort(gt_image, kind="stable")
    bounds = np.searchsorted(gt_image[order], np.arange(len(ids) + 1))
    gt_by_image = [gt_boxes[order[bounds[i]:bounds[i + 1]]] for i in range(len(ids))]
    by_image = [[] for _ in range(len(ids))]
    for m in members:
        img = ids.get_indexer(m["image_id"])
        o = np.argsort(img, kind="stable")
        b = np.searchsorted(img[o], np.arange(len(ids) + 1))
        boxes, scores = m[["x1", "y1", "x2", "y2"]].to_numpy()[o], m["score"].to_numpy()[o]
        for i in range(len(ids)):
            by_image[i].append((boxes[b[i]:b[i + 1]], scores[b[i]:b[i + 1]]))
    worst = 0.0
    base_times = []
    for params in drawn[: args.baseline_trials]:
        t = time.perf_counter()
        base = baseline_score(by_image, gt_by_image, params)
        base_times.append(time.perf_counter() - t)
        fast = problem.score(params)
        worst = max(worst, abs(base - fast))
        print(f"  params iou_thr={params.fusion.iou_thr:.3f} conf_type={params.fusion.conf_type}: baseline score "
              f"{base:.12f}, tuned {fast:.12f}, |diff| {abs(base - fast):.2e}")
    baseline = float(np.median(base_times))
    print(f"baseline (per-image ensemble_boxes WBF + per-image Python metric): {baseline:.2f} s per trial")
    print(f"ratio baseline / tuned: {baseline / tuned:.0f}x; largest score difference {worst:.2e} "
          f"({'within' if worst <= 1e-9 else 'OUTSIDE'} 1e-9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
