# Image-level classifier: timm ResNet-50 (grey input read once, ImageNet weights summed to one channel).
_base_ = './cls_densenet121.py'
model = dict(name='resnet50')
