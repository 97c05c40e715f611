# Tiny CPU FCOS on VinBigData-format data (demo-vinbigdata and tests): 14 classes, timm MobileNet-V3-Small + 64-channel
# FPN, 128 px, 12 epochs.
_base_ = [
    '../_base_/models/fcos_mnv3s_fpn64.py', '../_base_/data/vinbigdata_tiny_128.py',
    '../_base_/schedules/tiny_cpu_12e.py'
]
predict = dict(max_per_image=50)  # low-confidence boxes cost nothing in mAP
