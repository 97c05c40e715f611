# Tiny CPU RTMDet (demo, tests, benchmarks): mmdetection's RTMDet-tiny at 128 px, 12 epochs of the tiny schedule.
_base_ = ['mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py', '../_base_/data/tiny_128.py',
          '../_base_/schedules/tiny_cpu_12e.py']
model = dict(backbone=dict(init_cfg=None))
