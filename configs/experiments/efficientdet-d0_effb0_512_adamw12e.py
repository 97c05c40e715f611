# EfficientDet-D0 (effdet's TF-ported config: EfficientNet-B0 body, 3-layer 64-channel BiFPN, its native 512 px),
# AdamW cosine 12 epochs. From scratch here; effdet's COCO weights: -o model.pretrained=True (downloads), or timm's
# ImageNet body only: -o model.pretrained_backbone=True. Larger EfficientDets: -o model.name=tf_efficientdet_d7
# (SIIM-COVID's first place) with a data.size that is a multiple of 128.
_base_ = ['../_base_/data/rsna_512.py', '../_base_/schedules/adamw_cosine_12e.py']
model = dict(type='efficientdet', name='tf_efficientdet_d0', pretrained=False, pretrained_backbone=False)
