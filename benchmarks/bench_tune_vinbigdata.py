"""One tuning trial of a VinBigData ensemble at the competition's size, in seconds.

Simulated as in `benchmarks/bench_voc.py` (15,000 images, 3 readers fused per class by WBF into the ground truth,
about 30 predicted boxes an image), as two members (the second a jittered, rescored copy of the first), plus a 2-class
filter's P(abnormal) per image. One trial is what `cxrdet tune` evaluates: per-member thresholds, weighted boxes
fusion of each class (the fast engine), vote scaling, the classifier gate, shrink, per-class cuts, the no-finding box
of every image (`1 - p`), and the VOC mAP at IoU > 0.4 of the 15 classes. Prints the median and range over the
trials of a small Optuna study (TPE), and the one-time preparation.

Run: .venv/bin/python benchmarks/bench_tune_vinbigdata.py [--images 15000] [--trials 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

SPEC = importlib.util.spec_from_file_location("bench_voc", Path(__file__).with_name("bench_voc.py"))
bench_voc = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench_voc)  # type: ignore[union-attr]

CONFIG = {
    "members": [{"experiment": "a", "folds": [0]}, {"experiment": "b", "folds": [0]}],
    "fusion": {"method": "wbf", "iou_thr": 0.4, "skip_box_thr": 0.0, "conf_type": "avg"},
    "postprocess": {"member_thr": 0.0, "vote_power": 0.0, "cls_alpha": 0.5, "class_thr": [0.0] * 14},
    "classifier": {"experiment": "c", "column": "abnormal"},
    "search_space": {
        "iou_thr": {"type": "float", "low": 0.25, "high": 0.6},
        "conf_type": {"type": "categorical", "choices": ["avg", "max", "box_and_model_avg"]},
        "weight": {"type": "float", "low": 0.25, "high": 4.0, "log": True},
        "member_thr": {"type": "float", "low": 0.0, "high": 0.2},
        "vote_power": {"type": "float", "low": 0.0, "high": 2.0},
        "cls_alpha": {"type": "float", "low": 0.0, "high": 2.0},
        "cls_tau": {"type": "float", "low": 0.0, "high": 0.3},
        "shrink": {"type": "float", "low": 0.9, "high": 1.1},
        "class_thr": {"type": "float", "low": 0.0, "high": 0.2},
    },
    "seed": 21,
}


def main() -> None:
    from cxrdet.competitions import get_competition
    from cxrdet.data.readers import fuse_readers
    from cxrdet.ensemble.fuse import FusionInput
    from cxrdet.ensemble.problem import EnsembleProblem
    from cxrdet.ensemble.spec import expanded_space, parse_ensemble, resolve
    from cxrdet.ensemble.tune import TrialSeededTPE, distributions, suggest

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=15000)
    parser.add_argument("--boxes", type=float, default=30.0, help="predicted boxes per image and member")
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    readers, pred, ids = bench_voc.simulate(args.images, args.boxes)
    rng = np.random.default_rng(1)
    first = pred[pred["label"] < 14].reset_index(drop=True)  # detectors predict the 14 findings only
    second = first.copy()
    wh = np.tile((first[["x2", "y2"]].to_numpy() - first[["x1", "y1"]].to_numpy()), 2)
    second[["x1", "y1", "x2", "y2"]] = first[["x1", "y1", "x2", "y2"]].to_numpy() + rng.normal(0, 0.05, wh.shape) * wh
    second[["x2", "y2"]] = np.maximum(second[["x2", "y2"]].to_numpy(), second[["x1", "y1"]].to_numpy() + 1.0)
    second["score"] = np.clip(first["score"] + rng.normal(0, 0.1, len(first)), 0.0, 1.0)
    t0 = time.perf_counter()
    gt = fuse_readers(readers, iou_thr=0.4)[["image_id", "x1", "y1", "x2", "y2", "label"]]
    t_fuse = time.perf_counter() - t0
    index = pd.Index(ids)
    abnormal = index.isin(gt["image_id"].unique())
    prob = np.clip(np.where(abnormal, 0.7, 0.3) + rng.normal(0, 0.2, len(index)), 0.0, 1.0)
    # Per-image sizes: the largest corner of any box of the image (the simulation's images are 2,000-3,000 px).
    corners = pd.concat([first, gt]).groupby("image_id")[["x2", "y2"]].max().reindex(index).fillna(2000.0)
    t0 = time.perf_counter()
    inp = FusionInput.from_frames([first, second], index, corners["x2"].to_numpy() + 1, corners["y2"].to_numpy() + 1,
                                  names=["a", "b"])
    problem = EnsembleProblem(inp, gt, prob, "fast", get_competition("vinbigdata"))
    t_prepare = time.perf_counter() - t0
    print(f"{len(index)} images, {len(gt)} fused ground-truth boxes (readers fused in {t_fuse:.1f} s), 2 members x "
          f"{len(first)} boxes ({len(first) / len(index):.1f} per image); prepared once in {t_prepare:.2f} s")

    spec = parse_ensemble(CONFIG, Path("bench_tune_vinbigdata.py"))
    dists = distributions(expanded_space(spec))
    problem.score(resolve(spec, {}))  # compile the numba engine, warm up
    times: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        params = resolve(spec, suggest(trial, dists))
        t = time.perf_counter()
        value = problem.score(params)
        times.append(time.perf_counter() - t)
        return value

    study = optuna.create_study(direction="maximize", sampler=TrialSeededTPE(spec.seed))
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=args.trials)
    whole = (time.perf_counter() - t0) / args.trials
    print(f"one trial ({len(dists)} parameters): median {np.median(times):.2f} s (min {min(times):.2f}, max "
          f"{max(times):.2f}) over {args.trials} trials; with Optuna's sampling {whole:.2f} s; best mAP@0.4 "
          f"{study.best_value:.4f}")


if __name__ == "__main__":
    main()
