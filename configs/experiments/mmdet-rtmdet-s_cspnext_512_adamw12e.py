# RTMDet-s (mmdetection's config: CSPNeXt body, CSPNeXt-PAFPN, shared-conv separate-BN head, dynamic soft-label
# assigner, quality focal + GIoU losses), 512 px, AdamW cosine 12 epochs, mosaic + mixup off for the last 2 epochs.
# From scratch here; mmdet's ImageNet CSPNeXt weights load through cxrdet (key prefix 'backbone.' of that checkpoint):
#   -o "model.backbone.init_cfg={'type':'Pretrained','prefix':'backbone.','checkpoint':PATH_OR_URL}"
_base_ = [
    'mmdet::rtmdet/rtmdet_s_8xb32-300e_coco.py', '../_base_/data/rsna_512_mosaic.py',
    '../_base_/schedules/adamw_cosine_12e.py'
]
model = dict(backbone=dict(init_cfg=None))
