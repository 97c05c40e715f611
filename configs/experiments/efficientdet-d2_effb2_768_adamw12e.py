# EfficientDet-D2 (effdet's TF-ported config: EfficientNet-B2 body, 5-layer 112-channel BiFPN, its native 768 px),
# AdamW cosine 12 epochs, from scratch (see efficientdet-d0_effb0_512_adamw12e.py for pretrained weights).
_base_ = ['../_base_/data/rsna_768.py', '../_base_/schedules/adamw_cosine_12e.py']
model = dict(type='efficientdet', name='tf_efficientdet_d2', pretrained=False, pretrained_backbone=False)
