# SGD with momentum (the RSNA write-ups found Adam hurt the big detectors), 1 warm-up epoch, cosine decay, 12 epochs.
_base_ = '../default_runtime.py'
optim = dict(type='sgd', lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
lr_schedule = dict(type='cosine', warmup_epochs=1.0, warmup_factor=0.001, min_lr_ratio=0.01)
train = dict(epochs=12)
