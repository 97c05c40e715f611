# SSDlite, torchvision's MobileNet-V3-Large extractor (ssdlite320_mobilenet_v3_large), run at data.size.
model = dict(
    type='ssdlite_mobilenet_v3',
    backbone=dict(pretrained=False, trainable_layers=None),
    head=dict(),  # SSD attributes to set (topk_candidates, ...)
)
