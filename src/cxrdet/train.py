"""Train one experiment on one fold: data module + LightningModule + Trainer, callbacks, loggers, provenance, stages.

`fit(cfg, fold, module_cls, datamodule_cls)` trains on every fold but `fold` and validates on `fold`; it knows no
task: the caller (`cxrdet.tasks.train`) passes the task's LightningModule and data module. The run folder
(`cxrdet.runs.Run(experiment, fold)`) receives the resolved config (`config.py`), `provenance.json` (git
revision, fold-file hash, versions, command) and, per stage, `checkpoints/{best,last}.ckpt`, a `done.json` marker
and TensorBoard and CSV logs.

Curriculum: `train.stages` may list stages, each `dict(name=..., epochs=..., view=..., lr=..., data=dict(...))`;
each trains in its own folder `<run>/stage<i>_<name>` and starts from the previous stage's best (EMA) weights.
Without stages the run is one stage whose folder is the run folder itself.

Resume: `resume=True` skips stages that finished and continues the unfinished one from its `last.ckpt` (saved
every epoch), so a killed run loses at most the epoch in progress.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from mmengine.config import Config
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only

from cxrdet import paths, tracking
from cxrdet.config import to_dict
from cxrdet.errors import CxrdetError
from cxrdet.io import atomic_path, file_sha256
from cxrdet.models.averaging import WeightAverager, averaging_specs, recompute_batchnorm
from cxrdet.models.lit_base import LitBase
from cxrdet.provenance import git_revision
from cxrdet.runs import BEST, DONE_FILE, LAST, Run, Stage, checkpoint_record, load_checkpoint_file, resolve_stages

TENSORBOARD = "tensorboard"
CSV = "csv"

# Quiet console (only what a cxrdet user can act on; the per-epoch line and progress bars stay):
# - Lightning 2.6 calls torch's deprecated `isinstance(treespec, LeafSpec)` in its pytree helper at every fit and
#   validate (Lightning-AI/pytorch-lightning#21326): a FutureWarning about Lightning's code, not the user's.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
# - Lightning's rank-zero info lines: "GPU available: False, used: False", "TPU available", the litlogger /
#   litmodels advertising tips, "Loading `train_dataloader` to estimate...", "`Trainer.fit` stopped: `max_epochs`
#   reached". Warnings (its PossibleUserWarning about too few batches, ...) still print.
logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


@dataclass(frozen=True)
class TrainResult:
    """What a finished run left: its folder, the final stage's best checkpoint, score (of the metric `monitor`) and
    threshold."""

    run_dir: Path
    best_checkpoint: Path
    best_score: float
    best_threshold: float
    monitor: str


def stage_config(cfg: Mapping[str, Any], stage: Stage) -> dict[str, Any]:
    """The config one stage trains with: the stage's epochs, learning rate and data overrides applied."""
    out = to_dict(cfg)
    out["train"]["epochs"] = stage.epochs
    if stage.lr is not None:
        out["optim"]["lr"] = stage.lr
    out["data"].update(dict(stage.data or {}))
    if stage.view is not None:
        out["data"]["view"] = stage.view
    return out


def write_provenance(cfg: Config | Mapping[str, Any], fold: int, folds_file: Path, resumed: bool) -> None:
    """Write the resolved config and `provenance.json` (git revision, fold file and its hash, versions, command).

    A resumed run keeps the first start's record and appends the resume's under `resumes`.
    """
    run = Run(cfg["experiment"], fold)
    run.write_config(cfg.pretty_text if isinstance(cfg, Config) else Config(dict(cfg)).pretty_text)
    run.write_provenance({
        "experiment": cfg["experiment"],
        "fold": fold,
        "config_file": getattr(cfg, "filename", None),
        "folds_file": str(folds_file),
        "folds_sha256": file_sha256(folds_file) if folds_file.is_file() else None,
        "git": git_revision(),
        "command": sys.argv,
        "resumed": resumed,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "lightning": pl.__version__},
        "pseudo_labels": pseudo_provenance((cfg["data"] or {}).get("pseudo")),
    }, resumed=resumed)  # fmt: skip


def pseudo_provenance(name: str | None) -> dict[str, Any] | None:
    """The pseudo-label round a run trains on: its name, the table's hash now and the source ensemble that its
    `provenance.json` names (None without a round)."""
    if not name:
        return None
    folder = paths.pseudo_dir(name)
    record = json.loads((folder / "provenance.json").read_text()) if (folder / "provenance.json").is_file() else {}
    labels = folder / "labels.csv"
    return {"name": name, "labels": str(labels), "sha256": file_sha256(labels) if labels.is_file() else None,
            "source_ensemble": record.get("source_ensemble"), "thresholds": record.get("thresholds")}


def _precision(train_cfg: Mapping[str, Any]) -> str:
    """`train.precision`; 'auto' is mixed precision on a GPU, full precision on a CPU."""
    precision = str(train_cfg.get("precision", "auto"))
    if precision != "auto":
        return precision
    on_gpu = torch.cuda.is_available() and str(train_cfg.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
    return "16-mixed" if on_gpu else "32-true"


def _limit(value: Any) -> int | float | None:
    """Lightning's `limit_*_batches`: an int is a batch count, a float a fraction."""
    if value is None:
        return None
    return int(value) if float(value).is_integer() and float(value) > 1 else float(value)


class _EpochLine(Callback):
    """One line per epoch on stderr (epoch, mean training loss, the monitored metric and its cut, seconds): the
    progress report when stderr is a log file, where a live bar would write thousands of carriage returns.

    Printed at `on_validation_end`, when this epoch's validation metrics are in `callback_metrics` (a callback's
    `on_validation_epoch_end` runs before the module's, so it would still see the previous epoch's); the training
    loss is averaged here from the batches because Lightning aggregates `train/loss_epoch` only after validation.
    """

    def __init__(self, label: str, monitor: str) -> None:
        self.label = label
        self.monitor = monitor
        self._start = 0.0
        self._loss_sum = 0.0
        self._n_batches = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self._loss_sum, self._n_batches = 0.0, 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss_sum += float(loss.detach())
            self._n_batches += 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only the epochs of a fit: averaged weights are validated after it and reported by `fit` itself.
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != TrainerFn.FITTING:
            return
        m = trainer.callback_metrics
        loss = f"{self._loss_sum / self._n_batches:.4f}" if self._n_batches else "-"
        # A multi-label classifier has no single cut: say nothing rather than "at cut nan".
        cut = f" at cut {float(m['val/threshold']):.2f}" if "val/threshold" in m else ""
        print(f"{self.label} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: train/loss {loss}, "
              f"{self.monitor} {float(m.get(self.monitor, math.nan)):.4f}{cut}, "
              f"{time.perf_counter() - self._start:.1f} s", file=sys.stderr, flush=True)


class _StageRecord(Callback):
    """Stores the epoch's validation score and threshold in every checkpoint, so `best.ckpt` says which cut won."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        metrics = trainer.callback_metrics
        checkpoint["cxrdet"] = {
            key: float(metrics[m]) for key, m in (("val_score", self.monitor), ("val_threshold", "val/threshold"))
            if m in metrics
        }


def build_trainer(cfg: Mapping[str, Any], run: Run, stage: Stage, monitor: str,
                  extra: list[Callback] | None = None) -> tuple[pl.Trainer, ModelCheckpoint]:
    """A Trainer for one stage: checkpoints (best by `monitor`, higher is better; last), early stopping on it, LR
    monitor, loggers, and the `extra` callbacks (weight averagers)."""
    train_cfg = cfg["train"]
    experiment, fold = run.experiment, run.fold
    folder = run.stage_dir(stage)
    ckpt_dir = run.checkpoints_dir(stage)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename=BEST, monitor=monitor, mode="max", save_top_k=1, enable_version_counter=False,
        auto_insert_metric_name=False,
    )  # fmt: skip
    # Lightning's `save_last` only writes when the best checkpoint does (an epoch that does not improve leaves an old
    # last.ckpt); a monitor-less checkpoint keeping one file is written every epoch, which resume relies on.
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename=LAST, monitor=None, save_top_k=1, every_n_epochs=1,
                             enable_version_counter=False, auto_insert_metric_name=False)
    callbacks: list[Callback] = [checkpoint, latest, LearningRateMonitor(logging_interval="step"),
                                 _StageRecord(monitor), *(extra or [])]
    # 'auto': a live bar in a terminal, one line per epoch in a log file.
    bar = train_cfg.get("progress_bar", "auto")
    bar = sys.stderr.isatty() if bar == "auto" else bool(bar)
    if not bar:
        callbacks.append(_EpochLine(f"{experiment} fold {fold}{f' {stage.name}' if stage.name else ''}", monitor))
    early = train_cfg.get("early_stopping")
    if early:
        callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=int(early.get("patience", 5)),
                                       min_delta=float(early.get("min_delta", 0.0))))
    # One version folder per attempt (version_0, then version_1 after a resume...): a resumed run keeps its logs.
    names = tracking.logger_names(train_cfg, experiment)
    loggers: list[Any] = [CSVLogger(save_dir=str(folder), name=CSV)]
    if "tensorboard" in names:
        loggers.insert(0, TensorBoardLogger(save_dir=str(folder), name=TENSORBOARD))
    if "mlflow" in names:
        loggers.append(tracking.training_logger(experiment, fold, stage.name,
                                                tracking.tracking_uri(None, train_cfg.get("tracking_uri")),
                                                {"cxrdet.experiment": experiment}))
    trainer = pl.Trainer(
        max_epochs=stage.epochs,
        accelerator=train_cfg.get("accelerator", "auto"),
        devices=train_cfg.get("devices", "auto"),
        strategy=train_cfg.get("strategy", "auto"),
        num_nodes=int(train_cfg.get("num_nodes", 1)),
        precision=_precision(train_cfg),
        gradient_clip_val=train_cfg.get("grad_clip"),
        accumulate_grad_batches=int(train_cfg.get("accumulate", 1)),
        limit_train_batches=_limit(train_cfg.get("limit_train_batches")),
        limit_val_batches=_limit(train_cfg.get("limit_val_batches")),
        callbacks=callbacks,
        logger=loggers,
        default_root_dir=str(folder),
        log_every_n_steps=int(train_cfg.get("log_every_n_steps", 10)),
        num_sanity_val_steps=0,  # a partial validation would score a fraction of the fold
        enable_progress_bar=bar,
        enable_model_summary=False,
        deterministic=train_cfg.get("deterministic", False),
    )  # fmt: skip
    return trainer, checkpoint


def finish_average(trainer: pl.Trainer, module: LitBase, dm: pl.LightningDataModule, averager: WeightAverager,
                   ckpt_dir: Path, monitor: str) -> dict[str, Any] | None:
    """Put an averager's weights in the module (model and EMA copy), recompute BatchNorm, validate them on the
    held-out fold and save them as `<kind>.ckpt` (see `cxrdet.models.averaging`).

    Returns:
        The record (`checkpoint`, `val_score`, `val_threshold`, `epochs`, `bn_batches`), or None when nothing was
        collected (a run stopped early before its last epochs, say so).
    """
    state = averager.state()
    label = f"{module.cfg['experiment']} {averager.spec.kind}"
    if state is None:
        print(f"{label}: no weights collected (the run stopped at epoch {trainer.current_epoch} before the averaged "
              "epochs), no checkpoint written", file=sys.stderr, flush=True)
        return None
    module.model.load_state_dict(state)
    seen = 0
    if averager.spec.bn_batches != 0:
        seen = recompute_batchnorm(module.model, dm.train_dataloader(), module.bn_forward, averager.spec.bn_batches)
    if module.ema is not None:
        module.ema.module.load_state_dict(module.model.state_dict())
    trainer.validate(module, datamodule=dm, verbose=False)
    metrics = trainer.callback_metrics
    record = {"checkpoint": f"{averager.spec.kind}.ckpt", "val_score": float(metrics.get(monitor, math.nan)),
              "val_threshold": float(metrics["val/threshold"]) if "val/threshold" in metrics else math.nan,
              "epochs": averager.epochs(), "bn_batches": seen}
    path = ckpt_dir / record["checkpoint"]
    raw = ckpt_dir / f".{path.name}.raw"
    trainer.save_checkpoint(raw, weights_only=True)  # every rank calls it; rank 0 writes. No callback hook runs then,
    if trainer.is_global_zero:  # so the validation record goes in here, and the file is renamed into place whole.
        ckpt = load_checkpoint_file(raw)
        ckpt["cxrdet"] = {"val_score": record["val_score"], "val_threshold": record["val_threshold"]}
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
        raw.unlink()
    if trainer.is_global_zero:
        print(f"{label} of epochs {record['epochs']}: {monitor} {record['val_score']:.4f} -> {path}", file=sys.stderr,
              flush=True)
    return record


def fit(cfg: Config | Mapping[str, Any], fold: int, module_cls: type[LitBase],
        datamodule_cls: type[pl.LightningDataModule], resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train `module_cls` on `cfg` on all folds but `fold`, validating on `fold`, stage after stage.

    Args:
        cfg: A resolved config (`cxrdet.config.load_config`).
        fold: The held-out fold.
        module_cls: The task's LightningModule (`cxrdet.tasks.Task.module`), built from each stage's config.
        datamodule_cls: The task's data module, taking `(data_cfg, fold, view=..., seed=...)`.
        resume: Skip finished stages and continue the unfinished one from its `last.ckpt`.
        overwrite: Delete this run's checkpoints and start again.

    Returns:
        The run folder and the final stage's best checkpoint, score and threshold.

    Raises:
        CxrdetError: The run already has checkpoints and neither `resume` nor `overwrite` is set; or a data or
            config problem.
    """
    experiment = cfg["experiment"]
    stages = resolve_stages(cfg, getattr(cfg, "filename", None) or experiment)
    run = Run(experiment, fold)
    is_main = rank_zero_only.rank == 0  # DDP re-runs this function in every process; only rank 0 writes files
    existing = run.existing_checkpoints(stages)
    if existing and not (resume or overwrite):
        raise CxrdetError(f"{run.folder} already has checkpoints ({existing[0].name}, ...): pass --resume to continue "
                          "that run or --overwrite to start again")
    if overwrite and is_main:
        for st in stages:
            for sub in (run.checkpoints_dir(st), run.stage_dir(st) / TENSORBOARD, run.stage_dir(st) / CSV):
                shutil.rmtree(sub, ignore_errors=True)

    if is_main:
        run.folder.mkdir(parents=True, exist_ok=True)
        run.write_status("running", resumed=resume)
    try:
        result = _fit_stages(cfg, run, stages, module_cls, datamodule_cls, resume, is_main)
    except (KeyboardInterrupt, SystemExit) as err:  # Lightning turns Ctrl-C into SystemExit(1) after its shutdown
        if is_main:
            run.write_status("killed", error=f"interrupted ({type(err).__name__})")
        raise
    except BaseException as err:
        if is_main:
            run.write_status("failed", error=f"{type(err).__name__}: {err}"[:2000])
        raise
    if is_main:
        run.write_status("finished")
    return result


def _fit_stages(cfg: Config | Mapping[str, Any], run: Run, stages: list[Stage], module_cls: type[LitBase],
                datamodule_cls: type[pl.LightningDataModule], resume: bool, is_main: bool) -> TrainResult:
    """`fit`'s stages, in order (a finished stage skipped on resume); each stage's done.json records the wall time of
    the attempt that finished it (`wall_s`)."""
    fold = run.fold
    seed = int(cfg["train"].get("seed", 42))
    previous_best: Path | None = None
    record: dict[str, Any] = {}
    wrote_provenance = False
    for stage in stages:
        started = time.perf_counter()
        ckpt_dir = run.checkpoints_dir(stage)
        done = run.done(stage) if resume else None
        if done is not None:
            previous_best, record = ckpt_dir / done["best_checkpoint"], done
            continue
        scfg = stage_config(cfg, stage)
        pl.seed_everything(seed + stage.index, workers=True, verbose=False)
        module = module_cls(scfg)  # a config problem in the model shows before the tables are read
        dm = datamodule_cls(scfg["data"], fold, view=stage.view, seed=seed + stage.index)
        dm.setup("fit")  # read and check the tables now, before anything is written
        if is_main and not wrote_provenance:
            write_provenance(cfg, fold, paths.folds_file(cfg["data"]["folds"]), resumed=resume)
            wrote_provenance = True
        last = ckpt_dir / f"{LAST}.ckpt"
        ckpt_path = str(last) if resume and last.is_file() else None
        if ckpt_path is not None:
            load_checkpoint_file(last)  # refuses a checkpoint that would run code, with cxrdet's message
        if ckpt_path is None and previous_best is not None:
            module.init_from_checkpoint(previous_best)
        monitor = module_cls.monitor_for(scfg)
        averagers = [WeightAverager(spec, monitor) for spec in averaging_specs(scfg["train"])]
        trainer, checkpoint = build_trainer(scfg, run, stage, monitor, extra=list(averagers))
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        if not checkpoint.best_model_path:
            raise CxrdetError(f"stage {stage.name or 'train'} of {run.folder} saved no best checkpoint: did validation "
                              "run? (check limit_val_batches and the fold's images)")
        best = Path(checkpoint.best_model_path)
        score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else math.nan
        record = {"best_checkpoint": best.name, "best_score": score,
                  "best_threshold": checkpoint_record(best).get("val_threshold", math.nan),
                  "epochs_run": trainer.current_epoch, "stage": stage.name}
        averaged = {a.spec.kind: finish_average(trainer, module, dm, a, ckpt_dir, monitor) for a in averagers}
        if averaged:
            record["averaged"] = {kind: rec for kind, rec in averaged.items() if rec is not None}
        record["wall_s"] = round(time.perf_counter() - started, 1)
        if is_main:
            run.mark_done(stage, record)
            for logger in trainer.loggers:
                if isinstance(logger, MLFlowLogger):
                    tracking.finish_training(logger, [run.config_path, run.provenance_path, ckpt_dir / DONE_FILE],
                                             {"cxrdet.best_checkpoint": best, "cxrdet.best_score": score,
                                              "cxrdet.epochs_run": record["epochs_run"]})
        previous_best = best
    assert previous_best is not None  # resolve_stages returns at least one stage
    return TrainResult(run.folder, previous_best, float(record["best_score"]), float(record["best_threshold"]),
                       module_cls.monitor_for(cfg))
