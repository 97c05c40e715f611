# Binary image-level classifier (opacity or not, from the RSNA boxes), CheXNet's DenseNet-121, 512 px, AdamW, cosine.
_base_ = [
    '../_base_/models/cls_densenet121.py', '../_base_/data/rsna_512.py', '../_base_/schedules/adamw_cosine_12e.py'
]
data = dict(batch_size=16)
