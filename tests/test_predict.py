"""Prediction: floor and cap, TTA fusion, mapping to original pixels, the written table and sidecar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from cxrdet import paths
from cxrdet.config import load_config
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.models.lit_detector import LitDetector
from cxrdet.predict import cap_predictions, fuse_passes
from cxrdet.tasks import predict

TINY = paths.CONFIGS_DIR / "experiments" / "retinanet_mnv3s_128_tiny12e.py"
SIZE = 32
# Original sizes and the bright square of each fake image, xyxy pixels of the 32 x 32 input.
IMAGES = {"a": ((1024, 512), (4, 8, 12, 20)), "b": ((800, 800), (16, 16, 28, 24))}


def frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["image_id", "x1", "y1", "x2", "y2", "score", "label"])


def test_cap_keeps_the_floor_and_the_best_per_image() -> None:
    pred = frame([("a", 0, 0, 1, 1, 0.5, 0), ("a", 0, 0, 2, 2, 0.9, 0), ("a", 0, 0, 3, 3, 0.7, 0),
                  ("b", 0, 0, 1, 1, 0.05, 0), ("b", 0, 0, 2, 2, 0.2, 0)])
    out = cap_predictions(pred, score_floor=0.1, max_per_image=2)
    assert list(zip(out["image_id"], out["score"], strict=True)) == [("a", 0.9), ("a", 0.7), ("b", 0.2)]


def test_fusion_averages_agreeing_boxes_and_halves_lonely_ones() -> None:
    first = frame([("a", 100, 100, 300, 200, 0.8, 0), ("a", 600, 0, 700, 100, 0.4, 0)])
    second = frame([("a", 110, 100, 310, 200, 0.6, 0)])
    out = fuse_passes([first, second], {"a": (1000, 500)}, iou_thr=0.5).sort_values("score", ascending=False)
    # The two overlapping boxes fuse into their score-weighted mean with the mean score; the lonely box keeps 1/2.
    x1 = (100 * 0.8 + 110 * 0.6) / 1.4
    assert out.iloc[0][["x1", "y1", "x2", "y2"]].tolist() == pytest.approx([x1, 100, x1 + 200, 200])
    assert out["score"].tolist() == pytest.approx([0.7, 0.2])
    assert out["label"].tolist() == [0, 0] and out["image_id"].tolist() == ["a", "a"]


def test_fusion_drops_boxes_outside_the_image() -> None:
    out = fuse_passes([frame([("a", 90, 10, 120, 20, 0.8, 0), ("a", 10, 10, 20, 20, 0.6, 0)])], {"a": (50, 50)})
    assert len(out) == 1
    assert out.iloc[0][["x1", "y1", "x2", "y2", "score"]].tolist() == pytest.approx([10, 10, 20, 20, 0.6])


def test_fusion_of_nothing_is_an_empty_table() -> None:
    out = fuse_passes([frame([]), frame([])], {})
    assert out.empty and list(out.columns) == ["image_id", "x1", "y1", "x2", "y2", "score", "label"]


class FakeDataModule:
    """Two fake images (a bright square each) in the `(images, targets, metas)` batch contract."""

    def __init__(self, data_cfg: Any, fold: int, view: str | None = None, seed: int = 0) -> None:
        self.fold = fold

    def setup(self, stage: str | None = None) -> None:
        pass

    def predict_dataloader_for(self, split: str, hflip: bool = False) -> Iterator[Any]:
        images, metas = [], []
        for image_id, ((w, h), (x1, y1, x2, y2)) in IMAGES.items():
            img = torch.zeros(3, SIZE, SIZE)
            img[:, y1:y2, x1:x2] = 1.0
            images.append(img.flip(-1) if hflip else img)
            metas.append({"image_id": image_id, "orig_width": w, "orig_height": h, "hflip": hflip})
        yield torch.stack(images), [{}] * len(images), metas


class BrightBoxDetector(torch.nn.Module):
    """Finds the bright square (score 0.9), plus a fixed corner box (0.3) and one below the floor (0.005)."""

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in images:
            ys, xs = torch.nonzero(img[0] > 0.5, as_tuple=True)
            found = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            boxes = torch.cat([found, torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 24.0, 4.0, 28.0]])])
            out.append({"boxes": boxes, "scores": torch.tensor([0.9, 0.3, 0.005]), "labels": torch.zeros(3).long()})
        return out


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A config whose fold-0 'best.ckpt' exists, with the bright-box detector standing in for the network."""
    torch.set_num_threads(1)
    cfg = load_config(TINY, [f"data.size={SIZE}", "predict.max_per_image=5"])
    save_best_with_stand_in(cfg, LitDetector, BrightBoxDetector(), {"val_score": 0.25, "val_threshold": 0.4},
                            monkeypatch)
    return cfg


def save_best_with_stand_in(cfg: Any, module_cls: type, stand_in: torch.nn.Module, record: dict[str, float],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Write fold 0's 'best.ckpt' of `cfg` (untrained weights, validation `record`) and make `module_cls` predict
    with `stand_in` instead of the network."""
    module = module_cls(cfg.to_dict())
    ckpt = paths.checkpoints_dir(cfg.experiment, 0) / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "cxrdet": record}, ckpt)
    monkeypatch.setattr(module_cls, "inference_model", lambda self: stand_in)


def expected_square(image_id: str) -> list[float]:
    (w, h), (x1, y1, x2, y2) = IMAGES[image_id]
    sx, sy = w / SIZE, h / SIZE
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def test_predict_writes_original_pixel_boxes_above_the_floor(trained: Any) -> None:
    out = predict(trained, 0, "oof", datamodule_cls=FakeDataModule)
    assert out == paths.predictions_path(trained.experiment, 0, "oof")
    pred = pd.read_parquet(out)
    assert list(pred.columns) == ["image_id", "x1", "y1", "x2", "y2", "score", "label"]
    assert pred["score"].min() >= 0.01  # the 0.005 box is below predict.score_floor
    for image_id in IMAGES:
        rows = pred[pred["image_id"] == image_id]
        assert rows["score"].tolist() == pytest.approx([0.9, 0.3])
        assert rows.iloc[0][["x1", "y1", "x2", "y2"]].tolist() == pytest.approx(expected_square(image_id))
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["tta"] == "none" and side["val_threshold"] == 0.4 and side["n_images"] == 2 and side["n_boxes"] == 4
    assert side["checkpoint"].endswith("best.ckpt")


def test_hflip_tta_finds_the_same_square_and_halves_unconfirmed_boxes(trained: Any) -> None:
    out = predict(trained, 0, "test", tta="hflip", datamodule_cls=FakeDataModule)
    pred = pd.read_parquet(out)
    assert out.name == "test.parquet"
    for image_id in IMAGES:
        rows = pred[pred["image_id"] == image_id].reset_index(drop=True)
        # The square is found in both passes at the same original place: fused at full score.
        assert rows.loc[0, "score"] == pytest.approx(0.9)
        assert rows.loc[0, ["x1", "y1", "x2", "y2"]].tolist() == pytest.approx(expected_square(image_id))
        # The fixed corner box lands on opposite corners in the two passes: two boxes at half score.
        assert rows["score"].tolist()[1:] == pytest.approx([0.15, 0.15])
        w = IMAGES[image_id][0][0]
        assert sorted(rows["x1"].tolist()[1:]) == pytest.approx([0.0, w - 8 * w / SIZE])


def test_predict_errors(trained: Any) -> None:
    with pytest.raises(ConfigError, match="split='val'"):
        predict(trained, 0, "val", datamodule_cls=FakeDataModule)
    with pytest.raises(ConfigError, match="tta='vflip'"):
        predict(trained, 0, "oof", tta="vflip", datamodule_cls=FakeDataModule)
    with pytest.raises(CxrdetError, match="fold1/checkpoints/best.ckpt not found: train first"):
        predict(trained, 1, "oof", datamodule_cls=FakeDataModule)
    with pytest.raises(CxrdetError, match="nowhere.ckpt not found"):
        predict(trained, 0, "oof", checkpoint="nowhere.ckpt", datamodule_cls=FakeDataModule)


def test_a_detector_that_finds_nothing_writes_an_empty_table(trained: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    class Nothing(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0).long()}
                    for _ in images]

    monkeypatch.setattr(LitDetector, "inference_model", lambda self: Nothing())
    pred = pd.read_parquet(predict(trained, 0, "oof", tta="hflip", datamodule_cls=FakeDataModule))
    assert pred.empty and pred["score"].dtype == np.float64


# ---- classifiers (task='classify'): per-image probabilities ----

CLS_TINY = paths.CONFIGS_DIR / "experiments" / "cls_regnetx002_128_tiny12e.py"


class BrightnessClassifier(torch.nn.Module):
    """Two classes: 'bright' (logit 10 x mean brightness - 0.5: the same on a mirrored image) and 'left' (logit
    10 x (mean of the left half - mean of the right half): its sign flips on a mirrored image)."""

    classes = ("bright", "left")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grey = images[:, 0]
        half = grey.shape[-1] // 2
        left = grey[..., :half].mean(dim=(1, 2)) - grey[..., half:].mean(dim=(1, 2))
        return torch.stack([10 * grey.mean(dim=(1, 2)) - 0.5, 10 * left], dim=1)


@pytest.fixture
def trained_classifier(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A classifier config whose fold-0 'best.ckpt' exists, with `BrightnessClassifier` standing in."""
    from cxrdet.models.lit_classifier import LitClassifier

    torch.set_num_threads(1)
    cfg = load_config(CLS_TINY, [f"data.size={SIZE}", "data.classes=('bright','left')"])
    save_best_with_stand_in(cfg, LitClassifier, BrightnessClassifier(), {"val_score": 0.8, "val_threshold": 0.3},
                            monkeypatch)
    return cfg


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + np.exp(-x))


def test_classifier_predict_writes_one_probability_column_per_class(trained_classifier: Any) -> None:
    out = predict(trained_classifier, 0, "oof", datamodule_cls=FakeDataModule)
    assert out == paths.predictions_path(trained_classifier.experiment, 0, "oof")
    probs = pd.read_parquet(out)
    assert list(probs.columns) == ["image_id", "bright", "left"] and probs["image_id"].tolist() == ["a", "b"]
    # Both squares cover 96 of the 32 x 32 = 1024 pixels: mean 0.09375, 'bright' logit 0.4375. Square a lies in the
    # left half (mean 96 / 512 there), square b in the right half: 'left' logits +1.875 and -1.875.
    assert probs["bright"].tolist() == pytest.approx([sigmoid(0.4375)] * 2)
    assert probs["left"].tolist() == pytest.approx([sigmoid(1.875), sigmoid(-1.875)])
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["task"] == "classify" and side["classes"] == ["bright", "left"] and side["n_images"] == 2
    assert side["tta"] == "none" and side["val_score"] == 0.8 and side["checkpoint"].endswith("best.ckpt")


def test_classifier_hflip_tta_averages_the_two_passes(trained_classifier: Any) -> None:
    probs = pd.read_parquet(predict(trained_classifier, 0, "test", tta="hflip", datamodule_cls=FakeDataModule))
    assert probs["image_id"].tolist() == ["a", "b"]
    # 'bright' is the same on both passes; 'left' averages sigmoid(x) and sigmoid(-x): 0.5.
    assert probs["bright"].tolist() == pytest.approx([sigmoid(0.4375)] * 2)
    assert probs["left"].tolist() == pytest.approx([0.5, 0.5])


# ---- multi-scale + flip test-time augmentation ----


def test_tta_forms_parse_and_name_themselves() -> None:
    from cxrdet.predict import TtaSpec, parse_tta

    assert parse_tta(None) == parse_tta("none") == TtaSpec()
    assert parse_tta("hflip") == TtaSpec(hflip=True)
    spec = parse_tta({"scales": [512, 448, 576, 512], "hflip": True})
    assert spec == TtaSpec(scales=(512, 448, 576), hflip=True) and spec.name == "scales=512/448/576+hflip"
    assert parse_tta(spec.name) == spec  # the sidecar's and --tta's form reads back
    assert parse_tta("scales=448/512") == TtaSpec(scales=(448, 512))
    # The plain pass first, then the other sides, each also mirrored.
    assert spec.passes(512) == [(512, False), (512, True), (448, False), (448, True), (576, False), (576, True)]
    assert TtaSpec().passes(64) == [(64, False)]
    for bad, match in [("vflip", r"tta='vflip': expected 'none', 'hflip'"), ({"scale": [1]}, r"unknown key\(s\) scale"),
                       ({"scales": 512}, r"predict.tta.scales=512: expected a non-empty list"),
                       ({"scales": ["big"]}, r"predict.tta.scales=\['big'\]: expected a list of input sides"),
                       ({"scales": [4]}, r"at least 8 pixels"), ("scales=448+vflip", r"tta='scales=448\+vflip'")]:
        with pytest.raises(ConfigError, match=match):
            parse_tta(bad)


@pytest.mark.parametrize(("side", "hflip"), [(32, True), (64, False), (64, True), (48, True), (24, False)])
def test_a_flipped_rescaled_pass_maps_its_boxes_back_to_the_original_pixels(trained: Any, side: int, hflip: bool
                                                                          ) -> None:
    from cxrdet.predict import run_pass
    from cxrdet.tasks import get_task

    loader = FakeDataModule(None, 0).predict_dataloader_for("test", hflip=hflip)
    table, sizes = run_pass(BrightBoxDetector(), loader, SIZE, torch.device("cpu"), get_task(trained), scale=side)
    for image_id, ((w, h), _) in IMAGES.items():
        square = table[(table["image_id"] == image_id) & np.isclose(table["score"], 0.9)]
        assert len(square) == 1 and sizes[image_id] == (w, h)
        # The detector saw the batch at `side` (mirrored or not) and boxed the square in its pixels; mapped back, the
        # box is the square's original place, to the resize's half a pixel of `side`.
        tol = 0.5 * max(w, h) / side + 1e-6
        assert square.iloc[0][["x1", "y1", "x2", "y2"]].tolist() == pytest.approx(expected_square(image_id), abs=tol)


def test_multiscale_flip_tta_fuses_the_passes_and_names_them(trained: Any) -> None:
    out = predict(trained, 0, "test", tta="scales=32/64+hflip", datamodule_cls=FakeDataModule)
    pred = pd.read_parquet(out)
    for image_id in IMAGES:
        rows = pred[pred["image_id"] == image_id].reset_index(drop=True)
        # All four passes found the square at the same original place (2x upsampling keeps its edges exactly).
        assert rows.loc[0, "score"] == pytest.approx(0.9)
        assert rows.loc[0, ["x1", "y1", "x2", "y2"]].tolist() == pytest.approx(expected_square(image_id))
    assert json.loads(out.with_suffix(".json").read_text())["tta"] == "scales=32/64+hflip"
    # The config's dict form does the same.
    cfg = load_config(TINY, [f"data.size={SIZE}", "predict.max_per_image=5",
                             "predict.tta={'scales': [32, 64], 'hflip': True}"])
    again = pd.read_parquet(predict(cfg, 0, "test", datamodule_cls=FakeDataModule))
    pd.testing.assert_frame_equal(again, pred)


def test_torchvision_detectors_really_run_at_the_pass_side() -> None:
    from cxrdet.config import to_dict
    from cxrdet.models.factory import create_detector

    torch.set_num_threads(1)
    det = create_detector(to_dict(load_config(TINY, ["data.size=64"]))).eval()
    seen: list[tuple[int, ...]] = []
    det.net.backbone.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        det(torch.rand(1, 3, 96, 96))  # torchvision resizes it to the detector's 64
        with det.at_size(96):
            out = det(torch.rand(1, 3, 96, 96))
        det(torch.rand(1, 3, 96, 96))  # restored
    assert seen == [(64, 64), (96, 96), (64, 64)]
    assert (out[0]["boxes"] <= 96).all()
