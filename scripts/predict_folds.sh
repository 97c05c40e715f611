#!/usr/bin/env bash
# Predict with the fold models of one experiment config, one after the other (or side by side: see fold_loop.sh).
#   scripts/predict_folds.sh [--devices LIST | --jobs N] CONFIG [FOLD ...] [-- EXTRA ARGS FOR `cxrdet predict`]
# Default folds: every fold of the config's fold file. One after the other, it stops at the first failing fold.
# Example: scripts/predict_folds.sh configs/experiments/retinanet_r50fpn_512_sgd12e.py -- --split test --tta hflip
FOLD_LOOP_NAME=predict_folds.sh exec bash "$(dirname "$0")/fold_loop.sh" predict "$@"
