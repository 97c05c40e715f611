#!/usr/bin/env bash
# Side-by-side slots, shared by fold_loop.sh and train_many.sh (sourced, not run).
#   parse_slot_options ARGS...   leading `--devices LIST` or `--jobs N` -> devices=(...), jobs; slot_shift = how many
#                                arguments they took; exits 2 on a bad value or on both given
#   config_overrides EXTRA...    overrides=(...): the -o / --cfg-options among a command's extra arguments (they decide
#                                the fold file, so `cxrdet fold-ids` must see them too)
#   slot_setup                   n (slots: the devices, or --jobs, at least 1), threads (OMP_NUM_THREADS, or the cores
#                                shared out among the slots) and status_dir (removed on exit)
#   run_in_slot S PREFIX CMD...  CMD with slot S's device (CUDA_VISIBLE_DEVICES) or thread count, each output line
#                                prefixed; returns CMD's status
#   slot_failures                failed=(...): what each failed slot wrote to $status_dir/failed.<slot>

parse_slot_options() {
    devices=(); jobs=0; slot_shift=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --devices) [ $# -ge 2 ] || { echo "$caller: --devices needs a list, e.g. 0,1" >&2; exit 2; }
                       IFS=, read -r -a devices <<< "$2"; shift 2; slot_shift=$((slot_shift + 2)) ;;
            --jobs) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "$caller: --jobs needs a positive integer" >&2; exit 2; }
                    jobs=$2; shift 2; slot_shift=$((slot_shift + 2)) ;;
            *) break ;;
        esac
    done
    if [ ${#devices[@]} -gt 0 ] && [ "$jobs" -gt 0 ]; then
        echo "$caller: give --devices or --jobs, not both" >&2; exit 2
    fi
}

config_overrides() {
    overrides=()
    local args=("$@") i
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[i]}" in
            -o|--cfg-options) overrides+=("${args[i]}" "${args[i + 1]:-}"); i=$((i + 1)) ;;
            --cfg-options=*) overrides+=("${args[i]}") ;;
        esac
    done
}

slot_setup() {
    if [ ${#devices[@]} -gt 0 ]; then n=${#devices[@]}; else n=$(( jobs > 0 ? jobs : 1 )); fi
    threads=${OMP_NUM_THREADS:-$(( $(nproc) / n > 0 ? $(nproc) / n : 1 ))}
    status_dir=$(mktemp -d)
    trap 'rm -rf "$status_dir"' EXIT
}

slot_where() {
    if [ ${#devices[@]} -gt 0 ]; then echo "device ${devices[$1]}"; else echo "$threads thread(s)"; fi
}

run_in_slot() {
    local s=$1 prefix=$2
    shift 2
    if [ ${#devices[@]} -gt 0 ]; then
        (CUDA_VISIBLE_DEVICES=${devices[s]} "$@" 2>&1 | sed -u "s/^/$prefix/"; exit "${PIPESTATUS[0]}")
    else
        (OMP_NUM_THREADS=$threads "$@" 2>&1 | sed -u "s/^/$prefix/"; exit "${PIPESTATUS[0]}")
    fi
}

slot_failures() {
    failed=()
    local f
    for f in "$status_dir"/failed.*; do
        [ -e "$f" ] && failed+=("$(cat "$f")")
    done
    return 0
}
