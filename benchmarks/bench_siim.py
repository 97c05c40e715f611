"""SIIM-COVID's metric at real scale: `cxrdet.competitions.siim.SiimEvaluator` (the six-class VOC mAP at IoU > 0.5)
against the devkit's plain loops (`tests/helpers/reference.py`, `reference_siim_score`), and what one `complete`
(none and study rows) costs.

Simulated, fixed seed, at the competition's size: 6,054 studies and 6,334 images (the public training tables), the
study categories in the real proportions, 1-3 opacity boxes on a non-negative image; per image about `--boxes`
predicted opacity boxes (jittered true boxes, false positives, random scores), its none box, and four category boxes
per study. Prints the seconds of one evaluation (median of `--repeats`), of the reference on `--reference-studies`
studies (and its time scaled to the full set), their ratio and both scores on the shared subset (equal to 1e-12).

Run: .venv/bin/python benchmarks/bench_siim.py [--studies 6054] [--boxes 20] [--reference-studies 6054]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.helpers
from tests.helpers.reference import reference_siim_score  # noqa: E402

from cxrdet.competitions.siim import METRIC_CLASSES, STUDY_CLASSES, SiimEvaluator, complete  # noqa: E402

SHARES = np.array([1676, 2855, 1049, 474], dtype=np.float64) / 6054


def simulate(n_studies: int, boxes: float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Opacity truth, study truth per image (`image_id, study_id, study_class`) and predictions (with none and
    study rows)."""
    rng = np.random.default_rng(seed)
    category = rng.choice(4, n_studies, p=SHARES)
    n_images = 1 + (rng.random(n_studies) < 0.045).astype(int)  # 6,334 / 6,054 images per study
    study = np.repeat(np.arange(n_studies), n_images)
    images = pd.DataFrame({"image_id": [f"i{k:05d}" for k in range(len(study))],
                           "study_id": [f"s{s:05d}" for s in study], "study_class": category[study]})
    n_true = np.where(category[study] == 0, 0, rng.integers(1, 4, len(study)))
    owner = np.repeat(np.arange(len(study)), n_true)
    wh = rng.uniform(200, 900, (len(owner), 2))
    xy = rng.uniform(0, 2000, (len(owner), 2))
    gt = pd.DataFrame({"image_id": images["image_id"].to_numpy()[owner], "x1": xy[:, 0], "y1": xy[:, 1],
                       "x2": xy[:, 0] + wh[:, 0], "y2": xy[:, 1] + wh[:, 1], "label": 0})
    hit = rng.random(len(owner)) < 0.7
    jitter = rng.normal(0, 60, (int(hit.sum()), 4))
    found = gt[hit][["x1", "y1", "x2", "y2"]].to_numpy() + jitter
    n_false = rng.poisson(max(boxes - 1.0, 0.0), len(study))
    false_owner = np.repeat(np.arange(len(study)), n_false)
    fxy = rng.uniform(0, 2500, (len(false_owner), 2))
    fwh = rng.uniform(150, 800, (len(false_owner), 2))
    opacity = pd.DataFrame(np.vstack([found, np.column_stack([fxy, fxy + fwh])]), columns=["x1", "y1", "x2", "y2"])
    opacity["x2"] = np.maximum(opacity["x2"], opacity["x1"] + 1)
    opacity["y2"] = np.maximum(opacity["y2"], opacity["y1"] + 1)
    opacity["image_id"] = np.concatenate([gt["image_id"].to_numpy()[hit], images["image_id"].to_numpy()[false_owner]])
    opacity["score"] = rng.random(len(opacity))
    opacity["label"] = 0
    probs = rng.dirichlet(np.ones(4), len(study)) * 0.7 + np.eye(4)[category[study]] * 0.3  # informative, not perfect
    table = images[["image_id", "study_id"]].assign(**{f"prob_{c}": probs[:, k] for k, c in enumerate(STUDY_CLASSES)})
    pred = complete(opacity, images["image_id"], 1.0 - probs[:, 0], table)
    return gt, images, pred


def rows_of(pred: pd.DataFrame) -> dict[str, list[tuple]]:
    """Predictions as the reference takes them: row id -> `(class, conf, x1, y1, x2, y2)` groups."""
    out: dict[str, list[tuple]] = {}
    for r in pred.itertuples(index=False):
        key = r.image_id if str(r.image_id).endswith("_study") else f"{r.image_id}_image"
        out.setdefault(key, []).append((METRIC_CLASSES[int(r.label)], r.score, r.x1, r.y1, r.x2, r.y2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6054)
    parser.add_argument("--boxes", type=float, default=20.0)
    parser.add_argument("--reference-studies", type=int, default=6054)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    gt, images, pred = simulate(args.studies, args.boxes)
    print(f"{args.studies} studies, {len(images)} images, {len(gt)} true boxes, {len(pred)} predicted rows")
    start = time.perf_counter()
    evaluator = SiimEvaluator(gt, images["image_id"], images)
    setup = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = evaluator.score(pred)
        times.append(time.perf_counter() - start)
    print(f"cxrdet SiimEvaluator: {np.median(times):.3f} s per evaluation (median of {args.repeats}; setup "
          f"{setup:.3f} s once), score {result.score:.6f} (study {result.study_map:.4f}, image {result.image_map:.4f})")
    start = time.perf_counter()
    complete(pred[pred["label"] == 0], images["image_id"], None,
             images[["image_id", "study_id"]].assign(**{f"prob_{c}": 0.25 for c in STUDY_CLASSES}))
    print(f"complete (none and study rows of every image and study): {time.perf_counter() - start:.3f} s")

    sub_studies = set(images["study_id"].drop_duplicates().iloc[:args.reference_studies])
    sub = images[images["study_id"].isin(sub_studies)]
    keep_ids = set(sub["image_id"]) | {f"{s}_study" for s in sub_studies}
    sub_pred = pred[pred["image_id"].isin(keep_ids)]
    sub_gt = gt[gt["image_id"].isin(set(sub["image_id"]))]
    ours = SiimEvaluator(sub_gt, sub["image_id"], sub).score(sub_pred).score
    truth = {i: [] for i in sub["image_id"]}
    for r in sub_gt.itertuples(index=False):
        truth[r.image_id].append((r.x1, r.y1, r.x2, r.y2))
    study_of = dict(zip(sub["image_id"], sub["study_id"], strict=True))
    study_truth = dict(zip(sub["study_id"], [STUDY_CLASSES[c] for c in sub["study_class"]], strict=True))
    start = time.perf_counter()
    reference = reference_siim_score(truth, study_of, study_truth, rows_of(sub_pred))
    ref_time = time.perf_counter() - start
    scaled = ref_time * len(pred) / max(len(sub_pred), 1)
    print(f"devkit loops on {len(sub_studies)} studies: {ref_time:.2f} s (scaled to the full set by rows: "
          f"{scaled:.1f} s); cxrdet {scaled / np.median(times):.0f}x faster; scores {ours:.12f} vs {reference:.12f} "
          f"(|difference| {abs(ours - reference):.1e})")


if __name__ == "__main__":
    main()
