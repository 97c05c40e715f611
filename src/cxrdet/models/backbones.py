"""Feature-pyramid backbones for torchvision's detection heads (RetinaNet, Faster R-CNN, FCOS).

A backbone takes a normalised image batch `[B, 3, H, W]` and returns an `OrderedDict[str, Tensor]` of feature maps,
finest first, all with `out_channels` channels; it also says which `image_mean`/`image_std` its weights expect.

Two builders are registered (`model.backbone.type` in a config):

- `timm_fpn`: any timm model with `features_only=True` (ResNet, EfficientNet, ConvNeXt, DenseNet, ...) plus a
  torchvision `FeaturePyramidNetwork`. The detector asks for feature strides (8/16/32 for one-stage heads, 4/8/16/32
  for Faster R-CNN), so one config key, the timm model name, swaps the backbone.
- `torchvision_resnet_fpn`: torchvision's ResNet + FPN (`resnet_fpn_backbone`), the reference ResNet-50 FPN.

Pretrained weights: `pretrained=True` downloads the library's ImageNet weights; `checkpoint=<path>` loads a local
file instead (machines without internet).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from cxrdet.errors import ConfigError
from cxrdet.registry import Registry

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

BackboneBuilder = Callable[..., nn.Module]
# Builders by name (the `model.backbone.type` of a config).
BACKBONES: Registry[BackboneBuilder] = Registry("backbone", key="model.backbone.type")
register_backbone = BACKBONES.register
list_backbones = BACKBONES.names


def create_backbone(cfg: Mapping[str, Any], strides: Sequence[int], extra: str | None) -> nn.Module:
    """Build the backbone a config's `model.backbone` section describes.

    Args:
        cfg: `model.backbone`: `type` (a registered builder) plus that builder's keyword arguments, and optionally
            `init_from=dict(checkpoint=...)`: a trained classifier whose weights start the body
            (`cxrdet.models.transfer`).
        strides: Feature strides the detector head needs from the body, finest first (e.g. `(8, 16, 32)`).
        extra: Extra FPN levels above the coarsest: `'p6p7'` (RetinaNet, FCOS), `'pool'` (Faster R-CNN) or None.

    Returns:
        A module with attributes `out_channels`, `image_mean` and `image_std`.

    Raises:
        ConfigError: Unknown type, or a keyword the builder does not take.
    """
    kwargs = dict(cfg)
    name = kwargs.pop("type", None)
    init_from = kwargs.pop("init_from", None)
    builder = BACKBONES.get(name)
    try:
        backbone = builder(strides=tuple(strides), extra=extra, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model.backbone ({name}): {err}") from err
    if init_from:
        from cxrdet.models.transfer import init_from_classifier  # late: it reads Lightning checkpoints

        init_from_classifier(backbone, init_from)
    return backbone


def _extra_block(extra: str | None, channels: int) -> ExtraFPNBlock | None:
    """The FPN block that adds levels above the coarsest feature map."""
    blocks: dict[str | None, Callable[[], ExtraFPNBlock | None]] = {
        "p6p7": lambda: LastLevelP6P7(channels, channels),
        "pool": LastLevelMaxPool,
        None: lambda: None,
    }
    if extra not in blocks:
        raise ConfigError(f"extra FPN block {extra!r}: expected one of {list(blocks)}")
    return blocks[extra]()


def load_checkpoint(module: nn.Module, path: str | Path, what: str = "model.backbone.checkpoint", prefix: str = ""
                    ) -> None:
    """Load a local weights file into `module`, ignoring keys that do not fit (a classifier head, say).

    The file may hold a bare state dict or one under `state_dict` / `model`; a `module.` or `model.` prefix is
    dropped. It is read with `weights_only=True`: tensors and plain containers, never arbitrary objects.

    Args:
        module: The module to fill.
        path: The weights file.
        what: The config key naming the file, for error messages.
        prefix: Only the tensors under this key prefix are read, the prefix dropped (mmdet's `Pretrained`
            `prefix='backbone.'` reads a backbone out of a whole classifier's or detector's checkpoint).

    Raises:
        ConfigError: The file is missing or none of its tensors fit the module.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}={str(path)!r}: file not found")
    load_fitting_state(module, torch.load(path, map_location="cpu", weights_only=True), f"{what}={str(path)!r}",
                       prefix)


def load_fitting_state(module: nn.Module, state: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Copy the tensors of `state` whose name (after dropping a `module.` / `model.` prefix, or from under a
    `state_dict` / `model` key) and shape match `module`'s; the others are ignored. With `prefix`, only the tensors
    whose (unwrapped) name starts with it are read, the prefix dropped.

    Raises:
        ConfigError: None of the tensors fit (`source` names where they came from).
    """
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if prefix:
        unwrapped = {}
        for key, value in state.items():
            for wrapper in ("", "module.", "model."):
                name = key.removeprefix(wrapper) if wrapper else key
                if name.startswith(prefix):
                    unwrapped[name.removeprefix(prefix)] = value
                    break
        if not unwrapped:
            raise ConfigError(f"{source}: no tensor under the prefix {prefix!r} (e.g. {next(iter(state), '')!r})")
        state = unwrapped
    own = module.state_dict()
    fitting = {}
    for key, value in state.items():
        for prefix in ("", "module.", "model."):
            name = key.removeprefix(prefix) if prefix else key
            if name in own and own[name].shape == value.shape:
                fitting[name] = value
                break
    if not fitting:
        raise ConfigError(f"{source}: no tensor matches the module's parameters (e.g. {next(iter(own), '')!r}); is "
                          "it a checkpoint of the same architecture?")
    module.load_state_dict(fitting, strict=False)


def create_timm_body(name: str, strides: Sequence[int], pretrained: bool = False, checkpoint: str | None = None,
                     freeze_bn: bool = False, timm_kwargs: Mapping[str, Any] | None = None
                     ) -> tuple[nn.Module, list[int]]:
    """A timm feature extractor (`features_only=True`) and the indices of its outputs at `strides`.

    Args:
        name: timm model name, e.g. `'resnet50'`, `'efficientnet_b3'`, `'mobilenetv3_small_100'`.
        strides: Feature strides wanted, finest first; each must be one of the body's reductions.
        pretrained: Load timm's pretrained weights (needs internet, or a cache).
        checkpoint: A local weights file for the body (implies pretrained, no download).
        freeze_bn: Replace BatchNorm by frozen BatchNorm (for batches too small for statistics).
        timm_kwargs: Passed to `timm.create_model` (e.g. `drop_path_rate`).

    Raises:
        ConfigError: Unknown model, missing checkpoint file, or a stride the body does not have.
    """
    kwargs = dict(timm_kwargs or {})
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise ConfigError(f"model.backbone.checkpoint={checkpoint!r}: file not found")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(checkpoint))
    try:
        body = timm.create_model(name, features_only=True, pretrained=pretrained or checkpoint is not None, **kwargs)
    except RuntimeError as err:  # timm's "Unknown model" and "features_only not implemented" are RuntimeErrors
        raise ConfigError(f"model.backbone.name={name!r}: {err}") from err
    if freeze_bn:
        body = timm.layers.freeze_batch_norm_2d(body)
    reductions = body.feature_info.reduction()
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise ConfigError(f"model.backbone.name={name!r} has feature strides {reductions}; the detector needs "
                          f"{list(strides)} (missing {missing})")
    return body, [reductions.index(s) for s in strides]


class TimmFpnBackbone(nn.Module):
    """A timm feature extractor (`features_only=True`) followed by a torchvision FPN.

    Args:
        name: timm model name, e.g. `'resnet50'`, `'efficientnet_b3'`, `'convnext_tiny'`, `'densenet121'`.
        strides: Feature strides taken from the timm body, finest first; each must be one of its reductions.
        extra: Extra FPN levels (`'p6p7'`, `'pool'` or None).
        fpn_channels: Channels of every pyramid level.
        pretrained: Load timm's pretrained weights (needs internet, or a cache).
        checkpoint: A local weights file for the timm body (implies pretrained, no download).
        freeze_bn: Replace BatchNorm by frozen BatchNorm (for batches too small for statistics).
        timm_kwargs: Passed to `timm.create_model` (e.g. `drop_path_rate`).
    """

    def __init__(
        self,
        name: str,
        strides: Sequence[int],
        extra: str | None,
        fpn_channels: int = 256,
        pretrained: bool = False,
        checkpoint: str | None = None,
        freeze_bn: bool = False,
        timm_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.body, self.levels = create_timm_body(name, strides, pretrained, checkpoint, freeze_bn, timm_kwargs)
        channels = [self.body.feature_info.channels()[i] for i in self.levels]
        self.fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=_extra_block(extra, fpn_channels))
        self.out_channels = fpn_channels
        cfg = self.body.pretrained_cfg or {}
        self.image_mean = list(cfg.get("mean", IMAGENET_MEAN))
        self.image_std = list(cfg.get("std", IMAGENET_STD))

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Normalised images `[B, 3, H, W]` -> pyramid levels keyed `'0', '1', ...` (+ extra levels), finest first."""
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), feats[level]) for i, level in enumerate(self.levels)))


@register_backbone
def timm_fpn(
    strides: Sequence[int],
    extra: str | None,
    name: str = "resnet50",
    fpn_channels: int = 256,
    pretrained: bool = False,
    checkpoint: str | None = None,
    freeze_bn: bool = False,
    timm_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Any timm backbone (`features_only`) + FPN; see `TimmFpnBackbone`."""
    return TimmFpnBackbone(name, strides, extra, fpn_channels, pretrained, checkpoint, freeze_bn, timm_kwargs)


@register_backbone
def torchvision_resnet_fpn(
    strides: Sequence[int],
    extra: str | None,
    name: str = "resnet50",
    pretrained: bool = False,
    checkpoint: str | None = None,
    trainable_layers: int | None = None,
) -> nn.Module:
    """torchvision's ResNet + FPN (256 channels), as in `retinanet_resnet50_fpn` / `fasterrcnn_resnet50_fpn`.

    As torchvision's own builders do, BatchNorm is frozen and only the last 3 stages train when the body starts from
    weights; from scratch every stage trains with ordinary BatchNorm.
    """
    with_weights = pretrained or checkpoint is not None
    if trainable_layers is None:
        trainable_layers = 3 if with_weights else 5
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    # Stride 4 is ResNet's layer1, 8 layer2, 16 layer3, 32 layer4.
    returned = [int(math.log2(s)) - 1 for s in strides]
    if any(r not in (1, 2, 3, 4) for r in returned):
        raise ConfigError(f"torchvision ResNet FPN gives strides 4, 8, 16 and 32; the detector needs {list(strides)}")
    backbone = resnet_fpn_backbone(
        backbone_name=name,
        weights=weights,
        norm_layer=FrozenBatchNorm2d if with_weights else nn.BatchNorm2d,
        trainable_layers=trainable_layers,
        returned_layers=returned,
        extra_blocks=_extra_block(extra, 256),
    )
    if checkpoint is not None:
        load_checkpoint(backbone.body, checkpoint)
    backbone.image_mean = list(IMAGENET_MEAN)
    backbone.image_std = list(IMAGENET_STD)
    return backbone
