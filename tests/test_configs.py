"""Experiment configs: every shipped config resolves, is named after what it trains, builds and takes a training
step; config loading, overrides and errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from cxrdet.competitions.vinbigdata import CLASSES as VINBIGDATA_CLASSES
from cxrdet.config import get_key, load_config, parse_options, to_dict
from cxrdet.errors import ConfigError
from cxrdet.models.lit_detector import LitDetector
from cxrdet.paths import CONFIGS_DIR

# The mmdetection backend's configs (mmdet-*.py) inherit mmdet's own files and need `make mmdet`:
# tests/models/test_mmdet_models.py resolves, builds, trains and predicts them.
EXPERIMENTS = sorted(p for p in (CONFIGS_DIR / "experiments").glob("*.py") if not p.name.startswith("mmdet-"))
# Image-level classifiers (task='classify') have their own checks in tests/models/test_lit_classifier.py.
DETECTORS = [p for p in EXPERIMENTS if load_config(p).get("task", "detect") == "detect"]
# detector_backbone_size_schedule, e.g. retinanet_r50fpn_512_sgd12e
NAME = re.compile(r"^(?P<det>[a-z0-9-]+)_(?P<backbone>[a-z0-9-]+)_(?P<size>\d+)_(?P<schedule>[a-z0-9-]+)$")
# Over a second or two for one step even at a tiny size: marked slow.
SLOW = {"ssd_vgg16_512_sgd24e", "fasterrcnn_r50fpn_512_sgd12e", "fasterrcnn_resnet101_768_sgd12e"}
# SSD's VGG extractor ends in unpadded 3x3 convolutions: it needs at least 268 px.
MIN_SIZE = {"ssd": 300}
# EfficientDet halves its input seven times (levels 3-7): a multiple of 128.
MIN_SIZE.update({f"efficientdet-d{i}": 128 for i in range(8)})


def test_experiments_are_shipped() -> None:
    detectors = {load_config(p).model.type for p in DETECTORS}
    assert {"retinanet", "faster_rcnn", "fcos", "ssd_vgg16", "ssdlite_mobilenet_v3", "efficientdet"} <= detectors
    timm_bodies = {load_config(p).model.backbone.get("name") for p in DETECTORS
                   if load_config(p).model.get("backbone", {}).get("type") == "timm_fpn"}
    assert {"resnet101", "efficientnet_b3", "convnext_tiny", "densenet121"} <= timm_bodies


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_config_resolves_and_its_name_says_what_it_trains(path: Path) -> None:
    cfg = load_config(path)
    match = NAME.match(path.stem)
    assert match, f"{path.name}: expected detector_backbone_size_schedule"
    assert int(match["size"]) == cfg.data.size
    assert cfg.experiment == path.stem
    assert "fold" not in cfg


def _step_params(path: Path) -> list[pytest.param]:
    return [pytest.param(p, id=p.stem, marks=pytest.mark.slow if p.stem in SLOW else ()) for p in path]


@pytest.mark.parametrize("path", _step_params(DETECTORS))
def test_config_builds_and_takes_a_training_step(path: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    size = MIN_SIZE.get(path.stem.split("_")[0], 64)
    # Every detector config trains multi-class: VinBigData's 14 finding classes, a box of the last one.
    cfg = to_dict(load_config(path, [f"data.size={size}", f"data.classes={VINBIGDATA_CLASSES!r}"]))
    module = LitDetector(cfg)
    images = torch.rand(2, 3, size, size)
    targets = [{"boxes": torch.tensor([[0.1, 0.2, 0.6, 0.8], [0.5, 0.5, 0.9, 0.7]]) * size,
                "labels": torch.tensor([0, 13])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    module.train()
    loss = sum(module.model(images, targets).values())
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in module.model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    module.eval()
    with torch.no_grad():
        out = module.inference_model()(images)
    assert len(out) == 2 and all(len(o["boxes"]) <= cfg["predict"]["max_per_image"] for o in out)
    assert all(((o["labels"] >= 0) & (o["labels"] < 14)).all() for o in out)  # labels from 0, one per class


def test_parse_options() -> None:
    assert parse_options(["data.size=128", "data.folds=demo_k5", "train.stages=None", "a.b=(0.9, 1.1)",
                          "x=[1,2]", "s='quoted'", "e="]) == {
        "data.size": 128, "data.folds": "demo_k5", "train.stages": None, "a.b": (0.9, 1.1), "x": [1, 2],
        "s": "quoted", "e": ""}
    with pytest.raises(ConfigError, match="'data.size': expected KEY=VALUE"):
        parse_options(["data.size"])


def test_overrides_merge_into_nested_sections() -> None:
    path = CONFIGS_DIR / "experiments" / "retinanet_r50fpn_512_sgd12e.py"
    cfg = load_config(path, ["data.size=640", "model.backbone.name=resnet101", "train.devices=2"])
    assert cfg.data.size == 640 and cfg.data.batch_size == 8  # siblings kept
    assert cfg.model.backbone.name == "resnet101" and cfg.model.backbone.type == "torchvision_resnet_fpn"
    assert get_key(cfg, "train.devices") == 2
    assert load_config(path, {"optim.lr": 0.5}).optim.lr == 0.5


def test_a_dict_option_replaces_a_none_and_merges_into_a_dict() -> None:
    # From-scratch configs hold `init_cfg=None`; the option that names weights must replace it (mmengine refuses).
    path = CONFIGS_DIR / "experiments" / "retinanet_r50fpn_512_sgd12e.py"
    cfg = load_config(path, {"train.early_stopping": None})
    assert cfg.train.early_stopping is None
    cfg = load_config(path, {"train.stages": {"a": 1}})  # None in the default runtime
    assert cfg.train.stages == {"a": 1} and "_delete_" not in cfg.train.stages
    cfg = load_config(path, {"train.ema": {"decay": 0.9}})  # a dict merges: its other keys stay
    assert cfg.train.ema.decay == 0.9 and cfg.train.ema.enabled is True


def test_a_resolved_config_reloads_with_its_experiment_name(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS_DIR / "experiments" / "fcos_r50fpn_512_sgd12e.py", ["data.size=320"])
    saved = tmp_path / "config.py"
    saved.write_text(cfg.pretty_text)
    again = load_config(saved)
    assert again.experiment == "fcos_r50fpn_512_sgd12e" and again.to_dict() == cfg.to_dict()


def test_errors_name_the_file_and_every_missing_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("model = dict(type='retinanet')\ndata = dict(size=256)\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}: missing required key 'data.folds'")
    assert "'optim.lr'" in message and "'train.epochs'" in message and "'model.type'" not in message


def test_a_config_that_names_a_fold_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.py"
    path.write_text(f"_base_ = '{CONFIGS_DIR / 'experiments' / 'retinanet_mnv3s_128_tiny12e.py'}'\nfold = 3\n")
    with pytest.raises(ConfigError, match="key 'fold' names a fold.*--fold"):
        load_config(path)


def test_unreadable_configs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.py: config file not found"):
        load_config(tmp_path / "nope.py")
    broken = tmp_path / "broken.py"
    broken.write_text("_base_ = './missing_base.py'\n")
    with pytest.raises(ConfigError, match="broken.py: cannot be read as an mmengine config"):
        load_config(broken)


def test_mmengine_runner_keys_are_dropped(tmp_path: Path) -> None:
    # What an inherited mmdet config file brings for mmengine's Runner; Lightning trains with cxrdet's sections.
    path = tmp_path / "x.py"
    path.write_text(f"_base_ = '{CONFIGS_DIR / 'experiments' / 'retinanet_mnv3s_128_tiny12e.py'}'\n"
                    "train_dataloader = dict(batch_size=2)\noptim_wrapper = dict(type='OptimWrapper')\n"
                    "default_scope = 'mmdet'\ntrain_pipeline = []\n")
    cfg = load_config(path)
    assert not {"train_dataloader", "optim_wrapper", "default_scope", "train_pipeline"} & set(cfg)
    assert cfg.data.batch_size == 8 and cfg.optim.type == "adamw"
