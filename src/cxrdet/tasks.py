"""The task registry: what differs between detecting boxes and classifying images, decided once.

A config's top-level `task` (absent = `detect`) names a registered `Task`, which bundles that task's LightningModule
and data module (training), its prediction pieces (one batch of outputs as table rows, the TTA merge, its sidecar
fields), its exporter and inference models (deployment), its report page and, for classifiers, Grad-CAM. The
commands ask the task and call the task-agnostic steps (`cxrdet.train.fit`, `cxrdet.predict.predict`,
`cxrdet.deploy.export.export`, ...) with its pieces; no other module branches on the task. A new task registers one
more `Task` here.

This module sits just below the CLI: it is the one place that may import every layer, because it composes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cxrdet import paths
from cxrdet.data.classify import ClassificationDataModule
from cxrdet.data.datamodule import DetectionDataModule
from cxrdet.deploy import export as exporting
from cxrdet.deploy import infer as inferring
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.models.lit_base import LitBase
from cxrdet.models.lit_classifier import LitClassifier, probabilities_frame
from cxrdet.models.lit_detector import LitDetector, detections_to_frame
from cxrdet.predict import ImageSizes, mean_passes, merge_box_passes
from cxrdet.registry import Registry
from cxrdet.report import classification as classification_report
from cxrdet.report import detection as detection_report
from cxrdet.report import leaderboard as board
from cxrdet.report.data import (no_oof_error, pooled_classification_score, pooled_detection_score,
                                tuned_ensemble_config)
from cxrdet.runs import EnsembleRun, Experiment

DEFAULT_TASK = "detect"


@dataclass(frozen=True)
class Task:
    """Everything task-specific, by pipeline step.

    Attributes:
        name: The config's `task`.
        module: LightningModule class (training, validation, `load_for_inference`).
        datamodule: Data module class taking `(data_cfg, fold, view=..., seed=...)`.
        batch_frame: `(model, outputs, metas, size) -> table rows` of one prediction batch.
        merge: `(passes, sizes, predict_cfg) -> table`: TTA passes merged, the task's caps applied.
        sidecar: `(table, sizes, predict_cfg, model) -> dict`: the task's fields of a prediction sidecar.
        refuse_format: `(fmt) -> reason or None`: export formats the task cannot write here.
        write_model: `(model, size, folder, fmt) -> file`: the deployment export.
        model_fields: `(cfg, model, record, fmt) -> dict`: the task's fields of an export's sidecar.
        inference_model: Its `cxrdet.deploy.infer.InferenceModel` class (`from_onnx`, `from_checkpoint`).
        run_studies: `(model, dicoms, out_dir, threshold) -> result`: single-study inference.
        report_page: `(experiment, out_dir) -> index.html`: an experiment's report.
        pooled_score: `experiment -> (metric, score)`: the pooled OOF score the leaderboard shows.
        explain: Grad-CAM of a fold's model, or None where the task has none.
    """

    name: str
    module: type[LitBase]
    datamodule: type
    batch_frame: Callable[..., pd.DataFrame]
    merge: Callable[..., pd.DataFrame]
    sidecar: Callable[..., dict[str, Any]]
    refuse_format: Callable[[str], str | None]
    write_model: Callable[..., Path]
    model_fields: Callable[..., dict[str, Any]]
    inference_model: type[inferring.InferenceModel]
    run_studies: Callable[..., Any]
    report_page: Callable[[str, str | Path | None], Path]
    pooled_score: Callable[[str], tuple[str, float]]
    explain: Callable[..., Any] | None = None


TASKS: Registry[Task] = Registry("task")


def _detection_sidecar(table: pd.DataFrame, sizes: ImageSizes, pred_cfg: Mapping[str, Any], model: Any
                       ) -> dict[str, Any]:
    return {"task": "detect", "score_floor": float(pred_cfg["score_floor"]),
            "max_per_image": int(pred_cfg["max_per_image"]), "n_images": len(sizes), "n_boxes": len(table)}


def _classification_sidecar(table: pd.DataFrame, sizes: ImageSizes, pred_cfg: Mapping[str, Any], model: Any
                            ) -> dict[str, Any]:
    return {"task": "classify", "classes": list(model.classes), "n_images": len(table)}


def _explain(*args: Any, **kwargs: Any) -> Any:
    from cxrdet.explain import explain  # pytorch-grad-cam: only when asked

    return explain(*args, **kwargs)


TASKS.register(Task(
    name="detect", module=LitDetector, datamodule=DetectionDataModule,
    batch_frame=lambda model, outputs, metas, size: detections_to_frame(outputs, metas, size),
    merge=merge_box_passes, sidecar=_detection_sidecar,
    refuse_format=exporting.refuse_detector_format, write_model=exporting.write_detector,
    model_fields=exporting.detector_fields, inference_model=inferring.BoxModel, run_studies=inferring.infer,
    report_page=detection_report.write_page, pooled_score=pooled_detection_score,
), name="detect")  # fmt: skip
TASKS.register(Task(
    name="classify", module=LitClassifier, datamodule=ClassificationDataModule,
    batch_frame=lambda model, logits, metas, size: probabilities_frame(logits, metas, model.classes,
                                                                       getattr(model, "multiclass", False)),
    merge=lambda passes, sizes, pred_cfg: mean_passes(passes), sidecar=_classification_sidecar,
    refuse_format=lambda fmt: None, write_model=exporting.write_classifier,
    model_fields=exporting.classifier_fields, inference_model=inferring.ProbabilityModel,
    run_studies=inferring.classify, report_page=classification_report.write_page,
    pooled_score=pooled_classification_score, explain=_explain,
), name="classify")  # fmt: skip


def task_name(cfg: Mapping[str, Any]) -> str:
    """A config's `task` (`detect` when absent)."""
    return str(cfg.get("task") or DEFAULT_TASK)


def get_task(cfg: Mapping[str, Any]) -> Task:
    """The registered task of a config (or of an export sidecar: both say `task`).

    Raises:
        ConfigError: An unknown task.
    """
    name = task_name(cfg)
    if name not in TASKS:
        raise ConfigError(f"task={name!r}: expected one of {TASKS.in_order()}")
    return TASKS.get(name)


# ---- the steps, dispatched once ----


def train(cfg: Any, fold: int, resume: bool = False, overwrite: bool = False,
          datamodule_cls: type | None = None) -> Any:
    """Train `cfg`'s model on all folds but `fold` (`cxrdet.train.fit` with the task's module and data module)."""
    from cxrdet.train import fit

    task = get_task(cfg)
    return fit(cfg, fold, task.module, datamodule_cls or task.datamodule, resume=resume, overwrite=overwrite)


def predict(cfg: Any, fold: int, split: str = "oof", tta: str | None = None, checkpoint: str | None = None,
            device: str | None = None, datamodule_cls: type | None = None) -> Path:
    """Predict `split` with the fold model and write its table (`cxrdet.predict.predict` with the task)."""
    from cxrdet.predict import predict as run

    return run(cfg, fold, get_task(cfg), split=split, tta=tta, checkpoint=checkpoint, device=device,
               datamodule_cls=datamodule_cls)


def export(cfg: Any, fold: int, fmt: str = "onnx", checkpoint: str = "best", out_dir: str | Path | None = None
           ) -> Path:
    """Export the fold model for deployment (`cxrdet.deploy.export.export` with the task's exporter)."""
    return exporting.export(cfg, fold, get_task(cfg), fmt=fmt, checkpoint=checkpoint, out_dir=out_dir)


def explain(cfg: Any, fold: int, **kwargs: Any) -> Any:
    """Grad-CAM overlays of the fold model (`cxrdet.explain.explain`).

    Raises:
        ConfigError: The task has no Grad-CAM (detectors).
    """
    task = get_task(cfg)
    if task.explain is None:
        raise ConfigError(f"{cfg['experiment']}: task={task.name!r}; Grad-CAM explains classifiers "
                          "(task='classify')")
    return task.explain(cfg, fold, **kwargs)


def report(name: str, out_dir: str | Path | None = None) -> Path:
    """The report of a tuned ensemble (detection page) or of an experiment (its task's page, told by its runs'
    written config); returns `index.html`.

    Raises:
        CxrdetError: Neither a tuned ensemble nor an experiment with OOF predictions.
    """
    if tuned_ensemble_config(name) is not None:
        return detection_report.write_page(name, out_dir)
    runs = Experiment(name).runs("oof")
    if not runs:
        raise no_oof_error(Experiment(name), ", or name a tuned ensemble")
    return get_task(runs[0].config()).report_page(name, out_dir)


def pooled_score(experiment: str) -> tuple[str, float]:
    """An experiment's pooled OOF score by its task (the leaderboard's `oof` column).

    Raises:
        CxrdetError: No fold has OOF predictions.
    """
    runs = Experiment(experiment).runs("oof")
    if not runs:
        raise no_oof_error(Experiment(experiment))
    return get_task(runs[0].config()).pooled_score(experiment)


def leaderboard(test_labels: Path | None = None, sort: str | None = None, ascending: bool = False
                ) -> dict[str, list[dict[str, Any]]]:
    """Every experiment's and tuned ensemble's leaderboard row (`cxrdet.report.leaderboard`)."""
    return board.leaderboard(pooled_score, task_name, test_labels, sort, ascending)


def report_all(test_labels: Path | None = None) -> tuple[Path, dict[str, Path], dict[str, str]]:
    """Every experiment's and tuned ensemble's report, then `outputs/index.html` linking them.

    Returns:
        The index page, the written reports by name, and why each report that could not be written failed (one
        failure does not stop the others).
    """
    written: dict[str, Path] = {}
    failures: dict[str, str] = {}
    unreadable = (CxrdetError, ValueError, OSError)  # a broken folder is reported, the others still written
    for name in board.experiment_names():
        if not Experiment(name).runs("oof"):
            failures[name] = "no OOF predictions yet"
            continue
        try:
            written[name] = report(name)
        except unreadable as err:
            failures[name] = str(err).splitlines()[0]
    for name in board.ensemble_names():
        try:
            config = EnsembleRun(name).read_params().get("config")
            path = Path(config) if config else None
            if path is not None and not path.is_absolute() and not path.is_file():
                path = paths.REPO_ROOT / path
            if path is None or not path.is_file():
                failures[name] = f"its config {config} is not found"
                continue
            written[name] = detection_report.write_page(str(path), None)
        except unreadable as err:
            failures[name] = str(err).splitlines()[0]
    index = board.write_index(leaderboard(test_labels), failures=failures)
    return index, written, failures


def load_model(model: str | Path, threads: int = 0) -> Any:
    """An inference model of an `.onnx` export (onnxruntime; its sidecar says the task), a `.safetensors` export
    (PyTorch, the network rebuilt from the sidecar's config) or a `.ckpt` checkpoint (PyTorch; its config says the
    task).

    Raises:
        CxrdetError: The file is missing or neither kind.
    """
    path = Path(model)
    if not path.is_file():
        raise CxrdetError(f"model {path} not found: expected an exported .onnx file (cxrdet export) or a .ckpt file")
    if path.suffix == ".onnx":
        return get_task(exporting.read_sidecar(path)).inference_model.from_onnx(path, threads=threads)
    if path.suffix == ".safetensors":
        return get_task(exporting.read_sidecar(path)).inference_model.from_safetensors(path)
    if path.suffix == ".ckpt":
        cfg, record = inferring.checkpoint_config(path)
        return get_task(cfg).inference_model.from_checkpoint(path, cfg, record)
    raise CxrdetError(f"model {path}: expected a .onnx file (cxrdet export) or a .ckpt checkpoint, got "
                      f"'{path.suffix}' (a model.safetensors export is read too)")


def task_of_model(model: Any) -> Task:
    """The task whose inference model class `model` is an instance of."""
    for _, task in TASKS.items():
        if isinstance(model, task.inference_model):
            return task
    raise CxrdetError(f"{type(model).__name__} is no registered task's inference model")


def infer(model: Any, dicoms: Sequence[str | Path], out_dir: str | Path, threshold: float | None = None) -> Any:
    """Single-study inference with a loaded model (`load_model`): its task's study loop."""
    return task_of_model(model).run_studies(model, dicoms, out_dir, threshold)

