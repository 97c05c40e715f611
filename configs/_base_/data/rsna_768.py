_base_ = './rsna_512.py'
data = dict(size=768, batch_size=4)
