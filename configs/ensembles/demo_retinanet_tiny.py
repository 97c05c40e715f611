# The demo's tiny RetinaNet submitted alone, like any single model (see retinanet_r50fpn_512_alone.py).
_base_ = './retinanet_r50fpn_512_alone.py'
members = [dict(experiment='retinanet_mnv3s_128_tiny12e', folds=[0, 1, 2, 3, 4])]
# The cut is tuned on single-model OOF scores; merging the weak demo fold models with 'max' keeps that score scale
# ('avg' scales a box found by m of 5 models by m/5, and left 4 boxes in 100 test images).
fusion = dict(test_fold_conf_type='max')
honest_trials = 40
