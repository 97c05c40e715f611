#!/usr/bin/env bash
# Steps the demos share (sourced by scripts/demo.sh and scripts/demo_vinbigdata.sh). Expects CXRDET, OUT and PY set.

start=$SECONDS

step() { printf '\n==> [%4ds] %s\n' $((SECONDS - start)) "$*"; }

# train_and_predict MODEL...: train every fold of each experiment, then predict its OOF and test outputs. The
# (experiment, fold) pairs run side by side (scripts/train_many.sh --jobs: dealt to the slots in turn, one process
# per slot and experiment, the cores shared out; tiny models gain nothing from a second thread, so two one-thread
# folds at once take the time of one), and each fold's predictions follow its training in the same process
# (--predict), as scripts/predict_folds.sh would write them. DEMO_JOBS=1 trains everything in turn.
train_and_predict() {
    local jobs=${DEMO_JOBS:-$(( $(nproc) < 5 ? $(nproc) : 5 ))} configs=() model
    for model in "$@"; do configs+=("configs/experiments/$model.py"); done
    step "4-5/${STEPS_TOTAL:-7} train $* on every fold ($jobs at a time), then predict their OOF and test outputs"
    bash scripts/train_many.sh --jobs "$jobs" "${configs[@]}" -- --overwrite --predict oof --predict test
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
