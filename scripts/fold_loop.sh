#!/usr/bin/env bash
# Run one `cxrdet` command (train or predict) for one experiment config on several folds.
#   scripts/fold_loop.sh COMMAND [--devices LIST | --jobs N] CONFIG [FOLD ...] [-- EXTRA ARGS FOR `cxrdet COMMAND`]
# Default folds: every fold of the config's fold file (`cxrdet fold-ids`).
# Default: one fold after the other; stops at the first failing fold, naming it.
#   --devices 0,1,2,3  folds side by side, one per GPU: fold i goes to device i mod 4, each device runs its folds
#                      in turn in one process that sees only that device (CUDA_VISIBLE_DEVICES).
#   --jobs N           N folds side by side without pinning a device (CPU), each process given cores / N threads
#                      (OMP_NUM_THREADS, unless already set): small models gain nothing from a second thread, so two
#                      one-thread folds at once train twice as fast as one two-thread fold after the other.
# Side by side, each fold writes only its own run folder (outputs/<experiment>/fold<k>/); output lines are prefixed
# `[fold(s) ...]`. A failing fold stops its slot (named by the command); the other slots finish.
# train_folds.sh and predict_folds.sh are the two ways it is meant to be called; slots.sh holds the slot helpers.
set -euo pipefail
CXRDET=${CXRDET:-$(command -v cxrdet || echo "$(dirname "$0")/../.venv/bin/cxrdet")}
caller=${FOLD_LOOP_NAME:-$(basename "$0")}
usage="usage: $caller [--devices LIST | --jobs N] CONFIG [FOLD ...] [-- EXTRA ARGS]"
source "$(dirname "$0")/slots.sh"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
command=$1; shift
parse_slot_options "$@"
shift "$slot_shift"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
config=$1; shift
folds=(); extra=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
    folds+=("$1"); shift
done
if [ ${#folds[@]} -eq 0 ]; then
    config_overrides "${extra[@]}"
    ids=$("$CXRDET" fold-ids "$config" "${overrides[@]}") || {
        echo "$caller: cannot read the folds of $config" >&2
        exit 1
    }
    read -r -a folds <<< "$ids"
fi

if [ ${#devices[@]} -eq 0 ] && [ "$jobs" -le 1 ]; then
    for k in "${folds[@]}"; do
        echo "==> $command $config fold $k"
        if ! "$CXRDET" "$command" "$config" --fold "$k" "${extra[@]}"; then
            echo "$caller: $command $config failed on fold $k; folds after it were not run" >&2
            exit 1
        fi
    done
    exit 0
fi

# Side by side: slot s runs folds s, s + n, s + 2n, ... (n slots: the devices, or --jobs) in one `cxrdet` process
# (`--fold a --fold b ...`: one start-up per slot; the command runs its folds in turn and stops at its first failing
# fold, naming it and the folds it left undone, while the other slots finish theirs).
slot_setup
run_slot() {
    local s=$1 i mine=() args=()
    for ((i = s; i < ${#folds[@]}; i += n)); do
        mine+=("${folds[i]}"); args+=(--fold "${folds[i]}")
    done
    echo "==> $command $config fold(s) ${mine[*]} ($(slot_where "$s"))"
    run_in_slot "$s" "[fold${mine[1]:+s} $(IFS=,; echo "${mine[*]}")] " \
        "$CXRDET" "$command" "$config" "${args[@]}" "${extra[@]}" || echo "${mine[*]}" > "$status_dir/failed.$s"
}
for ((s = 0; s < n && s < ${#folds[@]}; s++)); do
    run_slot "$s" &
done
wait
slot_failures
if [ ${#failed[@]} -gt 0 ]; then
    echo "$caller: $command $config failed in the slot(s) of fold(s): $(IFS=';'; echo "${failed[*]}") (the lines" \
        "above, prefixed with those folds, name the failing fold)" >&2
    exit 1
fi
