# Curriculum: RetinaNet ResNet-50 FPN, 512 px; 3 epochs on crops around boxes (and negative crops), then 9 on
# full images starting from the crop stage's best weights.
_base_ = './retinanet_r50fpn_512_sgd12e.py'
train = dict(stages=[
    dict(name='crops', view='crops', epochs=3, lr=0.02),
    dict(name='full', view='full', epochs=9, lr=0.01),
])
