"""Classifier factory: timm networks behind one contract, one grey channel read once, Grad-CAM layers, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import timm
import torch

from cxrdet.errors import ConfigError
from cxrdet.models import classifier as classifier_module
from cxrdet.models.classifier import Classifier, create_classifier, list_classifiers, register_classifier


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def cfg(classes: tuple[str, ...] = ("opacity",), **model: Any) -> dict[str, Any]:
    return {"model": {"type": "timm_classifier", "name": "resnet10t", **model}, "data": {"classes": classes}}


def module_name(net: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(name for name, m in net.named_modules() if m is module)


def test_registry_lists_the_timm_builder() -> None:
    assert "timm_classifier" in list_classifiers()


def test_one_logit_per_class_from_three_channel_batches() -> None:
    model = create_classifier(cfg(("a", "b", "c")))
    assert isinstance(model, Classifier) and model.classes == ("a", "b", "c") and model.in_chans == 1
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3)


def test_one_channel_reads_channel_zero_normalised_with_the_mean_of_the_rgb_stats() -> None:
    model = create_classifier(cfg())
    # ImageNet mean/std averaged over RGB: (0.485 + 0.456 + 0.406) / 3, (0.229 + 0.224 + 0.225) / 3.
    assert model.image_mean == pytest.approx((0.449,)) and model.image_std == pytest.approx((0.226,))
    grey = torch.full((1, 1, 4, 4), 0.449 + 0.226)
    images = torch.cat([grey, torch.zeros(1, 2, 4, 4)], dim=1)  # other channels must be ignored
    x = model.normalise(images)
    assert x.shape == (1, 1, 4, 4) and torch.allclose(x, torch.ones_like(x))
    # The first convolution of the timm network takes one channel: no three-fold first-layer cost.
    assert model.net.conv1[0].weight.shape[1] == 1


def test_three_channels_keep_the_per_channel_stats() -> None:
    model = create_classifier(cfg(in_chans=3))
    x = model.normalise(torch.ones(1, 3, 2, 2))
    expected = [(1 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)]
    assert x[0, :, 0, 0].tolist() == pytest.approx(expected)


def test_a_grey_batch_of_expanded_views_gives_the_same_logits_as_a_copied_one() -> None:
    model = create_classifier(cfg()).eval()
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(grey.expand(-1, 3, -1, -1)), model(grey.repeat(1, 3, 1, 1)))


@pytest.mark.parametrize(("name", "layer"), [
    ("resnet10t", "layer4"),
    ("mobilenetv3_small_100", "blocks.5"),
    ("efficientnet_b0", "bn2"),  # conv_head + bn2 follow the last block before pooling
    ("convnext_atto", "stages.3"),
    ("densenet121", "features.norm5"),
])  # fmt: skip
def test_target_layer_is_the_last_spatial_feature_map(name: str, layer: str) -> None:
    model = create_classifier(cfg(name=name))
    model.train()
    target = model.target_layer()
    assert module_name(model.net, target) == layer
    assert model.net.training  # the probe pass leaves the mode alone
    seen: list[torch.Tensor] = []
    target.register_forward_hook(lambda _m, _i, out: seen.append(out))
    model.eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    assert seen[-1].ndim == 4 and seen[-1].shape[-1] == 2  # stride 32 of 64 px


def test_local_checkpoint_loads_into_one_channel_and_drops_another_head(tmp_path: Path) -> None:
    source = timm.create_model("resnet10t", num_classes=7)  # three input channels, a 7-class head
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    model = create_classifier(cfg(checkpoint=str(path)))
    # timm sums the RGB first-layer weights into the one channel.
    assert torch.allclose(model.net.conv1[0].weight, source.conv1[0].weight.sum(dim=1, keepdim=True), atol=1e-6)
    assert torch.equal(model.net.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert model.net.get_classifier().out_features == 1


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.type='vit' is not a registered classifier"):
        create_classifier({"model": {"type": "vit"}, "data": {"classes": ("a",)}})
    with pytest.raises(ConfigError, match=r"model \(timm_classifier\).*dropout"):
        create_classifier(cfg(dropout=0.1))
    with pytest.raises(ConfigError, match="model.name='not_a_net'"):
        create_classifier(cfg(name="not_a_net"))
    with pytest.raises(ConfigError, match="model.in_chans=2"):
        create_classifier(cfg(in_chans=2))
    with pytest.raises(ConfigError, match="model.checkpoint='/nope.pth': file not found"):
        create_classifier(cfg(checkpoint="/nope.pth"))
    with pytest.raises(ConfigError, match="data.classes is empty"):
        create_classifier(cfg(()))


def test_a_registered_builder_is_reachable_by_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classifier_module.CLASSIFIERS, "_entries", dict(classifier_module.CLASSIFIERS._entries))

    @register_classifier
    def _tiny_test_classifier(classes: tuple[str, ...]) -> Classifier:
        net = timm.create_model("resnet10t", num_classes=len(classes), in_chans=1)
        return Classifier(net, classes, 1, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    model = create_classifier({"model": {"type": "_tiny_test_classifier"}, "data": {"classes": ("x",)}})
    assert model.image_mean == (0.5,) and model.image_std == (0.25,)
