# RetinaNet, mmdetection's own ResNet-50 FPN config, 512 px, SGD cosine 12 epochs: retinanet_r50fpn_512_sgd12e built
# by mmdet instead of torchvision. Only mmdet's `model` is kept; data, schedule and trainer are cxrdet's.
_base_ = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '../_base_/data/rsna_512.py',
    '../_base_/schedules/sgd_cosine_12e.py'
]
# From scratch, as the torchvision configs (nothing downloads): every stage trains, with ordinary BatchNorm.
# ImageNet weights, read by cxrdet's loader (a local .pth path works too), with mmdet's own settings for them:
#   -o "model.backbone.init_cfg={'type':'Pretrained','checkpoint':'torchvision://resnet50'}"
#   -o model.backbone.frozen_stages=1 -o model.backbone.norm_eval=True
model = dict(backbone=dict(init_cfg=None, frozen_stages=-1, norm_eval=False))
