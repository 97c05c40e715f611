# SSD512, mmdetection's VGG-16 config (prior sizes follow data.size), 512 px, SGD cosine 24 epochs.
_base_ = ['mmdet::ssd/ssd512_coco.py', '../_base_/data/rsna_512.py', '../_base_/schedules/sgd_cosine_24e.py']
# From scratch (its ImageNet VGG, 'open-mmlab://vgg16_caffe', loads from a local file or URL through cxrdet:
# -o "model.backbone.init_cfg={'type':'Pretrained','checkpoint':PATH}").
model = dict(backbone=dict(init_cfg=None))
data = dict(batch_size=16)
# VGG has no BatchNorm: mmdet trains SSD at a fifth of the usual SGD rate.
optim = dict(lr=2e-3)
