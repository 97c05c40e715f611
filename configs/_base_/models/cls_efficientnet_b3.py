# Image-level classifier: timm EfficientNet-B3 (grey input read once, ImageNet weights summed to one channel).
_base_ = './cls_densenet121.py'
model = dict(name='efficientnet_b3', drop_rate=0.3)
