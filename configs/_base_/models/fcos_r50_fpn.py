# FCOS (anchor-free), torchvision ResNet-50 + FPN (P3-P7).
model = dict(
    type='fcos',
    backbone=dict(type='torchvision_resnet_fpn', name='resnet50', pretrained=False, checkpoint=None),
    anchor_sizes=None,  # the scale of each level; None: (8, 16, 32, 64, 128)
    head=dict(),  # more torchvision FCOS keywords (center_sampling_radius, topk_candidates, ...)
)
