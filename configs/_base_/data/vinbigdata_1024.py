# VinBigData-format data (the Kaggle layout under CXRDET_DATA, else the demo's synthetic set) at 1024 px: 14 finding
# classes (class 14 "No finding" is not a box class: the submission adds it, cxrdet.competitions.vinbigdata).
data = dict(
    root=None,  # None: cxrdet.paths.data_root('vinbigdata'): CXRDET_DATA, else outputs/demo/vinbigdata
    competition='vinbigdata',
    size=1024,
    folds='vinbigdata_k5',  # `cxrdet folds --labels <root>/train.csv --out folds/vinbigdata_k5.csv` (multi-label)
    cache=None,
    classes=('Aortic enlargement', 'Atelectasis', 'Calcification', 'Cardiomegaly', 'Consolidation', 'ILD',
             'Infiltration', 'Lung Opacity', 'Nodule/Mass', 'Other lesion', 'Pleural effusion', 'Pleural thickening',
             'Pneumothorax', 'Pulmonary fibrosis'),
    # The three readers' boxes of each class fused by WBF at IoU 0.4 into one ground truth (the top solutions'
    # choice); validation scores the held-out fold against the same fused boxes. drop=['R8', ...] leaves readers out.
    readers=dict(mode='fuse', iou_thr=0.4, min_readers=1, drop=[]),
    batch_size=4,
    num_workers=4,
    view='full',
    neg_ratio=None,
    positives_only=False,
    augment=dict(
        hflip=0.5,
        affine=dict(degrees=3, translate=0.03, scale=(0.95, 1.05)),
        brightness=0.1,
        contrast=0.1,
        gamma=(0.9, 1.1),
        clahe=False),
)
