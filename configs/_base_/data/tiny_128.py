# Tiny CPU setting (demo and tests): 128 px, batches of 8 loaded in the main process, and each epoch all positives
# plus as many negatives (drawn anew every epoch), which halves an epoch on RSNA-like data (about 20% positive).
_base_ = './rsna_512.py'
data = dict(size=128, batch_size=8, num_workers=0, neg_ratio=1.0)
