# Faster R-CNN, timm ResNet-101 + FPN, 768 px, SGD cosine 12 epochs (the best single model of a top-3% RSNA team).
_base_ = [
    '../_base_/models/faster_rcnn_r50_fpn.py', '../_base_/data/rsna_768.py', '../_base_/schedules/sgd_cosine_12e.py'
]
model = dict(backbone=dict(_delete_=True, type='timm_fpn', name='resnet101', fpn_channels=256, pretrained=False))
