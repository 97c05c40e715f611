# Curriculum for the binary DenseNet-121 classifier: 3 epochs on crops (around boxes: positive; random crops of
# negative images: negative), then 9 on whole images starting from the crop stage's best weights.
_base_ = './cls_densenet121_512_adamw12e.py'
train = dict(stages=[
    dict(name='crops', view='crops', epochs=3),
    dict(name='full', view='full', epochs=9),
])
