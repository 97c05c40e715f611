# Tiny RetinaNet for CPU runs: timm MobileNet-V3-Small + a 64-channel FPN, torchvision's v2 head (GroupNorm in the
# head, GIoU box loss), which learns several times faster from scratch than the v1 head.
_base_ = './retinanet_r50_fpn.py'
model = dict(
    backbone=dict(_delete_=True, type='timm_fpn', name='mobilenetv3_small_100', fpn_channels=64),
    head_norm='group',
    box_loss='giou')
