"""ONNX export: the sidecar, onnxruntime parity with PyTorch, and the refused formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cxrdet import paths
from cxrdet.cli import app
from cxrdet.config import load_config
from cxrdet.data.prepare import load_image
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.export import OnnxDetector, export, load_detector
from cxrdet.train import checkpoint_record, final_checkpoint

TINY = paths.CONFIGS_DIR / "experiments" / "retinanet_mnv3s_128_tiny12e.py"
# Parity tolerances. Both runtimes compute in float32 with different convolution kernels (MLAS vs. oneDNN/ATen), so
# logits differ in the last bits (~1e-6 relative, seen ~1e-7 on scores). A box decodes as anchor + exp(delta) * side,
# which amplifies a 1e-6 delta to ~1e-4 px at these sizes; 0.01 px (1/100 of an input pixel) bounds that with room
# and is far below anything a reader or the IoU-based metric could notice (an IoU changes by < 1e-3).
BOX_ATOL_PX = 0.01
SCORE_ATOL = 1e-5


@pytest.fixture(scope="module")
def exported(tiny_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny run exported to ONNX through the CLI."""
    out = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRDET_OUTPUTS", str(tiny_run["outputs"]))
        args = ["export", str(tiny_run["config"]), "--fold", "0", "--format", "onnx", "--out", str(out)]
        result = CliRunner().invoke(app, [*args, *[a for o in tiny_run["options"] for a in ("-o", o)]])
        assert result.exit_code == 0, result.output
        cfg = load_config(tiny_run["config"], tiny_run["options"])
        ckpt = final_checkpoint(cfg, 0)
    return {"model": out / "model.onnx", "cfg": cfg, "checkpoint": ckpt, "printed": result.output.strip()}


@pytest.mark.slow
def test_sidecar_documents_input_preprocessing_and_postprocessing(exported: dict[str, Any]) -> None:
    assert exported["printed"] == str(exported["model"])
    meta = json.loads(exported["model"].with_suffix(".json").read_text())
    size = exported["cfg"]["data"]["size"]
    assert meta["input"] == {"name": "image", "shape": [1, 3, size, size], "dtype": "float32", "range": [0.0, 1.0],
                             "channels": "greyscale repeated on 3 channels"}
    assert meta["postprocessing_inside_graph"] == {"score_floor": 0.01, "nms_iou": 0.5, "max_per_image": 20}
    norm = meta["normalisation_inside_graph"]
    assert len(norm["mean"]) == 3 and len(norm["std"]) == 3 and all(s > 0 for s in norm["std"])
    assert meta["classes"] == list(exported["cfg"]["data"]["classes"]) and meta["fold"] == 0
    assert meta["threshold"] == pytest.approx(checkpoint_record(exported["checkpoint"])["val_threshold"])
    assert len(meta["model_sha256"]) == 64 and any("resize" in step for step in meta["preprocessing"])


@pytest.mark.slow
def test_onnxruntime_boxes_and_scores_match_pytorch(exported: dict[str, Any]) -> None:
    cfg, size = exported["cfg"], int(exported["cfg"]["data"]["size"])
    detector = load_detector(cfg, exported["checkpoint"])
    runner = OnnxDetector(exported["model"], threads=1)
    images = [load_image(cfg["data"]["cache"], "train", f"img{i:03d}") for i in range(6)]
    images.append(np.zeros((size, size), dtype=np.uint8))  # no box at all: the graph must return N = 0 cleanly
    n_boxes = []
    for pixels in images:
        image = np.broadcast_to(pixels.astype(np.float32)[None, None] / 255.0, (1, 3, size, size)).copy()
        with torch.inference_mode():
            ref = detector(torch.from_numpy(image))[0]
        boxes, scores, labels = runner(image)
        assert boxes.shape == tuple(ref["boxes"].shape) and boxes.dtype == np.float32
        np.testing.assert_allclose(boxes, ref["boxes"].numpy(), rtol=0, atol=BOX_ATOL_PX)
        np.testing.assert_allclose(scores, ref["scores"].numpy(), rtol=0, atol=SCORE_ATOL)
        np.testing.assert_array_equal(labels, ref["labels"].numpy())
        n_boxes.append(len(boxes))
    assert max(n_boxes) > 0  # the comparison saw boxes, not only empty outputs


def test_coreml_is_refused_with_the_reason() -> None:
    result = CliRunner().invoke(app, ["export", str(TINY), "--fold", "0", "--format", "coreml"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "Core ML export is not available on this platform" in text and "--format onnx" in text


def test_unknown_format_and_missing_checkpoint() -> None:
    cfg = load_config(TINY)
    with pytest.raises(ConfigError, match="format='tflite': expected one of \\['onnx', 'coreml'\\]"):
        export(cfg, 0, fmt="tflite")
    with pytest.raises(CxrdetError, match="train first"):
        export(cfg, 0)


def test_onnx_without_sidecar_says_so(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    with pytest.raises(CxrdetError, match="model.json not found: an exported model needs its sidecar JSON"):
        OnnxDetector(model)


def test_inference_config_switches_off_starting_weights_only() -> None:
    from cxrdet.export import inference_config

    cfg = {"model": {"type": "retinanet", "backbone": {"name": "x", "pretrained": True, "checkpoint": "/w.pth"}},
           "data": {"size": 64}}
    plain = inference_config(cfg)
    assert plain["model"]["backbone"] == {"name": "x", "pretrained": False, "checkpoint": None}
    assert cfg["model"]["backbone"]["pretrained"] is True  # the caller's config is left as it was
    assert inference_config({"model": {"backbone": {"name": "y"}}})["model"]["backbone"] == {"name": "y"}


@pytest.mark.parametrize("experiment", ["fcos_mnv3s_128_tiny12e", "retinanet_mnv3s_128_tiny12e"])
def test_graph_of_each_tiny_detector_matches_pytorch(experiment: str, tmp_path: Path) -> None:
    from cxrdet.config import to_dict
    from cxrdet.export import export_onnx
    from cxrdet.models.factory import create_detector

    torch.set_num_threads(1)
    cfg = load_config(paths.CONFIGS_DIR / "experiments" / f"{experiment}.py", ["data.size=64"])
    torch.manual_seed(0)
    detector = create_detector(to_dict(cfg)).eval()  # random weights: many boxes pass the floor, NMS has work
    model = export_onnx(detector, 64, tmp_path / "model.onnx")
    (tmp_path / "model.json").write_text('{"input": {"shape": [1, 3, 64, 64]}}')
    runner = OnnxDetector(model, threads=1)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = detector(image)[0]
    boxes, scores, labels = runner(image.numpy())
    assert len(boxes) == len(ref["boxes"]) > 0
    np.testing.assert_allclose(boxes, ref["boxes"].numpy(), rtol=0, atol=BOX_ATOL_PX)
    np.testing.assert_allclose(scores, ref["scores"].numpy(), rtol=0, atol=SCORE_ATOL)
    np.testing.assert_array_equal(labels, ref["labels"].numpy())
