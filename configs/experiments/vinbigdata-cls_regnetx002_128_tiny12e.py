# The 2-class filter of the VinBigData demo: a tiny RegNetX-200MF classifier of P(abnormal) (some reader drew a
# finding), 128 px, 12 epochs. Its OOF/test probabilities give the `14 (1-p) 0 0 1 1` box and gate the finding boxes
# (configs/ensembles/demo_vinbigdata_cls.py).
_base_ = ['../_base_/models/cls_regnetx002.py', '../_base_/data/vinbigdata_tiny_128.py',
          '../_base_/schedules/tiny_cpu_12e.py']
data = dict(classes=('abnormal', ))  # neg_ratio 1.0: each epoch every abnormal image and as many normal ones
optim = dict(lr=1e-3)
