# A full-size SIIM opacity detector: torchvision Faster R-CNN R-50 FPN at 512 px, 12 epochs of SGD (SIIM-COVID 1st
# place used Faster R-CNN beside YOLOv5 and EfficientDet at 768-1024 px). Needs a GPU for a real run.
_base_ = [
    '../_base_/models/faster_rcnn_r50_fpn.py', '../_base_/data/siim_512.py', '../_base_/schedules/sgd_cosine_12e.py'
]
predict = dict(max_per_image=20)
