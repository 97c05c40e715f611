"""Single-study inference (the bedside use): DICOM files in, boxes and an overlay PNG per study out.

The model is an exported ONNX file (run with onnxruntime, its sidecar JSON beside it) or a cxrdet checkpoint (run
with PyTorch; the checkpoint holds its config). Each DICOM is read with `cxrdet.data.dicom.read_dicom` and resized
exactly as `cxrdet prepare` does, so the model sees what it saw in training. A file the reader rejects is reported
with the reader's reason and the other files are still processed.

Outputs in the chosen folder: `boxes.csv` (one row per box: `image_id, source, x1, y1, x2, y2, score, label, class`,
xyxy pixels of the original image), `boxes.json` (the same per study, with the model, threshold and the errors),
and `<image_id>.png` (the image with its boxes in green and their scores).

A classifier (an export or checkpoint of `task='classify'`) gives per-study probabilities instead (`classify`):
`probabilities.csv` (`image_id, source`, one sigmoid probability per class) and `probabilities.json` (the same per
study, with the model, classes, threshold and the errors); no overlay.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from cxrdet.boxes import rescale_xyxy
from cxrdet.data.dicom import read_dicom, to_uint8
from cxrdet.data.prepare import resize_square
from cxrdet.errors import CxrdetError, DicomError
from cxrdet.io import atomic_path, write_csv, write_json
from cxrdet.progress import progress

BOX_COLUMNS: tuple[str, ...] = ("image_id", "source", "x1", "y1", "x2", "y2", "score", "label", "class")
# Used when neither the sidecar nor the checkpoint records a validation threshold.
DEFAULT_THRESHOLD = 0.5
# Overlays are drawn on the image shrunk to at most this side: a 3000 px radiograph PNG would be ~10 MB.
OVERLAY_MAX_SIDE = 1024
GREEN = (0, 200, 0)


@dataclass
class InferenceModel:
    """A model ready for single studies: its input side, classes, default threshold, and a forward pass on float32
    images `[N, 3, S, S]` in [0, 1]. Built from an exported `.onnx` (`from_onnx`, onnxruntime) or a cxrdet checkpoint
    (`from_checkpoint`, PyTorch on the CPU); each task has its subclass (`BoxModel`, `ProbabilityModel`), which says
    what the forward pass returns.
    """

    size: int
    classes: list[str]
    threshold: float | None
    description: str
    forward: Callable[[np.ndarray], Any]

    def __call__(self, images: np.ndarray) -> Any:
        return self.forward(images)

    @staticmethod
    def _module() -> type:
        """The task's LightningModule class (builds the network and reads its checkpoints)."""
        raise NotImplementedError

    @classmethod
    def _around(cls, network: Any, cfg: dict[str, Any], record: dict[str, Any], description: str) -> Any:
        """The model around a loaded network (`forward` adapts its outputs)."""
        raise NotImplementedError

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, cfg: dict[str, Any], record: dict[str, Any]) -> Any:
        """A cxrdet checkpoint (read without running code), its validated weights in the network `cfg` describes."""
        return cls._around(cls._module().load_for_inference(cfg, checkpoint), cfg, record, f"checkpoint {checkpoint}")

    @classmethod
    def from_safetensors(cls, weights: Path) -> Any:
        """Exported weights (`cxrdet export --format safetensors`), after the export's manifest checks out, in the
        network its sidecar's config describes."""
        from cxrdet.deploy.export import load_weights, read_sidecar

        meta = read_sidecar(weights)
        network = load_weights(cls._module()(meta["config"]).inference_model(), weights)
        return cls._around(network, meta["config"], {"val_threshold": meta.get("threshold")}, f"weights {weights}")


class BoxModel(InferenceModel):
    """A detector: `model(image)` gives boxes `[N, 4]` (xyxy pixels of the S x S input), scores `[N]`, labels `[N]`
    for one `[1, 3, S, S]` image."""

    @classmethod
    def from_onnx(cls, model_file: Path, threads: int = 0) -> BoxModel:
        from cxrdet.deploy.export import OnnxDetector

        runner = OnnxDetector(model_file, threads=threads)
        return cls(runner.size, list(runner.meta["classes"]), runner.meta.get("threshold"), f"onnx {model_file}",
                   runner)

    @staticmethod
    def _module() -> type:
        from cxrdet.models.lit_detector import LitDetector

        return LitDetector

    @classmethod
    def _around(cls, detector: Any, cfg: dict[str, Any], record: dict[str, Any], description: str) -> BoxModel:
        @torch.inference_mode()
        def forward(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            out = detector(torch.from_numpy(image))[0]
            return out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy()

        return cls(int(cfg["data"]["size"]), list(cfg["data"]["classes"]), record.get("val_threshold"), description,
                   forward)


class ProbabilityModel(InferenceModel):
    """A classifier: `model(images)` gives probabilities `[N, K]` of float32 images `[N, 3, S, S]` (sigmoid per class,
    or a softmax for a multi-class classifier)."""

    @classmethod
    def from_onnx(cls, model_file: Path, threads: int = 0) -> ProbabilityModel:
        from cxrdet.deploy.export import OnnxClassifier

        runner = OnnxClassifier(model_file, threads=threads)
        model = cls(runner.size, list(runner.classes), runner.meta.get("threshold"), f"onnx {model_file}",
                    lambda images: runner(images)[1])
        model.multiclass = bool(runner.meta.get("multiclass", False))
        return model

    @staticmethod
    def _module() -> type:
        from cxrdet.models.lit_classifier import LitClassifier

        return LitClassifier

    @classmethod
    def _around(cls, classifier: Any, cfg: dict[str, Any], record: dict[str, Any], description: str
                ) -> ProbabilityModel:
        classes = list(classifier.classes)

        multiclass = bool(getattr(classifier, "multiclass", False))

        @torch.inference_mode()
        def forward(images: np.ndarray) -> np.ndarray:
            logits = classifier(torch.from_numpy(images))
            return (torch.softmax(logits, dim=1) if multiclass else torch.sigmoid(logits)).numpy()

        model = cls(int(cfg["data"]["size"]), classes, record.get("val_threshold") if len(classes) == 1 else None,
                    description, forward)
        model.multiclass = multiclass
        return model


def checkpoint_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config (`hyper_parameters.cfg`) and validation record a cxrdet checkpoint holds.

    Raises:
        CxrdetError: It holds no config (not a cxrdet checkpoint).
    """
    from cxrdet.runs import load_checkpoint_file

    ckpt = load_checkpoint_file(path)
    cfg = ckpt.get("hyper_parameters", {}).get("cfg")
    if cfg is None:
        raise CxrdetError(f"{path}: no config in the checkpoint (hyper_parameters.cfg); is it a cxrdet checkpoint?")
    return cfg, dict(ckpt.get("cxrdet", {}))


def preprocess(pixels: np.ndarray, size: int) -> np.ndarray:
    """Display pixels (float in [0, 1], `(H, W)`) -> the network input float32 `[1, 3, S, S]` in [0, 1], resized as
    `cxrdet prepare` caches images (so train and inference see the same pixels)."""
    small = resize_square(pixels, size).astype(np.float32) / 255.0
    return np.ascontiguousarray(np.broadcast_to(small, (1, 3, size, size)))


def detect(model: BoxModel, pixels: np.ndarray, threshold: float) -> pd.DataFrame:
    """Boxes of one image with score >= `threshold`.

    Args:
        pixels: `(H, W)` display pixels in [0, 1].

    Returns:
        Columns `x1, y1, x2, y2, score, label`; xyxy pixels of the original `(H, W)` image, descending score.
    """
    height, width = pixels.shape
    boxes, scores, labels = model(preprocess(pixels, model.size))
    keep = scores >= threshold
    xyxy = rescale_xyxy(np.asarray(boxes, dtype=np.float64)[keep].reshape(-1, 4), (model.size, model.size),
                        (width, height))
    frame = pd.DataFrame({"x1": xyxy[:, 0], "y1": xyxy[:, 1], "x2": xyxy[:, 2], "y2": xyxy[:, 3],
                          "score": np.asarray(scores, dtype=np.float64)[keep],
                          "label": np.asarray(labels, dtype=np.int64)[keep]})
    return frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def draw_overlay(pixels: np.ndarray, boxes: pd.DataFrame, classes: Sequence[str], out: Path) -> Path:
    """Write the image with its boxes (green, with class and score) as a PNG, shrunk to at most 1024 px a side.

    Args:
        pixels: `(H, W)` display pixels in [0, 1].
        boxes: Columns `x1, y1, x2, y2, score, label`; xyxy pixels of `pixels`.
    """
    height, width = pixels.shape
    scale = min(1.0, OVERLAY_MAX_SIDE / max(height, width))
    image = Image.fromarray(to_uint8(pixels)).convert("RGB")
    if scale < 1.0:
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 300))
    font = ImageFont.load_default(size=max(10, round(max(image.size) / 45)))
    for row in boxes.itertuples(index=False):
        x1, y1, x2, y2 = (v * scale for v in (row.x1, row.y1, row.x2, row.y2))
        draw.rectangle((x1, y1, x2, y2), outline=GREEN, width=line)
        name = classes[int(row.label)] if 0 <= int(row.label) < len(classes) else str(row.label)
        draw.text((x1 + line, max(0.0, y1 - font.size - line)), f"{name} {row.score:.2f}", fill=GREEN, font=font)
    with atomic_path(out) as tmp:
        image.save(tmp, format="PNG")
    return out


def readable_studies(dicoms: Sequence[str | Path], errors: dict[str, str], desc: str) -> Iterator[tuple[str, Any]]:
    """`(source, image)` of every DICOM the reader accepts (`read_dicom`), with a progress bar; the reader's reason
    for each one it refuses goes into `errors` by file, and the loop goes on."""
    for source in progress(list(dicoms), desc=desc, unit="study"):
        try:
            image = read_dicom(source)
        except DicomError as err:
            errors[str(source)] = str(err)
            continue
        yield str(source), image


@dataclass
class InferResult:
    """What `infer` found: the boxes of the studies it could read, and the reader's reason for each it could not."""

    boxes: pd.DataFrame
    errors: dict[str, str] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)

    def summary(self, out: Path, n_sources: int) -> str:
        """One line for the console."""
        return f"{out}: {len(self.boxes)} boxes in {n_sources - len(self.errors)} studies"


def infer(model: BoxModel, dicoms: Sequence[str | Path], out_dir: str | Path, threshold: float | None = None
          ) -> InferResult:
    """Run `model` on each DICOM file; write `boxes.csv`, `boxes.json` and one overlay PNG per readable study.

    Args:
        model: From `cxrdet.tasks.load_model`.
        dicoms: DICOM files; one that cannot be read is reported in `errors` and skipped.
        out_dir: Output folder (created).
        threshold: Keep boxes with score >= this; default the model's validation threshold, else 0.5.

    Returns:
        All kept boxes (`image_id, source, x1, y1, x2, y2, score, label, class`; xyxy pixels of each original
        image), the errors by file, and the written files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cut = float(threshold if threshold is not None else (model.threshold if model.threshold is not None
                                                           else DEFAULT_THRESHOLD))
    frames, studies, errors, written = [], [], {}, []
    for source, image in readable_studies(dicoms, errors, "infer"):
        found = detect(model, image.pixels, cut)
        found.insert(0, "source", str(source))
        found.insert(0, "image_id", image.image_id)
        found["class"] = [model.classes[i] if 0 <= i < len(model.classes) else str(i) for i in found["label"]]
        frames.append(found)
        written.append(draw_overlay(image.pixels, found, model.classes, out / f"{image.image_id}.png"))
        studies.append({"image_id": image.image_id, "source": str(source), "width": image.width,
                        "height": image.height, "boxes": _records(found)})
    boxes = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(BOX_COLUMNS))
    boxes = boxes[list(BOX_COLUMNS)]
    written.append(write_csv(out / "boxes.csv", boxes, index=False))
    written.append(write_json(out / "boxes.json", {
        "model": model.description, "threshold": cut, "box_format": "xyxy, pixels of the original image",
        "studies": studies, "errors": [{"source": k, "error": v} for k, v in errors.items()],
    }))  # fmt: skip
    return InferResult(boxes=boxes, errors=errors, written=written)


def _records(found: pd.DataFrame) -> list[dict[str, Any]]:
    """Boxes as JSON-ready dicts (pandas turns numpy scalars into plain numbers)."""
    return json.loads(found[["x1", "y1", "x2", "y2", "score", "label", "class"]].to_json(orient="records"))


@dataclass
class ClassifyResult:
    """What `classify` found: per-study probabilities of the studies it could read, and the reader's reason for each
    it could not."""

    probabilities: pd.DataFrame
    errors: dict[str, str] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)

    def summary(self, out: Path, n_sources: int) -> str:
        """One line for the console."""
        n_classes = len(self.probabilities.columns) - 2  # after image_id and source
        return f"{out}: probabilities of {n_classes} classes for {len(self.probabilities)} studies"


def classify(model: ProbabilityModel, dicoms: Sequence[str | Path], out_dir: str | Path,
             threshold: float | None = None) -> ClassifyResult:
    """Run a classifier on each DICOM file; write `probabilities.csv` and `probabilities.json`.

    Args:
        model: A classifier from `cxrdet.tasks.load_model`.
        dicoms: DICOM files; one that cannot be read is reported in `errors` and skipped.
        out_dir: Output folder (created).
        threshold: Not used: a classifier writes probabilities, not decisions (the same call as `infer`).

    Returns:
        `image_id, source` and one probability column per class, per readable study; the errors by file; the files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, errors = [], {}
    for source, image in readable_studies(dicoms, errors, "classify"):
        probs = np.asarray(model(preprocess(image.pixels, model.size)), dtype=np.float64)[0]
        rows.append({"image_id": image.image_id, "source": str(source), **dict(zip(model.classes, probs.tolist(),
                                                                                   strict=True))})
    table = pd.DataFrame(rows, columns=["image_id", "source", *model.classes])
    written = [write_csv(out / "probabilities.csv", table, index=False), write_json(out / "probabilities.json", {
        "model": model.description, "classes": list(model.classes), "threshold": model.threshold,
        "threshold_note": "binary: probability cut of best F1 on the validation fold; multi-label: none",
        "probability": ("softmax over the classes (multi-class)" if getattr(model, "multiclass", False)
                        else "sigmoid per class, independent (multi-label)"),
        "studies": json.loads(table.to_json(orient="records")),
        "errors": [{"source": k, "error": v} for k, v in errors.items()],
    })]  # fmt: skip
    return ClassifyResult(probabilities=table, errors=errors, written=written)
