# NIH ChestX-ray14 (multi-label, 14 findings, several images per patient) at 512 px. Point data.root at an NIH-layout
# root (CXRDET_DATA=... or -o data.root=...), prepare its cache, and build patient-grouped folds:
#   cxrdet folds --labels <root's Data_Entry table> --k 5 --out folds/nih_k5.csv
_base_ = './rsna_512.py'
data = dict(
    folds='nih_k5',
    classes=('Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass', 'Nodule', 'Pneumonia',
             'Pneumothorax', 'Consolidation', 'Edema', 'Emphysema', 'Fibrosis', 'Pleural_Thickening', 'Hernia'),
    neg_ratio=None,
)
