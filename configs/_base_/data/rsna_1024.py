_base_ = './rsna_512.py'
data = dict(size=1024, batch_size=2)
