"""Detector factory: registry, label offsets, the batch contract, post-processing settings, errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from cxrdet.errors import ConfigError
from cxrdet.models.factory import Detector, create_detector, list_detectors, register_detector

SIZE = 64


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def config(model_type: str, size: int = SIZE, fpn_channels: int = 32, **model: Any) -> dict[str, Any]:
    backbone = dict(type="timm_fpn", name="resnet10t", fpn_channels=fpn_channels)
    return dict(model=dict(type=model_type, backbone=backbone, **model), data=dict(size=size, classes=("opacity",)),
                predict=dict(score_floor=0.0, max_per_image=7, nms_iou=0.5))


def targets() -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([0])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]


def test_registry_names() -> None:
    assert list_detectors() == ["efficientdet", "faster_rcnn", "fcos", "retinanet", "ssd_vgg16", "ssdlite_mobilenet_v3"]


def test_unknown_detector_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match=r"model.type='yolo' is not a registered detector; expected one of \["):
        create_detector(config("yolo"))


def test_unknown_head_keyword_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown keyword\(s\) \['score_treshold'\] for torchvision RetinaNet"):
        create_detector(config("retinanet", head=dict(score_treshold=0.1)))


@pytest.mark.parametrize(("model_type", "offset"), [("retinanet", 0), ("fcos", 0), ("faster_rcnn", 1)])
def test_train_losses_and_zero_based_inference_labels(model_type: str, offset: int) -> None:
    det = create_detector(config(model_type))
    assert det.label_offset == offset
    det.train()
    losses = det(torch.rand(2, 3, SIZE, SIZE), targets())
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    det.eval()
    with torch.no_grad():
        out = det(torch.rand(2, 3, SIZE, SIZE))
    for o in out:
        assert set(o) == {"boxes", "scores", "labels"}
        assert len(o["boxes"]) <= 7  # predict.max_per_image reached the head
        assert torch.all(o["labels"] == 0)  # one class, index 0, whatever the head's offset


def test_fcos_needs_fpn_channels_in_groups_of_32() -> None:
    with pytest.raises(ConfigError, match="FCOS's head normalises in 32 groups: .*fpn_channels must be a multiple "
                                          "of 32, got 48"):
        create_detector(config("fcos", fpn_channels=48))


def test_retinanet_v2_head_options() -> None:
    det = create_detector(config("retinanet", head_norm="group", box_loss="giou"))
    head = det.net.head
    assert head.regression_head._loss_type == "giou"
    assert any(isinstance(m, torch.nn.GroupNorm) for m in head.classification_head.modules())
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in create_detector(config("retinanet")).net.modules())
    with pytest.raises(ConfigError, match="model.box_loss='mse'"):
        create_detector(config("retinanet", box_loss="mse"))
    with pytest.raises(ConfigError, match="model.head_norm='batch'"):
        create_detector(config("retinanet", head_norm="batch"))


def test_postprocess_settings_reach_the_head() -> None:
    det = create_detector(config("faster_rcnn"))
    det.set_postprocess(0.3, 0.4, 11)
    heads = det.net.roi_heads
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.3, 0.4, 11)
    det = create_detector(config("retinanet"))
    det.set_postprocess(0.2, 0.6, 5)
    assert (det.net.score_thresh, det.net.nms_thresh, det.net.detections_per_img) == (0.2, 0.6, 5)


def test_degenerate_target_boxes_are_dropped() -> None:
    seen: list[dict[str, torch.Tensor]] = []

    class Recorder(torch.nn.Module):
        def forward(self, images: list[torch.Tensor], tgts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
            seen.extend(tgts)
            return {"loss": torch.zeros(())}

    det = Detector(Recorder(), label_offset=1)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 5.5, 20.0], [1.0, 1.0, 3.0, 1.0]])
    det.train()
    det(torch.rand(1, 3, 8, 8), [{"boxes": boxes, "labels": torch.tensor([0, 0, 0])}])
    assert seen[0]["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0]] and seen[0]["labels"].tolist() == [1]


def test_anchor_sizes_must_match_the_levels() -> None:
    with pytest.raises(ConfigError, match="anchor_sizes has 3 levels; this detector has 5"):
        create_detector(config("retinanet", anchor_sizes=(16, 32, 64)))
    det = create_detector(config("retinanet", anchor_sizes=(16, 32, 64, 128, 256)))
    assert det.net.anchor_generator.sizes[0] == (16, 20, 25)


def test_ssdlite_runs_at_the_configured_size() -> None:
    det = create_detector(dict(model=dict(type="ssdlite_mobilenet_v3"), data=dict(size=96, classes=("a", "b")),
                               predict=dict(score_floor=0.0, max_per_image=4)))
    assert det.net.transform.fixed_size == (96, 96) and det.label_offset == 1
    det.eval()
    with torch.no_grad():
        out = det(torch.rand(1, 3, 96, 96))
    assert len(out[0]["boxes"]) <= 4 and set(out[0]["labels"].tolist()) <= {0, 1}


def test_registering_a_builder_makes_it_available() -> None:
    @register_detector
    def _dummy_for_test(model_cfg: Any, num_classes: int, size: int) -> Detector:
        return Detector(torch.nn.Identity(), label_offset=0)

    try:
        assert "_dummy_for_test" in list_detectors()
        det = create_detector(config("_dummy_for_test"))
        assert isinstance(det.net, torch.nn.Identity) and det.net.detections_per_img == 7
    finally:
        from cxrdet.models import factory

        factory.DETECTORS.unregister("_dummy_for_test")
