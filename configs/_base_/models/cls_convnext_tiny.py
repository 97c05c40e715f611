# Image-level classifier: timm ConvNeXt-T (grey input read once, ImageNet weights summed to one channel).
_base_ = './cls_densenet121.py'
model = dict(name='convnext_tiny', timm_kwargs=dict(drop_path_rate=0.1))
