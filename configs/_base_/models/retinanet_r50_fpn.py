# RetinaNet, torchvision ResNet-50 + FPN (P3-P7).
model = dict(
    type='retinanet',
    backbone=dict(type='torchvision_resnet_fpn', name='resnet50', pretrained=False, checkpoint=None),
    anchor_sizes=None,  # one base size per level P3-P7; None: (32, 64, 128, 256, 512)
    anchor_ratios=(0.5, 1.0, 2.0),
    head_norm=None,  # 'group': GroupNorm in the head towers (torchvision's v2 head)
    box_loss='l1',  # 'giou' (v2), 'smooth_l1', 'ciou', 'diou'
    head=dict(),  # more torchvision RetinaNet keywords (fg_iou_thresh, topk_candidates, ...)
)
