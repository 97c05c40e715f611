"""mmdetection backend: every shipped mmdet config builds, trains a few steps and predicts in the common format; the
adapter keeps the `Detector` contract (labels from 0, boxes in input pixels, empty images, post-processing, losses,
normalisation); pretrained weights go through cxrdet's loader; errors say what to fix."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrdet.config import load_config, to_dict
from cxrdet.errors import ConfigError
from cxrdet.models.factory import create_detector
from cxrdet.paths import CONFIGS_DIR
from tests.helpers import squares as squares_data
from tests.helpers.overfit import overfit_and_predict

HAS_MMDET = importlib.util.find_spec("mmdet") is not None and importlib.util.find_spec("mmcv") is not None
needs_mmdet = pytest.mark.skipif(not HAS_MMDET, reason="mmdet is not installed: run `make mmdet` (builds mmcv once)")

MMDET_CONFIGS = sorted((CONFIGS_DIR / "experiments").glob("mmdet-*.py"))
TINY = CONFIGS_DIR / "experiments" / "mmdet-atss_mnv3s_128_tiny12e.py"
# detector_backbone_size_schedule (tests/test_configs.py's rule), the detector prefixed `mmdet-`.
NAME = re.compile(r"^mmdet-(?P<det>[a-z0-9-]+)_(?P<backbone>[a-z0-9-]+)_(?P<size>\d+)_(?P<schedule>[a-z0-9-]+)$")
CXRDET_SECTIONS = {"experiment", "model", "data", "optim", "lr_schedule", "train", "predict", "evaluation"}
SIZE = 64  # test input side, pixels
# SSD's prior boxes are defined for 300 or 512 px inputs only; at 512 px, batches of one keep its VGG quick enough.
RUN_OPTIONS = {"mmdet-ssd_vgg16_512_sgd24e": {"data.size": 512, "data.batch_size": 1}}
# DINO picks its `num_queries` best encoder tokens: a 64 px input has 85 (cxrdet refuses more, see
# test_dino_refuses_more_queries_than_tokens).
MODEL_OPTIONS = {"mmdet-dino-4scale_r50_512_adamw12e": {"model.num_queries": 50},
                 "mmdet-dino-4scale_mnv3s_128_tiny12e": {"model.num_queries": 50}}
# Over ~5 s for a build, two steps and a prediction of the 15-image fold on 1 CPU thread.
SLOW = {"mmdet-ssd_vgg16_512_sgd24e", "mmdet-cascadercnn_r50fpn_512_sgd12e", "mmdet-fasterrcnn_r101fpn_512_sgd12e",
        "mmdet-maskrcnn_r50fpn_512_sgd12e", "mmdet-yolov3_d53_512_sgd24e", "mmdet-gfl_convnextt_512_adamw12e",
        "mmdet-dino-4scale_r50_512_adamw12e", "mmdet-yolox-x_cspdarknet_512_sgd24e",
        "mmdet-rtmdet-l_cspnext_512_adamw12e", "mmdet-yolox-l_cspdarknet_512_sgd24e",
        "mmdet-dino-4scale_mnv3s_128_tiny12e", "mmdet-yolox-m_cspdarknet_512_sgd24e",
        "mmdet-rtmdet-m_cspnext_512_adamw12e"}


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The squares data (`tests.helpers.squares`), its fold 0 cut to 4 images (the others train): validation and OOF
    prediction of the big detectors stay short."""
    options = squares_data.write_squares_dataset(tmp_path_factory.mktemp("squares"))
    folds = pd.read_csv(options["data.folds"])
    held_out = folds.index[folds["fold"] == 0]
    folds.loc[held_out[4:], "fold"] = 1
    folds.to_csv(options["data.folds"], index=False)
    return options


def shrink(node: Any) -> None:
    """Fewer RPN proposals and sampled RoIs in every two-stage section (Cascade R-CNN's lists included): the same
    code paths at a fraction of the CPU time."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "sampler" and isinstance(value, dict) and "num" in value:
                value["num"] = 32
            elif key in ("rpn_proposal", "rpn") and isinstance(value, dict) and "max_per_img" in value:
                value.update(nms_pre=200, max_per_img=50)
            else:
                shrink(value)
    elif isinstance(node, list):
        for value in node:
            shrink(value)


def tiny_cfg(path: Path, size: int = SIZE, **extra: Any) -> dict[str, Any]:
    """A resolved mmdet config shrunken for CPU tests (`extra`: more options, e.g. the data set's)."""
    options = {"data.size": size, "data.batch_size": 2, "data.num_workers": 0, "train.epochs": 1,
               "train.progress_bar": False, "train.accelerator": "cpu", "train.log_every_n_steps": 1, **extra}
    cfg = to_dict(load_config(path, [f"{k}={v}" for k, v in options.items()]))
    shrink(cfg["model"])
    return cfg


def one_box(size: int, box: tuple[float, float, float, float] = (0.1, 0.2, 0.6, 0.8), label: int = 0
            ) -> dict[str, torch.Tensor]:
    """A target with one box given as fractions of the side (xyxy), in pixels of the `size x size` input."""
    return {"boxes": torch.tensor([box]) * size, "labels": torch.tensor([label])}


def no_box() -> dict[str, torch.Tensor]:
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}


# ---- the shipped configs ----


@needs_mmdet
def test_mmdet_configs_are_shipped() -> None:
    cfgs = {p.stem: load_config(p) for p in MMDET_CONFIGS}
    types = {c.model.type for c in cfgs.values()}
    assert {"RetinaNet", "FasterRCNN", "CascadeRCNN", "ATSS", "YOLOV3", "MaskRCNN", "GFL", "RTMDet", "YOLOX",
            "DINO"} <= types
    # RTMDet tiny to l and YOLOX tiny to x, by mmdet's own depth and width factors.
    factors = {p.stem.split("_")[0]: (c.model.backbone.deepen_factor, c.model.backbone.widen_factor)
               for p, c in zip(MMDET_CONFIGS, cfgs.values(), strict=True) if c.model.type in ("RTMDet", "YOLOX")}
    assert factors["mmdet-rtmdet-tiny"] == (0.167, 0.375) and factors["mmdet-rtmdet-l"] == (1, 1)
    assert factors["mmdet-yolox-tiny"] == (0.33, 0.375) and factors["mmdet-yolox-x"] == (1.33, 1.25)
    assert {"mmdet-rtmdet-s", "mmdet-rtmdet-m", "mmdet-yolox-s", "mmdet-yolox-m", "mmdet-yolox-l"} <= set(factors)
    # The one-stage detectors' competition configs train on mosaic + mixup, switched off for the last epochs.
    for name in ("mmdet-rtmdet-s_cspnext_512_adamw12e", "mmdet-yolox-s_cspdarknet_512_sgd24e"):
        augment = cfgs[name].data.augment
        assert augment.mosaic.off_last > 0 and augment.mixup.off_last > 0 and augment.hflip == 0.5, name
        assert cfgs[name].model.get("data_preprocessor", {}).get("batch_augments") is None, name
    assert cfgs["mmdet-ssd_vgg16_512_sgd24e"].model.bbox_head.type == "SSDHead"
    backbones = {(c.model.backbone.type, c.model.backbone.get("depth") or c.model.backbone.get("name"))
                 for c in cfgs.values()}
    assert {("ResNet", 50), ("ResNet", 101), ("CxrTimmBackbone", "mobilenetv3_small_100"),
            ("CxrTimmBackbone", "convnext_tiny")} <= backbones
    for path in MMDET_CONFIGS:
        # mmdet's own files are inherited from the installed package, not copied.
        assert "'mmdet::" in path.read_text(), path.name


@needs_mmdet
@pytest.mark.parametrize("path", MMDET_CONFIGS, ids=lambda p: p.stem)
def test_config_resolves_to_cxrdet_sections_and_its_name_says_what_it_trains(path: Path) -> None:
    cfg = load_config(path)
    match = NAME.match(path.stem)
    assert match, f"{path.name}: expected mmdet-detector_backbone_size_schedule"
    assert int(match["size"]) == cfg.data.size and cfg.experiment == path.stem
    # mmdet's data loaders, optimiser wrapper, hooks... are dropped: Lightning trains with cxrdet's sections.
    assert set(cfg) == CXRDET_SECTIONS
    # Nothing downloads: no Pretrained init_cfg left in a shipped config.
    assert "Pretrained" not in cfg.pretty_text


def _step_params() -> list[Any]:
    return [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in SLOW else []) for p in MMDET_CONFIGS]


@needs_mmdet
@pytest.mark.parametrize("path", _step_params())
def test_config_trains_and_predicts_in_the_common_format(path: Path, squares: dict[str, str]) -> None:
    from cxrdet.models.lit_detector import PRED_COLUMNS, empty_predictions
    from cxrdet.tasks import predict, train

    options = {**squares, "train.limit_train_batches": 2, "train.ema.enabled": False, **RUN_OPTIONS.get(path.stem, {}),
               **MODEL_OPTIONS.get(path.stem, {})}
    cfg = tiny_cfg(path, **options)
    result = train(cfg, fold=0)
    metrics = pd.read_csv(result.run_dir / "csv" / "version_0" / "metrics.csv")
    losses = metrics["train/loss_step"].dropna()
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert 0.0 <= result.best_score <= 1.0

    pred = pd.read_parquet(predict(cfg, 0, split="oof"))
    # Exactly the torchvision backend's table: columns, types, original-image pixels, floor and cap.
    assert list(pred.columns) == list(PRED_COLUMNS)
    assert pred.dtypes.astype(str).tolist() == empty_predictions().dtypes.astype(str).tolist()
    folds = pd.read_csv(squares["data.folds"])
    assert set(pred["image_id"]) <= set(folds.loc[folds["fold"] == 0, "image_id"])
    assert (pred["score"] >= cfg["predict"]["score_floor"]).all() and (pred["score"] <= 1).all()
    assert (pred.groupby("image_id").size() <= cfg["predict"]["max_per_image"]).all()
    assert (pred["label"] == 0).all()
    boxes = pred[["x1", "y1", "x2", "y2"]].to_numpy()
    assert ((boxes >= -1e-3) & (boxes <= 1024 + 1e-3)).all()  # squares' originals are 1024 px
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


@needs_mmdet
@pytest.mark.parametrize("path", _step_params())
def test_config_takes_a_training_step_with_the_vinbigdata_classes(path: Path) -> None:
    from cxrdet.competitions.vinbigdata import CLASSES

    torch.manual_seed(0)
    size = RUN_OPTIONS.get(path.stem, {}).get("data.size", SIZE)
    detector = create_detector(tiny_cfg(path, size, **{"data.classes": CLASSES}, **MODEL_OPTIONS.get(path.stem, {})))
    detector.train()
    losses = detector(torch.rand(2, 3, size, size), [one_box(size, label=13), one_box(size, (0.5, 0.5, 0.9, 0.8), 4)])
    loss = sum(losses.values())
    loss.backward()
    assert torch.isfinite(loss)
    detector.eval()
    with torch.no_grad():
        out = detector(torch.rand(1, 3, size, size))
    assert ((out[0]["labels"] >= 0) & (out[0]["labels"] < len(CLASSES))).all()


# ---- the adapter's contract ----


@pytest.fixture(scope="module")
def tiny_detector() -> Any:
    if not HAS_MMDET:
        pytest.skip("mmdet is not installed: run `make mmdet`")
    torch.manual_seed(0)
    return create_detector(tiny_cfg(TINY, **{"data.classes": ("a", "b", "c")}))


@needs_mmdet
def test_losses_are_summed_as_mmengine_does(tiny_detector: Any) -> None:
    from cxrdet.models.mmdet_models import parse_losses

    raw = {"loss_cls": [torch.tensor(1.0), torch.tensor([2.0, 4.0])], "loss_bbox": torch.tensor([1.0, 3.0]),
           "acc": torch.tensor(90.0)}
    # Lists (one per level) sum their means, tensors are averaged, accuracies are not losses.
    assert {k: float(v) for k, v in parse_losses(raw).items()} == {"loss_cls": 4.0, "loss_bbox": 2.0}

    net = tiny_detector.net
    net.train()
    images = torch.rand(2, 3, SIZE, SIZE)
    targets = [one_box(SIZE), no_box()]
    data = net.data_preprocessor({"inputs": images, "data_samples": tiny_detector.data_samples(images, targets)},
                                 training=True)
    raw = net.loss(data["inputs"], data["data_samples"])
    total, _ = net.parse_losses(raw)
    assert float(sum(parse_losses(raw).values()).detach()) == pytest.approx(float(total.detach()))


@needs_mmdet
def test_targets_become_gt_instances_in_input_pixels_without_label_offset(tiny_detector: Any) -> None:
    images = torch.rand(2, 3, SIZE, SIZE)
    boxes = torch.tensor([[6.0, 12.0, 38.0, 51.0], [10.0, 10.0, 10.5, 30.0]])  # xyxy input pixels; the 2nd a sliver
    samples = tiny_detector.data_samples(images, [{"boxes": boxes, "labels": torch.tensor([2, 1])}, no_box()])
    gt = samples[0].gt_instances
    torch.testing.assert_close(gt.bboxes, boxes[:1])
    assert gt.labels.tolist() == [2]  # mmdet's labels are 0-based like cxrdet's: no background offset
    assert len(samples[1].gt_instances) == 0
    assert samples[0].img_shape == (SIZE, SIZE) and samples[0].scale_factor == (1.0, 1.0)
    assert "masks" not in gt  # not a mask head


@needs_mmdet
def test_mask_heads_get_box_filled_masks() -> None:
    from cxrdet.models.mmdet_models import MmdetDetector, box_masks

    masks = box_masks(torch.tensor([[2.0, 3.0, 6.0, 8.0]]), 10, 12).to_ndarray()
    expected = np.zeros((1, 10, 12), dtype=np.uint8)
    expected[0, 3:8, 2:6] = 1  # rows y 3..7, columns x 2..5: the 4 x 5 pixels inside the box
    np.testing.assert_array_equal(masks, expected)

    class MaskNet(nn.Module):
        with_mask = True

    samples = MmdetDetector(MaskNet()).data_samples(torch.rand(1, 3, 10, 12), [one_box(10)])
    assert samples[0].gt_instances.masks.to_ndarray().shape == (1, 10, 12)


@needs_mmdet
def test_preprocessor_takes_unit_range_rgb(tiny_detector: Any) -> None:
    from cxrdet.models.mmdet_models import _adapt_preprocessor

    pre = tiny_detector.net.data_preprocessor
    # mmdet's ImageNet mean and std in 0-255 (RGB), divided by 255.
    torch.testing.assert_close(pre.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]), atol=1e-6, rtol=0)
    torch.testing.assert_close(pre.std.flatten(), torch.tensor([0.229, 0.224, 0.225]), atol=1e-6, rtol=0)
    image = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, SIZE, SIZE)
    out = pre({"inputs": image, "data_samples": None}, training=False)["inputs"]
    torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-5, rtol=0)  # the mean itself, no channel flip

    # A config without a channel flip wants mmcv's BGR: cxrdet's RGB is flipped for it; one with a flip gets RGB.
    bgr = {"data_preprocessor": {"type": "DetDataPreprocessor", "mean": [255.0, 0.0, 0.0], "std": [255.0] * 3}}
    _adapt_preprocessor(bgr)
    assert bgr["data_preprocessor"] == {"type": "DetDataPreprocessor", "mean": [1.0, 0.0, 0.0], "std": [1.0] * 3,
                                        "bgr_to_rgb": False, "rgb_to_bgr": True}
    rgb = {"data_preprocessor": {"type": "DetDataPreprocessor", "bgr_to_rgb": True}}
    _adapt_preprocessor(rgb)
    assert rgb["data_preprocessor"]["rgb_to_bgr"] is False and rgb["data_preprocessor"]["std"] == [1 / 255] * 3


@needs_mmdet
def test_images_without_boxes_train(tiny_detector: Any) -> None:
    tiny_detector.train()
    losses = tiny_detector(torch.rand(2, 3, SIZE, SIZE), [no_box(), no_box()])
    loss = sum(losses.values())
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0  # the classifier still learns the background


@needs_mmdet
def test_set_postprocess_reaches_the_head() -> None:
    torch.manual_seed(0)
    det = create_detector(tiny_cfg(TINY, **{"predict.score_floor": 0.0, "predict.max_per_image": 3,
                                            "predict.nms_iou": 0.3}))
    cfg = det.net.bbox_head.test_cfg
    assert (cfg.score_thr, cfg.nms.iou_threshold, cfg.max_per_img) == (0.0, 0.3, 3)
    det.eval()
    with torch.no_grad():
        out = det(torch.rand(2, 3, SIZE, SIZE))
    assert [len(o["boxes"]) for o in out] == [3, 3]
    assert all(o["boxes"].dtype == torch.float32 and o["labels"].dtype == torch.long for o in out)
    det.set_postprocess(0.99, 0.5, 3)  # an untrained head scores about 0.01: nothing passes
    with torch.no_grad():
        assert [len(o["boxes"]) for o in det(torch.rand(2, 3, SIZE, SIZE))] == [0, 0]


@needs_mmdet
@pytest.mark.slow
def test_set_postprocess_reaches_the_roi_head_of_two_stage_detectors() -> None:
    det = create_detector(tiny_cfg(CONFIGS_DIR / "experiments" / "mmdet-cascadercnn_r50fpn_512_sgd12e.py",
                                   **{"predict.score_floor": 0.02, "predict.max_per_image": 7}))
    cfg = det.net.roi_head.test_cfg
    assert (cfg.score_thr, cfg.nms.iou_threshold, cfg.max_per_img) == (0.02, 0.5, 7)
    # Every head of the cascade was built for cxrdet's one class.
    assert [h.num_classes for h in det.net.roi_head.bbox_head] == [1, 1, 1]


@needs_mmdet
@pytest.mark.slow
def test_a_box_is_learnt_in_input_pixels_with_its_label() -> None:
    """End to end through the adapter: one image, one box of class 2 of 3; after overfitting, the top detection is
    that box (input pixels) with that label."""
    torch.manual_seed(0)
    det = create_detector(tiny_cfg(TINY, **{"data.classes": ("a", "b", "c")}))
    image = torch.full((1, 3, SIZE, SIZE), 0.1)
    box = torch.tensor([[8.0, 16.0, 40.0, 56.0]])  # xyxy, pixels of the 64 x 64 input
    image[:, :, 16:56, 8:40] = 0.9
    target = [{"boxes": box, "labels": torch.tensor([2])}]
    out = overfit_and_predict(det, image, target, steps=60, lr=2e-3)
    top = int(out["scores"].argmax())
    assert int(out["labels"][top]) == 2
    from torchvision.ops import box_iou

    assert float(box_iou(out["boxes"][top : top + 1], box)) > 0.5


# ---- weights and errors ----


@needs_mmdet
def test_pretrained_init_cfg_is_loaded_by_cxrdet(tmp_path: Path) -> None:
    from cxrdet.models.mmdet_models import CxrTimmBackbone

    source = CxrTimmBackbone("mobilenetv3_small_100", strides=(8, 16, 32))
    nn.init.constant_(source.body.conv_stem.weight, 0.125)
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    pretrained = "{'type':'Pretrained','checkpoint':'%s'}"
    det = create_detector(tiny_cfg(TINY, **{"model.backbone.init_cfg": pretrained % path}))
    assert torch.all(det.net.backbone.body.conv_stem.weight == 0.125)
    with pytest.raises(ConfigError, match=r"model.backbone.init_cfg.checkpoint='.*missing.pth': file not found"):
        create_detector(tiny_cfg(TINY, **{"model.backbone.init_cfg": pretrained % (tmp_path / "missing.pth")}))
    with pytest.raises(ConfigError, match="expected a local file, an http\\(s\\) URL or torchvision://"):
        create_detector(tiny_cfg(TINY, **{"model.backbone.init_cfg": pretrained % "open-mmlab://darknet53"}))
    with pytest.raises(ConfigError, match=r"model.neck.init_cfg: a 'Pretrained' init_cfg is taken only on the model"):
        create_detector(tiny_cfg(TINY, **{"model.neck.init_cfg": pretrained % path}))


RTMDET_TINY = CONFIGS_DIR / "experiments" / "mmdet-rtmdet-tiny_cspnext_128_tiny12e.py"
YOLOX_TINY = CONFIGS_DIR / "experiments" / "mmdet-yolox-tiny_cspdarknet_128_tiny12e.py"
DINO_TINY = CONFIGS_DIR / "experiments" / "mmdet-dino-4scale_mnv3s_128_tiny12e.py"


@needs_mmdet
def test_pretrained_prefix_reads_a_backbone_out_of_a_whole_checkpoint(tmp_path: Path) -> None:
    # mmdet's RTMDet configs load CSPNeXt from an ImageNet classifier's checkpoint, keys under 'backbone.'.
    source = create_detector(tiny_cfg(RTMDET_TINY))
    stem = source.net.backbone.stem[0].conv.weight
    nn.init.constant_(stem, 0.25)
    whole = {f"backbone.{k}": v for k, v in source.net.backbone.state_dict().items()}
    whole["head.fc.weight"] = torch.zeros(1000, 384)
    path = tmp_path / "cspnext.pth"
    torch.save({"state_dict": whole}, path)
    init = "{'type':'Pretrained','prefix':'backbone.','checkpoint':'%s'}"
    det = create_detector(tiny_cfg(RTMDET_TINY, **{"model.backbone.init_cfg": init % path}))
    assert torch.all(det.net.backbone.stem[0].conv.weight == 0.25)
    init = "{'type':'Pretrained','prefix':'body.','checkpoint':'%s'}"
    with pytest.raises(ConfigError, match=r"cspnext.pth': no tensor under the prefix 'body.' \(e.g. 'backbone."):
        create_detector(tiny_cfg(RTMDET_TINY, **{"model.backbone.init_cfg": init % path}))


@needs_mmdet
def test_dino_refuses_more_queries_than_tokens() -> None:
    # 64 px: 8x8 + 4x4 + 2x2 + 1x1 = 85 encoder tokens at strides 8, 16, 32, 64.
    with pytest.raises(ConfigError, match=r"model.num_queries=100: a 64 px input gives 85 encoder tokens over 4 "
                                          r"levels .* expected at most 85 queries, or a larger data.size"):
        create_detector(tiny_cfg(DINO_TINY, 64))
    create_detector(tiny_cfg(DINO_TINY, 64, **{"model.num_queries": 85}))


@needs_mmdet
def test_yolox_adds_its_l1_loss_once_mosaic_and_mixup_are_off(squares: dict[str, str]) -> None:
    from cxrdet.tasks import train

    options = {**squares, "train.epochs": 3, "train.limit_train_batches": 2, "train.ema.enabled": False,
               "data.augment.mosaic": {"prob": 1.0, "off_last": 1}, "data.augment.mixup": {"prob": 0.5, "off_last": 2}}
    result = train(tiny_cfg(YOLOX_TINY, **options), fold=0)
    metrics = pd.read_csv(result.run_dir / "csv" / "version_0" / "metrics.csv")
    steps = metrics.dropna(subset=["train/loss_step"])
    # Both steps are off only in the last epoch (mixup from the second, mosaic from the third): L1 then, not before.
    with_l1 = steps.groupby("epoch")["train/loss_l1"].apply(lambda v: v.notna().all()).to_dict()
    assert with_l1 == {0: False, 1: False, 2: True}


@needs_mmdet
def test_config_errors_say_what_to_fix() -> None:
    with pytest.raises(ConfigError, match=r"model.neck.in_channels=\[16, 24, 48\]: the timm backbone "
                                          r"'mobilenetv3_small_100' gives \[24, 48, 576\] channels"):
        create_detector(tiny_cfg(TINY, **{"model.neck.in_channels": [16, 24, 48]}))
    with pytest.raises(ConfigError, match="model.type='Retina' is not a registered detector; expected one of .* or an "
                                          "mmdet detector type"):
        create_detector(tiny_cfg(TINY, **{"model.type": "Retina"}))
    with pytest.raises(ConfigError, match="model \\(ATSS\\): mmdet cannot build it"):
        create_detector(tiny_cfg(TINY, **{"model.bbox_head.stacked_conv": 2}))


def test_without_mmdet_the_error_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import cxrdet.models

    monkeypatch.setitem(sys.modules, "cxrdet.models.mmdet_models", None)  # makes the import fail
    monkeypatch.delattr(cxrdet.models, "mmdet_models", raising=False)
    cfg = {"model": {"type": "RetinaNet"}, "data": {"size": 64, "classes": ("opacity",)}, "predict": {}}
    with pytest.raises(ConfigError, match="mmdet types need the mmdetection backend.*run `make mmdet`"):
        create_detector(cfg)


@needs_mmdet
def test_ssd_refuses_sizes_without_priors() -> None:
    with pytest.raises(ConfigError, match="Only support 300 or 512"):
        create_detector(tiny_cfg(CONFIGS_DIR / "experiments" / "mmdet-ssd_vgg16_512_sgd24e.py", 128))


@needs_mmdet
def test_weights_round_trip_through_state_dict(tiny_detector: Any) -> None:
    """A Lightning checkpoint holds `Detector.state_dict()`: a fresh build loads it strictly, predictions equal."""
    torch.manual_seed(5)
    other = create_detector(tiny_cfg(TINY, **{"data.classes": ("a", "b", "c")}))
    other.load_state_dict(tiny_detector.state_dict())
    images = torch.rand(1, 3, SIZE, SIZE)
    tiny_detector.eval()
    other.eval()
    with torch.no_grad():
        a, b = tiny_detector(images)[0], other(images)[0]
    torch.testing.assert_close(a["boxes"], b["boxes"])
    assert not math.isnan(float(a["scores"].sum()))
