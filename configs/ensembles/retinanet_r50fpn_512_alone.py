# One model submitted like an ensemble: its fold models merged on the test set, only the final threshold tuned.
members = [dict(experiment='retinanet_r50fpn_512_sgd12e', folds=[0, 1, 2, 3, 4])]
fusion = dict(method='none', iou_thr=0.5, test_fold_merge='before')
postprocess = dict(final_thr=0.3)
search_space = dict(
    final_thr=dict(type='float', low=0.05, high=0.9),
    shrink=dict(type='float', low=0.8, high=1.0, step=0.0125),
)
n_trials = 60
seed = 2018
