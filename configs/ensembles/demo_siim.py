# The SIIM demo's submission: the tiny opacity detector's fold models and the tiny study classifier.
# - opacity boxes: the detector's, clustered by WBF, gated by the classifier's P(opacity) = 1 - P(negative)
#   (cls_alpha, cls_tau);
# - each image's `none 0 0 1 1` box: none_weight * P(negative) + (1 - none_weight) * (1 - top opacity score);
# - each study's four category boxes: its images' classifier probabilities and detector none confidences pooled by
#   study_pool (mean or max); negative = study_weight * P(negative) + (1 - study_weight) * the detector's, the three
#   positive categories share the rest by the classifier's probabilities ** study_power.
# All tuned by Optuna against the full SIIM metric (six classes at IoU > 0.5) on the pooled OOF predictions, with the
# honest nested-CV estimate.
members = [dict(experiment='siim-fcos_mnv3s_128_tiny12e', folds=[0, 1, 2])]
classifier = dict(experiment='siim-cls_regnetx002_128_tiny12e', column='negative', complement=True)
fusion = dict(method='wbf', iou_thr=0.5, skip_box_thr=0.0, conf_type='avg', engine='fast', test_fold_merge='before',
              test_fold_conf_type='avg')
postprocess = dict(member_thr=0.0, shrink=1.0, final_thr=0.0, max_boxes=None, cls_alpha=0.0, cls_tau=0.0,
                   none_weight=0.5, study_pool='mean', study_weight=0.5, study_power=1.0)
search_space = dict(
    iou_thr=dict(type='float', low=0.3, high=0.7),
    shrink=dict(type='float', low=0.9, high=1.1, step=0.0125),
    cls_alpha=dict(type='float', low=0.0, high=2.0),
    cls_tau=dict(type='float', low=0.0, high=0.5),
    none_weight=dict(type='float', low=0.0, high=1.0),
    study_pool=dict(type='categorical', choices=['mean', 'max']),
    study_weight=dict(type='float', low=0.0, high=1.0),
    study_power=dict(type='float', low=0.0, high=2.0),
)
n_trials = 40
honest_trials = 20
seed = 2021
