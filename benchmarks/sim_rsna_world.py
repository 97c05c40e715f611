"""A simulated ensemble at RSNA scale from the real labels, for `bench_tuning_options.py`: truth on a large test set.

From `../shared/data/rsna/stage_2_train_labels.csv` (26,684 images): 20% of the images become a labelled test set
(their labels written apart, as a competition's hidden labels), the rest 5 folds. Three simulated detectors
(`tests/helpers/simulate.py`) each have 5 fold models: fold model k predicts fold k's images (OOF) and every test
image. Two fold models are miscalibrated on purpose, on their OOF and test boxes alike: `sim0` fold 2 scores x 0.5 and
`sim1` fold 3 scores x 0.7 (the demo's FCOS fold-2 model, less confident). With about 5,300 test images the test score
is the low-noise truth the OOF estimates try to predict, so every option can be judged on it.

Writes, under `CXRDET_OUTPUTS` (use a folder of its own): `sim_rsna/labels.csv`, `sim_rsna/test_labels.csv`,
`sim_rsna/test_ids.csv` (a sample submission), `sim_rsna/folds.csv`, the members' prediction files and four ensemble
configs in `sim_rsna/configs/` (each member alone, and the three fused), whose paths it prints.

Run:
    CXRDET_OUTPUTS=/tmp/simrsna .venv/bin/python benchmarks/sim_rsna_world.py
    CXRDET_OUTPUTS=/tmp/simrsna .venv/bin/python benchmarks/bench_tuning_options.py \\
        /tmp/simrsna/sim_rsna/configs/*.py --test-labels /tmp/simrsna/sim_rsna/test_labels.csv --jobs 2
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet import paths
from cxrdet.io import write_csv, write_parquet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.helpers
from tests.helpers.simulate import simulate_members  # noqa: E402

N_FOLDS = 5
MEMBERS = ("sim0", "sim1", "sim2")
MISCALIBRATED = {("sim0", 2): 0.5, ("sim1", 3): 0.7}  # fold models whose every score is scaled
SEED = 2018

# The shipped configs' fusion, post-processing and search spaces, with the simulated members and data.
ALONE = """# {name} alone (simulated), tuned and merged as any single model (retinanet_r50fpn_512_alone.py).
_base_ = '{configs}/retinanet_r50fpn_512_alone.py'
members = [dict(experiment='{name}', folds=[0, 1, 2, 3, 4])]
folds = '{folds}'
labels = '{labels}'
test_ids = '{test_ids}'
fusion = dict(test_fold_conf_type='max')
n_trials = 40
honest_trials = 30
"""

FUSED = """# The three simulated members fused as demo_wbf.py fuses the demo's two.
_base_ = '{configs}/demo_wbf.py'
members = [{members}]
folds = '{folds}'
labels = '{labels}'
test_ids = '{test_ids}'
n_trials = 80
honest_trials = 50
"""


def main() -> None:
    source = paths.real_rsna_labels()
    if not source.is_file():
        sys.exit(f"{source}: the real RSNA labels are not here (../shared/data/rsna); nothing to simulate from")
    out = paths.outputs_dir() / "sim_rsna"
    labels = pd.read_csv(source)
    ids = pd.Index(pd.unique(labels["patientId"]))
    rng = np.random.default_rng(SEED)
    is_test = pd.Series(rng.random(len(ids)) < 0.2, index=ids)
    train_ids, test_ids = ids[~is_test.to_numpy()], ids[is_test.to_numpy()]
    write_csv(out / "labels.csv", labels[labels["patientId"].isin(train_ids)])
    write_csv(out / "test_labels.csv", labels[labels["patientId"].isin(test_ids)])
    write_csv(out / "test_ids.csv", pd.DataFrame({"patientId": test_ids, "PredictionString": ""}))
    fold = rng.permutation(np.arange(len(train_ids)) % N_FOLDS)
    folds = pd.DataFrame({"image_id": train_ids, "patient_id": train_ids, "fold": fold})
    write_csv(out / "folds.csv", folds)
    pos = labels[labels["Target"] == 1]
    gt = pd.DataFrame({"image_id": pos["patientId"], "x1": pos["x"], "y1": pos["y"],
                       "x2": pos["x"] + pos["width"], "y2": pos["y"] + pos["height"]})
    for k in range(N_FOLDS):
        seen = pd.Index(train_ids[fold == k]).append(test_ids)
        frames = simulate_members(gt[gt["image_id"].isin(seen)], seen, len(MEMBERS), boxes_per_image=6.0,
                                  seed=SEED + k)
        for name, frame in zip(MEMBERS, frames, strict=True):
            frame = frame.assign(score=frame["score"] * MISCALIBRATED.get((name, k), 1.0))
            test = frame["image_id"].isin(test_ids)
            write_parquet(paths.predictions_path(name, k, "oof"), frame[~test].reset_index(drop=True))
            write_parquet(paths.predictions_path(name, k, "test"), frame[test].reset_index(drop=True))
    configs = out / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    where = {"folds": out / "folds.csv", "labels": out / "labels.csv", "test_ids": out / "test_ids.csv",
             "configs": paths.CONFIGS_DIR / "ensembles"}
    for name in MEMBERS:
        (configs / f"{name}_alone.py").write_text(ALONE.format(name=name, **where))
    members = ", ".join(f"dict(experiment='{m}', folds=[0, 1, 2, 3, 4])" for m in MEMBERS)
    (configs / "sim_wbf.py").write_text(FUSED.format(members=members, **where))
    print(f"{len(train_ids)} OOF images in {N_FOLDS} folds, {len(test_ids)} test images; configs:")
    for path in sorted(configs.glob("*.py")):
        print(path)


if __name__ == "__main__":
    main()
