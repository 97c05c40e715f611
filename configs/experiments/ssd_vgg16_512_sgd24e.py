# SSD, VGG-16, 512 px, SGD cosine 24 epochs (SSD trains longer; larger batches are cheap).
_base_ = [
    '../_base_/models/ssd_vgg16.py', '../_base_/data/rsna_512.py', '../_base_/schedules/sgd_cosine_24e.py'
]
data = dict(batch_size=16)
