# FCOS, timm ConvNeXt-Tiny + FPN, 512 px, AdamW cosine 12 epochs.
_base_ = [
    '../_base_/models/fcos_r50_fpn.py', '../_base_/data/rsna_512.py', '../_base_/schedules/adamw_cosine_12e.py'
]
model = dict(backbone=dict(_delete_=True, type='timm_fpn', name='convnext_tiny', fpn_channels=256, pretrained=False))
