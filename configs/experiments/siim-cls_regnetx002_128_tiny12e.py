# The SIIM demo's study classifier: a tiny RegNetX-200MF trained on every image with its study's category, a softmax
# over the four categories (loss type 'ce': they exclude each other), 128 px, 12 epochs. A study's probabilities are
# the mean over its images (the ensemble's postprocess.study_pool); its OOF/test files give the study rows and,
# through 1 - P(negative), the images' none box and the opacity gate (configs/ensembles/demo_siim.py).
# Checkpoints follow `val/study_map`, the study level of the competition metric on the held-out fold.
_base_ = ['../_base_/models/cls_regnetx002.py', '../_base_/data/siim_tiny_128.py',
          '../_base_/schedules/tiny_cpu_12e.py']
data = dict(classes=('negative', 'typical', 'indeterminate', 'atypical'))
loss = dict(type='ce', pos_weight='auto', label_smoothing=0.05)
optim = dict(lr=1e-3)
