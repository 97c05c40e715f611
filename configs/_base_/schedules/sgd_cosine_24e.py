_base_ = './sgd_cosine_12e.py'
train = dict(epochs=24)
