#!/usr/bin/env bash
# The whole pipeline on synthetic SIIM-COVID-format data (a code competition: study and image level, six-class mAP
# at IoU > 0.5):
#   synth (both label tables, studies of 1-3 DICOMs under train/<study>/<series>/, 10-16 bit, some MONOCHROME1)
#   -> prepare -> folds (grouped by study, stratified on its category) -> train a tiny opacity detector and a tiny
#   4-category study classifier (softmax) on every fold -> OOF and test outputs -> tuned submissions of the detector
#   alone and with the classifier (honest nested-CV estimates) -> validated and scored on the synthetic test labels
#   -> the offline bundle of the submission, whose notebook reproduces it with the network cut -> reports.
# Run it with `make demo-siim`. Sizes can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
export CXRDET=${CXRDET:-.venv/bin/cxrdet}
export CXRDET_OUTPUTS=${CXRDET_OUTPUTS:-outputs}
OUT=$CXRDET_OUTPUTS
PY=${PY:-.venv/bin/python}
# The SIIM-layout root is the data root of this run (its configs leave data.root to CXRDET_DATA).
export CXRDET_DATA=${CXRDET_SIIM_DATA:-$OUT/demo/siim}
N_TRAIN=${DEMO_SIIM_N_TRAIN:-200}
N_TEST=${DEMO_SIIM_N_TEST:-50}
SEED=${DEMO_SEED:-42}
SIZE=128
K=3
FOLDS="$OUT/folds/demo_siim_k${K}.csv"
SUBS="$OUT/demo/submissions"
BUNDLE="$OUT/demo/bundles/demo_siim"
MODELS=(siim-fcos_mnv3s_128_tiny12e siim-cls_regnetx002_128_tiny12e)
ENSEMBLES=(demo_siim_detector demo_siim)
STEPS_TOTAL=8
source scripts/demo_steps.sh

step "1/8 synthetic SIIM-layout data: $N_TRAIN train + $N_TEST test studies -> $CXRDET_DATA"
"$CXRDET" synth --competition siim --out "$CXRDET_DATA" --n-train "$N_TRAIN" --n-test "$N_TEST" --seed "$SEED"

step "2/8 decode the DICOMs (10-16 bit, MONOCHROME1 inverted) into the ${SIZE}px cache"
"$CXRDET" prepare --data "$CXRDET_DATA" --size "$SIZE"

step "3/8 $K folds, grouped by study (and patient: the DICOM PatientID), stratified on the study category -> $FOLDS"
META=$("$PY" -c "from cxrdet import paths; print(paths.cache_dir('$CXRDET_DATA', $SIZE) / 'meta.parquet')")
"$CXRDET" folds --labels "$CXRDET_DATA/train_image_level.csv" --headers "$META" --k "$K" --seed "$SEED" \
    --out "$FOLDS"

train_and_predict "${MODELS[@]}"

step "6/8 tune and submit: the detector alone, then with the study classifier"
tune_and_submit "$SUBS" "${ENSEMBLES[@]}"

step "7/8 score the submissions on the synthetic test labels (hidden in the real competition)"
score_submissions "$CXRDET_DATA/sample_submission.csv" "$CXRDET_DATA/synth_test_image_level.csv" "$SUBS" \
    "${ENSEMBLES[@]}"

step "8/8 the offline code-competition bundle of demo_siim, and its notebook run with no network"
rm -rf "$BUNDLE"
"$CXRDET" package configs/ensembles/demo_siim.py --out "$BUNDLE" --data "$CXRDET_DATA"
"$PY" scripts/run_bundle_offline.py "$BUNDLE" "$CXRDET_DATA" "$OUT/demo/bundle_run"
if cmp "$OUT/demo/bundle_run/submission.csv" "$SUBS/demo_siim.csv"; then
    echo "bundle notebook output == cxrdet submit"
else
    echo "error: the bundle's notebook wrote another submission than cxrdet submit" >&2
    exit 1
fi

step "reports: the submission (per-class AP, figures) and the study classifier (ROC)"
"$CXRDET" report demo_siim
"$CXRDET" report siim-cls_regnetx002_128_tiny12e

step "done in $((SECONDS - start)) s"
echo "data:        $CXRDET_DATA"
echo "folds:       $FOLDS"
echo "ensembles:   $OUT/ensembles/<name>/params.json"
echo "submissions: $SUBS/<name>.csv (+ .json provenance)"
echo "bundle:      $BUNDLE (README.md, inference.ipynb)"
echo "reports:     $("$PY" -c "from cxrdet.runs import report_dir; print(report_dir('demo_siim'))")/index.html"
