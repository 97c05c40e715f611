#!/usr/bin/env bash
# The whole pipeline on synthetic RSNA-format data:
#   synth -> prepare -> folds -> train two tiny detectors (torchvision FCOS, mmdet ATSS) and a tiny image-level
#   classifier on every fold -> predict OOF and test boxes / probabilities -> one submission per model -> tuned
#   ensembles without and with classifier gating -> reports (ensemble, classifier ROC, Grad-CAM).
# Run it with `make demo` (which installs what it needs first). Sizes can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
export CXRDET=${CXRDET:-.venv/bin/cxrdet}
export CXRDET_OUTPUTS=${CXRDET_OUTPUTS:-outputs}
OUT=$CXRDET_OUTPUTS
DATA="$OUT/demo/data"
N_TRAIN=${DEMO_N_TRAIN:-400}
N_TEST=${DEMO_N_TEST:-100}
SIZE=${DEMO_SIZE:-128}
K=5
SEED=${DEMO_SEED:-42}
PY=${PY:-.venv/bin/python}
FOLDS="$OUT/folds/demo_k${K}.csv"
SUBS="$OUT/demo/submissions"
CACHE=$("$PY" -c "from cxrdet import paths; print(paths.cache_dir('$DATA', $SIZE))")
MODELS=(fcos_mnv3s_128_tiny12e mmdet-atss_mnv3s_128_tiny12e cls_regnetx002_128_tiny12e)
CLASSIFIER=cls_regnetx002_128_tiny12e
ENSEMBLES=(demo_fcos_tiny demo_atss_tiny demo_wbf demo_wbf_cls)
source scripts/demo_steps.sh

step "1/7 synthetic Kaggle-layout data: $N_TRAIN train + $N_TEST test images -> $DATA"
"$CXRDET" synth --out "$DATA" --n-train "$N_TRAIN" --n-test "$N_TEST" --seed "$SEED"

step "2/7 decode DICOMs into the ${SIZE}px cache -> $CACHE"
"$CXRDET" prepare --data "$DATA" --size "$SIZE"

step "3/7 $K folds grouped by patient, stratified -> $FOLDS"
"$CXRDET" folds --labels "$DATA/stage_2_train_labels.csv" --headers "$CACHE/meta.parquet" \
    --k "$K" --seed "$SEED" --out "$FOLDS"

train_and_predict "${MODELS[@]}"

step "6/7 tune and submit: each model alone, then the ensemble"
tune_and_submit "$SUBS" "${ENSEMBLES[@]}"

step "choose what to submit by the honest estimate (nested selection: the choice's own optimism)"
CANDIDATES=()
for ens in "${ENSEMBLES[@]}"; do CANDIDATES+=("configs/ensembles/$ens.py"); done
"$CXRDET" select "${CANDIDATES[@]}" --out demo
"$CXRDET" select "${CANDIDATES[@]}" --out demo_honest --rule honest

step "7/7 score the submissions on the synthetic test labels (hidden in the real competition)"
score_submissions "$DATA/stage_2_sample_submission.csv" "$DATA/synth_test_labels.csv" "$SUBS" "${ENSEMBLES[@]}"

step "reports: every experiment and ensemble (figures, gallery, error analysis; classifier ROC) and the index page"
"$CXRDET" report --all
"$CXRDET" explain "configs/experiments/$CLASSIFIER.py" --fold 0 --n 4

step "the leaderboard: every experiment and ensemble with its scores (cxrdet runs; --json for scripts)"
"$CXRDET" runs

step "done in $((SECONDS - start)) s"
echo "data:        $DATA"
echo "folds:       $FOLDS"
echo "runs:        $OUT/<experiment>/fold<k>/ (config, provenance, checkpoints, logs, oof/test.parquet)"
echo "ensembles:   $OUT/ensembles/<name>/params.json"
echo "submissions: $SUBS/<name>.csv (+ .json provenance)"
echo "selection:   $OUT/selections/demo.json (which ensemble to submit, and why)"
echo "reports:     $OUT/index.html (the leaderboard, linking every report)"
echo "grad-cam:    $("$PY" -c "from cxrdet.runs import Run; print(Run('$CLASSIFIER', 0).explain_dir)")/"
