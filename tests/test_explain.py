"""Grad-CAM explanations: class and image choice, the overlay, and overlays of a tiny trained classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cxrdet import paths
from cxrdet.cli import app
from cxrdet.config import load_config
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.explain import choose_classes, grad_cams, original_pixels, overlay, pick_images, stretch
from cxrdet.models.lit_classifier import LitClassifier
from cxrdet.runs import Run


def test_classes_auto_takes_the_top_four_by_auroc_or_all_when_fewer() -> None:
    ranked = ["E", "B", "A", "F", "C"]
    assert choose_classes(ranked, list("ABCDEF")) == ["E", "B", "A", "F"]
    assert choose_classes(["B", "A"], list("ABCDEF")) == ["B", "A"]
    assert choose_classes(ranked, list("ABCDEF"), "C, A,C") == ["C", "A"]
    assert choose_classes(ranked, list("ABCDEF"), ["D"]) == ["D"]  # a named class need not be scorable
    with pytest.raises(ConfigError, match="unknown class\\(es\\) \\['Z'\\]; expected 'auto' or names among A, B"):
        choose_classes(ranked, list("AB"), "A,Z")
    with pytest.raises(ConfigError, match="no class has one"):
        choose_classes([], list("AB"))


def test_images_are_picked_by_probability_in_turn_per_class() -> None:
    probs = pd.DataFrame({"A": [0.9, 0.8, 0.1, 0.2], "B": [0.95, 0.1, 0.7, 0.3]}, index=["w", "x", "y", "z"])
    # A ranks w, x, z, y; B ranks w, y, z, x. Rank 1: A's w, B's w (taken); rank 2: A's x, B's y; rank 3: A's z.
    assert pick_images(probs, ["A", "B"], 3) == ["w", "x", "y"]
    assert pick_images(probs, ["A", "B"], 4) == ["w", "x", "y", "z"]
    assert pick_images(probs, ["B"], 10) == ["w", "y", "z", "x"]


def test_overlay_keeps_the_size_colours_the_heatmap_and_captions_the_top() -> None:
    pixels = np.full((80, 80), 0.5, dtype=np.float32)
    heatmap = np.zeros((80, 80), dtype=np.float32)
    heatmap[50:70, 10:30] = 1.0
    image = np.asarray(overlay(pixels, heatmap, "Mass p=0.91 truth=1"))
    assert image.shape == (80, 80, 3)
    hot, cold = image[60, 20].astype(int), image[60, 60].astype(int)
    assert hot[0] > hot[2] + 50 and cold[2] > cold[0] + 50  # jet: red where the map is 1, blue where it is 0
    assert image[:2].mean() < image[40:48].mean() - 30  # the dark caption band
    wide = np.asarray(overlay(np.full((40, 90), 0.5, dtype=np.float32), np.zeros((40, 90), np.float32), "x"))
    assert wide.shape == (40, 90, 3)  # a non-square original keeps its shape


def test_original_pixels_reads_the_source_png_of_the_right_size_only(tmp_path: Path) -> None:
    grey = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    Image.fromarray(grey, mode="L").save(tmp_path / "x.png")
    np.testing.assert_allclose(original_pixels(str(tmp_path / "x.png"), 30, 20), grey / 255.0, atol=1e-6)
    assert original_pixels(str(tmp_path / "x.png"), 20, 30) is None  # not the size the cache recorded
    assert original_pixels(str(tmp_path / "gone.dcm"), 30, 20) is None
    assert original_pixels(None, 30, 20) is None
    (tmp_path / "bad.dcm").write_bytes(b"not a dicom")
    assert original_pixels(str(tmp_path / "bad.dcm"), 30, 20) is None


def test_stretch_resizes_bilinearly_to_width_by_height() -> None:
    small = np.array([[0.0, 1.0]], dtype=np.float32)
    big = stretch(small, 4, 3)
    assert big.shape == (3, 4) and big[:, 0].max() < 0.3 and big[:, -1].min() > 0.7
    assert np.all(np.diff(big[0]) >= 0)  # monotone from the 0 side to the 1 side
    assert stretch(big, 4, 3) is not None and np.array_equal(stretch(big, 4, 3), big)


@pytest.fixture
def classifier_cfg(tiny_classifier_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CXRDET_OUTPUTS", str(tiny_classifier_run["outputs"]))
    torch.set_num_threads(1)
    return load_config(tiny_classifier_run["config"], tiny_classifier_run["options"])


@pytest.mark.slow
def test_the_heatmap_is_hotter_on_the_square_the_classifier_detects(classifier_cfg: Any) -> None:
    from cxrdet.data.classify import ClassificationDataModule

    checkpoint = Run(classifier_cfg.experiment, 0).final_checkpoint(cfg=classifier_cfg)
    model = LitClassifier.load_for_inference(classifier_cfg, checkpoint)
    dm = ClassificationDataModule(classifier_cfg["data"], 0)
    dm.setup()
    dataset = dm.eval_dataset("oof").base  # detection items: the square's box in input pixels
    inside, outside = [], []
    for i in range(len(dataset)):
        image, target, _ = dataset[i]
        if len(target["boxes"]) == 0:
            continue
        maps, probs = grad_cams(model, image, [0])
        assert maps.shape == (1, 64, 64) and 0.0 <= maps.min() and maps.max() <= 1.0 and 0 < probs[0] < 1
        x1, y1, x2, y2 = target["boxes"][0].round().int().tolist()
        box = np.zeros((64, 64), dtype=bool)
        box[y1:y2, x1:x2] = True
        inside.append(maps[0][box].mean())
        outside.append(maps[0][~box].mean())
    # Seen on this run: 0.48 inside against 0.21 outside, over 10 positive OOF images.
    assert len(inside) >= 8 and np.mean(inside) > 1.5 * np.mean(outside)


@pytest.mark.slow
def test_explain_command_writes_captioned_overlays_of_the_top_oof_images(classifier_cfg: Any,
                                                                        tiny_classifier_run: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "explain"
    options = [a for o in tiny_classifier_run["options"] for a in ("-o", o)]
    result = CliRunner().invoke(app, ["explain", str(tiny_classifier_run["config"]), "--fold", "0", "--n", "3",
                                      "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    # The squares data's sources do not exist: the 64 px cached images are stretched back to the original 1024 px.
    assert "3 overlays of 3 images at their original size (heatmaps from the 64 x 64 px input; drawn on 3 cache)" \
        in result.output
    table = pd.read_csv(out / "explain.csv")
    oof = pd.read_parquet(paths.predictions_path(tiny_classifier_run["experiment"], 0, "oof")).set_index("image_id")
    top3 = oof["opacity"].sort_values(ascending=False, kind="stable").index[:3].tolist()
    assert table["image_id"].tolist() == top3 and set(table["role"]) == {"oof"} and set(table["class"]) == {"opacity"}
    # The probability is the model's own on the same input as prediction: equal to the OOF file's.
    np.testing.assert_allclose(table["probability"], oof.loc[top3, "opacity"], rtol=0, atol=1e-5)
    truth = {f"img{i:03d}": int(i % 3 != 2) for i in range(45)}  # the squares data: every third image negative
    assert table["truth"].tolist() == [truth[i] for i in top3]
    assert set(table["drawn_on"]) == {"cache"} and set(table["width"]) == {1024} and set(table["height"]) == {1024}
    for row in table.itertuples():
        with Image.open(out / row.file) as image:
            assert image.format == "PNG" and image.size == (1024, 1024) and image.mode == "RGB"
            rgb = np.asarray(image).astype(int)
        assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 40).any()  # coloured by the heatmap, not a grey copy


@pytest.mark.slow
def test_explain_named_test_image_and_class_needs_no_oof(classifier_cfg: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrdet.tasks import explain

    with monkeypatch.context() as mp:  # no OOF file anywhere: named images and classes must not need one
        mp.setattr(paths, "predictions_path", lambda *_: tmp_path / "absent.parquet")
        result = explain(classifier_cfg, 1, image_ids=["img045", "img003"], classes="opacity", out_dir=tmp_path)
    # img045 is a test image (no truth); img003 is in fold 1's held-out images.
    assert result.table[["image_id", "role"]].values.tolist() == [["img045", "test"], ["img003", "oof"]]
    assert result.table["truth"].isna().tolist() == [True, False]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["img003_opacity.png", "img045_opacity.png"]
    with pytest.raises(ConfigError, match="--image-id nope: not in the prepare cache"):
        explain(classifier_cfg, 1, image_ids=["nope"], classes="opacity", out_dir=tmp_path)
    with pytest.raises(CxrdetError, match="fold2/oof.parquet not found: choosing classes \\(auto\\)"):
        explain(classifier_cfg, 2, image_ids=["img003"], out_dir=tmp_path)  # fold 2 was never predicted


def test_explain_refuses_a_detector_config() -> None:
    from cxrdet.tasks import explain

    cfg = load_config(paths.CONFIGS_DIR / "experiments" / "retinanet_mnv3s_128_tiny12e.py")
    with pytest.raises(ConfigError, match="Grad-CAM explains classifiers"):
        explain(cfg, 0)
