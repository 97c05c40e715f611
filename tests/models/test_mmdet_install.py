"""The mmdetection install (`make mmdet`) works with the project's torch and numpy pins.

mmdet's own config files from the installed package build RetinaNet, Faster R-CNN, YOLOv3 and Cascade R-CNN, which run
a loss + backward pass and predict on a tiny CPU image; mmcv's compiled ops (nms, RoIAlign) give hand-computed values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("mmcv", reason="mmcv is not installed: run `make mmdet` (builds mmcv 2.1.0 from source once)")
mmdet = pytest.importorskip("mmdet", reason="mmdet is not installed: run `make mmdet`")

pytestmark = pytest.mark.slow

CONFIGS = Path(mmdet.__file__).parent / ".mim" / "configs"
SIZE = 128  # input image side in pixels
GT_BOX = [30.0, 40.0, 90.0, 100.0]  # xyxy, pixels of the 128x128 input image


def _set_key(node: Any, key: str, value: Any) -> None:
    """Set `key` to `value` in every dict nested in `node` (lists of heads included, as in Cascade R-CNN)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                node[k] = value
            else:
                _set_key(v, key, value)
    elif isinstance(node, (list, tuple)):
        for v in node:
            _set_key(v, key, value)


def _build(config: str) -> torch.nn.Module:
    """Build a one-class detector from an mmdet config file, with no pretrained weights (nothing downloads)."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(str(CONFIGS / config))
    cfg.model.backbone.init_cfg = None
    _set_key(cfg.model, "num_classes", 1)
    # An untrained head scores below mmdet's default thresholds; zero keeps the prediction path from returning nothing.
    _set_key(cfg.model.test_cfg, "score_thr", 0.0)
    _set_key(cfg.model.test_cfg, "conf_thr", 0.0)
    assert "Pretrained" not in cfg.pretty_text
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def _batch(with_boxes: bool) -> dict[str, Any]:
    """One random 128x128 uint8 image in mmdet's data layout; ground truth is one box, xyxy pixels, label 0."""
    from mmengine.structures import InstanceData
    from mmdet.structures import DetDataSample

    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    sample = DetDataSample(
        metainfo={"img_shape": (SIZE, SIZE), "ori_shape": (SIZE, SIZE), "scale_factor": (1.0, 1.0)}
    )
    if with_boxes:
        sample.gt_instances = InstanceData(bboxes=torch.tensor([GT_BOX]), labels=torch.tensor([0]))
    return {"inputs": [image], "data_samples": [sample]}


@pytest.mark.parametrize(
    "config",
    [
        "retinanet/retinanet_r50_fpn_1x_coco.py",
        "faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py",
        "yolo/yolov3_d53_8xb8-320-273e_coco.py",
        "cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py",
    ],
)
def test_detector_trains_and_predicts_on_cpu(config: str) -> None:
    model = _build(config)

    model.train()
    data = model.data_preprocessor(_batch(with_boxes=True), training=True)
    losses = model(**data, mode="loss")
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss) and loss.item() > 0, log_vars
    assert all(torch.isfinite(v).all() for v in log_vars.values()), log_vars  # loss tensors, one per loss term
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(_batch(with_boxes=False), training=False)
        results = model(**data, mode="predict")
    assert len(results) == 1
    pred = results[0].pred_instances
    n = len(pred)
    assert 1 <= n <= 100  # every one of these configs keeps at most 100 boxes per image
    assert pred.bboxes.shape == (n, 4) and pred.scores.shape == (n,) and pred.labels.shape == (n,)
    assert torch.isfinite(pred.bboxes).all()
    assert (pred.bboxes[:, 2] >= pred.bboxes[:, 0]).all() and (pred.bboxes[:, 3] >= pred.bboxes[:, 1]).all()
    assert ((pred.scores >= 0) & (pred.scores <= 1)).all()
    assert (pred.labels == 0).all()  # one class


def test_two_stage_detectors_use_mmcv_roi_align() -> None:
    from mmcv.ops import RoIAlign

    model = _build("faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py")
    assert all(isinstance(layer, RoIAlign) for layer in model.roi_head.bbox_roi_extractor.roi_layers)


def test_mmcv_nms_on_cpu() -> None:
    from mmcv.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])  # xyxy pixels
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(box 0, box 1) = 81 / (100 + 100 - 81) = 0.68 > 0.5: box 1 goes; box 2 overlaps nothing.
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    torch.testing.assert_close(dets, torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.9], [20.0, 20.0, 30.0, 30.0, 0.7]]))
    _, keep = nms(boxes, scores, iou_threshold=0.7)
    assert keep.tolist() == [0, 1, 2]


def test_mmcv_roi_align_on_cpu() -> None:
    from mmcv.ops import RoIAlign

    # Feature value = column index, so bilinear sampling is exact: each bin's value is the mean column it samples.
    features = torch.arange(8.0).repeat(1, 1, 8, 1)  # (N=1, C=1, H=8, W=8)
    rois = torch.tensor([[0.0, 2.0, 2.0, 6.0, 6.0]])  # batch index, then xyxy in feature pixels
    out = RoIAlign(output_size=2, spatial_scale=1.0, sampling_ratio=2, aligned=True)(features, rois)
    # aligned=True shifts the box by half a pixel: x in [1.5, 5.5], bins [1.5, 3.5] and [3.5, 5.5], samples at
    # x = 2, 3 and x = 4, 5, so the bins average 2.5 and 4.5 in every row.
    assert out.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out[0, 0], torch.tensor([[2.5, 4.5], [2.5, 4.5]]))
