# VinBigData: RetinaNet (the 2nd place's second family beside YOLOv5), torchvision ResNet-50 FPN, 1024 px, SGD cosine
# 12 epochs, 14 classes on the readers' fused boxes.
_base_ = [
    '../_base_/models/retinanet_r50_fpn.py', '../_base_/data/vinbigdata_1024.py', '../_base_/schedules/sgd_cosine_12e.py'
]
# Low-confidence boxes cost nothing in mAP: keep many per image for the ensemble to rank.
predict = dict(score_floor=0.001, max_per_image=100)
