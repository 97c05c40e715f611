# Binary image-level classifier (opacity or not), timm EfficientNet-B3, 512 px, AdamW, cosine.
_base_ = [
    '../_base_/models/cls_efficientnet_b3.py', '../_base_/data/rsna_512.py', '../_base_/schedules/adamw_cosine_12e.py'
]
data = dict(batch_size=12)
optim = dict(lr=4e-4)
