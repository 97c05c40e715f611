"""Export one fold's detector for deployment: an ONNX graph with its post-processing, and a JSON sidecar.

The exported graph is the whole torchvision detector in eval mode for one image of fixed size S x S:

- input `image`: float32 `[1, 3, S, S]` in [0, 1], the greyscale display image (`cxrdet.data.dicom.read_dicom`)
  resized to S x S exactly as `cxrdet prepare` does (`cxrdet.data.prepare.resize_square`: box filter when shrinking,
  quantised to uint8, then divided by 255) and repeated on three channels. Mean/std normalisation is inside the graph.
- outputs `boxes` float32 `[N, 4]` xyxy pixels of the S x S input, `scores` float32 `[N]` (descending, >= the score
  floor), `labels` int64 `[N]` (class index from 0); box decoding, the score floor, NMS and the per-image cap run
  inside the graph (ONNX `TopK`/`NonMaxSuppression`), so a consumer only rescales boxes to the original image.

The sidecar (`model.json`) records all of that plus the validation threshold of the checkpoint, so a bedside tool
needs nothing else. Core ML is refused with the reason (see `coreml_unavailable_reason`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrdet import paths
from cxrdet.config import to_dict
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.io import atomic_path, file_sha256, write_json
from cxrdet.models.factory import Detector
from cxrdet.models.lit_detector import LitDetector
from cxrdet.provenance import git_revision
from cxrdet.train import checkpoint_record, final_checkpoint

FORMATS: tuple[str, ...] = ("onnx", "coreml")
# Opset 17: NonMaxSuppression, TopK and RoiAlign as torchvision exports them; supported by every onnxruntime >= 1.11.
OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES: tuple[str, ...] = ("boxes", "scores", "labels")
SIDECAR_VERSION = 1


class SingleImageDetector(nn.Module):
    """`Detector` for one image as plain tensors (ONNX graphs take and return tensors, not lists of dicts).

    Input: float32 `[1, 3, S, S]` in [0, 1]. Outputs: boxes `[N, 4]` (xyxy pixels of the S x S input), scores `[N]`,
    labels `[N]` (int64, class index from 0).
    """

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.detector(image)[0]
        return out["boxes"], out["scores"], out["labels"]


def inference_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`cfg` as a plain dict with the backbone's starting weights switched off.

    The checkpoint holds every weight, so building the model must neither download ImageNet weights nor need the
    local weights file training started from (neither exists on a deployment machine).
    """
    plain = to_dict(cfg)
    backbone = plain.get("model", {}).get("backbone")
    if isinstance(backbone, dict):
        for key, off in (("pretrained", False), ("checkpoint", None)):
            if key in backbone:
                backbone[key] = off
    return plain


def load_detector(cfg: Mapping[str, Any], checkpoint: str | Path) -> Detector:
    """The validated (EMA when present) weights of a cxrdet checkpoint in a CPU `Detector` in eval mode."""
    module = LitDetector(inference_config(cfg))
    module.init_from_checkpoint(checkpoint)
    return module.inference_model().cpu().eval()


def coreml_unavailable_reason() -> str:
    """Why `--format coreml` cannot run in this environment (checked when this module was written, 2026-11)."""
    return ("Core ML export is not available on this platform: coremltools is not in this environment's pinned "
            "requirements because its newest release (9.0) installs on Linux x86_64 but cannot convert these "
            "detectors with torch 2.14 (its torch frontend fails on torchvision's post-processing: 'only "
            "0-dimensional arrays can be converted to Python scalars'), and Core ML models only run on macOS/iOS. "
            "Export with --format onnx instead; the sidecar JSON documents the pre- and post-processing for a "
            "converter on macOS.")


def sidecar(cfg: Mapping[str, Any], fold: int, checkpoint: Path, detector: Detector, model_file: Path
            ) -> dict[str, Any]:
    """What a consumer of the exported model needs besides the graph: input, pre-processing, outputs, thresholds."""
    size = int(cfg["data"]["size"])
    pred = cfg["predict"]
    record = checkpoint_record(checkpoint)
    transform = getattr(detector.net, "transform", None)
    return {
        "format_version": SIDECAR_VERSION,
        "model_file": model_file.name,
        "model_sha256": file_sha256(model_file),
        "experiment": cfg["experiment"],
        "fold": fold,
        "detector": cfg["model"]["type"],
        "classes": list(cfg["data"]["classes"]),
        "input": {
            "name": INPUT_NAME, "shape": [1, 3, size, size], "dtype": "float32", "range": [0.0, 1.0],
            "channels": "greyscale repeated on 3 channels",
        },
        "preprocessing": [
            "read the DICOM with cxrdet.data.dicom.read_dicom: modality LUT, VOI LUT/window, MONOCHROME1 inversion, "
            "scaled to [0, 1] with bright = dense",
            f"resize to {size} x {size} without letterbox (cxrdet.data.prepare.resize_square: box filter when "
            "shrinking, Lanczos when enlarging), quantise to uint8, divide by 255",
            "repeat the channel 3 times, add a batch axis",
        ],
        "normalisation_inside_graph": {
            "mean": [float(m) for m in getattr(transform, "image_mean", [])],
            "std": [float(s) for s in getattr(transform, "image_std", [])],
        },
        "outputs": {
            "boxes": "float32 [N, 4] xyxy, pixels of the input image (multiply x by width/S and y by height/S for "
                     "original pixels)",
            "scores": "float32 [N], descending",
            "labels": "int64 [N], index into classes",
        },
        "postprocessing_inside_graph": {
            "score_floor": float(pred["score_floor"]), "nms_iou": float(pred.get("nms_iou", 0.5)),
            "max_per_image": int(pred["max_per_image"]),
        },
        "threshold": record.get("val_threshold"),
        "threshold_note": "confidence cut that maximised the RSNA metric on this fold's validation images",
        "val_rsna": record.get("val_score"),
        "checkpoint": str(checkpoint),
        "opset": OPSET,
        "torch": torch.__version__,
        "git": git_revision(),
    }


def export_onnx(detector: Detector, size: int, out: Path) -> Path:
    """Trace `detector` on one S x S image and write the ONNX graph atomically.

    The graph keeps torchvision's post-processing (decoding, score floor, NMS, cap); its output length N varies.
    """
    wrapper = SingleImageDetector(detector).eval()
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with atomic_path(out) as tmp, warnings.catch_warnings():
        # The tracer warns about Python control flow in torchvision's post-processing that does not depend on the
        # input values of a fixed-size image; the parity test checks the graph against PyTorch.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(tmp), opset_version=OPSET, dynamo=False,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={name: {0: "n"} for name in OUTPUT_NAMES})
    return out


def export(cfg: Mapping[str, Any], fold: int, fmt: str = "onnx", checkpoint: str = "best",
           out_dir: str | Path | None = None) -> Path:
    """Export the fold-`fold` detector of `cfg` and write its sidecar JSON.

    Args:
        cfg: The resolved experiment config.
        fold: The fold whose model is exported.
        fmt: `onnx` or `coreml`.
        checkpoint: `best`, `last` or a .ckpt path.
        out_dir: Folder of `model.onnx` and `model.json`; default `cxrdet.paths.export_dir(experiment, fold)`.

    Returns:
        The written model file.

    Raises:
        ConfigError: Unknown format. CxrdetError: Core ML requested (not available here), or no checkpoint.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}: expected one of {list(FORMATS)}")
    if fmt == "coreml":
        raise CxrdetError(coreml_unavailable_reason())
    ckpt = final_checkpoint(cfg, fold, checkpoint)
    folder = Path(out_dir) if out_dir is not None else paths.export_dir(cfg["experiment"], fold)
    detector = load_detector(cfg, ckpt)
    model_file = export_onnx(detector, int(cfg["data"]["size"]), folder / "model.onnx")
    write_json(model_file.with_suffix(".json"), sidecar(cfg, fold, ckpt, detector, model_file))
    return model_file


class OnnxDetector:
    """An exported model and its sidecar, run with onnxruntime on the CPU.

    Args:
        model_file: The `.onnx` file; its sidecar is the same path with `.json`.
        threads: onnxruntime intra-op threads (0 = its default, all cores).
    """

    def __init__(self, model_file: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        model_file = Path(model_file)
        meta_file = model_file.with_suffix(".json")
        if not meta_file.is_file():
            raise CxrdetError(f"{meta_file} not found: an exported model needs its sidecar JSON (cxrdet export)")
        self.meta: dict[str, Any] = json.loads(meta_file.read_text(encoding="utf-8"))
        self.size = int(self.meta["input"]["shape"][-1])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # onnxruntime's warnings about unused initialisers are noise here
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (xyxy pixels of the S x S input), scores and labels for one float32 `[1, 3, S, S]` image."""
        boxes, scores, labels = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.astype(np.float32)})
        return boxes, scores, labels
