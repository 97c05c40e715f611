#!/usr/bin/env bash
# Train every fold of several experiment configs, side by side, then (with --predict in the extra arguments)
# predict after each fold: a batch of experiments on one machine.
#   scripts/train_many.sh [--devices LIST | --jobs N] CONFIG... [-- EXTRA ARGS FOR `cxrdet train`]
# The (config, fold) pairs, config by config, are dealt to the slots in turn (pair i to slot i mod n: the devices of
# --devices, one GPU each, or --jobs N CPU processes with the cores shared out through OMP_NUM_THREADS), so slots get
# even shares however many folds each config has. A slot trains its pairs one config at a time, each config's folds
# in one `cxrdet train CONFIG --fold a --fold b ...` process. Each fold writes only its own run folder; output lines
# are prefixed `[slot s]`. A failing fold stops its slot (the command names it); the other slots finish, and the
# script exits 1 naming the failed slots. Default: --jobs 1 (everything in turn). Slot helpers: slots.sh.
# Example (the demo): scripts/train_many.sh --jobs 2 configs/experiments/{fcos,cls}_*tiny12e.py -- --overwrite \
#     --predict oof --predict test
set -euo pipefail
CXRDET=${CXRDET:-$(command -v cxrdet || echo "$(dirname "$0")/../.venv/bin/cxrdet")}
caller=$(basename "$0")
usage="usage: $caller [--devices LIST | --jobs N] CONFIG... [-- EXTRA ARGS]"
source "$(dirname "$0")/slots.sh"
parse_slot_options "$@"
shift "$slot_shift"
configs=(); extra=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
    configs+=("$1"); shift
done
[ ${#configs[@]} -gt 0 ] || { echo "$usage" >&2; exit 2; }
slot_setup
config_overrides "${extra[@]}"
# Deal the pairs: plan[s,c] holds the folds of config c that slot s trains.
declare -A plan
pair=0
for c in "${!configs[@]}"; do
    ids=$("$CXRDET" fold-ids "${configs[c]}" "${overrides[@]}") || {
        echo "$caller: cannot read the folds of ${configs[c]}" >&2; exit 1
    }
    for k in $ids; do
        s=$((pair % n)); pair=$((pair + 1))
        plan[$s,$c]="${plan[$s,$c]:-} $k"
    done
done

run_slot() {
    local s=$1 c k args
    for c in "${!configs[@]}"; do
        [ -n "${plan[$s,$c]:-}" ] || continue
        args=()
        for k in ${plan[$s,$c]}; do args+=(--fold "$k"); done
        echo "[slot $s] ==> train ${configs[c]} fold(s)${plan[$s,$c]} ($(slot_where "$s"))"
        run_in_slot "$s" "[slot $s] " "$CXRDET" train "${configs[c]}" "${args[@]}" "${extra[@]}" || {
            echo "slot $s: ${configs[c]} fold(s)${plan[$s,$c]}" > "$status_dir/failed.$s"; return
        }
    done
}
for ((s = 0; s < n && s < pair; s++)); do
    run_slot "$s" &
done
wait
slot_failures
if [ ${#failed[@]} -gt 0 ]; then
    echo "$caller: failed in" >&2
    printf '  %s\n' "${failed[@]}" >&2
    echo "(the [slot s] lines above name the failing fold; the slot's later configs were not run)" >&2
    exit 1
fi
