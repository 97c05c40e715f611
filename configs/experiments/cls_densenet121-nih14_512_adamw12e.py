# CheXNet: multi-label DenseNet-121 on the 14 NIH ChestX-ray14 findings, 512 px, AdamW, cosine; val/auroc is the
# mean of the 14 per-class AUROCs. Positive terms weighted by negatives / positives per finding (rare findings).
_base_ = [
    '../_base_/models/cls_densenet121.py', '../_base_/data/nih_512.py', '../_base_/schedules/adamw_cosine_12e.py'
]
data = dict(batch_size=16)
loss = dict(pos_weight='auto')
