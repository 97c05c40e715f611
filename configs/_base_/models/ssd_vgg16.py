# SSD, torchvision's VGG-16 extractor (ssd300_vgg16), run at data.size (at least 268 px).
model = dict(
    type='ssd_vgg16',
    backbone=dict(pretrained=False, trainable_layers=None),
    head=dict(),  # more torchvision SSD keywords (iou_thresh, topk_candidates, positive_fraction, ...)
)
