# Faster R-CNN, torchvision ResNet-50 + FPN (strides 4-32 + pool).
model = dict(
    type='faster_rcnn',
    backbone=dict(type='torchvision_resnet_fpn', name='resnet50', pretrained=False, checkpoint=None),
    anchor_sizes=None,  # one size per level; None: (32, 64, 128, 256, 512)
    anchor_ratios=(0.5, 1.0, 2.0),
    head=dict(),  # more torchvision FasterRCNN keywords (rpn_*, box_*)
)
