# Tiny CPU setting of the VinBigData demo and tests: 128 px, batches of 8 in the main process, each epoch all
# abnormal images plus as many normal ones (about 70% of VinBigData's images are "No finding").
_base_ = './vinbigdata_1024.py'
data = dict(size=128, folds='demo_vinbigdata_k5', batch_size=8, num_workers=0, neg_ratio=1.0)
