# Three detectors fused with weighted boxes fusion (RSNA 1st place: WBF, vote scaling, box shrink), tuned on OOF boxes.
# Members name experiments and folds; their OOF/test boxes are at outputs/<experiment>/fold<k>/{oof,test}.parquet.
# Fold file and labels come from the members' experiment configs (data.folds, data.root).
members = [
    dict(experiment='retinanet_r50fpn_512_sgd12e', folds=[0, 1, 2, 3, 4]),
    dict(experiment='fasterrcnn_r50fpn_512_sgd12e', folds=[0, 1, 2, 3, 4]),
    dict(experiment='fcos_r50fpn_512_sgd12e', folds=[0, 1, 2, 3, 4]),
]
image_size = (1024, 1024)  # (width, height) of the original images: boxes are normalised by it for fusion
fusion = dict(
    method='wbf',  # wbf | nms | soft_nms | nmw | none
    iou_thr=0.4,
    skip_box_thr=0.02,
    conf_type='avg',
    engine='fast',  # fast (compiled, identical boxes to ensemble-boxes) | library (ensemble-boxes per image)
    test_fold_merge='before',  # merge each member's fold models first (before), or each fold's fused boxes (after)
)
postprocess = dict(member_thr=0.05, vote_power=1.0, shrink=0.875, final_thr=0.3, max_boxes=None)
classifier = None  # dict(experiment=NAME): image-level p(opacity) at outputs/NAME/fold<k>/{oof,test}.parquet
search_space = dict(
    iou_thr=dict(type='float', low=0.3, high=0.7),
    conf_type=dict(type='categorical', choices=['avg', 'max', 'box_and_model_avg']),
    weight=dict(type='float', low=0.5, high=2.0),  # per member but the first
    member_thr=dict(type='float', low=0.0, high=0.4),  # per member
    vote_power=dict(type='float', low=0.0, high=2.0),
    shrink=dict(type='float', low=0.8, high=1.0, step=0.0125),
    final_thr=dict(type='float', low=0.1, high=0.8),
    max_boxes=dict(type='int', low=1, high=4),
)
n_trials = 300
honest_trials = 150  # per held-out fold
seed = 2018
