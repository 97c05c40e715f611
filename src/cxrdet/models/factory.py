"""Detector factory: tiny registered builders and one public `create_detector(cfg)` (timm's `_registry.py` style).

Every builder turns a config's `model` section into a torchvision detector wrapped in `Detector`, the one interface
the training and prediction code sees (the contract is in `cxrdet.models.detector`).

torchvision's two-stage and SSD heads reserve label 0 for the background, its sigmoid heads (RetinaNet, FCOS) do
not: each builder states its `label_offset`, and `Detector` adds and removes it.

Adding a detector is one decorated function:

    @register_detector
    def my_detector(model_cfg, num_classes, size): ...
        return Detector(net, label_offset=0)

mmdetection backend: a `model.type` that is not a registered builder but an mmdet detector class (`RetinaNet`,
`FasterRCNN`, `CascadeRCNN`, `ATSS`, `YOLOV3`, `SingleStageDetector`, `MaskRCNN`, ...) makes the whole `model` section
mmdet's model dict (inherited from mmdet's own config files, `_base_ = 'mmdet::...'`), built by
`cxrdet.models.mmdet_models.create_mmdet_detector` behind the same contract. mmdet is imported only then, so cxrdet
works without it (`make mmdet` installs it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.ssd import SSD, ssd300_vgg16
from torchvision.models.detection.ssdlite import ssdlite320_mobilenet_v3_large
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from cxrdet.errors import ConfigError
from cxrdet.models.backbones import create_backbone
from cxrdet.models.detector import Detector
from cxrdet.registry import Registry
# Box regression losses torchvision's RetinaNet head implements (`det_utils._box_loss`).
BOX_LOSSES: tuple[str, ...] = ("l1", "smooth_l1", "giou", "ciou", "diou")


DetectorBuilder = Callable[[Mapping[str, Any], int, int], Detector]
# Builders by name (the `model.type` of a config).
DETECTORS: Registry[DetectorBuilder] = Registry("detector", key="model.type")
register_detector = DETECTORS.register
list_detectors = DETECTORS.names


def create_detector(cfg: Mapping[str, Any]) -> Detector:
    """Build the detector a resolved config describes.

    Reads `model` (type, backbone, anchors, head keywords), `data.size` (the square input side S),
    `data.classes` and `predict` (score floor, NMS IoU and per-image cap, used by validation and prediction alike).

    Raises:
        ConfigError: Unknown `model.type`, a backbone problem, or a keyword the detector does not take.
    """
    model_cfg = cfg["model"]
    name = model_cfg.get("type")
    builder = DETECTORS.get(name) if name in DETECTORS else _mmdet_builder(name)
    size = int(cfg["data"]["size"])
    num_classes = len(cfg["data"]["classes"])
    try:
        detector = builder(model_cfg, num_classes, size)
    except TypeError as err:
        raise ConfigError(f"model ({name}): {err}") from err
    pred = cfg["predict"]
    detector.set_postprocess(float(pred["score_floor"]), float(pred.get("nms_iou", 0.5)), int(pred["max_per_image"]))
    return detector


def _mmdet_builder(name: Any) -> DetectorBuilder:
    """The mmdet builder for an mmdet detector class name (see the module docstring).

    Raises:
        ConfigError: mmdet is not installed, or `name` is neither a registered builder nor an mmdet detector.
    """
    unknown = (f"{DETECTORS.unknown(name)} or an mmdet detector type (e.g. 'RetinaNet', 'FasterRCNN', "
               "'CascadeRCNN')")
    try:
        from cxrdet.models import mmdet_models
    except ImportError as err:
        raise ConfigError(f"{unknown}; mmdet types need the mmdetection backend, which is not installed ({err}): "
                          "run `make mmdet`") from err
    if not mmdet_models.is_mmdet_detector(name):
        raise ConfigError(unknown)
    return mmdet_models.create_mmdet_detector


def _anchor_sizes(model_cfg: Mapping[str, Any], n_levels: int, base: Sequence[int], per_octave: int
                  ) -> tuple[tuple[int, ...], ...]:
    """Anchor sizes per pyramid level: `model.anchor_sizes` (one base size per level) or `base`, each with
    `per_octave` scales 2**(i / per_octave)."""
    sizes = model_cfg.get("anchor_sizes") or base
    if len(sizes) != n_levels:
        raise ConfigError(f"model.anchor_sizes has {len(sizes)} levels; this detector has {n_levels} pyramid levels")
    return tuple(tuple(int(round(s * 2 ** (i / per_octave))) for i in range(per_octave)) for s in sizes)


# Keywords torchvision detectors pass on to their GeneralizedRCNNTransform, which swallows unknown ones silently.
_TRANSFORM_KEYWORDS = frozenset({"size_divisible", "fixed_size"})


def _head_kwargs(model_cfg: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """`model.head`, checked against the detector's own keywords (a typo would otherwise vanish into **kwargs)."""
    head = dict(model_cfg.get("head") or {})
    params = inspect.signature(cls.__init__).parameters
    known = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} | _TRANSFORM_KEYWORDS
    unknown = sorted(set(head) - known)
    if unknown:
        raise ConfigError(f"model.head: unknown keyword(s) {unknown} for torchvision {cls.__name__}; expected some "
                          f"of {sorted(known - {'self', 'backbone', 'num_classes'})}")
    return head


def _transform_kwargs(backbone: nn.Module, size: int) -> dict[str, Any]:
    """Inputs are already S x S: make torchvision's own resize a no-op and normalise with the backbone's stats."""
    return dict(min_size=size, max_size=size, image_mean=backbone.image_mean, image_std=backbone.image_std)


def _group_norm(channels: int, what: str) -> Callable[[int], nn.Module]:
    """GroupNorm with 32 groups, as torchvision's v2 heads use; the channels must split into 32 groups."""
    if channels % 32:
        raise ConfigError(f"{what} normalises in 32 groups: model.backbone.fpn_channels must be a multiple of 32, "
                          f"got {channels}")
    return partial(nn.GroupNorm, 32)


@register_detector
def retinanet(model_cfg: Mapping[str, Any], num_classes: int, size: int) -> Detector:
    """RetinaNet on P3-P7 (strides 8-128), 3 scales x 3 ratios per location; sigmoid head, no background label.

    `model.head_norm='group'` and `model.box_loss='giou'` give torchvision's v2 head (GroupNorm in the head towers,
    GIoU box loss), which trains much faster from scratch than the v1 head (no normalisation, L1 loss).
    """
    backbone = create_backbone(model_cfg["backbone"], strides=(8, 16, 32), extra="p6p7")
    sizes = _anchor_sizes(model_cfg, 5, (32, 64, 128, 256, 512), per_octave=3)
    ratios = (tuple(model_cfg.get("anchor_ratios", (0.5, 1.0, 2.0))),) * len(sizes)
    anchors = AnchorGenerator(sizes, ratios)
    head_norm = model_cfg.get("head_norm")
    if head_norm not in (None, "group"):
        raise ConfigError(f"model.head_norm={head_norm!r}: expected None or 'group'")
    norm = _group_norm(backbone.out_channels, "model.head_norm='group'") if head_norm else None
    head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes, norm_layer=norm)
    box_loss = model_cfg.get("box_loss", "l1")
    if box_loss not in BOX_LOSSES:
        raise ConfigError(f"model.box_loss={box_loss!r}: expected one of {list(BOX_LOSSES)}")
    # torchvision's own v2 builder selects the loss through this attribute; there is no constructor argument.
    head.regression_head._loss_type = box_loss
    net = RetinaNet(backbone, num_classes, anchor_generator=anchors, head=head, **_transform_kwargs(backbone, size),
                    **_head_kwargs(model_cfg, RetinaNet))
    return Detector(net, label_offset=0)


@register_detector
def fcos(model_cfg: Mapping[str, Any], num_classes: int, size: int) -> Detector:
    """FCOS on P3-P7, anchor-free (one 'anchor' per location sets the level's scale); no background label."""
    backbone = create_backbone(model_cfg["backbone"], strides=(8, 16, 32), extra="p6p7")
    _group_norm(backbone.out_channels, "FCOS's head")
    sizes = _anchor_sizes(model_cfg, 5, (8, 16, 32, 64, 128), per_octave=1)
    net = FCOS(backbone, num_classes, anchor_generator=AnchorGenerator(sizes, ((1.0,),) * len(sizes)),
               **_transform_kwargs(backbone, size), **_head_kwargs(model_cfg, FCOS))
    return Detector(net, label_offset=0)


@register_detector
def faster_rcnn(model_cfg: Mapping[str, Any], num_classes: int, size: int) -> Detector:
    """Faster R-CNN with an FPN on strides 4-32 (+ pool level), RoIAlign on the four body levels."""
    backbone = create_backbone(model_cfg["backbone"], strides=(4, 8, 16, 32), extra="pool")
    sizes = _anchor_sizes(model_cfg, 5, (32, 64, 128, 256, 512), per_octave=1)
    ratios = (tuple(model_cfg.get("anchor_ratios", (0.5, 1.0, 2.0))),) * len(sizes)
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    net = FasterRCNN(backbone, num_classes + 1, rpn_anchor_generator=AnchorGenerator(sizes, ratios),
                     box_roi_pool=roi_pool, **_transform_kwargs(backbone, size),
                     **_head_kwargs(model_cfg, FasterRCNN))
    return Detector(net, label_offset=1)


def _ssd_at_size(net: nn.Module, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    """Run a torchvision SSD at S x S instead of its builder's fixed 300/320: a fixed-size transform (the default
    boxes are relative, so they follow the feature-map sizes)."""
    net.transform = GeneralizedRCNNTransform(size, size, list(mean), list(std), size_divisible=1,
                                             fixed_size=(size, size))


@register_detector
def efficientdet(model_cfg: Mapping[str, Any], num_classes: int, size: int) -> Detector:
    """EfficientDet (BiFPN on an EfficientNet body) through effdet: `model.name` picks effdet's model config
    (`tf_efficientdet_d0`, ...); see `cxrdet.models.effdet_models`."""
    from cxrdet.models.effdet_models import create_effdet_detector  # effdet is imported only for this detector

    return create_effdet_detector(model_cfg, num_classes, size)


@register_detector
def ssd_vgg16(model_cfg: Mapping[str, Any], num_classes: int, size: int) -> Detector:
    """SSD with torchvision's VGG-16 extractor (`ssd300_vgg16`), run at S x S (S >= 268 for its last maps)."""
    backbone = model_cfg.get("backbone", {})
    weights_backbone = "DEFAULT" if backbone.get("pretrained", False) else None
    net = ssd300_vgg16(weights=None, weights_backbone=weights_backbone, num_classes=num_classes + 1,
                       trainable_backbone_layers=backbone.get("trainable_layers"), **_head_kwargs(model_cfg, SSD))
    # The builder's `steps` place default-box centres for a 300 px input; without them the centres follow the map.
    old = net.anchor_generator
    net.anchor_generator = DefaultBoxGenerator([list(r) for r in old.aspect_ratios], scales=old.scales, steps=None,
                                               clip=old.clip)
    _ssd_at_size(net, size, net.transform.image_mean, net.transform.image_std)
    return Detector(net, label_offset=1)


@register_detector
def ssdlite_mobilenet_v3(model_cfg: Mapping[str, Any], num_classes: int, size: int) -> Detector:
    """SSDlite with torchvision's MobileNet-V3-Large extractor (`ssdlite320_mobilenet_v3_large`), run at S x S."""
    backbone = model_cfg.get("backbone", {})
    weights_backbone = "DEFAULT" if backbone.get("pretrained", False) else None
    net = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=weights_backbone, num_classes=num_classes + 1,
                                        trainable_backbone_layers=backbone.get("trainable_layers"))
    for key, value in model_cfg.get("head", {}).items():
        if not hasattr(net, key):
            raise ConfigError(f"model.head.{key}: SSDlite has no such setting")
        setattr(net, key, value)
    _ssd_at_size(net, size, net.transform.image_mean, net.transform.image_std)
    return Detector(net, label_offset=1)
