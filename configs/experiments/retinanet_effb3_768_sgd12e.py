# RetinaNet, timm EfficientNet-B3 + FPN, 768 px, SGD cosine 12 epochs.
_base_ = [
    '../_base_/models/retinanet_r50_fpn.py', '../_base_/data/rsna_768.py', '../_base_/schedules/sgd_cosine_12e.py'
]
model = dict(backbone=dict(_delete_=True, type='timm_fpn', name='efficientnet_b3', fpn_channels=160, pretrained=False))
