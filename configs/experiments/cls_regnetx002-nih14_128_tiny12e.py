# Tiny CPU multi-label classifier on the 14 NIH findings (scripts/demo_nih.sh): RegNetX-200MF from scratch, 128 px,
# 12 epochs, on the synthetic NIH-layout set (`cxrdet synth --format nih`); positives weighted per finding.
_base_ = ['../_base_/models/cls_regnetx002.py', '../_base_/data/nih_512.py', '../_base_/schedules/tiny_cpu_12e.py']
data = dict(size=128, batch_size=16, num_workers=0, folds='nih_demo_k5')
loss = dict(pos_weight='auto')
optim = dict(lr=1e-3)
