"""Tests of cxrdet.models.lit_base's shared helpers (the modules themselves are tested through their subclasses)."""

from __future__ import annotations

from cxrdet.models.lit_base import inference_config


def test_inference_config_switches_off_backbone_starting_weights_only() -> None:
    cfg = {"model": {"type": "retinanet", "backbone": {"name": "x", "pretrained": True, "checkpoint": "/w.pth",
                                                       "init_from": {"checkpoint": "cls/0"}}},
           "data": {"size": 64}}
    plain = inference_config(cfg)
    assert plain["model"]["backbone"] == {"name": "x", "pretrained": False, "checkpoint": None, "init_from": None}
    assert cfg["model"]["backbone"]["pretrained"] is True  # the caller's config is left as it was
    assert plain["data"] == {"size": 64}
    assert inference_config({"model": {"backbone": {"name": "y"}}})["model"]["backbone"] == {"name": "y"}


def test_inference_config_switches_off_a_classifier_s_weights() -> None:
    cfg = {"task": "classify", "model": {"type": "timm_classifier", "name": "densenet121", "pretrained": True,
                                         "checkpoint": "/d.pth", "in_chans": 1}}
    assert inference_config(cfg)["model"] == {"type": "timm_classifier", "name": "densenet121", "pretrained": False,
                                              "checkpoint": None, "in_chans": 1}


def test_inference_config_drops_mmdet_pretrained_init_cfgs_and_keeps_others() -> None:
    pretrained = {"type": "Pretrained", "checkpoint": "torchvision://resnet50"}
    cfg = {"model": {"type": "RetinaNet", "init_cfg": [pretrained],
                     "backbone": {"type": "ResNet", "init_cfg": pretrained},
                     "neck": {"type": "FPN", "init_cfg": pretrained}}}
    model = inference_config(cfg)["model"]
    assert model["init_cfg"] is None and model["backbone"]["init_cfg"] is None
    assert model["neck"]["init_cfg"] == pretrained  # not a starting-weight owner: mmdet's own check refuses it
    kept = {"model": {"type": "RetinaNet", "backbone": {"init_cfg": {"type": "Kaiming"}}}}
    assert inference_config(kept)["model"]["backbone"]["init_cfg"] == {"type": "Kaiming"}
