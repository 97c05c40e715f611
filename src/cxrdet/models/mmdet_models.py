"""mmdetection detectors behind cxrdet's `Detector` contract (imported only when a config names an mmdet model).

A config whose `model.type` is an mmdetection detector class (`RetinaNet`, `FasterRCNN`, `CascadeRCNN`, `ATSS`,
`YOLOV3`, `SingleStageDetector`, `MaskRCNN`, ...) holds mmdet's own model dict in its `model` section, usually
inherited from mmdet's config files (`_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'`).
`create_mmdet_detector` builds it with `MODELS.build` and wraps it in `MmdetDetector`, which speaks the same batch
contract as the torchvision detectors (see `cxrdet.models.factory`): Lightning trains it, mmengine's Runner is never
used. What the wrapper adapts:

- images: `[B, 3, S, S]` RGB in [0, 1] go through the model's own `data_preprocessor`, whose 0-255 mean and std are
  divided by 255 at build time (and whose channel flip is set so that the model sees the channel order its config
  expects from mmcv's BGR loading);
- targets: xyxy boxes in pixels of the input and 0-based labels become `DetDataSample.gt_instances` (mmdet labels are
  0-based too: no offset); Mask R-CNN gets box-filled masks (one rectangle polygon per box), as the RSNA Mask R-CNN
  kernels trained it;
- outputs: mmdet's loss dict is reduced as mmengine's `parse_losses` does (multi-level lists summed, entries without
  `loss` in the name, such as `acc`, dropped); predictions come back as `{'boxes', 'scores', 'labels'}`.

Weights: a `Pretrained` `init_cfg` on the model or its backbone (a local file, an http(s) URL or
`torchvision://<name>`) is taken out of the dict before building and loaded by cxrdet with `weights_only=True`,
never by mmengine's checkpoint loader; trained models are Lightning checkpoints, loaded as every cxrdet model is.

`CxrTimmBackbone` registers any timm feature extractor in mmdet's `MODELS` registry, so mmdet necks and heads can sit
on timm bodies (MobileNet-V3, EfficientNet, ConvNeXt, ...).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torchvision
from mmdet.models.detectors import BaseDetector
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.mask import PolygonMasks
from mmdet.utils import register_all_modules
from mmengine.config import ConfigDict
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import nn

from cxrdet.config import to_dict
from cxrdet.errors import ConfigError
from cxrdet.models.backbones import create_timm_body, load_checkpoint, load_fitting_state
from cxrdet.models.detector import MIN_TARGET_SIDE, Detector

# mmdet 3.3's SimOTA (YOLOX) and dynamic soft-label (RTMDet) assigners call the deprecated
# `torch.cuda.amp.autocast(enabled=False)` at every training step (reported in open-mmlab/mmdetection#11892's log;
# unfixed in 3.3.0): the warning says nothing a cxrdet user can act on.
warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated",
                        category=FutureWarning, module=r"mmdet\.")
# mmdet 3.3 calls `torch.meshgrid` without `indexing` (its point generator, DINO's deformable layers), which makes torch
# warn on every forward; the fix (open-mmlab/mmdetection#8090) was never merged. The default it relies on ('ij') is
# what it wants. The warning is raised from torch's own module, so it is matched by its text.
warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release, it will be required to pass the "
                        r"indexing argument", category=UserWarning)

# Sections of an mmdet model dict that hold a detection head's `num_classes` (the RPN's single class is not ours).
NOT_CLASS_HEADS: frozenset[str] = frozenset({"rpn_head"})
# Where a `Pretrained` init_cfg may sit: the whole detector ('') or its backbone.
PRETRAINED_OWNERS: tuple[str, ...] = ("", "backbone")


@MODELS.register_module()
class CxrTimmBackbone(BaseModule):
    """A timm feature extractor as an mmdet backbone: a tuple of feature maps at `strides`, finest first.

    Args:
        name: timm model name, e.g. `'mobilenetv3_small_100'`, `'efficientnet_b3'`, `'convnext_tiny'`.
        strides: Feature strides to return (e.g. `(4, 8, 16, 32)`, like mmdet's ResNet `out_indices=(0, 1, 2, 3)`).
            The neck's `in_channels` must list the channels of these maps (`out_channels`).
        pretrained: Load timm's pretrained weights (needs internet, or a cache).
        checkpoint: A local weights file for the body (implies pretrained, no download).
        freeze_bn: Replace BatchNorm by frozen BatchNorm.
        timm_kwargs: Passed to `timm.create_model`.
        init_cfg: mmengine's init config; None: the body keeps timm's initialisation (or the loaded weights).
    """

    def __init__(self, name: str, strides: Sequence[int] = (4, 8, 16, 32), pretrained: bool = False,
                 checkpoint: str | None = None, freeze_bn: bool = False, timm_kwargs: Mapping[str, Any] | None = None,
                 init_cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.name = name
        self.body, self.levels = create_timm_body(name, strides, pretrained, checkpoint, freeze_bn, timm_kwargs)
        self.strides = tuple(strides)
        self.out_channels = [self.body.feature_info.channels()[i] for i in self.levels]

    def init_weights(self) -> None:
        """Keep timm's initialisation or loaded weights (mmengine would otherwise re-initialise timm submodules that
        happen to define `init_weights`)."""
        self._is_init = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Normalised images `[B, 3, H, W]` -> feature maps at `strides`, finest first."""
        feats = self.body(x)
        return tuple(feats[i] for i in self.levels)


def parse_losses(losses: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """mmdet's loss dict -> `{name: scalar}` of the entries that are losses, as mmengine's `parse_losses` sums them.

    Tensors are averaged, lists of tensors (one per pyramid level) summed after averaging; entries without `loss` in
    the name (accuracies) are dropped.
    """
    out = {}
    for name, value in losses.items():
        if "loss" not in name:
            continue
        if isinstance(value, torch.Tensor):
            out[name] = value.mean()
        elif isinstance(value, Sequence) and all(isinstance(v, torch.Tensor) for v in value):
            out[name] = sum(v.mean() for v in value)
        else:
            raise TypeError(f"mmdet loss {name!r} is {type(value).__name__}, not a tensor or a list of tensors")
    return out


def box_masks(boxes: torch.Tensor, height: int, width: int) -> PolygonMasks:
    """Box-filled instance masks: one rectangle polygon per box (xyxy, pixels of the `height x width` input)."""
    corners = boxes.detach().cpu().double().numpy()
    polygons = [[np.array([x1, y1, x2, y1, x2, y2, x1, y2])] for x1, y1, x2, y2 in corners]
    return PolygonMasks(polygons, height, width)


class MmdetDetector(Detector):
    """An mmdetection detector behind the cxrdet batch contract (see `cxrdet.models.factory`).

    Args:
        net: A built mmdet detector (`BaseDetector`) whose data preprocessor takes [0, 1] RGB inputs
            (`create_mmdet_detector` sets that up).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net, label_offset=0)
        self.with_mask = bool(getattr(net, "with_mask", False))

    def data_samples(self, images: torch.Tensor, targets: Sequence[Mapping[str, torch.Tensor]] | None
                     ) -> list[DetDataSample]:
        """One `DetDataSample` per image; with targets, `gt_instances` holds the boxes (xyxy, pixels of the input,
        slivers thinner than `MIN_TARGET_SIDE` dropped), the 0-based labels and, for mask heads, box-filled masks."""
        height, width = images.shape[-2:]
        # The inputs are the images: no resize happened, so rescaling to the "original" shape is the identity.
        meta = {"img_shape": (height, width), "ori_shape": (height, width), "scale_factor": (1.0, 1.0)}
        samples = []
        for i in range(len(images)):
            sample = DetDataSample(metainfo=meta)
            if targets is not None:
                boxes = targets[i]["boxes"].float()
                keep = ((boxes[:, 2:] - boxes[:, :2]) >= MIN_TARGET_SIDE).all(dim=1)
                gt = InstanceData(bboxes=boxes[keep], labels=targets[i]["labels"][keep].long())
                if self.with_mask:
                    gt.masks = box_masks(boxes[keep], height, width)
                sample.gt_instances = gt
            samples.append(sample)
        return samples

    def forward(
        self, images: torch.Tensor, targets: Sequence[Mapping[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Losses (training) or detections (eval); boxes are xyxy pixels of the `[S, S]` input."""
        if self.training and targets is None:
            raise ValueError("training needs targets")
        pre = self.net.data_preprocessor
        # Lightning moves modules with `_apply`, which skips mmengine's `to()` that tracks the preprocessor's device.
        if pre.device != images.device:
            pre.to(images.device)
        data = pre({"inputs": images, "data_samples": self.data_samples(images, targets if self.training else None)},
                   training=self.training)
        if self.training:
            return parse_losses(self.net.loss(data["inputs"], data["data_samples"]))
        results = self.net.predict(data["inputs"], data["data_samples"], rescale=False)
        return [{"boxes": r.pred_instances.bboxes, "scores": r.pred_instances.scores,
                 "labels": r.pred_instances.labels.long()} for r in results]

    def enter_final_stage(self) -> None:
        """YOLOX adds an L1 loss on the box offsets once mosaic and mixup are off, as mmdet's `YOLOXModeSwitchHook`
        does (`bbox_head.use_l1 = True`); other heads have no such switch."""
        head = getattr(self.net, "bbox_head", None)
        if head is not None and hasattr(head, "use_l1"):
            head.use_l1 = True

    def set_postprocess(self, score_thresh: float, nms_thresh: float, detections_per_img: int) -> None:
        """Set the score floor, NMS IoU and per-image cap in the final head's `test_cfg` (the RoI head of a two-stage
        detector, else the dense head)."""
        head = getattr(self.net, "roi_head", None) or getattr(self.net, "bbox_head", None)
        test_cfg = getattr(head, "test_cfg", None)
        if test_cfg is None:
            raise ConfigError(f"{type(self.net).__name__}: no head test_cfg to set the score floor and cap in")
        test_cfg["score_thr"] = score_thresh
        test_cfg["max_per_img"] = detections_per_img
        if test_cfg.get("nms") is not None:  # DETR-like heads have no NMS
            test_cfg["nms"]["iou_threshold"] = nms_thresh


def _set_num_classes(node: Any, num_classes: int) -> None:
    """Set every `num_classes` of the detection heads (a list of heads in Cascade R-CNN, the mask head, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "num_classes":
                node[key] = num_classes
            elif key not in NOT_CLASS_HEADS:
                _set_num_classes(value, num_classes)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _set_num_classes(value, num_classes)


def _take_pretrained(model_cfg: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Remove the `Pretrained` init_cfgs from the model dict (mmengine must not load them) and return their
    `(checkpoint, prefix)` by owner (`''`: the whole detector, `'backbone'`); `prefix` is the init_cfg's key prefix
    to read (RTMDet's CSPNeXt: `'backbone.'` of an ImageNet classifier's checkpoint), '' for all keys.

    Raises:
        ConfigError: A `Pretrained` init_cfg sits elsewhere.
    """
    found: dict[str, tuple[str, str]] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            init = node.get("init_cfg")
            inits = init if isinstance(init, list) else [init]
            pretrained = [c for c in inits if isinstance(c, Mapping) and c.get("type") == "Pretrained"]
            if pretrained:
                if where not in PRETRAINED_OWNERS:
                    raise ConfigError(f"model.{where}.init_cfg: a 'Pretrained' init_cfg is taken only on the model or "
                                      "its backbone (cxrdet loads it, not mmengine)")
                found[where] = (str(pretrained[0]["checkpoint"]), str(pretrained[0].get("prefix") or ""))
                rest = [c for c in inits if c not in pretrained and c is not None]
                node["init_cfg"] = rest or None
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else key)
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(model_cfg, "")
    return found


def load_pretrained(module: nn.Module, source: str, what: str, prefix: str = "") -> None:
    """Load weights into `module`, keys matched by name and shape, through cxrdet's loader (`weights_only=True`).

    Args:
        module: The detector or its backbone.
        source: A local file, an http(s) URL (downloaded into torch's hub cache) or `torchvision://<model name>`
            (torchvision's ImageNet weights, IMAGENET1K_V1 as mmdet's configs were trained from).
        what: The config key, for error messages.
        prefix: Read only the tensors under this key prefix, dropping it (mmdet's `Pretrained` `prefix`).

    Raises:
        ConfigError: Unknown scheme, unknown torchvision model, nothing under the prefix, or nothing fits.
    """
    if source.startswith("torchvision://"):
        name = source.removeprefix("torchvision://")
        try:
            weights = torchvision.models.get_model_weights(name)
        except ValueError as err:
            raise ConfigError(f"{what}={source!r}: {err}") from err
        source = (getattr(weights, "IMAGENET1K_V1", None) or weights.DEFAULT).url
    if source.startswith(("http://", "https://")):
        state = torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True)
        load_fitting_state(module, state, f"{what}={source!r}", prefix)
    elif "://" in source:
        raise ConfigError(f"{what}={source!r}: expected a local file, an http(s) URL or torchvision://<name>")
    else:
        load_checkpoint(module, source, what, prefix)


def _adapt_preprocessor(model_cfg: dict[str, Any]) -> None:
    """Make the data preprocessor take cxrdet's inputs: RGB in [0, 1] (mmdet configs expect mmcv's BGR in 0-255)."""
    pre = model_cfg.setdefault("data_preprocessor", {"type": "DetDataPreprocessor"})
    mean = pre.get("mean") or [0.0, 0.0, 0.0]
    std = pre.get("std") or [1.0, 1.0, 1.0]
    pre["mean"] = [m / 255.0 for m in mean]
    pre["std"] = [s / 255.0 for s in std]
    # mmcv loads BGR, so a config that flips channels (either flag) wants RGB, which is what cxrdet gives; one that
    # does not wants BGR, so cxrdet's RGB must be flipped. The mean and std are in the order the model wants.
    wants_rgb = bool(pre.get("bgr_to_rgb") or pre.get("rgb_to_bgr"))
    pre["bgr_to_rgb"] = False
    pre["rgb_to_bgr"] = not wants_rgb


def _set_input_size(model_cfg: dict[str, Any], size: int) -> None:
    """Put the input side S where mmdet needs it: SSD's prior sizes are fractions of `anchor_generator.input_size`."""
    anchors = (model_cfg.get("bbox_head") or {}).get("anchor_generator") or {}
    if "input_size" in anchors:
        anchors["input_size"] = size


def _check_timm_neck(net: nn.Module) -> None:
    """A neck on a `CxrTimmBackbone` must take its channels (a mismatch would fail deep inside the first forward)."""
    backbone, neck = getattr(net, "backbone", None), getattr(net, "neck", None)
    if not isinstance(backbone, CxrTimmBackbone) or neck is None:
        return
    wanted = getattr(neck, "in_channels", None)
    if isinstance(wanted, (list, tuple)) and list(wanted) != backbone.out_channels:
        raise ConfigError(f"model.neck.in_channels={list(wanted)}: the timm backbone {backbone.name!r} gives "
                          f"{backbone.out_channels} channels at strides {list(backbone.strides)}")


def _check_queries(model_cfg: Mapping[str, Any], size: int) -> None:
    """A two-stage DETR (DINO) picks its `num_queries` best encoder tokens: the S x S input must have that many.

    The tokens are the positions of every feature level the encoder reads: for a backbone at strides 8, 16, 32 and
    one extra level, `ceil(S / 8)^2 + ceil(S / 16)^2 + ...`; torch's top-k would fail deep in the first step.
    """
    queries = model_cfg.get("num_queries")
    if not queries or not model_cfg.get("as_two_stage"):
        return
    levels = int((model_cfg.get("neck") or {}).get("num_outs") or 4)
    tokens = sum(math.ceil(size / 2 ** (3 + i)) ** 2 for i in range(levels))
    if queries > tokens:
        raise ConfigError(f"model.num_queries={queries}: a {size} px input gives {tokens} encoder tokens over {levels} "
                          f"levels (strides 8 to {2 ** (2 + levels)}); expected at most {tokens} queries, or a larger "
                          "data.size")


def is_mmdet_detector(name: Any) -> bool:
    """Whether `name` is a detector class in mmdet's model registry (the `model.type` of an mmdet config)."""
    register_all_modules(init_default_scope=False)
    cls = MODELS.get(name) if isinstance(name, str) else None
    return isinstance(cls, type) and issubclass(cls, BaseDetector)


def create_mmdet_detector(model_cfg: Mapping[str, Any], num_classes: int, size: int) -> MmdetDetector:
    """Build the mmdet detector a config's `model` section describes, for `num_classes` classes at S = `size`.

    The dict is mmdet's (copied, never changed in place); cxrdet sets the heads' `num_classes`, SSD's input size,
    the preprocessor's scale and channel order, and takes `Pretrained` init_cfgs over (see the module docstring).

    Raises:
        ConfigError: The dict does not build (unknown type, bad keyword), a Pretrained init_cfg out of place, or a
            neck that does not fit the timm backbone.
    """
    register_all_modules(init_default_scope=False)
    cfg = to_dict(model_cfg)  # a plain copy: the caller's config is left as it was
    _set_num_classes(cfg, num_classes)
    _set_input_size(cfg, size)
    _check_queries(cfg, size)
    _adapt_preprocessor(cfg)
    pretrained = _take_pretrained(cfg)
    try:
        with warnings.catch_warnings():
            # mmdet's modules warn about their own deprecated arguments (e.g. SSDVGG's input_size) at every build.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"mmdet\.")
            net = MODELS.build(ConfigDict(cfg))  # heads read their train_cfg / test_cfg by attribute
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"model ({cfg.get('type')}): mmdet cannot build it: {err}") from err
    _check_timm_neck(net)
    # mmdet 3.3's dense-head prediction asks for `loss_cls`, which SSDHead never sets (open-mmlab/mmdetection#11780);
    # SSD computes its loss without one, so None is what the check needs.
    head = getattr(net, "bbox_head", None)
    if head is not None and not hasattr(head, "loss_cls"):
        head.loss_cls = None
    # mmengine logs every parameter's initialisation at INFO level (hundreds of lines per build): keep warnings only.
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        net.init_weights()
    finally:
        logger.setLevel(level)
    for owner, (source, prefix) in pretrained.items():
        module = net.get_submodule(owner) if owner else net
        load_pretrained(module, source, f"model.{owner + '.' if owner else ''}init_cfg.checkpoint", prefix)
    return MmdetDetector(net)

