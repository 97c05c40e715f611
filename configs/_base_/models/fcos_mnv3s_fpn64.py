# Tiny FCOS for CPU runs: timm MobileNet-V3-Small + a 64-channel FPN.
_base_ = './fcos_r50_fpn.py'
model = dict(backbone=dict(_delete_=True, type='timm_fpn', name='mobilenetv3_small_100', fpn_channels=64))
