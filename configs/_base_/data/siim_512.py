# SIIM-COVID-format data (the Kaggle layout under CXRDET_DATA, else the demo's synthetic set) at 512 px. One
# detection class, `opacity`; an image's `none` box and each study's four category boxes are added by the
# submission (cxrdet.competitions.siim.complete). Folds group the images of a study (the table has no patient id)
# and stratify on the study category: `cxrdet folds --labels <root>/train_image_level.csv --out folds/siim_k5.csv`.
data = dict(
    root=None,  # None: cxrdet.paths.data_root('siim'): CXRDET_DATA, else outputs/demo/siim
    competition='siim',
    size=512,
    folds='siim_k5',
    cache=None,
    classes=('opacity', ),
    batch_size=8,
    num_workers=4,
    view='full',
    neg_ratio=None,
    positives_only=False,
    augment=dict(
        hflip=0.5,
        affine=dict(degrees=5, translate=0.05, scale=(0.9, 1.1)),
        brightness=0.1,
        contrast=0.1,
        gamma=(0.9, 1.1),
        clahe=False),
)
