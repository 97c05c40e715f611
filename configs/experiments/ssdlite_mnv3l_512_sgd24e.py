# SSDlite, MobileNet-V3-Large, 512 px, SGD cosine 24 epochs.
_base_ = [
    '../_base_/models/ssdlite_mobilenet_v3.py', '../_base_/data/rsna_512.py', '../_base_/schedules/sgd_cosine_24e.py'
]
data = dict(batch_size=16)
optim = dict(lr=0.02)
