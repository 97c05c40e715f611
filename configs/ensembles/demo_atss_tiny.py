# The demo's tiny mmdet ATSS submitted alone, tuned and merged exactly as the other tiny single models.
_base_ = './demo_retinanet_tiny.py'
members = [dict(experiment='mmdet-atss_mnv3s_128_tiny12e', folds=[0, 1, 2, 3, 4])]
