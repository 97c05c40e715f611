# Tiny CPU opacity detector on SIIM-format data (demo-siim and tests): timm MobileNet-V3-Small + 64-channel FPN FCOS,
# 128 px, 12 epochs. Validated on the image level of the SIIM metric (opacity and none APs at IoU > 0.5, the none
# box of an image being 1 - its top opacity score): `val/siim_image`.
_base_ = [
    '../_base_/models/fcos_mnv3s_fpn64.py', '../_base_/data/siim_tiny_128.py', '../_base_/schedules/tiny_cpu_12e.py'
]
predict = dict(max_per_image=20)
