# YOLOv3, mmdetection's Darknet-53 config (anchors of its 608 px COCO model), 512 px, SGD cosine 24 epochs.
_base_ = [
    'mmdet::yolo/yolov3_d53_8xb8-ms-608-273e_coco.py', '../_base_/data/rsna_512.py',
    '../_base_/schedules/sgd_cosine_24e.py'
]
# From scratch: Darknet's BatchNorm trains. mmdet keeps it in eval mode for its ImageNet weights
# ('open-mmlab://darknet53'), which cxrdet reads from a local file or URL only:
#   -o "model.backbone.init_cfg={'type':'Pretrained','checkpoint':PATH}" -o model.backbone.norm_eval=True
model = dict(backbone=dict(init_cfg=None, norm_eval=False))
# mmdet trains YOLOv3 at a tenth of the usual SGD rate.
optim = dict(lr=1e-3)
