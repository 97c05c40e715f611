# demo_wbf plus the demo's tiny image-level classifier: its OOF probability p rescales every box score by p**cls_alpha
# and drops the boxes of images with p < cls_tau (RSNA 1st place), tuned by Optuna with the rest. Compared with
# demo_wbf on the honest estimate, this says whether the gate helps.
_base_ = './demo_wbf.py'
classifier = dict(experiment='cls_regnetx002_128_tiny12e', column='opacity')
postprocess = dict(cls_alpha=1.0, cls_tau=0.1)
search_space = dict(
    cls_alpha=dict(type='float', low=0.0, high=2.0),
    cls_tau=dict(type='float', low=0.0, high=0.6),
)
