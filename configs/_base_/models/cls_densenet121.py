# CheXNet-style image-level classifier: timm DenseNet-121, one sigmoid output per class of data.classes, reading the
# grey channel once (in_chans=1: timm sums the pretrained RGB first-layer weights into one channel).
# pretrained=True downloads timm's ImageNet weights; offline, set checkpoint='PATH' to a local timm weights file.
task = 'classify'
model = dict(type='timm_classifier', name='densenet121', pretrained=True, checkpoint=None, in_chans=1, drop_rate=0.0)
# 'bce' or 'focal' (gamma, alpha); pos_weight None, 'auto' (negatives / positives per class) or one weight per class.
loss = dict(type='bce', pos_weight=None)
