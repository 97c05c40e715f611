# Tiny CPU YOLOX (demo, tests, benchmarks): mmdetection's YOLOX-tiny at 128 px, 12 epochs of the tiny schedule; no
# batch resize (cxrdet's train.multiscale is its equivalent).
_base_ = ['mmdet::yolox/yolox_tiny_8xb8-300e_coco.py', '../_base_/data/tiny_128.py',
          '../_base_/schedules/tiny_cpu_12e.py']
model = dict(data_preprocessor=dict(batch_augments=None))
