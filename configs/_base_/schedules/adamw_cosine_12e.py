# AdamW (the usual choice for ConvNeXt bodies), 1 warm-up epoch, cosine decay, 12 epochs.
_base_ = '../default_runtime.py'
optim = dict(type='adamw', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05)
lr_schedule = dict(type='cosine', warmup_epochs=1.0, warmup_factor=0.001, min_lr_ratio=0.01)
train = dict(epochs=12)
