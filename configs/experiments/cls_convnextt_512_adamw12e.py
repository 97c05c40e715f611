# Binary image-level classifier (opacity or not), timm ConvNeXt-T, 512 px, AdamW, cosine.
_base_ = [
    '../_base_/models/cls_convnext_tiny.py', '../_base_/data/rsna_512.py', '../_base_/schedules/adamw_cosine_12e.py'
]
data = dict(batch_size=16)
optim = dict(lr=1e-4)
