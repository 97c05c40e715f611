"""Curriculum against whole images for the tiny binary classifier, at the same number of optimiser steps.

Two arms, each trained on every fold but `--fold` of the demo data set and validated on `--fold`:

- `full`: whole images for `--epochs` epochs;
- `curriculum`: `--crop-epochs` epochs on crops (around labelled boxes: positive; random crops of negative images:
  negative), then `--epochs - --crop-epochs` epochs on whole images starting from the crop stage's best weights.

Every epoch of both arms is cut to the same number of batches (`train.limit_train_batches`): `--steps-per-epoch`, or
fewer when one view's epoch is shorter; both arms then take the same number of optimiser steps (read back from the
checkpoints and printed). `--train-fraction` keeps a random share of the training
images (the fold file is subset; validation keeps the whole fold): the small-data setting where a curriculum is said
to help most. Printed per arm and seed: the best validation AUROC (the checkpoint monitor), accuracy at 0.5 and the
best F1 of that epoch, the optimiser steps and seconds; then the curriculum / full ratio of the mean AUROC.

Data: the demo data set (`make demo`, or `cxrdet synth` + `cxrdet prepare --size 128` + `cxrdet folds` under
CXRDET_OUTPUTS), found through the tiny classifier config's `data` section (override with -o data.root=...).
Runs go to a temporary outputs folder.

Run: .venv/bin/python benchmarks/bench_classifier_curriculum.py [--seeds 0 1] [--train-fraction 1.0] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrdet import paths
from cxrdet.config import load_config, parse_options
from cxrdet.data.classify import ClassificationDataModule
from cxrdet.errors import CxrdetError

VIEWS: tuple[str, ...] = ("full", "crops")
TINY = paths.CONFIGS_DIR / "experiments" / "cls_regnetx002_128_tiny12e.py"


def subset_folds(folds: Path, fold: int, fraction: float, seed: int, out: Path) -> Path:
    """A fold file keeping all of `fold` and a seeded `fraction` of the other folds' patients."""
    table = pd.read_csv(folds, dtype={"image_id": str, "patient_id": str})
    if fraction >= 1.0:
        return folds
    rng = np.random.default_rng(seed)
    train_patients = table.loc[table["fold"] != fold, "patient_id"].unique()
    kept = set(rng.choice(train_patients, size=max(2, round(fraction * len(train_patients))), replace=False))
    table = table[(table["fold"] == fold) | table["patient_id"].isin(kept)]
    table.to_csv(out, index=False)
    return out


def run_arm(arm: str, options: dict[str, Any], fold: int, epochs: int, crop_epochs: int) -> dict[str, Any]:
    """Train one arm; returns its best validation figures, optimiser steps and seconds."""
    from cxrdet.runs import load_checkpoint_file
    from cxrdet.runs import resolve_stages
    from cxrdet.tasks import train

    stages = None
    if arm == "curriculum":
        stages = [{"name": "crops", "view": "crops", "epochs": crop_epochs},
                  {"name": "full", "view": "full", "epochs": epochs - crop_epochs}]
    cfg = load_config(TINY, {**options, "train.epochs": epochs, "train.stages": stages, "experiment": f"bench_{arm}"})
    start = time.perf_counter()
    result = train(cfg, fold, overwrite=True)
    seconds = time.perf_counter() - start
    steps = 0
    for stage in resolve_stages(cfg):
        last = paths.checkpoints_dir(cfg.experiment, fold, stage.name) / "last.ckpt"
        steps += int(load_checkpoint_file(last)["global_step"])
    stage_dir = result.best_checkpoint.parent.parent
    log = pd.concat(pd.read_csv(f) for f in stage_dir.glob("csv/*/metrics.csv"))
    val = log.dropna(subset=["val/auroc"]).sort_values("epoch")
    best = val.loc[val["val/auroc"].idxmax()] if len(val) else None
    return {
        "arm": arm,
        "auroc": result.best_score,
        "accuracy": float(best["val/accuracy"]) if best is not None else math.nan,
        "f1": float(best["val/f1"]) if best is not None else math.nan,
        "last_auroc": float(val["val/auroc"].iloc[-1]) if len(val) else math.nan,
        "steps": steps,
        "seconds": seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12, help="Total epochs of each arm.")
    parser.add_argument("--crop-epochs", type=int, default=4, help="Epochs of the curriculum's crop stage.")
    parser.add_argument("--steps-per-epoch", type=int, default=15,
                        help="Batches per epoch (at most), the same in both arms.")
    parser.add_argument("--train-fraction", type=float, default=1.0, help="Share of the training patients kept.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--cfg-options", nargs="*", default=[], help="Overrides, e.g. data.root=...")
    args = parser.parse_args(argv)
    if not 0 < args.crop_epochs < args.epochs:
        parser.error("--crop-epochs must be between 0 and --epochs (exclusive)")
    torch.set_num_threads(args.threads)

    overrides = parse_options(args.cfg_options)
    base = load_config(TINY, overrides)
    try:
        ClassificationDataModule(base.data, args.fold).setup()
    except (CxrdetError, FileNotFoundError) as err:
        print(f"No demo data set to train on: {err}\nBuild it with `make demo` (or cxrdet synth, cxrdet prepare "
              "--size 128 and cxrdet folds; see scripts/demo.sh) under the same CXRDET_OUTPUTS.", file=sys.stderr)
        return 1
    folds_file = paths.folds_file(base.data.folds)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_cls_") as tmp:
        data_root = Path(base.data.root) if base.data.root else paths.data_root()
        cache = base.data.cache or paths.cache_dir(data_root, int(base.data.size))
        for seed in args.seeds:
            folds = subset_folds(folds_file, args.fold, args.train_fraction, seed, Path(tmp) / f"folds_{seed}.csv")
            data = {**dict(base.data), "root": str(data_root), "cache": str(cache), "folds": str(folds)}
            per_epoch = [len(ClassificationDataModule(data, args.fold, view=v).train_dataloader()) for v in VIEWS]
            steps = min(args.steps_per_epoch, *per_epoch)
            options = {**overrides, "data.root": str(data_root),
                       "data.cache": str(cache), "data.folds": str(folds), "train.seed": seed,
                       "train.limit_train_batches": steps, "train.progress_bar": False,
                       "train.accelerator": "cpu" if not torch.cuda.is_available() else "auto"}
            os.environ["CXRDET_OUTPUTS"] = str(Path(tmp) / "outputs")
            for arm in ("full", "curriculum"):
                row = run_arm(arm, options, args.fold, args.epochs, args.crop_epochs)
                rows.append({"seed": seed, "per_epoch": steps, **row})
                print(f"seed {seed} {arm:>10}: best val/auroc {row['auroc']:.4f} (accuracy {row['accuracy']:.3f}, "
                      f"F1 {row['f1']:.3f}; last epoch {row['last_auroc']:.4f}), {row['steps']} steps, "
                      f"{row['seconds']:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby("arm")[["auroc", "accuracy", "f1", "last_auroc", "steps", "seconds"]].mean()
    print(f"\nfold {args.fold}, {len(args.seeds)} seed(s), {args.epochs} epochs x {sorted(set(table['per_epoch']))} "
          f"batches of {base.data.batch_size} "
          f"({args.crop_epochs} crop epochs in the curriculum), train fraction {args.train_fraction}:")
    print(summary.round(4).to_string())
    ratio = summary.loc["curriculum", "auroc"] / summary.loc["full", "auroc"]
    print(f"curriculum / full mean best val AUROC: {ratio:.3f}x; accuracy "
          f"{summary.loc['curriculum', 'accuracy']:.3f} vs {summary.loc['full', 'accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
