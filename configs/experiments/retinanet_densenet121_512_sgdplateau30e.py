# RetinaNet, timm DenseNet-121 (the CheXNet body) + FPN, 512 px, SGD with reduce-on-plateau, up to 30 epochs.
_base_ = [
    '../_base_/models/retinanet_r50_fpn.py', '../_base_/data/rsna_512.py', '../_base_/schedules/sgd_plateau_30e.py'
]
model = dict(backbone=dict(_delete_=True, type='timm_fpn', name='densenet121', fpn_channels=256, pretrained=False))
