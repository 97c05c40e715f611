# Binary image-level classifier (opacity or not), timm ResNet-50, 512 px, AdamW, cosine.
_base_ = [
    '../_base_/models/cls_resnet50.py', '../_base_/data/rsna_512.py', '../_base_/schedules/adamw_cosine_12e.py'
]
data = dict(batch_size=16)
optim = dict(lr=3e-4)
