# The demo's two tiny detectors (torchvision FCOS, mmdet ATSS) fused with weighted boxes fusion, vote scaling and box
# shrink (RSNA 1st place), tuned on their pooled OOF boxes.
members = [
    dict(experiment='fcos_mnv3s_128_tiny12e', folds=[0, 1, 2, 3, 4]),
    dict(experiment='mmdet-atss_mnv3s_128_tiny12e', folds=[0, 1, 2, 3, 4]),
]
# test_fold_conf_type='max': see demo_fcos_tiny.py.
fusion = dict(method='wbf', iou_thr=0.4, skip_box_thr=0.02, conf_type='avg', engine='fast', test_fold_merge='before',
              test_fold_conf_type='max')
postprocess = dict(member_thr=0.05, vote_power=1.0, shrink=0.875, final_thr=0.3, max_boxes=None)
search_space = dict(
    iou_thr=dict(type='float', low=0.3, high=0.7),
    conf_type=dict(type='categorical', choices=['avg', 'max', 'box_and_model_avg']),
    weight=dict(type='float', low=0.25, high=4.0, log=True),
    member_thr=dict(type='float', low=0.0, high=0.5),
    vote_power=dict(type='float', low=0.0, high=2.0),
    shrink=dict(type='float', low=0.8, high=1.0, step=0.0125),
    final_thr=dict(type='float', low=0.05, high=0.8),
    max_boxes=dict(type='int', low=1, high=4),
)
n_trials = 150
honest_trials = 100
seed = 2018
