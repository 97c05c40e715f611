"""Detector backbones started from a classifier checkpoint: names matched across timm wrappers, the one-channel first
layer spread over three, run lookup by EXPERIMENT/FOLD, and errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config

from cxrdet import paths
from cxrdet.config import load_config, to_dict
from cxrdet.errors import ConfigError
from cxrdet.models.backbones import create_backbone
from cxrdet.models.factory import create_detector
from cxrdet.models.lit_classifier import LitClassifier
from cxrdet.models.transfer import transfer_weights

CLS_TINY = paths.CONFIGS_DIR / "experiments" / "cls_regnetx002_128_tiny12e.py"
DET_TINY = paths.CONFIGS_DIR / "experiments" / "retinanet_mnv3s_128_tiny12e.py"


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def classifier_cfg(name: str = "resnet10t") -> dict[str, Any]:
    return to_dict(load_config(CLS_TINY, ["data.size=64", f"model.name={name}"]))


def save_classifier(path: Path, name: str = "resnet10t") -> LitClassifier:
    """A classifier checkpoint as training writes it: config in the hyper-parameters, EMA weights beside the
    trained ones (the EMA copy is made distinguishable: +1 on every float tensor)."""
    torch.manual_seed(0)
    module = LitClassifier(classifier_cfg(name))
    with torch.no_grad():
        for (_, ema), (_, own) in zip(module.ema.module.state_dict().items(), module.model.state_dict().items(),
                                      strict=True):
            if ema.is_floating_point():
                ema.copy_(own + 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"cfg": classifier_cfg(name)}}, path)
    return module


def body_cfg(checkpoint: str, name: str = "resnet10t", **extra: Any) -> dict[str, Any]:
    return {"type": "timm_fpn", "name": name, "fpn_channels": 16, "init_from": {"checkpoint": checkpoint, **extra}}


def test_a_timm_fpn_body_starts_from_the_classifier_ema_weights(tmp_path: Path) -> None:
    source = save_classifier(tmp_path / "cls.ckpt")
    backbone = create_backbone(body_cfg(str(tmp_path / "cls.ckpt")), strides=(8, 16, 32), extra="p6p7")
    ema = source.ema.module.net
    body = backbone.body.state_dict()
    # features_only flattens nothing for ResNet: the same names, EMA values.
    assert torch.equal(body["layer4.0.conv1.weight"], ema.state_dict()["layer4.0.conv1.weight"])
    assert torch.equal(body["layer2.0.bn1.running_mean"], ema.state_dict()["layer2.0.bn1.running_mean"])
    # The one-channel stem weight is spread over three channels: the same response to three copies of a grey image.
    w1 = ema.state_dict()["conv1.0.weight"]
    w3 = body["conv1.0.weight"]
    assert w1.shape[1] == 1 and w3.shape[1] == 3
    grey = torch.rand(1, 1, 16, 16)
    assert torch.allclose(F.conv2d(grey.expand(-1, 3, -1, -1), w3), F.conv2d(grey, w1), atol=1e-5)


def test_dotted_names_match_timm_flattened_feature_names() -> None:
    # DenseNet's features_only wrapper names `features.conv0` as `features_conv0`.
    target = torch.nn.Module()
    target.features_conv0 = torch.nn.Conv2d(3, 4, 3)
    state = {"features.conv0.weight": torch.ones(4, 1, 3, 3), "features.conv0.bias": torch.full((4,), 2.0),
             "classifier.weight": torch.ones(1, 4)}
    assert sorted(transfer_weights(target, state)) == ["features_conv0.bias", "features_conv0.weight"]
    assert torch.allclose(target.features_conv0.weight, torch.full((4, 3, 3, 3), 1 / 3))
    assert target.features_conv0.bias.tolist() == [2.0] * 4


def test_a_detector_config_names_a_run_by_experiment_and_fold(tmp_path: Path) -> None:
    run = paths.run_dir("cls_run", 2)
    ckpt = paths.checkpoints_dir("cls_run", 2) / "best.ckpt"
    source = save_classifier(ckpt)
    (run / "config.py").write_text(Config({**classifier_cfg(), "experiment": "cls_run"}).pretty_text)
    for spec in ("cls_run/2", "cls_run/fold2"):
        cfg = to_dict(load_config(DET_TINY, ["data.size=64", "model.backbone.name=resnet10t",
                                             f"model.backbone.init_from={{'checkpoint': '{spec}'}}"]))
        detector = create_detector(cfg)
        body = detector.net.backbone.body.state_dict()
        assert torch.equal(body["layer3.0.conv2.weight"], source.ema.module.net.state_dict()["layer3.0.conv2.weight"])


def test_torchvision_resnet_bodies_share_timm_resnet_names(tmp_path: Path) -> None:
    source = save_classifier(tmp_path / "r18.ckpt", name="resnet18")
    backbone = create_backbone({"type": "torchvision_resnet_fpn", "name": "resnet18",
                                "init_from": {"checkpoint": str(tmp_path / "r18.ckpt")}}, strides=(8, 16, 32),
                               extra="p6p7")
    body = backbone.body.state_dict()
    ema = source.ema.module.net.state_dict()
    assert torch.equal(body["layer1.0.conv1.weight"], ema["layer1.0.conv1.weight"])
    assert torch.allclose(body["conv1.weight"], ema["conv1.weight"].expand(-1, 3, -1, -1) / 3)


def test_init_from_errors(tmp_path: Path) -> None:
    save_classifier(tmp_path / "mnv3.ckpt", name="mobilenetv3_small_100")
    with pytest.raises(ConfigError, match="no tensor of .*mnv3.ckpt fits the backbone"):
        create_backbone(body_cfg(str(tmp_path / "mnv3.ckpt"), name="convnext_atto"), strides=(8,), extra=None)
    with pytest.raises(ConfigError, match=r"init_from=.*expected dict\(checkpoint="):
        create_backbone(body_cfg(str(tmp_path / "mnv3.ckpt"), strict=True), strides=(8,), extra=None)
    with pytest.raises(ConfigError, match=r"init_from='x.ckpt': expected dict\(checkpoint="):
        create_backbone({"type": "timm_fpn", "name": "resnet10t", "init_from": "x.ckpt"}, strides=(8,), extra=None)
    with pytest.raises(ConfigError, match="'nowhere.ckpt': file not found"):
        create_backbone(body_cfg("nowhere.ckpt"), strides=(8,), extra=None)
    with pytest.raises(ConfigError, match="no run at .*ghost/fold0; train the classifier first"):
        create_backbone(body_cfg("ghost/0"), strides=(8,), extra=None)
    detector_ckpt = tmp_path / "det.ckpt"
    torch.save({"state_dict": {"model.w": torch.ones(1)}, "hyper_parameters": {"cfg": {"model": {}}}}, detector_ckpt)
    with pytest.raises(ConfigError, match="is not a classifier checkpoint.*task=None"):
        create_backbone(body_cfg(str(detector_ckpt)), strides=(8,), extra=None)
