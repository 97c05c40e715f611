#!/usr/bin/env bash
# Train every fold of several experiment configs, side by side, then (with --predict in the extra arguments)
# predict after each fold: a batch of experiments on one machine.
#   scripts/train_many.sh [--devices LIST | --jobs N] CONFIG... [-- EXTRA ARGS FOR `cxrdet train`]
# The (config, fold) pairs, config by config, are dealt to the slots in turn (pair i to slot i mod n: the devices of
# --devices, one GPU each, or --jobs N CPU processes with the cores shared out through OMP_NUM_THREADS), so slots get
# even shares however many folds each config has. A slot trains its pairs one config at a time, each config's folds
# in one `cxrdet train CONFIG --fold a --fold b ...` process. Each fold writes only its own run folder; output lines
# are prefixed `[slot s]`. A failing fold stops its slot (the command names it); the other slots finish, and the
# script exits 1 naming the failed slots. Default: --jobs 1 (everything in turn).
# Example (the demo): scripts/train_many.sh --jobs 2 configs/experiments/{fcos,cls}_*tiny12e.py -- --overwrite \
#     --predict oof --predict test
set -euo pipefail
CXRDET=${CXRDET:-$(command -v cxrdet || echo "$(dirname "$0")/../.venv/bin/cxrdet")}
usage="usage: $(basename "$0") [--devices LIST | --jobs N] CONFIG... [-- EXTRA ARGS]"
devices=(); jobs=0
while [ $# -gt 0 ]; do
    case "$1" in
        --devices) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; IFS=, read -r -a devices <<< "$2"; shift 2 ;;
        --jobs) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "$(basename "$0"): --jobs needs a positive integer" >&2; exit 2; }
                jobs=$2; shift 2 ;;
        *) break ;;
    esac
done
if [ ${#devices[@]} -gt 0 ] && [ "$jobs" -gt 0 ]; then
    echo "$(basename "$0"): give --devices or --jobs, not both" >&2; exit 2
fi
configs=(); extra=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
    configs+=("$1"); shift
done
[ ${#configs[@]} -gt 0 ] || { echo "$usage" >&2; exit 2; }
if [ ${#devices[@]} -gt 0 ]; then n=${#devices[@]}; else n=$(( jobs > 0 ? jobs : 1 )); fi
threads=${OMP_NUM_THREADS:-$(( $(nproc) / n > 0 ? $(nproc) / n : 1 ))}

# Config overrides among the extra arguments (-o data.folds=...) decide the fold files: pass those on.
overrides=()
for ((i = 0; i < ${#extra[@]}; i++)); do
    case "${extra[i]}" in
        -o|--cfg-options) overrides+=("${extra[i]}" "${extra[i + 1]:-}"); i=$((i + 1)) ;;
        --cfg-options=*) overrides+=("${extra[i]}") ;;
    esac
done
# Deal the pairs: plan[s] holds "config|fold fold ..." entries, one per config the slot trains.
declare -A plan
pair=0
for c in "${!configs[@]}"; do
    ids=$("$CXRDET" fold-ids "${configs[c]}" "${overrides[@]}") || {
        echo "$(basename "$0"): cannot read the folds of ${configs[c]}" >&2; exit 1
    }
    for k in $ids; do
        s=$((pair % n)); pair=$((pair + 1))
        plan[$s,$c]="${plan[$s,$c]:-} $k"
    done
done

status_dir=$(mktemp -d)
trap 'rm -rf "$status_dir"' EXIT
run_slot() {
    local s=$1 c k args where
    if [ ${#devices[@]} -gt 0 ]; then where="device ${devices[s]}"; else where="$threads thread(s)"; fi
    for c in "${!configs[@]}"; do
        [ -n "${plan[$s,$c]:-}" ] || continue
        args=()
        for k in ${plan[$s,$c]}; do args+=(--fold "$k"); done
        echo "[slot $s] ==> train ${configs[c]} fold(s)${plan[$s,$c]} ($where)"
        if [ ${#devices[@]} -gt 0 ]; then
            (CUDA_VISIBLE_DEVICES=${devices[s]} "$CXRDET" train "${configs[c]}" "${args[@]}" "${extra[@]}" 2>&1 \
                | sed -u "s/^/[slot $s] /"; exit "${PIPESTATUS[0]}")
        else
            (OMP_NUM_THREADS=$threads "$CXRDET" train "${configs[c]}" "${args[@]}" "${extra[@]}" 2>&1 \
                | sed -u "s/^/[slot $s] /"; exit "${PIPESTATUS[0]}")
        fi || { echo "${configs[c]} fold(s)${plan[$s,$c]}" > "$status_dir/failed.$s"; return; }
    done
}
for ((s = 0; s < n && s < pair; s++)); do
    run_slot "$s" &
done
wait
failed=()
for f in "$status_dir"/failed.*; do
    [ -e "$f" ] && failed+=("slot ${f##*.}: $(cat "$f")")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "$(basename "$0"): failed in" >&2
    printf '  %s\n' "${failed[@]}" >&2
    echo "(the [slot s] lines above name the failing fold; the slot's later configs were not run)" >&2
    exit 1
fi
