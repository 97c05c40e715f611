#!/usr/bin/env bash
# The demo pipeline on synthetic RSNA-format data: synth -> prepare -> folds.
# Run it with `make demo` (which installs what it needs first). Sizes can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
CXRDET=${CXRDET:-.venv/bin/cxrdet}
export CXRDET_OUTPUTS=${CXRDET_OUTPUTS:-outputs}
OUT=$CXRDET_OUTPUTS
DATA="$OUT/demo/data"
N_TRAIN=${DEMO_N_TRAIN:-400}
N_TEST=${DEMO_N_TEST:-100}
SIZE=${DEMO_SIZE:-256}
K=${DEMO_K:-5}
SEED=${DEMO_SEED:-42}
PY=${PY:-.venv/bin/python}
FOLDS="$OUT/folds/demo_k${K}.csv"
CACHE=$("$PY" -c "from cxrdet import paths; print(paths.cache_dir('$DATA', $SIZE))")

step() { printf '\n==> %s\n' "$*"; }

step "1/3 synthetic Kaggle-layout data: $N_TRAIN train + $N_TEST test images -> $DATA"
"$CXRDET" synth --out "$DATA" --n-train "$N_TRAIN" --n-test "$N_TEST" --seed "$SEED"

step "2/3 decode DICOMs into the ${SIZE}px cache"
"$CXRDET" prepare --data "$DATA" --size "$SIZE"

step "3/3 $K folds grouped by patient, stratified -> $FOLDS"
"$CXRDET" folds --labels "$DATA/stage_2_train_labels.csv" --headers "$CACHE/meta.parquet" \
    --k "$K" --seed "$SEED" --out "$FOLDS"

step "done"
echo "data:  $DATA"
echo "cache: $CACHE"
echo "folds: $FOLDS"
