# Tiny CPU setting of the SIIM demo and tests: 128 px, batches of 8 in the main process.
_base_ = './siim_512.py'
data = dict(size=128, folds='demo_siim_k3', batch_size=8, num_workers=0)
