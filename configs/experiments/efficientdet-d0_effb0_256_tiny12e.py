# Tiny CPU EfficientDet (demo, tests, benchmarks): effdet's EfficientDet-D0 (TF-ported config: EfficientNet-B0 body,
# 3-layer 64-channel BiFPN), 12 epochs of the tiny schedule, from scratch (pretrained_backbone=False). 256 px, not the
# other tiny detectors' 128: at 128 px its level-7 map is 1 x 1, where BatchNorm cannot train on a batch of one (the
# last batch of an epoch can be one image).
_base_ = ['../_base_/data/tiny_128.py', '../_base_/schedules/tiny_cpu_12e.py']
data = dict(size=256)
model = dict(type='efficientdet', name='tf_efficientdet_d0', pretrained=False, pretrained_backbone=False)
