"""A tiny ensemble on disk: RSNA-format labels, a fold file, members' OOF and test prediction files, a config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet import paths
from cxrdet.io import write_csv, write_parquet
from tests.helpers.simulate import simulate_members

EXPERIMENTS = ("det_a", "det_b")


def make_world(root: Path, n_images: int = 90, n_test: int = 12, n_folds: int = 3, seed: int = 0,
               experiments: tuple[str, ...] = EXPERIMENTS) -> dict[str, object]:
    """Write labels (Kaggle layout with a sample submission), folds and the members' prediction files."""
    rng = np.random.default_rng(seed)
    ids = [f"img{i:03d}" for i in range(n_images)]
    rows = []
    for image_id in ids:
        n = int(rng.choice([0, 0, 1, 2]))
        for _ in range(n):
            x, y = rng.uniform(50, 600, 2)
            w, h = rng.uniform(80, 300, 2)
            rows.append((image_id, round(x, 1), round(y, 1), round(w, 1), round(h, 1), 1))
        if n == 0:
            rows.append((image_id, "", "", "", "", 0))
    data = root / "data"
    labels = pd.DataFrame(rows, columns=["patientId", "x", "y", "width", "height", "Target"])
    write_csv(data / "stage_2_train_labels.csv", labels)
    test_ids = [f"test{i:02d}" for i in range(n_test)]
    write_csv(data / "stage_2_sample_submission.csv",
              pd.DataFrame({"patientId": test_ids, "PredictionString": "0.5 0 0 100 100"}))
    folds = pd.DataFrame({"image_id": ids, "patient_id": ids, "fold": np.arange(n_images) % n_folds})
    folds_path = root / "folds.csv"
    write_csv(folds_path, folds)
    pos = labels[labels["Target"] == 1]
    gt = pd.DataFrame({"image_id": pos["patientId"], "x1": pos["x"].astype(float), "y1": pos["y"].astype(float),
                       "x2": pos["x"].astype(float) + pos["width"].astype(float),
                       "y2": pos["y"].astype(float) + pos["height"].astype(float)})
    oof = simulate_members(gt, pd.Index(ids), len(experiments), boxes_per_image=4.0, seed=seed)
    fold_of = dict(zip(ids, folds["fold"], strict=True))
    # Test images with opacities like the training ones, so that the test boxes look like the OOF boxes.
    test_gt = gt.iloc[: 2 * n_test].copy()
    test_gt["image_id"] = [test_ids[i % n_test] for i in range(len(test_gt))]
    for m, (exp, frame) in enumerate(zip(experiments, oof, strict=True)):
        for k in range(n_folds):
            write_parquet(paths.predictions_path(exp, k, "oof"), frame[frame["image_id"].map(fold_of) == k])
            test = simulate_members(test_gt, pd.Index(test_ids), 1, boxes_per_image=4.0, seed=seed + 7 * k + m)[0]
            write_parquet(paths.predictions_path(exp, k, "test"), test)
    return {"labels": data / "stage_2_train_labels.csv", "folds": folds_path, "ids": ids, "test_ids": test_ids,
            "gt": gt, "n_folds": n_folds}


def write_config(path: Path, world: dict[str, object], experiments: tuple[str, ...] = EXPERIMENTS, n_trials: int = 8,
                 extra: str = "") -> Path:
    """An ensemble config over the world's members."""
    folds = list(range(int(world["n_folds"])))
    members = ", ".join(f"dict(experiment='{e}', folds={folds})" for e in experiments)
    path.write_text(f"""
members = [{members}]
folds = '{world["folds"]}'
labels = '{world["labels"]}'
fusion = dict(method='wbf', iou_thr=0.5, skip_box_thr=0.02, conf_type='avg', test_fold_merge='before')
postprocess = dict(member_thr=0.0, vote_power=0.0, shrink=1.0, final_thr=0.3)
search_space = dict(
    iou_thr=dict(type='float', low=0.3, high=0.7),
    weight=dict(type='float', low=0.5, high=2.0),
    member_thr=dict(type='float', low=0.0, high=0.5),
    vote_power=dict(type='float', low=0.0, high=2.0),
    shrink=dict(type='float', low=0.8, high=1.0, step=0.025),
    final_thr=dict(type='float', low=0.1, high=0.8),
)
n_trials = {n_trials}
honest_trials = 4
seed = 3
{extra}
""")
    return path


def write_pair_of_one(path: Path, experiment: str) -> Path:
    """An ensemble of one experiment's fold-0 run twice (members `a` and `b`), three trials on the final cut: the
    smallest tuned ensemble a report can show."""
    path.write_text(f"""
members = [dict(name='a', experiment='{experiment}', folds=[0]),
           dict(name='b', experiment='{experiment}', folds=[0])]
fusion = dict(method='wbf', iou_thr=0.5, skip_box_thr=0.0, conf_type='avg', test_fold_merge='before')
postprocess = dict(member_thr=0.0, vote_power=0.0, shrink=1.0, final_thr=0.3)
search_space = dict(final_thr=dict(type='float', low=0.1, high=0.5))
n_trials = 3
honest_trials = 1
seed = 3
""")
    return path
