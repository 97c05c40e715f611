"""Image-level classifiers: tiny registered builders and one public `create_classifier(cfg)` (as `factory.py`).

Every builder turns a config's `model` section into a `Classifier`, the one interface training, prediction,
evaluation and Grad-CAM see:

- input: images `[B, 3, S, S]` float in [0, 1] whose three channels are views of one grey channel (the data
  pipeline's batches); normalisation happens inside, with the weights' mean/std;
- output: logits `[B, K]`, one per class of `data.classes` (sigmoid, not softmax: the classes are independent
  findings, several per image in multi-label data).

With `in_chans=1` the network reads channel 0 only, so a grey image costs one channel of first-layer compute, not
three; timm adapts pretrained first-layer weights to one channel by summing them over RGB, so ImageNet (or any
3-channel) weights still apply. `in_chans=3` feeds the three views, for weights that must see them.

Adding a classifier is one decorated function:

    @register_classifier
    def my_classifier(classes, **keywords): ...
        return Classifier(net, classes, in_chans, mean, std)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from cxrdet.errors import ConfigError
from cxrdet.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from cxrdet.registry import Registry

IN_CHANS: tuple[int, ...] = (1, 3)


class Classifier(nn.Module):
    """A timm classification network behind the cxrdet classifier contract (see the module docstring).

    Args:
        net: A timm model built with `num_classes=len(classes)` and `in_chans` input channels.
        classes: Class names, one per logit, in output order.
        in_chans: 1 (read the grey channel once) or 3 (read all three views).
        image_mean: Per-channel mean of the weights' training inputs (3 values; averaged for one channel).
        image_std: Per-channel standard deviation, as `image_mean`.

    Attributes:
        classes, in_chans, net: As given.
        image_mean, image_std: The `in_chans` values the input is normalised with.
    """

    def __init__(self, net: nn.Module, classes: Sequence[str], in_chans: int, image_mean: Sequence[float],
                 image_std: Sequence[float]) -> None:
        super().__init__()
        if in_chans not in IN_CHANS:
            raise ConfigError(f"model.in_chans={in_chans!r}: expected one of {list(IN_CHANS)}")
        self.net = net
        self.classes = tuple(classes)
        self.in_chans = int(in_chans)
        mean, std = [float(v) for v in image_mean], [float(v) for v in image_std]
        if in_chans == 1:
            mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
        self.image_mean = tuple(mean)
        self.image_std = tuple(std)
        # Not persistent: a checkpoint holds only the network, whose names match timm's (for transfer to detectors).
        self.register_buffer("_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Images `[B, 3, S, S]` in [0, 1] -> the network's normalised `[B, in_chans, S, S]` input."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, S, S], got {tuple(images.shape)}")
        x = images[:, :1] if self.in_chans == 1 else images
        return (x - self._mean) / self._std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images `[B, 3, S, S]` float in [0, 1] -> logits `[B, K]`."""
        return self.net(self.normalise(images))

    def target_layer(self) -> nn.Module:
        """The module whose output is the last spatial feature map (what the pooling head reads): Grad-CAM's layer.

        timm's `feature_info` names the last feature stage (`layer4`, `features.norm5`, `stages.3`, `blocks.5`);
        where the network adds layers after it before pooling (EfficientNet's `conv_head` + `bn2`), the outermost
        module producing `forward_features`' output is taken instead, found with one small probe pass.
        """
        modules = dict(self.net.named_modules())
        info = getattr(self.net, "feature_info", None) or []
        name = info[-1]["module"] if info else None
        outputs: dict[str, Any] = {}  # the outputs themselves, not their ids: a freed tensor's id can be reused
        hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: outputs.__setitem__(n, out))
                 for n, m in modules.items() if n]
        was_training = self.net.training
        try:
            self.net.eval()
            with torch.no_grad():
                probe = torch.zeros(1, self.in_chans, 64, 64, device=self._mean.device)
                features = self.net.forward_features(probe)
        finally:
            for hook in hooks:
                hook.remove()
            self.net.train(was_training)
        if name in modules and outputs.get(name) is features:
            return modules[name]
        matching = [n for n, out in outputs.items() if out is features]
        if not matching:
            raise ValueError(f"{type(self.net).__name__}: no submodule returns the last feature map; pass the "
                             "Grad-CAM layer explicitly")
        return modules[min(matching, key=lambda n: n.count("."))]


ClassifierBuilder = Callable[..., Classifier]
# Builders by name (the `model.type` of a classifier config).
CLASSIFIERS: Registry[ClassifierBuilder] = Registry("classifier", key="model.type")
register_classifier = CLASSIFIERS.register
list_classifiers = CLASSIFIERS.names


def create_classifier(cfg: Mapping[str, Any]) -> Classifier:
    """Build the classifier a resolved config describes.

    Reads `model` (`type` = a registered builder, plus its keywords) and `data.classes` (one logit per class).

    Raises:
        ConfigError: Unknown `model.type`, unknown keyword, unknown timm name, missing checkpoint file.
    """
    kwargs = dict(cfg["model"])
    name = kwargs.pop("type", None)
    builder = CLASSIFIERS.get(name)
    classes = tuple(cfg["data"]["classes"])
    if not classes:
        raise ConfigError("data.classes is empty: a classifier needs at least one class")
    try:
        classifier = builder(classes, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model ({name}): {err}") from err
    # Softmax over classes that exclude each other (loss.type='ce'), else one sigmoid per class: read by prediction,
    # export and inference (a plain attribute, rebuilt from the config with the model).
    classifier.multiclass = str((cfg.get("loss") or {}).get("type", "bce")) == "ce"
    return classifier


@register_classifier
def timm_classifier(
    classes: Sequence[str],
    name: str = "densenet121",
    pretrained: bool = False,
    checkpoint: str | None = None,
    in_chans: int = 1,
    drop_rate: float = 0.0,
    timm_kwargs: Mapping[str, Any] | None = None,
) -> Classifier:
    """Any timm classification model (DenseNet-121 as CheXNet, EfficientNet, ConvNeXt, ResNet, MobileNet-V3...).

    Args:
        classes: One output logit per class.
        name: timm model name.
        pretrained: Load timm's pretrained weights (needs internet, or a cache).
        checkpoint: A local weights file in timm's layout (implies pretrained, no download); the first layer is
            adapted to `in_chans` and a classifier layer of another size is dropped, as timm does for its own.
        in_chans: 1 (grey input read once) or 3.
        drop_rate: Dropout before the last layer.
        timm_kwargs: Passed to `timm.create_model` (e.g. `drop_path_rate`).
    """
    if in_chans not in IN_CHANS:
        raise ConfigError(f"model.in_chans={in_chans!r}: expected one of {list(IN_CHANS)}")
    kwargs = dict(timm_kwargs or {})
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise ConfigError(f"model.checkpoint={checkpoint!r}: file not found")
        kwargs["pretrained_cfg_overlay"] = {"file": str(checkpoint)}
    try:
        net = timm.create_model(name, pretrained=pretrained or checkpoint is not None, in_chans=int(in_chans),
                                num_classes=len(classes), drop_rate=float(drop_rate), **kwargs)
    except RuntimeError as err:  # timm's "Unknown model" is a RuntimeError
        raise ConfigError(f"model.name={name!r}: {err}") from err
    cfg = net.pretrained_cfg or {}
    return Classifier(net, classes, int(in_chans), cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
