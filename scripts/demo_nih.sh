#!/usr/bin/env bash
# The multi-label (CheXNet-style) path on synthetic NIH ChestX-ray14-format data:
#   synth (NIH layout: Data_Entry table + PNGs + train/test lists) -> prepare -> patient-grouped folds
#   -> train a tiny 14-finding classifier on every fold -> OOF and test probabilities -> AUROC report -> Grad-CAM.
# Run it with `make demo-nih`. Sizes can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
export CXRDET=${CXRDET:-.venv/bin/cxrdet}
export CXRDET_OUTPUTS=${CXRDET_OUTPUTS:-outputs}
OUT=$CXRDET_OUTPUTS
PY=${PY:-.venv/bin/python}
# The NIH-layout root is the data root of this run (the classifier config leaves data.root to CXRDET_DATA).
export CXRDET_DATA=${CXRDET_NIH_DATA:-$OUT/demo/nih}
N_TRAIN=${DEMO_NIH_N_TRAIN:-800}
N_TEST=${DEMO_NIH_N_TEST:-200}
SEED=${DEMO_SEED:-42}
K=5
EXP=cls_regnetx002-nih14_128_tiny12e
CONFIG=configs/experiments/$EXP.py
FOLDS="$OUT/folds/nih_demo_k${K}.csv"
source scripts/demo_steps.sh

step "1/6 synthetic NIH-layout data: $N_TRAIN train/val + $N_TEST test images (256 px PNGs) -> $CXRDET_DATA"
"$CXRDET" synth --format nih --out "$CXRDET_DATA" --n-train "$N_TRAIN" --n-test "$N_TEST" --size 256 --seed "$SEED"

step "2/6 cache the PNGs at 128 px"
"$CXRDET" prepare --data "$CXRDET_DATA" --size 128

step "3/6 $K folds grouped by patient -> $FOLDS"
"$CXRDET" folds --labels "$CXRDET_DATA/Data_Entry_2017_v2020.csv" --k "$K" --seed "$SEED" --out "$FOLDS"

step "4/6 train $EXP on every fold"
bash scripts/train_folds.sh "$CONFIG" -- --overwrite

step "5/6 OOF and test probabilities"
bash scripts/predict_folds.sh "$CONFIG" -- --split oof --split test

step "6/6 per-class ROC/AUROC report and Grad-CAM of the top-4 findings"
"$CXRDET" report "$EXP"
"$CXRDET" explain "$CONFIG" --fold 0 --n 4

step "done in $((SECONDS - start)) s"
echo "report:   $("$PY" -c "from cxrdet.runs import report_dir; print(report_dir('$EXP'))")/index.html"
echo "grad-cam: $("$PY" -c "from cxrdet.runs import Run; print(Run('$EXP', 0).explain_dir)")/"
