# Image-level classifier: timm EfficientNet-B0 (grey input read once, ImageNet weights summed to one channel).
_base_ = './cls_densenet121.py'
model = dict(name='efficientnet_b0', drop_rate=0.2)
