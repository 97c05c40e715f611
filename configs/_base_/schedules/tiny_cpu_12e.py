# Tiny CPU schedule (demo and tests): AdamW, which gets a from-scratch network off the ground in a dozen short
# epochs where SGD barely starts; half an epoch of warm-up, cosine decay, a fast EMA, no early stopping.
_base_ = '../default_runtime.py'
optim = dict(type='adamw', lr=2e-3, weight_decay=1e-4)
lr_schedule = dict(type='cosine', warmup_epochs=0.5, warmup_factor=0.01, min_lr_ratio=0.05)
train = dict(epochs=12, early_stopping=None, ema=dict(enabled=True, decay=0.99, warmup=True), log_every_n_steps=5)
