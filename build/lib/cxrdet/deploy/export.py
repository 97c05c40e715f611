"""Export one fold's detector for deployment: an ONNX graph with its post-processing, and a JSON sidecar.

The exported graph is the whole torchvision detector in eval mode for one image of fixed size S x S:

- input `image`: float32 `[1, 3, S, S]` in [0, 1], the greyscale display image (`cxrdet.data.dicom.read_dicom`)
  resized to S x S exactly as `cxrdet prepare` does (`cxrdet.data.prepare.resize_square`: box filter when shrinking,
  quantised to uint8, then divided by 255) and repeated on three channels. Mean/std normalisation is inside the graph.
- outputs `boxes` float32 `[N, 4]` xyxy pixels of the S x S input, `scores` float32 `[N]` (descending, >= the score
  floor), `labels` int64 `[N]` (class index from 0); box decoding, the score floor, NMS and the per-image cap run
  inside the graph (ONNX `TopK`/`NonMaxSuppression`), so a consumer only rescales boxes to the original image.

The sidecar (`model.json`) records all of that plus the validation threshold of the checkpoint, so a bedside tool
needs nothing else. Core ML is refused for detectors with the reason (see `coreml_unavailable_reason`).

A classifier (`task='classify'`) exports as a graph of the `Classifier` itself:

- input `image`: float32 `[N, 3, S, S]` in [0, 1], pre-processed as above (N is free in ONNX, 1 in Core ML);
  normalisation (and, for `in_chans=1`, reading channel 0 only) is inside the graph;
- outputs `logits` float32 `[N, K]` and `probabilities` float32 `[N, K]` = sigmoid(logits), one independent
  probability per class of the sidecar's `classes` (multi-label: they need not sum to 1).

Its sidecar records the classes, input, normalisation, outputs, the validation AUROC and, for a binary classifier, the
validation threshold of best F1. Core ML export of classifiers runs through coremltools (`model.mlpackage`, an ML
program): the conversion works on Linux, but running the result needs macOS, so no parity check runs here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.io import atomic_path, file_sha256, write_json
from cxrdet.models.classifier import Classifier
from cxrdet.models.detector import Detector
from cxrdet.models.lit_base import LitBase
from cxrdet.provenance import git_revision
from cxrdet.runs import Run, checkpoint_record

FORMATS: tuple[str, ...] = ("onnx", "coreml", "safetensors")
# `safetensors`: the inference weights alone, without pickle, for sharing (`write_weights`, `load_weights`).
WEIGHTS_FILE = "model.safetensors"
# Opset 17: NonMaxSuppression, TopK and RoiAlign as torchvision exports them; supported by every onnxruntime >= 1.11.
OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES: tuple[str, ...] = ("boxes", "scores", "labels")
CLASSIFIER_OUTPUT_NAMES: tuple[str, ...] = ("logits", "probabilities")
SIDECAR_VERSION = 1
PREPROCESSING_STEPS: tuple[str, ...] = (
    ("read the DICOM with cxrdet.data.dicom.read_dicom: modality LUT, VOI LUT/window, MONOCHROME1 inversion, "
     "scaled to [0, 1] with bright = dense"),
    ("resize to {size} x {size} without letterbox (cxrdet.data.prepare.resize_square: box filter when shrinking, "
     "Lanczos when enlarging), quantise to uint8, divide by 255"),
    "repeat the channel 3 times, add a batch axis",
)


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


def coreml_unavailable_reason() -> str:
    """Why `--format coreml` cannot export a detector in this environment (checked with coremltools 9.0 and
    torch 2.14)."""
    return ("Core ML export is not available for detectors: coremltools 9.0 (pinned, it converts classifiers) cannot "
            "convert them with torch 2.14 (its torch frontend fails on torchvision's post-processing: 'only "
            "0-dimensional arrays can be converted to Python scalars'), and Core ML models only run on macOS/iOS. "
            "Export with --format onnx instead; the sidecar JSON documents the pre- and post-processing for a "
            "converter on macOS.")


class Exporter(Protocol):
    """What `export` needs of a task (`cxrdet.tasks.Task` is one)."""

    module: type[LitBase]

    def refuse_format(self, fmt: str) -> str | None:
        """Why the task cannot export `fmt` here, or None when it can."""

    def write_model(self, model: nn.Module, size: int, folder: Path, fmt: str) -> Path:
        """Write the exported model into `folder` (atomically) and return its path."""

    def model_fields(self, cfg: Mapping[str, Any], model: nn.Module, record: Mapping[str, float], fmt: str
                     ) -> dict[str, Any]:
        """The task's own sidecar fields: model name, input shape, normalisation, outputs, threshold."""


def sidecar(cfg: Mapping[str, Any], fold: int, checkpoint: Path, model_file: Path, fmt: str,
            fields: Mapping[str, Any]) -> dict[str, Any]:
    """What a consumer of an exported model needs besides the graph: the fields every export has (file, hash,
    run, classes, pre-processing, checkpoint, versions) and the task's own (`Exporter.model_fields`)."""
    size = int(cfg["data"]["size"])
    return {
        "format_version": SIDECAR_VERSION,
        "format": fmt,
        "model_file": model_file.name,
        "model_sha256": tree_sha256(model_file),
        "experiment": cfg["experiment"],
        "fold": fold,
        "classes": list(cfg["data"]["classes"]),
        "preprocessing": [step.format(size=size) for step in PREPROCESSING_STEPS],
        **fields,
        "checkpoint": str(checkpoint),
        **_format_fields(fmt, cfg),
        "torch": torch.__version__,
        "git": git_revision(),
    }  # fmt: skip


def _format_fields(fmt: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What a sidecar says of its format: the ONNX opset, the Core ML target, or (safetensors) the config that
    rebuilds the network the weights fill."""
    if fmt == "onnx":
        return {"opset": OPSET}
    if fmt == "coreml":
        return {"coreml_target": "macOS13 ML program (float16 compute)"}
    from cxrdet.models.lit_base import inference_config

    return {"weights": "safetensors: tensors only, no pickle; load with cxrdet infer --model model.safetensors",
            "config": inference_config(cfg)}


def write_weights(model: nn.Module, folder: Path) -> Path:
    """The inference network's weights as `model.safetensors` (no pickle: a shared copy cannot run code), written
    atomically."""
    from safetensors.torch import save_model

    out = folder / WEIGHTS_FILE
    with atomic_path(out) as tmp:
        save_model(model, str(tmp))
    return out


def load_weights(model: nn.Module, weights: Path) -> nn.Module:
    """Fill `model` (built from the sidecar's config) from a `model.safetensors`, after its manifest checks out.

    Raises:
        CxrdetError: The manifest fails, or the weights do not fit the network.
    """
    from safetensors.torch import load_model

    verify_manifest(weights.parent)
    try:
        load_model(model, str(weights))
    except (RuntimeError, OSError) as err:
        raise CxrdetError(f"{weights}: its weights do not fit the network its model.json describes: "
                          f"{str(err).splitlines()[0]}") from err
    return model.cpu().eval()


def export(cfg: Mapping[str, Any], fold: int, task: Exporter, fmt: str = "onnx", checkpoint: str = "best",
           out_dir: str | Path | None = None) -> Path:
    """Export the fold-`fold` model of `cfg` with its task's exporter and write its sidecar `model.json`.

    Args:
        cfg: The run's resolved config.
        fold: The fold whose model is exported.
        task: The task's export pieces (`Exporter`).
        fmt: `onnx` or `coreml`.
        checkpoint: `best`, `last` or a .ckpt path.
        out_dir: Folder of the model and `model.json`; default `cxrdet.runs.Run.export_dir`.

    Returns:
        The written model file (`model.onnx`, or `model.mlpackage` for a Core ML classifier); beside it
        `model.json` and `manifest.json` (the SHA-256 of every file, checked before a model is loaded).

    Raises:
        ConfigError: Unknown format. CxrdetError: A format the task cannot export (Core ML for a detector), or no
            checkpoint.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}: expected one of {list(FORMATS)}")
    refused = task.refuse_format(fmt)
    if refused:
        raise CxrdetError(refused)
    run = Run(cfg["experiment"], fold)
    ckpt = run.final_checkpoint(checkpoint, cfg=cfg)
    folder = Path(out_dir) if out_dir is not None else run.export_dir
    folder.mkdir(parents=True, exist_ok=True)
    model = task.module.load_for_inference(cfg, ckpt)
    model_file = task.write_model(model, int(cfg["data"]["size"]), folder, fmt)
    fields = task.model_fields(cfg, model, checkpoint_record(ckpt), fmt)
    meta = write_json(folder / "model.json", sidecar(cfg, fold, ckpt, model_file, fmt, fields))
    write_manifest(folder, [model_file, meta])
    return model_file


# ---- detectors ----


def refuse_detector_format(fmt: str) -> str | None:
    """Core ML is refused for detectors, with the reason (`coreml_unavailable_reason`)."""
    return coreml_unavailable_reason() if fmt == "coreml" else None


def write_detector(detector: Detector, size: int, folder: Path, fmt: str) -> Path:
    """A detector's export: `model.onnx` with its post-processing inside, or its weights (`model.safetensors`)."""
    if refuse_detector_format(fmt):
        raise CxrdetError(refuse_detector_format(fmt))
    if fmt == "safetensors":
        return write_weights(detector, folder)
    return export_onnx(detector, size, folder / "model.onnx")


def detector_fields(cfg: Mapping[str, Any], detector: Detector, record: Mapping[str, float], fmt: str
                    ) -> dict[str, Any]:
    """A detector export's own sidecar fields: input, normalisation and post-processing inside the graph, outputs,
    the validation threshold."""
    from cxrdet.models.lit_detector import LitDetector

    size = int(cfg["data"]["size"])
    pred = cfg["predict"]
    transform = getattr(detector.net, "transform", None)
    monitor = LitDetector.monitor_for(cfg)  # the competition's validation metric (`val/rsna`, `val/map40`)
    return {
        "task": "detect",
        "detector": cfg["model"]["type"],
        "input": {
            "name": INPUT_NAME, "shape": [1, 3, size, size], "dtype": "float32", "range": [0.0, 1.0],
            "channels": "greyscale repeated on 3 channels",
        },
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
        "threshold_note": f"confidence cut that maximised {monitor} on this fold's validation images",
        "val_metric": monitor,
        "val_score": record.get("val_score"),
    }  # fmt: skip


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



MANIFEST = "manifest.json"


def _files_of(path: Path) -> list[Path]:
    """A file, or every file of a folder (a Core ML `.mlpackage`), in path order."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def write_manifest(folder: Path, entries: list[Path]) -> Path:
    """Write `manifest.json`: the SHA-256 of every file an export needs (the model, each file of a package, the
    sidecar), by path relative to `folder`, so that a copy can be checked before it is loaded."""
    files = {p.relative_to(folder).as_posix(): file_sha256(p) for entry in entries for p in _files_of(entry)}
    return write_json(folder / MANIFEST, {"format_version": 1, "algorithm": "sha256", "files": files})


def verify_manifest(folder: str | Path) -> None:
    """Check every file `manifest.json` lists against its SHA-256, before anything is loaded from `folder`.

    Raises:
        CxrdetError: No manifest, or a listed file missing or changed (named, with both digests).
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CxrdetError(f"{manifest} not found: an exported model is loaded only with the manifest of its files' "
                          "SHA-256 that cxrdet export writes beside it")
    try:
        files = dict(json.loads(manifest.read_text(encoding="utf-8"))["files"])
    except (ValueError, KeyError, TypeError) as err:
        raise CxrdetError(f"{manifest}: not a cxrdet manifest ({err}); expected {{'files': {{name: sha256}}}}") from err
    for name, expected in sorted(files.items()):
        path = folder / _manifest_path(name)
        if not path.is_file():
            raise CxrdetError(f"{path}: listed in {manifest.name} but missing")
        actual = file_sha256(path)
        if actual != expected:
            raise CxrdetError(f"{path}: SHA-256 {actual} does not match {expected} in {manifest.name}: the file "
                              "changed since it was exported (tampered with or corrupted); export it again")


def _manifest_path(name: str) -> Path:
    """A manifest entry's relative path, each part a plain name (an entry cannot point outside its folder)."""
    from cxrdet.paths import component

    return Path(*(component(part, "manifest entry") for part in name.split("/")))


def read_sidecar(model_file: str | Path) -> dict[str, Any]:
    """The sidecar JSON of an exported model (the model path with `.json`).

    Raises:
        CxrdetError: It does not exist.
    """
    meta_file = Path(model_file).with_suffix(".json")
    if not meta_file.is_file():
        raise CxrdetError(f"{meta_file} not found: an exported model needs its sidecar JSON (cxrdet export)")
    return json.loads(meta_file.read_text(encoding="utf-8"))


def onnx_session(model_file: str | Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session of `model_file` with `threads` intra-op threads (0 = its default, all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # onnxruntime's warnings about unused initialisers are noise here
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


class OnnxGraph:
    """An exported model and its sidecar, run with onnxruntime on the CPU.

    Args:
        model_file: The `.onnx` file; its sidecar is the same path with `.json`.
        threads: onnxruntime intra-op threads (0 = its default, all cores).

    Raises:
        CxrdetError: The sidecar describes another task's model.
    """

    task: str = ""
    what: str = "model"
    outputs: tuple[str, ...] = ()

    def __init__(self, model_file: str | Path, threads: int = 0) -> None:
        self.meta: dict[str, Any] = read_sidecar(model_file)
        found = self.meta.get("task", "detect")  # detector sidecars written before the task field were detectors
        if found != self.task:
            other = next((c.what for c in OnnxGraph.__subclasses__() if c.task == found), f"{found!r} model")
            raise CxrdetError(f"{model_file}: its sidecar describes a {other}, not a {self.what} (task {found!r})")
        self.size = int(self.meta["input"]["shape"][-1])
        self.classes = list(self.meta.get("classes", []))
        verify_manifest(Path(model_file).parent)  # before the graph is read
        self.session = onnx_session(model_file, threads)

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs (`outputs`, in that order) for float32 images `[N, 3, S, S]` in [0, 1]."""
        return self.session.run(list(self.outputs), {INPUT_NAME: images.astype(np.float32)})


class OnnxDetector(OnnxGraph):
    """An exported detector: boxes (xyxy pixels of the S x S input), scores and labels of one `[1, 3, S, S]` image."""

    task = "detect"
    what = "detector"
    outputs = OUTPUT_NAMES

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes, scores, labels = self.run(image)
        return boxes, scores, labels


# ---- classifiers ----


class ClassifierGraph(nn.Module):
    """The exported classifier: images `[N, 3, S, S]` in [0, 1] -> (logits `[N, K]`, probabilities: a softmax over
    the classes of a multi-class classifier, else each class's sigmoid)."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.multiclass = bool(getattr(classifier, "multiclass", False))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(image)
        return logits, torch.softmax(logits, dim=1) if self.multiclass else torch.sigmoid(logits)


def export_classifier_onnx(classifier: Classifier, size: int, out: Path) -> Path:
    """Trace `classifier` on S x S images and write the ONNX graph atomically (the batch axis N is free)."""
    graph = ClassifierGraph(classifier).eval()
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with atomic_path(out) as tmp, warnings.catch_warnings():
        # The tracer warns about the input-shape check of `Classifier.normalise`, which depends on the shape only
        # (fixed but for the batch axis); the parity tests check the graph against PyTorch.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(graph, (example,), str(tmp), opset_version=OPSET, dynamo=False, input_names=[INPUT_NAME],
                          output_names=list(CLASSIFIER_OUTPUT_NAMES),
                          dynamic_axes={name: {0: "n"} for name in (INPUT_NAME, *CLASSIFIER_OUTPUT_NAMES)})
    return out


def export_classifier_coreml(classifier: Classifier, size: int, out: Path) -> Path:
    """Convert `classifier` with coremltools into an ML program package (`.mlpackage`, a folder) for one S x S image.

    The folder is written beside `out` and renamed into place, so a reader never sees a half-written package.
    """
    import coremltools as ct

    graph = ClassifierGraph(classifier).eval()
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # as in `export_classifier_onnx`
        traced = torch.jit.trace(graph, example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # coremltools warns about renamed intermediate outputs (not ours)
        model = ct.convert(traced, inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape))],
                           outputs=[ct.TensorType(name=n) for n in CLASSIFIER_OUTPUT_NAMES],
                           convert_to="mlprogram", minimum_deployment_target=ct.target.macOS13)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")  # coremltools insists on the .mlpackage suffix
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def tree_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (their relative paths and contents, in path order)."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode())
        digest.update(bytes.fromhex(file_sha256(item)))
    return digest.hexdigest()


def write_classifier(classifier: Classifier, size: int, folder: Path, fmt: str) -> Path:
    """A classifier's export: `model.onnx`, `model.mlpackage` for Core ML, or its weights (`model.safetensors`)."""
    if fmt == "safetensors":
        return write_weights(classifier, folder)
    if fmt == "onnx":
        return export_classifier_onnx(classifier, size, folder / "model.onnx")
    return export_classifier_coreml(classifier, size, folder / "model.mlpackage")


def classifier_fields(cfg: Mapping[str, Any], classifier: Classifier, record: Mapping[str, float], fmt: str
                      ) -> dict[str, Any]:
    """A classifier export's own sidecar fields: input, normalisation inside the graph, outputs, the validation
    AUROC and (binary) threshold."""
    size = int(cfg["data"]["size"])
    binary = len(classifier.classes) == 1
    return {
        "task": "classify",
        "classifier": cfg["model"].get("name", cfg["model"]["type"]),
        "input": {
            "name": INPUT_NAME, "shape": ["n" if fmt == "onnx" else 1, 3, size, size], "dtype": "float32",
            "range": [0.0, 1.0], "channels": "greyscale repeated on 3 channels",
        },
        "normalisation_inside_graph": {
            "in_chans": classifier.in_chans,
            "channels_read": "channel 0 only" if classifier.in_chans == 1 else "all 3",
            "mean": list(classifier.image_mean), "std": list(classifier.image_std),
        },
        "outputs": {
            "logits": "float32 [n, K], one per class in the order of classes",
            "probabilities": ("float32 [n, K], softmax(logits): the classes exclude each other (multi-class)"
                              if getattr(classifier, "multiclass", False) else
                              "float32 [n, K], sigmoid(logits): each class independently (multi-label, not softmax)"),
        },
        "multiclass": bool(getattr(classifier, "multiclass", False)),
        "threshold": record.get("val_threshold") if binary else None,
        "threshold_note": ("probability cut of best F1 on this fold's validation images" if binary else
                           "multi-class: the arg-max is the prediction" if getattr(classifier, "multiclass", False)
                           else "multi-label: no single cut; choose one per class for the use at hand"),
        "val_auroc": record.get("val_score"),
    }  # fmt: skip


class OnnxClassifier(OnnxGraph):
    """An exported classifier: logits and sigmoid probabilities `[N, K]` of float32 images `[N, 3, S, S]`."""

    task = "classify"
    what = "classifier"
    outputs = CLASSIFIER_OUTPUT_NAMES

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self.run(images)
        return logits, probs
