# Tiny CPU DINO (demo, tests, benchmarks): mmdetection's 4-scale DINO on a timm MobileNet-V3-Small body, two encoder
# and two decoder layers with 512-channel feed-forwards and 100 queries (a 128 px input has 340 encoder tokens),
# 128 px. The embeddings stay 256-d: mmdet's DINO decoder encodes reference points with a fixed 128 features per
# coordinate (`coordinate_to_encoding`), which ties its query MLP to 256-d embeddings.
_base_ = ['mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', '../_base_/data/tiny_128.py',
          '../_base_/schedules/tiny_cpu_12e.py']
model = dict(
    num_queries=100,
    backbone=dict(_delete_=True, type='CxrTimmBackbone', name='mobilenetv3_small_100', strides=(8, 16, 32)),
    neck=dict(in_channels=[24, 48, 576]),
    encoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512))),
    decoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512))),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=20)),
    test_cfg=dict(max_per_img=100))
