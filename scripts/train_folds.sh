#!/usr/bin/env bash
# Train one experiment config on several folds, one after the other.
#   scripts/train_folds.sh CONFIG [FOLD ...] [-- EXTRA ARGS FOR `cxrdet train`]
# Default folds: every fold of the config's fold file. Stops at the first failing fold, naming it.
# Example: scripts/train_folds.sh configs/experiments/retinanet_r50fpn_512_sgd12e.py 0 1 -- --resume
FOLD_LOOP_NAME=train_folds.sh exec bash "$(dirname "$0")/fold_loop.sh" train "$@"
