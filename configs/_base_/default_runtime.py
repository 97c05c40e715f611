# Run-time settings shared by every experiment: trainer, EMA, checkpoint choice, prediction floor/cap, metric sweep.
train = dict(
    epochs=12,
    accelerator='auto',  # 'cpu', 'gpu', ...; the command line's --accelerator overrides
    devices='auto',  # e.g. 2 for DDP on two GPUs
    strategy='auto',  # 'ddp' for several devices
    precision='auto',  # 'auto': '16-mixed' on a GPU, '32-true' on a CPU
    grad_clip=10.0,  # gradient norm clipping (None: off)
    accumulate=1,  # gradient accumulation (batches per optimiser step)
    ema=dict(enabled=True, decay=0.999, warmup=True),  # validate, checkpoint and predict with the EMA weights
    early_stopping=dict(patience=6),  # epochs without a better val/rsna
    seed=42,
    limit_train_batches=None,  # an int (batches) or a fraction: a first run on a subset
    limit_val_batches=None,
    log_every_n_steps=10,
    progress_bar='auto',  # 'auto': a live bar in a terminal, one line per epoch in a log file; True / False
    # Add 'mlflow' for MLflow tracking (cxrdet.tracking: one MLflow experiment per experiment, one run per fold);
    # 'csv' stays (the reports read its files).
    loggers=['csv', 'tensorboard'],
    tracking_uri=None,  # MLflow: None = MLFLOW_TRACKING_URI, else outputs/mlflow.db; or http://HOST:PORT of a server
    # Off unless set (no key here, so that a config file can set them: mmengine refuses a dict over a None):
    # swa=dict(epochs=3, bn_batches=100): average the last epochs' weights -> swa.ckpt;
    # average_best=dict(k=3, bn_batches=100): average the k best epochs' weights -> avg.ckpt.
    multiscale=None,  # e.g. [448, 480, 512, 544, 576]: one input side drawn per batch (images and boxes rescaled)
    stages=None,  # curriculum: a list of dict(name=..., epochs=..., view='crops'|'full', lr=..., data=dict(...))
)
predict = dict(
    checkpoint='best',  # 'best', 'last', 'swa', 'avg' (train.swa / train.average_best) or a .ckpt path
    score_floor=0.01,  # keep boxes down to this confidence, so that threshold tuning has room
    nms_iou=0.5,
    max_per_image=20,
    # 'none', 'hflip' or multi-scale 'scales=448/512/576' / 'scales=448/512/576+hflip' (passes merged by weighted box
    # fusion); the dict form dict(scales=[...], hflip=True) works from the command line, and in a config file as
    # dict(_delete_=True, scales=[...], hflip=True) (mmengine refuses a dict over this string otherwise).
    tta='none',
    wbf_iou=0.55,
    wbf_skip=0.0,
    batch_size=None,  # None: data.batch_size
)
# Validation sweeps the confidence cut and logs the best RSNA score (val/rsna) and its cut (val/threshold).
evaluation = dict(thresholds=dict(start=0.05, stop=0.95, step=0.05))
