# GFL (generalised focal loss), mmdetection's config on a timm ConvNeXt-Tiny body (cxrdet's CxrTimmBackbone, in
# mmdet's registry), 512 px, AdamW cosine 12 epochs.
_base_ = [
    'mmdet::gfl/gfl_r50_fpn_1x_coco.py', '../_base_/data/rsna_512.py', '../_base_/schedules/adamw_cosine_12e.py'
]
model = dict(
    backbone=dict(
        _delete_=True, type='CxrTimmBackbone', name='convnext_tiny', strides=(4, 8, 16, 32), pretrained=False),
    neck=dict(in_channels=[96, 192, 384, 768]))
