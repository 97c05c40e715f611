# The demo's tiny RetinaNet submitted alone: its 5 fold models merged on the test set, only the cut and shrink tuned.
members = [dict(experiment='retinanet_mnv3s_128_tiny12e', folds=[0, 1, 2, 3, 4])]
# The cut is tuned on single-model OOF scores; merging the weak demo fold models with 'max' keeps that score scale
# ('avg' scales a box found by m of 5 models by m/5, and left 4 boxes in 100 test images).
fusion = dict(method='none', iou_thr=0.5, test_fold_merge='before', test_fold_conf_type='max')
postprocess = dict(final_thr=0.3)
search_space = dict(
    final_thr=dict(type='float', low=0.05, high=0.9),
    shrink=dict(type='float', low=0.8, high=1.0, step=0.0125),
)
n_trials = 60
honest_trials = 40
seed = 2018
