# The demo's tiny FCOS submitted alone, tuned and merged exactly as the tiny RetinaNet is.
_base_ = './demo_retinanet_tiny.py'
members = [dict(experiment='fcos_mnv3s_128_tiny12e', folds=[0, 1, 2, 3, 4])]
