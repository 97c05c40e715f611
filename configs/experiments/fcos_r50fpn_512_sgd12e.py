# FCOS, torchvision ResNet-50 FPN, 512 px, SGD cosine 12 epochs.
_base_ = [
    '../_base_/models/fcos_r50_fpn.py', '../_base_/data/rsna_512.py', '../_base_/schedules/sgd_cosine_12e.py'
]
