"""Single-study inference: boxes back in original pixels, overlays, bad DICOMs reported while the rest go on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from cxrdet.cli import app
from cxrdet.config import load_config
from cxrdet.data.dicom import read_dicom
from cxrdet.data.prepare import resize_square
from cxrdet.errors import CxrdetError, DicomError
from cxrdet.deploy.infer import BOX_COLUMNS, GREEN, detect, draw_overlay, infer, preprocess
from cxrdet.runs import Run
from cxrdet.tasks import load_model

GOOD = ["CT_small.dcm", "JPEG2000.dcm"]  # 128 x 128 16-bit CT; 256 x 1024 JPEG 2000
BAD = ["rtplan.dcm", "MR_truncated.dcm", "SC_rgb.dcm"]  # no pixel data; truncated; colour


class FakeModel:
    """A 64-px model that always finds one box at 0.9 and one at 0.2 (xyxy pixels of its input)."""

    size = 64
    classes = ["Lung Opacity"]
    threshold = 0.3
    description = "fake"

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert image.shape == (1, 3, 64, 64) and image.dtype == np.float32
        boxes = np.array([[8, 16, 24, 48], [0, 0, 4, 4]], dtype=np.float32)
        return boxes, np.array([0.9, 0.2], dtype=np.float32), np.array([0, 0])


def test_detect_keeps_the_threshold_and_maps_boxes_to_original_pixels() -> None:
    pixels = np.zeros((256, 128), dtype=np.float32)  # H = 256, W = 128: x scales by 2, y by 4
    out = detect(FakeModel(), pixels, threshold=0.3)
    assert out[["x1", "y1", "x2", "y2"]].values.tolist() == [[16, 64, 48, 192]]
    assert out["score"].tolist() == pytest.approx([0.9]) and out["label"].tolist() == [0]
    assert len(detect(FakeModel(), pixels, threshold=0.1)) == 2


def test_preprocess_is_the_prepare_cache_resize() -> None:
    pixels = np.random.default_rng(0).random((100, 80)).astype(np.float32)
    x = preprocess(pixels, 32)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, 2], resize_square(pixels, 32) / np.float32(255.0))


def test_overlay_draws_green_boxes_and_shrinks_big_images(tmp_path: Path) -> None:
    boxes = pd.DataFrame({"x1": [200.0], "y1": [400.0], "x2": [1000.0], "y2": [1600.0], "score": [0.8], "label": [0]})
    out = draw_overlay(np.full((2048, 1536), 0.5, dtype=np.float32), boxes, ["Lung Opacity"], tmp_path / "a.png")
    with Image.open(out) as image:
        assert image.size == (768, 1024)  # 1024 / 2048 = half size
        rgb = np.asarray(image.convert("RGB"))
    assert tuple(rgb[300, 100]) == GREEN  # left edge at x = 200 / 2, between y = 200 and 800
    assert tuple(rgb[600, 400]) == (128, 128, 128)  # inside the box: the image untouched


@pytest.fixture
def dicoms() -> list[Path]:
    return [Path(get_testdata_file(n)) for n in [GOOD[0], BAD[0], BAD[1], GOOD[1], BAD[2]]]


def reader_error(path: Path) -> str:
    with pytest.raises(DicomError) as err:
        read_dicom(path)
    return str(err.value)


def test_bad_dicoms_get_the_readers_errors_and_the_others_are_processed(dicoms: list[Path], tmp_path: Path) -> None:
    result = infer(FakeModel(), dicoms, tmp_path / "out")
    assert result.errors == {str(p): reader_error(p) for p in dicoms if p.name in BAD}
    assert sorted(set(result.boxes["image_id"])) == ["CT_small", "JPEG2000"]
    # Default threshold: the model's (0.3), so one box per study, in each study's own pixels.
    ct = result.boxes[result.boxes["image_id"] == "CT_small"]
    assert ct[["x1", "y1", "x2", "y2"]].values.tolist() == [[16, 32, 48, 96]]  # 128 x 128: x2 both axes
    jp = result.boxes[result.boxes["image_id"] == "JPEG2000"]
    assert jp[["x1", "y1", "x2", "y2"]].values.tolist() == [[32, 256, 96, 768]]  # W 256, H 1024: x4, x16
    assert list(result.boxes.columns) == list(BOX_COLUMNS) and set(result.boxes["class"]) == {"Lung Opacity"}

    out = tmp_path / "out"
    table = pd.read_csv(out / "boxes.csv")
    assert len(table) == 2 and table["score"].tolist() == pytest.approx([0.9, 0.9])
    report = json.loads((out / "boxes.json").read_text())
    assert report["threshold"] == 0.3 and [s["image_id"] for s in report["studies"]] == ["CT_small", "JPEG2000"]
    assert report["studies"][0]["boxes"][0]["class"] == "Lung Opacity"
    assert {e["source"] for e in report["errors"]} == {str(p) for p in dicoms if p.name in BAD}
    with Image.open(out / "CT_small.png") as a, Image.open(out / "JPEG2000.png") as b:
        assert a.size == (128, 128) and b.size == (256, 1024)


@pytest.mark.slow
def test_cli_runs_onnx_and_checkpoint_alike_and_exits_1_on_bad_files(tiny_run: dict[str, Any], dicoms: list[Path],
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRDET_OUTPUTS", str(tiny_run["outputs"]))
    cfg = load_config(tiny_run["config"], tiny_run["options"])
    ckpt = Run(cfg.experiment, 0).final_checkpoint(cfg=cfg)
    options = [a for o in tiny_run["options"] for a in ("-o", o)]
    runner = CliRunner()
    assert runner.invoke(app, ["export", str(tiny_run["config"]), "--fold", "0", "--out", str(tmp_path / "m"),
                               *options]).exit_code == 0
    tables = {}
    for kind, model in (("onnx", tmp_path / "m" / "model.onnx"), ("torch", ckpt)):
        out = tmp_path / kind
        result = runner.invoke(app, ["infer", "--model", str(model), "--out", str(out), "--threshold", "0.0",
                                     "--dicom", *[str(p) for p in dicoms]])
        assert result.exit_code == 1
        text = " ".join(result.output.split())
        assert "boxes in 2 studies" in text
        for p in dicoms[1:3]:
            assert " ".join(reader_error(p).split()) in text
        tables[kind] = pd.read_csv(out / "boxes.csv")
        assert (out / "CT_small.png").is_file() and (out / "JPEG2000.png").is_file()
    onnx, torch_ = tables["onnx"], tables["torch"]
    assert len(onnx) > 0 and onnx["image_id"].tolist() == torch_["image_id"].tolist()
    # Boxes in original pixels: the 0.01 input-pixel tolerance of tests/test_export.py times the upscale (<= 16).
    np.testing.assert_allclose(onnx[["x1", "y1", "x2", "y2"]], torch_[["x1", "y1", "x2", "y2"]], atol=0.16)
    np.testing.assert_allclose(onnx["score"], torch_["score"], atol=1e-5)


def test_model_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrdetError, match="not found: expected an exported .onnx file"):
        load_model(tmp_path / "missing.onnx")
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(CxrdetError, match="expected a .onnx file \\(cxrdet export\\) or a .ckpt checkpoint, got '.pt'"):
        load_model(tmp_path / "m.pt")
    result = CliRunner().invoke(app, ["infer", "--model", str(tmp_path / "m.pt")])
    assert result.exit_code == 1 and "no DICOM files" in result.output


class FakeClassifier:
    """A 64-px two-class classifier whose probabilities are the input's mean and one minus it."""

    size = 64
    classes = ["Effusion", "Mass"]
    threshold = None
    description = "fake classifier"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        assert images.shape == (1, 3, 64, 64) and images.dtype == np.float32
        mean = float(images.mean())
        return np.array([[mean, 1.0 - mean]], dtype=np.float32)


def test_classify_writes_probabilities_per_study_and_the_readers_errors(dicoms: list[Path], tmp_path: Path) -> None:
    from cxrdet.deploy.infer import classify

    result = classify(FakeClassifier(), dicoms, tmp_path)
    assert result.errors == {str(p): reader_error(p) for p in dicoms if p.name in BAD}
    table = pd.read_csv(tmp_path / "probabilities.csv")
    assert table.columns.tolist() == ["image_id", "source", "Effusion", "Mass"]
    assert table["image_id"].tolist() == ["CT_small", "JPEG2000"]
    ct = preprocess(read_dicom(dicoms[0]).pixels, 64)
    assert table["Effusion"].iloc[0] == pytest.approx(float(ct.mean()), abs=1e-6)  # the prepare-cache resize
    np.testing.assert_allclose(table["Effusion"] + table["Mass"], 1.0, atol=1e-6)
    report = json.loads((tmp_path / "probabilities.json").read_text())
    assert report["classes"] == ["Effusion", "Mass"] and report["threshold"] is None
    assert [s["image_id"] for s in report["studies"]] == ["CT_small", "JPEG2000"] and len(report["errors"]) == 3
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.slow
def test_cli_classifies_with_an_onnx_export_and_a_checkpoint_alike(tiny_classifier_run: dict[str, Any],
                                                                   dicoms: list[Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRDET_OUTPUTS", str(tiny_classifier_run["outputs"]))
    cfg = load_config(tiny_classifier_run["config"], tiny_classifier_run["options"])
    options = [a for o in tiny_classifier_run["options"] for a in ("-o", o)]
    runner = CliRunner()
    assert runner.invoke(app, ["export", str(tiny_classifier_run["config"]), "--fold", "0", "--out",
                               str(tmp_path / "m"), *options]).exit_code == 0
    tables = {}
    checkpoint = Run(cfg.experiment, 0).final_checkpoint(cfg=cfg)
    for kind, model in (("onnx", tmp_path / "m" / "model.onnx"), ("torch", checkpoint)):
        result = runner.invoke(app, ["infer", "--model", str(model), "--out", str(tmp_path / kind),
                                     "--dicom", *[str(p) for p in dicoms]])
        assert result.exit_code == 1  # three of the five files cannot be read
        assert "probabilities of 1 classes for 2 studies" in " ".join(result.output.split())
        tables[kind] = pd.read_csv(tmp_path / kind / "probabilities.csv")
    assert tables["onnx"]["image_id"].tolist() == tables["torch"]["image_id"].tolist() == ["CT_small", "JPEG2000"]
    # The probability tolerance of tests/test_export.py (onnxruntime against PyTorch on the same input).
    np.testing.assert_allclose(tables["onnx"]["opacity"], tables["torch"]["opacity"], rtol=0, atol=1e-5)
    meta = json.loads((tmp_path / "onnx" / "probabilities.json").read_text())
    assert meta["threshold"] == pytest.approx(json.loads((tmp_path / "m" / "model.json").read_text())["threshold"])
