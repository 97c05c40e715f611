#!/usr/bin/env bash
# Run one `cxrdet` command (train or predict) for one experiment config on several folds, one after the other.
#   scripts/fold_loop.sh COMMAND CONFIG [FOLD ...] [-- EXTRA ARGS FOR `cxrdet COMMAND`]
# Default folds: every fold of the config's fold file (`cxrdet fold-ids`). Stops at the first failing fold.
# train_folds.sh and predict_folds.sh are the two ways it is meant to be called.
set -euo pipefail
CXRDET=${CXRDET:-$(command -v cxrdet || echo "$(dirname "$0")/../.venv/bin/cxrdet")}
caller=${FOLD_LOOP_NAME:-$(basename "$0")}
[ $# -ge 2 ] || { echo "usage: $caller CONFIG [FOLD ...] [-- EXTRA ARGS]" >&2; exit 2; }
command=$1; config=$2; shift 2
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
        echo "$caller: cannot read the folds of $config" >&2
        exit 1
    }
    read -r -a folds <<< "$ids"
fi
for k in "${folds[@]}"; do
    echo "==> $command $config fold $k"
    if ! "$CXRDET" "$command" "$config" --fold "$k" "${extra[@]}"; then
        echo "$caller: $command $config failed on fold $k; folds after it were not run" >&2
        exit 1
    fi
done
