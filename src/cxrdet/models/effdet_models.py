"""EfficientDet through `effdet` (Ross Wightman's PyTorch EfficientDet on timm bodies, Apache-2.0) behind cxrdet's
`Detector` contract (imported only when a config names `model.type='efficientdet'`).

SIIM-COVID's first place trained EfficientDet-D7 beside YOLOv5 and Faster R-CNN. A config names one of effdet's
model configs and, optionally, overrides of its fields:

    model = dict(type='efficientdet', name='tf_efficientdet_d0', pretrained=False, pretrained_backbone=False,
                 config=dict(...))  # e.g. dict(max_det_per_image=100, soft_nms=False)

`name` is any key of `effdet.config.model_config.efficientdet_model_param_dict` (`efficientdet_d0` to `_d3`,
`tf_efficientdet_d0` to `_d7x`, `efficientdetv2_dt`, ...). `pretrained` loads effdet's COCO weights for that model
(downloaded by effdet from its release URL, before the head is reset to cxrdet's classes); `pretrained_backbone` loads
timm's ImageNet weights for the body only.

What the wrapper adapts (effdet's `DetBenchTrain` computes the loss, its anchor labeler matches boxes to anchors):

- images: `[B, 3, S, S]` RGB in [0, 1] are normalised with ImageNet mean and std (effdet's loaders do the same);
  `config.image_size` is set to `(S, S)`, which must be a multiple of 2^max_level (128 for levels 3-7);
- targets: xyxy boxes become effdet's yxyx, 0-based labels its 1-based classes (effdet subtracts one and reads
  class -1 as padding);
- outputs: effdet's post-processing (top `max_detection_points` anchors, batched NMS at IoU 0.5, `max_det_per_image`
  per image), rows padded with class 0 dropped, classes back to 0-based, boxes xyxy in input pixels.

It runs at the side it was built for only (`at_size`): effdet fixes the BiFPN's feature-map sizes at build time, so
`train.multiscale` and rescaled TTA passes are refused; flip TTA works.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from cxrdet.errors import ConfigError
from cxrdet.models.detector import MIN_TARGET_SIDE, Detector

with warnings.catch_warnings():
    # effdet's modules call `torch.jit.script` on a few helpers at import time, which torch 2.14 calls deprecated.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from effdet import DetBenchTrain, create_model_from_config, get_efficientdet_config
    from effdet.bench import _batch_detection, _post_process
    from effdet.config.model_config import efficientdet_model_param_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# effdet's post-processing NMS IoU (fixed in effdet.anchors.generate_detections).
EFFDET_NMS_IOU = 0.5
MODEL_KEYS = frozenset({"type", "name", "pretrained", "pretrained_backbone", "config"})


class EffdetDetector(Detector):
    """An effdet EfficientDet behind the cxrdet batch contract (see the module docstring).

    Args:
        bench: effdet's training bench around the model (its anchors, anchor labeler and loss).
    """

    def __init__(self, bench: DetBenchTrain) -> None:
        super().__init__(bench, label_offset=1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.score_floor = 0.0

    def forward(
        self, images: torch.Tensor, targets: Sequence[Mapping[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Losses (training) or detections (eval); boxes are xyxy pixels of the `[S, S]` input."""
        x = (images - self.mean) / self.std
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            boxes, classes = [], []
            for t in targets:
                b = t["boxes"].float()
                keep = ((b[:, 2:] - b[:, :2]) >= MIN_TARGET_SIDE).all(dim=1)
                boxes.append(b[keep][:, [1, 0, 3, 2]])  # xyxy -> effdet's yxyx
                classes.append(t["labels"][keep].float() + self.label_offset)
            out = self.net(x, {"bbox": boxes, "cls": classes})
            return {"loss_cls": out["class_loss"], "loss_box": out["box_loss"] * self.net.loss_fn.box_loss_weight}
        bench = self.net
        class_out, box_out = bench.model(x)
        # What effdet's DetBenchPredict.forward does, on the training bench's anchors (one copy of the model).
        class_out, box_out, indices, classes = _post_process(
            class_out, box_out, num_levels=bench.num_levels, num_classes=bench.num_classes,
            max_detection_points=bench.max_detection_points)
        detections = _batch_detection(len(x), class_out, box_out, bench.anchors.boxes, indices, classes, None, None,
                                      max_det_per_image=bench.max_det_per_image, soft_nms=bench.soft_nms)
        result = []
        for det in detections:
            labels = det[:, 5].long() - self.label_offset
            keep = (labels >= 0) & (det[:, 4] >= self.score_floor)
            boxes = det[keep, :4].clamp(0, float(x.shape[-1]))  # effdet clips only when told the image size
            result.append({"boxes": boxes, "scores": det[keep, 4], "labels": labels[keep]})
        return result

    @contextmanager
    def at_size(self, size: int) -> Iterator[None]:
        """Run at a `size x size` input: only the side the model was built for.

        effdet fixes an EfficientDet's feature-map sizes when it builds it (its BiFPN resamples between levels to
        sizes computed from `config.image_size`, as do its anchors), so another side cannot run through the same
        model: multi-scale training and rescaled TTA passes are refused (flip TTA works).

        Raises:
            ConfigError: `size` is not the built side.
        """
        built = tuple(self.net.model.config.image_size)
        if built != (size, size):
            raise ConfigError(f"EfficientDet built for {built[0]} px cannot run at {size} px: effdet fixes its BiFPN's "
                              "feature-map sizes at build time; expected train.multiscale=None and TTA without "
                              "scales (predict.tta='none' or 'hflip')")
        yield

    def set_postprocess(self, score_thresh: float, nms_thresh: float, detections_per_img: int) -> None:
        """Set the score floor and the per-image cap; effdet's NMS IoU is fixed at 0.5.

        Raises:
            ConfigError: Another NMS IoU was asked for.
        """
        if abs(nms_thresh - EFFDET_NMS_IOU) > 1e-9:
            raise ConfigError(f"predict.nms_iou={nms_thresh}: effdet's EfficientDet post-processing runs NMS at IoU "
                              f"{EFFDET_NMS_IOU} (effdet.anchors.generate_detections); expected {EFFDET_NMS_IOU}")
        self.score_floor = float(score_thresh)
        self.net.max_det_per_image = int(detections_per_img)


def _anchor_count(config: Any, size: int) -> int:
    """Anchors of an S x S input over the config's levels (effdet halves the map with ceiling at each level)."""
    count, side = 0, size
    per_location = len(config.aspect_ratios) * config.num_scales
    for level in range(1, config.max_level + 1):
        side = (side - 1) // 2 + 1
        if level >= config.min_level:
            count += side * side * per_location
    return count


def create_effdet_detector(model_cfg: Mapping[str, Any], num_classes: int, size: int) -> EffdetDetector:
    """Build the EfficientDet a config's `model` section names, for `num_classes` classes at S = `size`.

    Raises:
        ConfigError: An unknown key or model name, a config override effdet does not have, or an input side that
            is not a multiple of 2^max_level.
    """
    unknown = sorted(set(model_cfg) - MODEL_KEYS)
    if unknown:
        raise ConfigError(f"model: unknown key(s) {', '.join(unknown)} for efficientdet: expected some of "
                          f"{', '.join(sorted(MODEL_KEYS))}")
    name = model_cfg.get("name", "tf_efficientdet_d0")
    if name not in efficientdet_model_param_dict:
        raise ConfigError(f"model.name={name!r}: not an effdet model config; expected one of "
                          f"{', '.join(sorted(efficientdet_model_param_dict))}")
    config = get_efficientdet_config(name)
    for key, value in dict(model_cfg.get("config") or {}).items():
        if key not in config:
            raise ConfigError(f"model.config.{key}: effdet's {name} config has no such field")
        config[key] = value
    step = 2 ** config.max_level
    if size % step:
        raise ConfigError(f"data.size={size}: {name} halves the input {config.max_level} times; expected a multiple "
                          f"of {step}")
    config.image_size = (size, size)
    # The top-k before NMS cannot exceed the anchors of a small input.
    config.max_detection_points = min(int(config.max_detection_points), _anchor_count(config, size))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        model = create_model_from_config(config, bench_task="", num_classes=num_classes,
                                         pretrained=bool(model_cfg.get("pretrained", False)),
                                         pretrained_backbone=bool(model_cfg.get("pretrained_backbone", False)))
    assert isinstance(model, nn.Module)
    return EffdetDetector(DetBenchTrain(model, create_labeler=True))
