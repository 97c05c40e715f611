# Tiny CPU binary classifier (demo and tests): timm RegNetX-200MF from scratch, 128 px, 12 epochs.
_base_ = ['../_base_/models/cls_regnetx002.py', '../_base_/data/tiny_128.py', '../_base_/schedules/tiny_cpu_12e.py']
optim = dict(lr=1e-3)
