"""Experiment tracking with MLflow: where runs go, the Lightning logger of a training run, and the runs that `cxrdet
tune` and `cxrdet submit` log.

- Where: `--tracking-uri` of a command, else the config's `train.tracking_uri`, else `MLFLOW_TRACKING_URI`, else a
  local SQLite store `outputs/mlflow.db` with artefacts in `outputs/mlflow-artifacts/` (no server needed; `mlflow ui
  --backend-store-uri sqlite:///outputs/mlflow.db` shows it). A shared `mlflow server` is named by its
  `http://HOST:PORT` URI.
- Training (`train.loggers=['csv', 'tensorboard', 'mlflow']`): one MLflow experiment per cxrdet experiment, one run
  per fold (named `fold<k>`; a curriculum stage's run `fold<k> <stage>`), Lightning's `MLFlowLogger` logging the
  resolved config as parameters (the module's hyper-parameters, `cfg/...`) and every metric Lightning logs per step
  and epoch; after the stage, the run's `config.py`, `provenance.json` and `done.json` as artefacts and the best
  checkpoint's path and score as tags. A failed or interrupted fit ends the run FAILED or KILLED (Lightning's
  `finalize`).
- Tuning: one run per `cxrdet tune` in the MLflow experiment `ensemble:<name>`, with the best trial's parameters,
  both CV scores (optimistic and honest, pooled and per fold) and `params.json`. Not every trial: the trials live
  in the Optuna study, which `cxrdet dashboard` shows whole (hundreds of runs per tuning, held-out studies included,
  would bury the comparison MLflow is for: ensemble against ensemble, week after week).
- Submission: one run per `cxrdet submit` in the same experiment, with the CSV, its provenance sidecar, its hash and
  the scores it was tuned to.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrdet import paths
from cxrdet.errors import ConfigError

LOGGERS: tuple[str, ...] = ("csv", "tensorboard", "mlflow")
DEFAULT_LOGGERS: tuple[str, ...] = ("csv", "tensorboard")


def default_uri() -> str:
    """The local SQLite store under the outputs folder."""
    return f"sqlite:///{paths.outputs_dir() / 'mlflow.db'}"


def artifact_root() -> Path:
    """Where a local store keeps artefacts (a server keeps its own)."""
    return paths.outputs_dir() / "mlflow-artifacts"


def tracking_uri(explicit: str | None = None, configured: str | None = None) -> str:
    """`explicit` (a command's --tracking-uri), else `configured` (`train.tracking_uri`), else MLFLOW_TRACKING_URI,
    else `default_uri()`."""
    return explicit or configured or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def logger_names(train_cfg: Mapping[str, Any], source: str = "config") -> list[str]:
    """The `train.loggers` of a config, checked.

    Raises:
        ConfigError: Not a list of `LOGGERS`, or without `csv` (the reports read training curves from its files).
    """
    names = train_cfg.get("loggers")
    if names is None:
        return list(DEFAULT_LOGGERS)
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{source}: train.loggers={names!r}: expected a list such as {list(DEFAULT_LOGGERS)} "
                          f"(of {', '.join(LOGGERS)})")
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ConfigError(f"{source}: train.loggers has {unknown}: expected some of {', '.join(LOGGERS)}")
    if "csv" not in names:
        raise ConfigError(f"{source}: train.loggers={list(names)!r} lacks 'csv': the reports read each run's training "
                          "curves from its CSV log; keep it and add others")
    return list(dict.fromkeys(names))


def _local_store(uri: str) -> str | None:
    """The artefact location of a new experiment in a local store (None for a server, which decides)."""
    return artifact_root().as_uri() if uri.startswith("sqlite:") or uri.startswith("file:") else None


def _prepare(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def training_logger(experiment: str, fold: int, stage: str | None, uri: str, tags: Mapping[str, Any]) -> Any:
    """Lightning's `MLFlowLogger` for one fold (and stage) of an experiment."""
    from pytorch_lightning.loggers import MLFlowLogger

    _prepare(uri)
    return MLFlowLogger(experiment_name=experiment, run_name=f"fold{fold}" + (f" {stage}" if stage else ""),
                        tracking_uri=uri, tags={"cxrdet.fold": str(fold), "cxrdet.stage": stage or "", **tags},
                        artifact_location=_local_store(uri), log_model=False)


def finish_training(logger: Any, files: Sequence[Path], tags: Mapping[str, Any]) -> None:
    """After a stage: its files as artefacts of the logger's run, and `tags` (best checkpoint, score)."""
    client, run_id = logger.experiment, logger.run_id
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))
    for f in files:
        if f.is_file():
            client.log_artifact(run_id, str(f))


def log_run(experiment: str, run_name: str, uri: str, params: Mapping[str, Any], metrics: Mapping[str, float],
            tags: Mapping[str, Any], files: Sequence[Path]) -> str:
    """One finished MLflow run (tuning, submission) in `experiment`, created if new; returns its run id."""
    import math

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    _prepare(uri)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(
        experiment, artifact_location=_local_store(uri))
    run = client.create_run(experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
    run_id = run.info.run_id
    try:
        stamp = run.info.start_time
        client.log_batch(run_id,
                         metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()
                                  if v is not None and not math.isnan(float(v))],
                         params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        for f in files:
            if f.is_file():
                client.log_artifact(run_id, str(f))
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def ensemble_experiment(name: str) -> str:
    """The MLflow experiment of an ensemble's tuning and submission runs."""
    return f"ensemble:{name}"
