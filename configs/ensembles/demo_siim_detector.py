# The SIIM demo's detector alone, for comparison with demo_siim: no classifier, so each image's none box is
# 1 - its top opacity score, and each study's negative box the mean of its images' none boxes (the three other
# categories their complement: the detector cannot tell them apart).
members = [dict(experiment='siim-fcos_mnv3s_128_tiny12e', folds=[0, 1, 2])]
fusion = dict(method='wbf', iou_thr=0.5, skip_box_thr=0.0, conf_type='avg', engine='fast', test_fold_merge='before',
              test_fold_conf_type='avg')
postprocess = dict(member_thr=0.0, shrink=1.0, final_thr=0.0, max_boxes=None, study_pool='mean')
search_space = dict(
    iou_thr=dict(type='float', low=0.3, high=0.7),
    shrink=dict(type='float', low=0.9, high=1.1, step=0.0125),
    study_pool=dict(type='categorical', choices=['mean', 'max']),
)
n_trials = 30
honest_trials = 15
seed = 2021
