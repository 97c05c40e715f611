# Tiny image-level classifier for CPU runs (demo and tests): timm RegNetX-200MF from scratch. Plain BatchNorm + ReLU
# blocks train steadily from scratch on small batches, where MobileNet-V3-Small's training loss spikes (0.7 -> 7).
_base_ = './cls_densenet121.py'
model = dict(name='regnetx_002', pretrained=False)
