# RSNA-format data (the Kaggle layout under CXRDET_DATA, else the demo's synthetic set) at 512 px.
data = dict(
    root=None,  # None: cxrdet.paths.data_root()
    size=512,
    folds='demo_k5',  # a committed fold file name under folds/, or a path; --cfg-options data.folds=... swaps it
    cache=None,  # None: cxrdet.paths.cache_dir(root, size)
    classes=('opacity', ),
    batch_size=8,
    num_workers=4,
    view='full',
    neg_ratio=None,  # negatives per positive drawn each epoch (None: all)
    positives_only=False,
    # Light augmentation: the RSNA write-ups found heavy intensity changes hurt on these consistent images.
    augment=dict(
        hflip=0.5,
        affine=dict(degrees=3, translate=0.03, scale=(0.95, 1.05)),
        brightness=0.1,
        contrast=0.1,
        gamma=(0.9, 1.1),
        clahe=False),
)
