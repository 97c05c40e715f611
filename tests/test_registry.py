"""The one Registry class behind detectors, backbones, classifiers, label formats and tasks."""

from __future__ import annotations

import pytest

from cxrdet.data.labels import FORMATS
from cxrdet.errors import ConfigError
from cxrdet.models.backbones import BACKBONES
from cxrdet.models.classifier import CLASSIFIERS
from cxrdet.models.factory import DETECTORS
from cxrdet.registry import Registry


def test_register_get_and_list() -> None:
    reg: Registry[object] = Registry("widget", key="model.widget")

    @reg.register
    def small() -> str:
        return "s"

    reg.register(len, name="sized")
    assert reg.get("small") is small and reg.get("sized") is len
    assert reg.names() == ["sized", "small"] and "small" in reg and len(reg) == 2
    assert list(reg) == ["sized", "small"]


def test_unknown_name_lists_the_known_ones() -> None:
    reg: Registry[object] = Registry("widget", key="model.widget")
    reg.register(len, name="sized")
    expected = r"model.widget='big' is not a registered widget; expected one of \['sized'\]"
    with pytest.raises(ConfigError, match=expected):
        reg.get("big")


def test_a_name_is_registered_once() -> None:
    reg: Registry[object] = Registry("widget")
    reg.register(len, name="a")
    reg.register(len, name="a")  # the same object again (a module imported twice) is harmless
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(abs, name="a")
    reg.unregister("a")
    assert "a" not in reg


def test_every_variant_uses_it() -> None:
    from cxrdet.tasks import TASKS

    assert {"retinanet", "fcos", "faster_rcnn"} <= set(DETECTORS.names())
    assert {"timm_fpn", "torchvision_resnet_fpn"} <= set(BACKBONES.names())
    assert "timm_classifier" in CLASSIFIERS
    assert {"rsna", "nih"} <= set(FORMATS.names())
    assert TASKS.names() == ["classify", "detect"]
