"""The `Detector` contract: the one interface the training, prediction and export code sees of any detector.

- input: images `[B, 3, S, S]` in [0, 1] (normalisation happens inside, with the backbone's mean/std) and, when
  training, targets `{'boxes': [N, 4] xyxy pixels of the S x S input, 'labels': [N] class index from 0}`;
- training output: a dict of losses; inference output: per image `{'boxes': xyxy pixels of the input,
  'scores', 'labels': class index from 0}`.

`Detector` wraps a torchvision detector; `cxrdet.models.mmdet_models.MmdetDetector` honours the same contract for
mmdetection's. Both builders (`cxrdet.models.factory`, `cxrdet.models.mmdet_models`) import this module, never each
other's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# Boxes thinner than this (pixels of the network input) are dropped from training targets: torchvision refuses
# zero-area boxes, and a crop can cut a box down to a sliver.
MIN_TARGET_SIDE = 1.0


def resize_images(images: torch.Tensor, side: int) -> torch.Tensor:
    """A `[B, C, S, S]` batch resized to `side x side` (bilinear, antialiased, as the dataset's own resize)."""
    if images.shape[-1] == side and images.shape[-2] == side:
        return images
    return F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


class Detector(nn.Module):
    """A torchvision detector behind the cxrdet batch contract (see the module docstring).

    Args:
        net: A torchvision detection model (`RetinaNet`, `FasterRCNN`, `FCOS`, `SSD`, ...).
        label_offset: Added to 0-based class indices before they reach `net` (1 where the head reserves 0 for the
            background), removed from its outputs.
    """

    def __init__(self, net: nn.Module, label_offset: int) -> None:
        super().__init__()
        self.net = net
        self.label_offset = label_offset

    def forward(
        self, images: torch.Tensor, targets: Sequence[Mapping[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Losses (training) or detections (eval); boxes are xyxy pixels of the `[S, S]` input."""
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            shifted = []
            for t in targets:
                boxes = t["boxes"].float()
                sides = boxes[:, 2:] - boxes[:, :2]
                keep = (sides >= MIN_TARGET_SIDE).all(dim=1)
                shifted.append({"boxes": boxes[keep], "labels": t["labels"][keep].long() + self.label_offset})
            return self.net(list(images), shifted)
        outputs = self.net(list(images))
        result = []
        for out in outputs:
            labels = out["labels"] - self.label_offset
            keep = labels >= 0
            result.append({"boxes": out["boxes"][keep], "scores": out["scores"][keep], "labels": labels[keep]})
        return result

    @contextmanager
    def at_size(self, size: int) -> Iterator[None]:
        """Run at a `size x size` input for the duration (multi-scale training and test-time augmentation).

        torchvision's detectors resize every input to their own side inside (`GeneralizedRCNNTransform`, set to S at
        build time): its sides are set to `size` and restored afterwards, so the network really sees `size` pixels
        and its boxes come back in them. mmdet's detectors take any side as it is (nothing to do).
        """
        transform = getattr(self.net, "transform", None)
        if transform is None or not hasattr(transform, "min_size"):
            yield
            return
        saved = (transform.min_size, transform.max_size, transform.fixed_size)
        transform.min_size, transform.max_size = (int(size),), int(size)
        if transform.fixed_size is not None:
            transform.fixed_size = (int(size), int(size))
        try:
            yield
        finally:
            transform.min_size, transform.max_size, transform.fixed_size = saved

    def enter_final_stage(self) -> None:
        """The last epochs, once mosaic and mixup are off: switch on what the detector's own recipe adds there
        (YOLOX's L1 box loss, see `MmdetDetector`); nothing for the torchvision detectors."""

    def set_postprocess(self, score_thresh: float, nms_thresh: float, detections_per_img: int) -> None:
        """Set the inference score floor, NMS IoU and per-image cap of the wrapped head."""
        # Faster R-CNN keeps these on its RoI heads; RetinaNet, FCOS and SSD on the model itself, under the same names.
        owner = getattr(self.net, "roi_heads", self.net)
        owner.score_thresh = score_thresh
        owner.nms_thresh = nms_thresh
        owner.detections_per_img = detections_per_img
