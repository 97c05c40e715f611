#!/usr/bin/env bash
# Steps the demos share (sourced by scripts/demo.sh and scripts/demo_vinbigdata.sh). Expects CXRDET, OUT and PY set.

start=$SECONDS

step() { printf '\n==> [%4ds] %s\n' $((SECONDS - start)) "$*"; }

# train_and_predict MODEL...: train every fold of each experiment, then predict its OOF and test outputs, in one
# `cxrdet` process per experiment (one start-up instead of two per fold; the same runs as
# scripts/train_folds.sh + scripts/predict_folds.sh, which start one process per fold).
train_and_predict() {
    local model
    for model in "$@"; do
        step "4-5/${STEPS_TOTAL:-7} train $model on every fold, then predict its OOF and test outputs"
        "$CXRDET" train "configs/experiments/$model.py" --all-folds --overwrite --predict oof --predict test
    done
}

# tune_and_submit SUBS ENSEMBLE...: a fresh study per ensemble (its members were retrained), then its submission.
tune_and_submit() {
    local subs=$1 ens
    shift
    for ens in "$@"; do
        rm -rf "$OUT/ensembles/$ens"
        "$CXRDET" tune "configs/ensembles/$ens.py"
        "$CXRDET" submit "configs/ensembles/$ens.py" --out "$subs/$ens.csv"
    done
}

# score_submissions SAMPLE LABELS SUBS ENSEMBLE...: validate each submission against the sample submission, then
# score it on the synthetic test labels (which the real competitions hide).
score_submissions() {
    local sample=$1 labels=$2 subs=$3 ens
    shift 3
    for ens in "$@"; do
        "$CXRDET" validate-submission "$subs/$ens.csv" --sample "$sample"
        printf '%-22s test ' "$ens"
        "$CXRDET" score --labels "$labels" --submission "$subs/$ens.csv" --json | tail -n 1 | "$PY" -c \
            "import json, sys; r = json.load(sys.stdin); print(f\"{r['metric']} {r['score']:.5f} ({r['n_images']} images scored)\")"
    done
}
