# Mask R-CNN trained from boxes (each box filled as its mask, as the RSNA Mask R-CNN kernels did; the mask head is a
# second supervision of the box's area, predictions use the boxes), mmdetection's ResNet-50 FPN config, 512 px, SGD
# cosine 12 epochs.
_base_ = [
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/data/rsna_512.py',
    '../_base_/schedules/sgd_cosine_12e.py'
]
# From scratch (see mmdet-retinanet_r50fpn_512_sgd12e.py for ImageNet weights).
model = dict(backbone=dict(init_cfg=None, frozen_stages=-1, norm_eval=False))
