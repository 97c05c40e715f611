#!/usr/bin/env bash
# The whole pipeline on synthetic VinBigData-format data (14 classes, three readers per image, mAP at IoU > 0.4):
#   synth (train.csv with 3 of 17 readers, 12-16 bit DICOMs of varying size, some MONOCHROME1) -> prepare -> folds
#   (multi-label stratified) -> train a tiny 14-class detector (the readers fused per class by WBF) and a tiny 2-class
#   classifier on every fold -> OOF and test outputs -> tuned submissions without and with the 2-class filter
#   (honest nested-CV estimates) -> validated and scored on the synthetic test labels -> reports (per-class AP).
# Run it with `make demo-vinbigdata`. Sizes can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
export CXRDET=${CXRDET:-.venv/bin/cxrdet}
export CXRDET_OUTPUTS=${CXRDET_OUTPUTS:-outputs}
OUT=$CXRDET_OUTPUTS
PY=${PY:-.venv/bin/python}
# The VinBigData-layout root is the data root of this run (its configs leave data.root to CXRDET_DATA).
export CXRDET_DATA=${CXRDET_VINBIGDATA_DATA:-$OUT/demo/vinbigdata}
N_TRAIN=${DEMO_VBD_N_TRAIN:-200}
N_TEST=${DEMO_VBD_N_TEST:-60}
SEED=${DEMO_SEED:-42}
SIZE=128
K=5
FOLDS="$OUT/folds/demo_vinbigdata_k${K}.csv"
SUBS="$OUT/demo/submissions"
MODELS=(vinbigdata-fcos_mnv3s_128_tiny12e vinbigdata-cls_regnetx002_128_tiny12e)
ENSEMBLES=(demo_vinbigdata_fcos demo_vinbigdata_cls)
source scripts/demo_steps.sh

step "1/7 synthetic VinBigData-layout data: $N_TRAIN train + $N_TEST test images -> $CXRDET_DATA"
"$CXRDET" synth --competition vinbigdata --out "$CXRDET_DATA" --n-train "$N_TRAIN" --n-test "$N_TEST" --seed "$SEED"

step "2/7 decode the DICOMs (12-16 bit, MONOCHROME1 inverted) into the ${SIZE}px cache"
"$CXRDET" prepare --data "$CXRDET_DATA" --size "$SIZE"

step "3/7 $K folds, one image per group, stratified on the 14 classes at once -> $FOLDS"
"$CXRDET" folds --labels "$CXRDET_DATA/train.csv" --k "$K" --seed "$SEED" --out "$FOLDS"

train_and_predict "${MODELS[@]}"

step "6/7 tune and submit: the detector alone, then with the 2-class filter"
tune_and_submit "$SUBS" "${ENSEMBLES[@]}"

step "7/7 score the submissions on the synthetic test labels (hidden in the real competition)"
score_submissions "$CXRDET_DATA/sample_submission.csv" "$CXRDET_DATA/synth_test_labels.csv" "$SUBS" "${ENSEMBLES[@]}"

step "reports: the filtered submission (per-class AP, figures, gallery) and the 2-class classifier (ROC)"
"$CXRDET" report demo_vinbigdata_cls
"$CXRDET" report vinbigdata-cls_regnetx002_128_tiny12e

step "done in $((SECONDS - start)) s"
echo "data:        $CXRDET_DATA"
echo "folds:       $FOLDS"
echo "ensembles:   $OUT/ensembles/<name>/params.json"
echo "submissions: $SUBS/<name>.csv (+ .json provenance)"
echo "reports:     $("$PY" -c "from cxrdet.runs import report_dir; print(report_dir('demo_vinbigdata_cls'))")/index.html"
