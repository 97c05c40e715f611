"""MLflow tracking: a real `mlflow server` on loopback, a tiny training run logged to it and read back through MLflow's
client, and the tune and submit runs of an ensemble; the logger list and URI rules."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrdet import paths
from cxrdet.cli import app
from cxrdet.errors import ConfigError
from cxrdet.tracking import default_uri, logger_names, tracking_uri
from tests.helpers.ensemble_world import make_world, write_config


def test_the_logger_list_is_checked_and_keeps_csv() -> None:
    assert logger_names({}) == ["csv", "tensorboard"]
    assert logger_names({"loggers": ["csv", "mlflow", "csv"]}) == ["csv", "mlflow"]
    with pytest.raises(ConfigError, match="lacks 'csv': the reports read"):
        logger_names({"loggers": ["mlflow"]})
    with pytest.raises(ConfigError, match=r"has \['wandb'\]: expected some of csv, tensorboard, mlflow"):
        logger_names({"loggers": ["csv", "wandb"]})
    with pytest.raises(ConfigError, match="expected a list"):
        logger_names({"loggers": "mlflow"})


def test_the_tracking_uri_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == default_uri() == f"sqlite:///{paths.outputs_dir() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:1")
    assert tracking_uri() == "http://env:1" and tracking_uri(configured="http://cfg:2") == "http://cfg:2"
    assert tracking_uri("http://cli:3", "http://cfg:2") == "http://cli:3"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away `mlflow server` on loopback (SQLite store, local artefacts); yields its URI."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'store.db'}",
                             "--artifacts-destination", str(folder / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-3000:]}")
        time.sleep(1)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.mark.slow
def test_a_training_run_is_read_back_from_the_server(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from tests.helpers.squares import TINY, tiny_options, write_squares_dataset

    options = tiny_options(write_squares_dataset(tmp_path / "data"), **{"train.limit_train_batches": 2})
    result = CliRunner().invoke(app, ["train", str(TINY), "--fold", "0", "--tracking-uri", mlflow_server,
                                      *[x for o in options for x in ("-o", o)]])
    assert result.exit_code == 0, result.output
    from cxrdet.config import load_config
    from cxrdet.runs import Run

    cfg = load_config(TINY, options)
    run_folder = Run(cfg["experiment"], 0)
    written = run_folder.config()
    assert list(written["train"]["loggers"]) == ["csv", "tensorboard", "mlflow"]  # the run says how it was logged
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name(cfg["experiment"])
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "fold0" and run.info.status == "FINISHED"
    assert run.data.params["cfg/model/type"] == str(cfg["model"]["type"])
    assert run.data.params["cfg/data/size"] == str(cfg["data"]["size"])
    history = client.get_metric_history(run.info.run_id, "val/rsna")
    assert len(history) == 1  # one epoch, one validation
    done = json.loads((run_folder.checkpoints_dir(None) / "done.json").read_text())
    assert history[0].value == pytest.approx(done["best_score"])
    assert any(k.startswith("train/loss") for k in run.data.metrics)
    assert run.data.tags["cxrdet.fold"] == "0" and run.data.tags["cxrdet.best_checkpoint"].endswith("best.ckpt")
    assert float(run.data.tags["cxrdet.best_score"]) == pytest.approx(done["best_score"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.py", "provenance.json", "done.json"} <= artifacts


def test_tune_and_submit_are_logged_to_the_server(mlflow_server: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    world = make_world(tmp_path)
    config = write_config(tmp_path / "ens.py", world, n_trials=3)
    runner = CliRunner()
    tuned = runner.invoke(app, ["tune", str(config), "--n-trials", "3", "--tracking-uri", mlflow_server])
    assert tuned.exit_code == 0, tuned.output
    out = tmp_path / "s" / "ens.csv"
    submitted = runner.invoke(app, ["submit", str(config), "--out", str(out), "--tracking-uri", mlflow_server])
    assert submitted.exit_code == 0, submitted.output
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("ensemble:ens")
    runs = {r.data.tags["cxrdet.kind"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"tune", "submit"}
    params = json.loads((paths.ensemble_dir("ens") / "params.json").read_text())
    tune_run = runs["tune"]
    assert tune_run.data.metrics["optimistic"] == pytest.approx(params["scores"]["optimistic"])
    assert tune_run.data.metrics["honest"] == pytest.approx(params["scores"]["honest"])
    assert tune_run.data.metrics["n_complete"] == 3
    assert float(tune_run.data.params["final_thr"]) == pytest.approx(params["params"]["final_thr"])
    assert {"params.json", "ens.py"} <= {a.path for a in client.list_artifacts(tune_run.info.run_id)}
    sub = runs["submit"]
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sub.data.tags["cxrdet.sha256"] == sidecar["sha256"]
    assert {"ens.csv", "ens.json"} <= {a.path for a in client.list_artifacts(sub.info.run_id)}
    # Without --tracking-uri, --mlflow or MLFLOW_TRACKING_URI, nothing is logged (no local store appears).
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    again = runner.invoke(app, ["submit", str(config), "--out", str(out)])
    assert again.exit_code == 0 and "mlflow run" not in again.output
    assert not (paths.outputs_dir() / "mlflow.db").exists()
