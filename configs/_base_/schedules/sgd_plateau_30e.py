# SGD, learning rate halved when val/rsna stalls for 2 epochs, early stop after 6; at most 30 epochs.
_base_ = '../default_runtime.py'
optim = dict(type='sgd', lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
lr_schedule = dict(type='plateau', factor=0.5, patience=2, min_lr=1e-5)
train = dict(epochs=30, early_stopping=dict(patience=6))
