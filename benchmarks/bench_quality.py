"""Detection quality: the OOF RSNA score of each demo model against a constant-prior baseline.

For each experiment config (default: the two tiny demo detectors), the out-of-fold predictions of all folds
(`outputs/<experiment>/fold<k>/oof.parquet`, written by `cxrdet predict --split oof`) are scored together against
the labels, at the best confidence cut of the OOF curve (so the figure is optimistic by the choice of one cut).

Baseline, per fold, fitted on the training folds only: the two "prior boxes" (2-means of the training boxes' xyxy
coordinates, one per lung in practice), and whichever of {left box, right box, both} scores best on the training
folds; it predicts those fixed boxes on every held-out image.

Run after the demo (`make demo`): .venv/bin/python benchmarks/bench_quality.py [CONFIG ...] [-o data.folds=...]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet import paths
from cxrdet.config import load_config
from cxrdet.data.folds import read_folds
from cxrdet.data.labels import read_labels
from cxrdet.metrics.rsna import RsnaEvaluator

TINY = [paths.CONFIGS_DIR / "experiments" / f"{name}.py" for name in ("fcos_mnv3s_128_tiny12e",
                                                                      "mmdet-atss_mnv3s_128_tiny12e")]
CUTS = np.round(np.arange(0.05, 0.951, 0.025), 3)
BOX = ["x1", "y1", "x2", "y2"]


def two_means(boxes: np.ndarray, iterations: int = 50) -> np.ndarray:
    """2-means of xyxy boxes (pixels of the original image), started at the leftmost and rightmost box centres."""
    centre = (boxes[:, 0] + boxes[:, 2]) / 2
    means = boxes[[int(np.argmin(centre)), int(np.argmax(centre))]].copy()
    for _ in range(iterations):
        nearest = np.argmin(((boxes[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        means = np.stack([boxes[nearest == j].mean(0) if (nearest == j).any() else means[j] for j in range(2)])
    return means[np.argsort((means[:, 0] + means[:, 2]) / 2)]


def fixed_boxes(image_ids: Sequence[str], boxes: np.ndarray) -> pd.DataFrame:
    """The same xyxy boxes, confidence 1, on every image."""
    rows = [(i, *b, 1.0) for i in image_ids for b in boxes]
    return pd.DataFrame(rows, columns=["image_id", *BOX, "score"])


def prior_baseline(gt: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """OOF predictions of the constant-prior baseline (see the module docstring)."""
    parts = []
    for k in sorted(folds["fold"].unique()):
        train_ids = folds.loc[folds["fold"] != k, "image_id"].tolist()
        val_ids = folds.loc[folds["fold"] == k, "image_id"].tolist()
        train_gt = gt[gt["image_id"].isin(set(train_ids))]
        means = two_means(train_gt[BOX].to_numpy())
        evaluator = RsnaEvaluator(train_gt, train_ids)
        choices = [means[:1], means[1:], means]
        best = max(choices, key=lambda b: evaluator.score(fixed_boxes(train_ids, b)).score)
        parts.append(fixed_boxes(val_ids, best))
    return pd.concat(parts, ignore_index=True)


def best_cut(evaluator: RsnaEvaluator, pred: pd.DataFrame) -> tuple[float, float]:
    curve = evaluator.score_vs_threshold(pred, CUTS)
    i = int(curve["score"].fillna(0).to_numpy().argmax())
    return float(curve["score"].iloc[i]), float(curve["threshold"].iloc[i])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="*", default=[str(p) for p in TINY])
    parser.add_argument("-o", "--cfg-options", action="append", default=[])
    args = parser.parse_args(argv)

    first = load_config(args.configs[0], args.cfg_options)
    root = Path(first.data.root) if first.data.root else paths.data_root()
    labels_csv = paths.KaggleLayout(root).labels_csv
    folds_csv = paths.folds_file(first.data.folds)
    if not labels_csv.is_file() or not folds_csv.is_file():
        print(f"bench_quality: labels {labels_csv} or folds {folds_csv} not found; run `make demo` first",
              file=sys.stderr)
        return 1
    folds = read_folds(folds_csv)
    gt = read_labels(labels_csv).boxes
    gt = gt[gt["image_id"].isin(set(folds["image_id"]))][["image_id", *BOX]]
    evaluator = RsnaEvaluator(gt, folds["image_id"].tolist())
    print(f"{len(folds)} images, {folds['fold'].nunique()} folds, {gt['image_id'].nunique()} positive, {len(gt)} boxes")

    score, cut = best_cut(evaluator, prior_baseline(gt, folds))
    print(f"{'constant prior (fixed boxes fitted on the training folds)':60s} OOF RSNA {score:.4f}")
    for config in args.configs:
        cfg = load_config(config, args.cfg_options)
        files = [paths.predictions_path(cfg.experiment, int(k), "oof") for k in sorted(folds["fold"].unique())]
        missing = [f for f in files if not f.is_file()]
        if missing:
            print(f"{cfg.experiment:60s} missing {missing[0]} (train and predict every fold first)")
            continue
        pred = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        score, cut = best_cut(evaluator, pred)
        print(f"{cfg.experiment:60s} OOF RSNA {score:.4f} at cut {cut:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
