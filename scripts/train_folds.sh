#!/usr/bin/env bash
# Train one experiment config on several folds: one after the other, or side by side on several devices.
#   scripts/train_folds.sh [--devices LIST | --jobs N] CONFIG [FOLD ...] [-- EXTRA ARGS FOR `cxrdet train`]
# Default folds: every fold of the config's fold file. One after the other, it stops at the first failing fold,
# naming it; side by side (--devices 0,1,2,3: one fold per GPU; --jobs N: N CPU processes), see fold_loop.sh.
# Examples: scripts/train_folds.sh configs/experiments/retinanet_r50fpn_512_sgd12e.py 0 1 -- --resume
#           scripts/train_folds.sh --devices 0,1,2,3 configs/experiments/retinanet_r50fpn_512_sgd12e.py
# One process for every fold (one start-up): cxrdet train CONFIG --all-folds [--predict oof --predict test].
# A cluster: scripts/slurm/train_folds.sbatch (one fold per array task).
FOLD_LOOP_NAME=train_folds.sh exec bash "$(dirname "$0")/fold_loop.sh" train "$@"
