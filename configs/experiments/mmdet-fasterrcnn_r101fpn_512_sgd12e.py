# Faster R-CNN, mmdetection's ResNet-101 FPN config, 512 px, SGD cosine 12 epochs.
_base_ = [
    'mmdet::faster_rcnn/faster-rcnn_r101_fpn_1x_coco.py', '../_base_/data/rsna_512.py',
    '../_base_/schedules/sgd_cosine_12e.py'
]
# From scratch (see mmdet-retinanet_r50fpn_512_sgd12e.py for ImageNet weights: checkpoint 'torchvision://resnet101').
model = dict(backbone=dict(init_cfg=None, frozen_stages=-1, norm_eval=False))
