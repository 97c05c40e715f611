# Cascade R-CNN (three R-CNN stages at IoU 0.5, 0.6, 0.7), mmdetection's ResNet-50 FPN config, 512 px, SGD cosine 12
# epochs.
_base_ = [
    'mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py', '../_base_/data/rsna_512.py',
    '../_base_/schedules/sgd_cosine_12e.py'
]
# From scratch (see mmdet-retinanet_r50fpn_512_sgd12e.py for ImageNet weights).
model = dict(backbone=dict(init_cfg=None, frozen_stages=-1, norm_eval=False))
