"""Backbones: timm features_only + FPN levels and strides, torchvision ResNet FPN, local checkpoints, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision

from cxrdet.errors import ConfigError
from cxrdet.models.backbones import TimmFpnBackbone, create_backbone, list_backbones, load_checkpoint


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def shapes(features: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in features.items()}


def test_registry_lists_both_builders() -> None:
    assert list_backbones() == ["timm_fpn", "torchvision_resnet_fpn"]


@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_100", "convnext_atto"])
def test_timm_fpn_gives_the_requested_strides_plus_p6_p7(name: str) -> None:
    bb = create_backbone(dict(type="timm_fpn", name=name, fpn_channels=16), strides=(8, 16, 32), extra="p6p7")
    out = bb(torch.rand(2, 3, 64, 64))
    # 64 px: stride 8 -> 8x8, 16 -> 4x4, 32 -> 2x2, then P6 and P7 halve again (ceil).
    assert shapes(out) == {"0": (2, 16, 8, 8), "1": (2, 16, 4, 4), "2": (2, 16, 2, 2), "p6": (2, 16, 1, 1),
                           "p7": (2, 16, 1, 1)}
    assert bb.out_channels == 16 and len(bb.image_mean) == 3 and len(bb.image_std) == 3


def test_timm_fpn_for_faster_rcnn_adds_a_pool_level() -> None:
    bb = TimmFpnBackbone("resnet10t", strides=(4, 8, 16, 32), extra="pool", fpn_channels=8)
    out = bb(torch.rand(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [v.shape[-1] for v in out.values()] == [16, 8, 4, 2, 1]


def test_timm_fpn_refuses_strides_the_body_lacks() -> None:
    # ConvNeXt's first stage already has stride 4; there is no stride-2 map.
    with pytest.raises(ConfigError, match=r"convnext_atto.*has feature strides \[4, 8, 16, 32\].*missing \[2\]"):
        TimmFpnBackbone("convnext_atto", strides=(2, 4), extra=None)


def test_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.backbone.name='not_a_net'"):
        create_backbone(dict(type="timm_fpn", name="not_a_net"), strides=(8,), extra=None)
    with pytest.raises(ConfigError, match="model.backbone.type='vit'.*expected one of"):
        create_backbone(dict(type="vit"), strides=(8,), extra=None)
    with pytest.raises(ConfigError, match="model.backbone \\(timm_fpn\\).*fpn_channel"):
        create_backbone(dict(type="timm_fpn", name="resnet10t", fpn_channel=8), strides=(8,), extra=None)


def test_torchvision_resnet_fpn_levels_and_trainable_stages() -> None:
    bb = create_backbone(dict(type="torchvision_resnet_fpn", name="resnet18"), strides=(8, 16, 32), extra="p6p7")
    assert list(bb(torch.rand(1, 3, 64, 64))) == ["0", "1", "2", "p6", "p7"]
    assert bb.out_channels == 256
    # From scratch every stage trains and BatchNorm is ordinary.
    assert all(p.requires_grad for p in bb.body.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.body.modules())


def test_timm_local_checkpoint_is_loaded(tmp_path: Path) -> None:
    source = timm.create_model("resnet10t", pretrained=False)
    torch.nn.init.constant_(source.conv1[0].weight, 0.125)
    path = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), path)
    bb = TimmFpnBackbone("resnet10t", strides=(8, 16, 32), extra=None, fpn_channels=8, checkpoint=str(path))
    assert torch.all(bb.body.conv1[0].weight == 0.125)


def test_torchvision_local_checkpoint_is_loaded_and_frozen_like_pretrained(tmp_path: Path) -> None:
    source = torchvision.models.resnet18()
    torch.nn.init.constant_(source.conv1.weight, 0.25)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    cfg = dict(type="torchvision_resnet_fpn", name="resnet18", checkpoint=str(path))
    bb = create_backbone(cfg, strides=(8, 16, 32), extra="p6p7")
    assert torch.all(bb.body.conv1.weight == 0.25)
    # With weights, torchvision's rule: stem and layer1 frozen, the last three stages train.
    assert not bb.body.conv1.weight.requires_grad and bb.body.layer4[0].conv1.weight.requires_grad


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    module = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="missing.pth.*not found"):
        load_checkpoint(module, tmp_path / "missing.pth")
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(ConfigError, match="other.pth.*no tensor matches"):
        load_checkpoint(module, path)
