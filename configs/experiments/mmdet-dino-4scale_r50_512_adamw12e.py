# DINO (mmdetection's 4-scale R-50 config: deformable-attention encoder and decoder, contrastive denoising, mixed query
# selection, 900 queries), 512 px, AdamW cosine 12 epochs at mmdet's rate (1e-4), gradient clipping 0.1 as mmdet's.
# From scratch here, so the ResNet trains whole (mmdet freezes its stem and BatchNorm for ImageNet weights); with them:
#   -o "model.backbone.init_cfg={'type':'Pretrained','checkpoint':'torchvision://resnet50'}"
#   -o model.backbone.frozen_stages=1 -o model.backbone.norm_eval=True
_base_ = [
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', '../_base_/data/rsna_512.py',
    '../_base_/schedules/adamw_cosine_12e.py'
]
model = dict(backbone=dict(init_cfg=None, frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=True),
                           norm_eval=False))
optim = dict(lr=1e-4, weight_decay=1e-4)
train = dict(grad_clip=0.1)
