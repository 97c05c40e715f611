# Tiny CPU ATSS (demo and tests): mmdetection's ATSS head (GroupNorm towers, GIoU loss, centre-ness) on a timm
# MobileNet-V3-Small body (cxrdet's CxrTimmBackbone) and a 64-channel FPN, 128 px, 12 epochs.
_base_ = ['mmdet::atss/atss_r50_fpn_1x_coco.py', '../_base_/data/tiny_128.py', '../_base_/schedules/tiny_cpu_12e.py']
model = dict(
    backbone=dict(_delete_=True, type='CxrTimmBackbone', name='mobilenetv3_small_100', strides=(8, 16, 32)),
    neck=dict(in_channels=[24, 48, 576], out_channels=64, start_level=0, add_extra_convs='on_output', num_outs=5),
    bbox_head=dict(in_channels=64, feat_channels=64))
