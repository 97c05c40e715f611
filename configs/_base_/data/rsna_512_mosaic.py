# RSNA-format data at 512 px with the one-stage detectors' recipe (YOLOX, RTMDet): cxrdet's mild augmentation, then
# mosaic of four images and mixup of two, both off for the last two epochs, the equivalent of mmdet's mosaic /
# mixup pipeline and its switch to a plain pipeline for the last epochs (YOLOXModeSwitchHook: last 15 of 300 epochs;
# PipelineSwitchHook: last 20 of 300). See cxrdet.data.mosaic.
_base_ = './rsna_512.py'
data = dict(augment=dict(
    mosaic=dict(prob=1.0, scale=(0.5, 1.0), off_last=2),
    mixup=dict(prob=0.15, beta=32.0, off_last=2)))
