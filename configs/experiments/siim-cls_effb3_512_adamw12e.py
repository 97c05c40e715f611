# A full-size SIIM study classifier: timm EfficientNet-B3 at 512 px, softmax over the four categories, 12 epochs of
# AdamW (the winners' study models were EfficientNets at 512-640 px). Needs a GPU for a real run.
_base_ = ['../_base_/models/cls_efficientnet_b3.py', '../_base_/data/siim_512.py',
          '../_base_/schedules/adamw_cosine_12e.py']
data = dict(classes=('negative', 'typical', 'indeterminate', 'atypical'))
loss = dict(type='ce', pos_weight='auto', label_smoothing=0.05)
