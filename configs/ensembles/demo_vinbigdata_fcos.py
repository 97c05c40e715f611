# The VinBigData demo's tiny 14-class FCOS submitted alone: its boxes of each class clustered by weighted boxes fusion
# (as the top solutions did for every model), its fold models merged on the test set by WBF too, and the no-finding
# box `14 (1 - top finding score) 0 0 1 1` added to every image (cxrdet.competitions.vinbigdata.complete). Tuned on
# the pooled OOF boxes against the VinBigData mAP at IoU > 0.4, with the honest nested-CV estimate.
members = [dict(experiment='vinbigdata-fcos_mnv3s_128_tiny12e', folds=[0, 1, 2, 3, 4])]
# A near-zero skip threshold: low-confidence boxes cost nothing in mAP (background.md).
fusion = dict(method='wbf', iou_thr=0.4, skip_box_thr=0.0, conf_type='avg', engine='fast', test_fold_merge='before',
              test_fold_conf_type='avg')
postprocess = dict(member_thr=0.0, shrink=1.0, final_thr=0.0, max_boxes=None)
search_space = dict(
    iou_thr=dict(type='float', low=0.25, high=0.6),
    conf_type=dict(type='categorical', choices=['avg', 'max', 'box_and_model_avg']),
    shrink=dict(type='float', low=0.9, high=1.1, step=0.0125),
)
n_trials = 40
honest_trials = 20
seed = 2021
