#!/usr/bin/env bash
# Predict with the fold models of one experiment config, one after the other.
#   scripts/predict_folds.sh CONFIG [FOLD ...] [-- EXTRA ARGS FOR `cxrdet predict`]
# Default folds: every fold of the config's fold file (`cxrdet fold-ids`). Stops at the first failing fold.
# Example: scripts/predict_folds.sh configs/experiments/retinanet_r50fpn_512_sgd12e.py -- --split test --tta hflip
set -euo pipefail
CXRDET=${CXRDET:-$(command -v cxrdet || echo "$(dirname "$0")/../.venv/bin/cxrdet")}
[ $# -ge 1 ] || { echo "usage: $0 CONFIG [FOLD ...] [-- EXTRA ARGS]" >&2; exit 2; }
config=$1; shift
folds=(); extra=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
    folds+=("$1"); shift
done
if [ ${#folds[@]} -eq 0 ]; then
    # Config overrides among the extra arguments (-o data.folds=...) decide the fold file: pass those on.
    overrides=()
    for ((i = 0; i < ${#extra[@]}; i++)); do
        case "${extra[i]}" in
            -o|--cfg-options) overrides+=("${extra[i]}" "${extra[i + 1]:-}"); i=$((i + 1)) ;;
            --cfg-options=*) overrides+=("${extra[i]}") ;;
        esac
    done
    ids=$("$CXRDET" fold-ids "$config" "${overrides[@]}") || {
        echo "$(basename "$0"): cannot read the folds of $config" >&2
        exit 1
    }
    read -r -a folds <<< "$ids"
fi
for k in "${folds[@]}"; do
    echo "==> predict $config fold $k"
    if ! "$CXRDET" predict "$config" --fold "$k" "${extra[@]}"; then
        echo "predict_folds.sh: prediction with $config failed on fold $k; folds after it were not run" >&2
        exit 1
    fi
done
