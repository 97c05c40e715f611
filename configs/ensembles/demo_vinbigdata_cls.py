# demo_vinbigdata_fcos plus the 2-class filter: the tiny classifier's P(abnormal) p gives every image's no-finding box
# `14 (1 - p) 0 0 1 1` and rescales the finding boxes by p**cls_alpha, dropping them below cls_tau (the VinBigData
# top solutions' filter), tuned with the rest. Compared with demo_vinbigdata_fcos on the honest estimate.
_base_ = './demo_vinbigdata_fcos.py'
classifier = dict(experiment='vinbigdata-cls_regnetx002_128_tiny12e', column='abnormal')
postprocess = dict(cls_alpha=0.5, cls_tau=0.0)
search_space = dict(
    cls_alpha=dict(type='float', low=0.0, high=2.0),
    cls_tau=dict(type='float', low=0.0, high=0.5),
)
