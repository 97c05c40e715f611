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
from cxrdet.deploy.export import OnnxDetector, write_manifest
from cxrdet.models.lit_classifier import LitClassifier
from cxrdet.models.lit_detector import LitDetector
from cxrdet.runs import Run, checkpoint_record
from cxrdet.tasks import export

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
    return export_through_cli(tiny_run, tmp_path_factory.mktemp("export"), "--format", "onnx")


def export_through_cli(run: dict[str, Any], out: Path, *extra: str) -> dict[str, Any]:
    """`cxrdet export` of a session run's fold 0 into `out`: the model file, config, checkpoint and printed line."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRDET_OUTPUTS", str(run["outputs"]))
        options = [a for o in run["options"] for a in ("-o", o)]
        result = CliRunner().invoke(app, ["export", str(run["config"]), "--fold", "0", *extra, "--out", str(out),
                                          *options])
        assert result.exit_code == 0, result.output
        cfg = load_config(run["config"], run["options"])
        ckpt = Run(cfg.experiment, 0).final_checkpoint(cfg=cfg)
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
    detector = LitDetector.load_for_inference(cfg, exported["checkpoint"])
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
    assert "Core ML export is not available for detectors" in text and "--format onnx" in text


def test_unknown_format_and_missing_checkpoint() -> None:
    cfg = load_config(TINY)
    with pytest.raises(ConfigError, match="format='tflite': expected one of \\['onnx', 'coreml', 'safetensors'\\]"):
        export(cfg, 0, fmt="tflite")
    with pytest.raises(CxrdetError, match="train first"):
        export(cfg, 0)


def test_onnx_without_sidecar_says_so(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    with pytest.raises(CxrdetError, match="model.json not found: an exported model needs its sidecar JSON"):
        OnnxDetector(model)


@pytest.mark.parametrize("experiment", ["fcos_mnv3s_128_tiny12e", "retinanet_mnv3s_128_tiny12e"])
def test_graph_of_each_tiny_detector_matches_pytorch(experiment: str, tmp_path: Path) -> None:
    from cxrdet.config import to_dict
    from cxrdet.deploy.export import export_onnx
    from cxrdet.models.factory import create_detector

    torch.set_num_threads(1)
    cfg = load_config(paths.CONFIGS_DIR / "experiments" / f"{experiment}.py", ["data.size=64"])
    torch.manual_seed(0)
    detector = create_detector(to_dict(cfg)).eval()  # random weights: many boxes pass the floor, NMS has work
    model = export_onnx(detector, 64, tmp_path / "model.onnx")
    (tmp_path / "model.json").write_text('{"input": {"shape": [1, 3, 64, 64]}}')
    write_manifest(tmp_path, [model, tmp_path / "model.json"])
    runner = OnnxDetector(model, threads=1)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = detector(image)[0]
    boxes, scores, labels = runner(image.numpy())
    assert len(boxes) == len(ref["boxes"]) > 0
    np.testing.assert_allclose(boxes, ref["boxes"].numpy(), rtol=0, atol=BOX_ATOL_PX)
    np.testing.assert_allclose(scores, ref["scores"].numpy(), rtol=0, atol=SCORE_ATOL)
    np.testing.assert_array_equal(labels, ref["labels"].numpy())


# ---- classifiers ----

# Classifier parity tolerances. The logits come out of the same float32 network with different convolution kernels
# (onnxruntime's MLAS against PyTorch's oneDNN/ATen), which sum in different orders: differences of a few float32
# ulps per layer, measured at <= 1.3e-6 absolute and <= 2.5e-5 relative (on logits of ~1e-4) over ResNet-10t,
# MobileNet-V3-S, DenseNet-121, EfficientNet-B0 and ConvNeXt-T at random weights. 1e-4 absolute plus 1e-4 relative
# leaves ~100x room for trained weights' larger activations. A probability moves at most a quarter as much as its
# logit (sigmoid's slope <= 1/4); 1e-5 is far below any cut a reader would set (thresholds are read to 0.01).
LOGIT_ATOL = LOGIT_RTOL = 1e-4
PROB_ATOL = 1e-5


@pytest.fixture(scope="module")
def classifier_export(tiny_classifier_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
                      ) -> dict[str, Any]:
    """The tiny classifier run's fold 0 exported to ONNX through the CLI (the default format)."""
    return export_through_cli(tiny_classifier_run, tmp_path_factory.mktemp("classifier_export"))


@pytest.mark.slow
def test_classifier_sidecar_documents_input_normalisation_and_outputs(classifier_export: dict[str, Any]) -> None:
    assert classifier_export["printed"] == str(classifier_export["model"])
    meta = json.loads(classifier_export["model"].with_suffix(".json").read_text())
    assert meta["task"] == "classify" and meta["format"] == "onnx" and meta["classes"] == ["opacity"]
    assert meta["input"] == {"name": "image", "shape": ["n", 3, 64, 64], "dtype": "float32", "range": [0.0, 1.0],
                             "channels": "greyscale repeated on 3 channels"}
    norm = meta["normalisation_inside_graph"]
    # in_chans=1: the network reads channel 0, normalised with the mean of timm's ImageNet RGB statistics.
    assert norm["in_chans"] == 1 and norm["channels_read"] == "channel 0 only"
    assert norm["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3]) and len(norm["std"]) == 1
    assert set(meta["outputs"]) == {"logits", "probabilities"} and "sigmoid" in meta["outputs"]["probabilities"]
    record = checkpoint_record(classifier_export["checkpoint"])
    assert meta["threshold"] == pytest.approx(record["val_threshold"]) and meta["val_auroc"] == record["val_score"]
    assert len(meta["model_sha256"]) == 64 and any("resize to 64 x 64" in step for step in meta["preprocessing"])


@pytest.mark.slow
def test_onnxruntime_classifier_matches_pytorch_on_cached_images(classifier_export: dict[str, Any]) -> None:
    from cxrdet.deploy.export import OnnxClassifier

    cfg = classifier_export["cfg"]
    classifier = LitClassifier.load_for_inference(cfg, classifier_export["checkpoint"])
    runner = OnnxClassifier(classifier_export["model"], threads=1)
    pixels = [load_image(cfg["data"]["cache"], "train", f"img{i:03d}") for i in range(6)]
    pixels.append(np.zeros((64, 64), dtype=np.uint8))
    images = np.stack([np.broadcast_to(p.astype(np.float32) / 255.0, (3, 64, 64)) for p in pixels])
    with torch.inference_mode():
        ref = classifier(torch.from_numpy(images))
    logits, probs = runner(images)  # 7 images in one call: the exported batch axis is free
    assert logits.shape == probs.shape == (7, 1) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, ref.numpy(), rtol=LOGIT_RTOL, atol=LOGIT_ATOL)
    np.testing.assert_allclose(probs, torch.sigmoid(ref).numpy(), rtol=0, atol=PROB_ATOL)
    assert np.ptp(probs) > 0  # the images were told apart, not all mapped to one value


@pytest.mark.parametrize("name", ["mobilenetv3_small_100", "densenet121"])
def test_graph_of_a_classifier_matches_pytorch_at_any_batch(name: str, tmp_path: Path) -> None:
    from cxrdet.deploy.export import OnnxClassifier, export_classifier_onnx
    from cxrdet.models.classifier import create_classifier

    torch.set_num_threads(1)
    torch.manual_seed(0)
    classes = ["Effusion", "Mass", "Nodule"]
    classifier = create_classifier({"model": {"type": "timm_classifier", "name": name, "in_chans": 1},
                                    "data": {"classes": classes}}).eval()
    model = export_classifier_onnx(classifier, 64, tmp_path / "model.onnx")
    (tmp_path / "model.json").write_text(json.dumps({"task": "classify", "classes": classes,
                                                     "input": {"shape": ["n", 3, 64, 64]}}))
    write_manifest(tmp_path, [model, tmp_path / "model.json"])
    runner = OnnxClassifier(model, threads=1)
    for n in (1, 3):
        images = torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            ref = classifier(images)
        logits, probs = runner(images.numpy())
        assert logits.shape == (n, 3)
        np.testing.assert_allclose(logits, ref.numpy(), rtol=LOGIT_RTOL, atol=LOGIT_ATOL)
        np.testing.assert_allclose(probs, torch.sigmoid(ref).numpy(), rtol=0, atol=PROB_ATOL)


def test_onnx_classifier_refuses_a_detector_sidecar(tmp_path: Path) -> None:
    from cxrdet.deploy.export import OnnxClassifier

    (tmp_path / "model.json").write_text('{"input": {"shape": [1, 3, 64, 64]}}')
    with pytest.raises(CxrdetError, match="describes a detector, not a classifier"):
        OnnxClassifier(tmp_path / "model.onnx")


@pytest.mark.slow
def test_classifier_converts_to_a_core_ml_package(tiny_classifier_run: dict[str, Any], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    import coremltools as ct

    monkeypatch.setenv("CXRDET_OUTPUTS", str(tiny_classifier_run["outputs"]))
    cfg = load_config(tiny_classifier_run["config"], tiny_classifier_run["options"])
    package = export(cfg, 0, fmt="coreml", out_dir=tmp_path)
    assert package == tmp_path / "model.mlpackage" and package.is_dir()
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["format"] == "coreml" and meta["input"]["shape"] == [1, 3, 64, 64]
    assert meta["model_file"] == package.name
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    assert [i.name for i in spec.description.input] == ["image"]
    assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 3, 64, 64]
    assert [o.name for o in spec.description.output] == ["logits", "probabilities"]
    if platform.system() != "Darwin":
        return  # Core ML runs models on macOS only; the conversion itself is what this platform can check

    image = np.broadcast_to(load_image(cfg["data"]["cache"], "train", "img000") / 255.0, (1, 3, 64, 64))
    out = ct.models.MLModel(str(package)).predict({"image": image.astype(np.float32)})
    with torch.inference_mode():
        classifier = LitClassifier.load_for_inference(cfg, Run(cfg.experiment, 0).final_checkpoint(cfg=cfg))
        ref = torch.sigmoid(classifier(torch.from_numpy(image.astype(np.float32))))
    np.testing.assert_allclose(out["probabilities"], ref.numpy(), atol=1e-2)  # float16 compute on the device


def test_an_export_lists_its_files_and_a_changed_file_is_named(exported: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(Path(exported["model"]).parent, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "model.json"} and manifest["algorithm"] == "sha256"
    OnnxDetector(folder / "model.onnx")  # intact: loads
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CxrdetError, match=r"model.onnx: SHA-256 [0-9a-f]{64} does not match [0-9a-f]{64} in "
                                          r"manifest.json: the file changed since it was exported"):
        OnnxDetector(folder / "model.onnx")
    (folder / "manifest.json").unlink()
    with pytest.raises(CxrdetError, match="manifest.json not found"):
        OnnxDetector(folder / "model.onnx")


@pytest.mark.parametrize("which", ["detector", "classifier"])
def test_safetensors_weights_carry_no_pickle_and_infer_like_the_checkpoint(which: str, request: pytest.FixtureRequest,
                                                                          tmp_path: Path) -> None:
    from cxrdet.tasks import load_model

    run = request.getfixturevalue("tiny_run" if which == "detector" else "tiny_classifier_run")
    done = export_through_cli(run, tmp_path / "weights", "--format", "safetensors")
    weights = tmp_path / "weights" / "model.safetensors"
    assert done["printed"] == str(weights)
    # safetensors: an 8-byte length, a JSON header describing each tensor, then the tensors' bytes and nothing else:
    # no pickle anywhere.
    raw = weights.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    tensors = {k: v for k, v in json.loads(raw[8:8 + length]).items() if k != "__metadata__"}
    assert tensors and all(set(v) == {"dtype", "shape", "data_offsets"} for v in tensors.values())
    assert 8 + length + max(v["data_offsets"][1] for v in tensors.values()) == len(raw)
    meta = json.loads((tmp_path / "weights" / "model.json").read_text())
    assert meta["format"] == "safetensors" and meta["config"]["experiment"] == done["cfg"]["experiment"]
    manifest = json.loads((tmp_path / "weights" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "model.json"}

    shared, original = load_model(weights), load_model(done["checkpoint"])
    size = original.size
    image = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    ours, theirs = shared(image), original(image)
    ours, theirs = (ours, theirs) if isinstance(ours, tuple) else ((ours,), (theirs,))  # boxes/scores/labels or probs
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert shared.classes == original.classes and shared.threshold == pytest.approx(original.threshold)
    # A changed weights file is refused before it is read.
    with open(weights, "ab") as f:
        f.write(b"\0")
    with pytest.raises(CxrdetError, match="model.safetensors: SHA-256 .* does not match"):
        load_model(weights)
