# YOLOX-m (mmdetection's config: CSP-Darknet, PAFPN, decoupled head, SimOTA), 512 px, SGD cosine 24 epochs, mosaic
# + mixup off for the last 2 epochs, when YOLOX's L1 box loss switches on (as mmdet's YOLOXModeSwitchHook does).
# mmdet's multi-scale batch resize (BatchSyncRandomResize, 480-800 px for 640 px COCO) is off: cxrdet's
# train.multiscale is its equivalent, named here when wanted (e.g. -o "train.multiscale=[448,480,512,544,576]").
_base_ = [
    'mmdet::yolox/yolox_m_8xb8-300e_coco.py', '../_base_/data/rsna_512_mosaic.py',
    '../_base_/schedules/sgd_cosine_24e.py'
]
model = dict(data_preprocessor=dict(batch_augments=None))
