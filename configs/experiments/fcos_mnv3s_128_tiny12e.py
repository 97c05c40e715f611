# Tiny CPU FCOS (demo and tests): timm MobileNet-V3-Small + 64-channel FPN, 128 px, 12 epochs.
_base_ = [
    '../_base_/models/fcos_mnv3s_fpn64.py', '../_base_/data/tiny_128.py', '../_base_/schedules/tiny_cpu_12e.py'
]
