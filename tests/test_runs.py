"""The run owner: a run's written config is the source of truth after training, the final curriculum stage's
checkpoint is the one every later step reads, and ensembles' files live in one place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cxrdet.cli import app
from cxrdet.config import load_config
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.runs import EnsembleRun, Experiment, Run, check_overrides, run_config
from tests.helpers.squares import TINY, tiny_options, write_squares_dataset


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def test_an_option_that_disagrees_with_the_written_config_names_both_values() -> None:
    written = load_config(TINY)
    with pytest.raises(ConfigError, match=r"data.folds='other' but the run was trained with data.folds='demo_k5'"):
        check_overrides(written, ["data.folds=other"], "run/config.py")
    with pytest.raises(ConfigError, match=r"model.backbone.nope=1 but the run was trained with "
                                          r"model.backbone.nope='<not set>'"):
        check_overrides(written, ["model.backbone.nope=1"], "run/config.py")
    # The same value is no conflict (a tuple written as text reads back as a list); prediction settings may change.
    assert check_overrides(written, ["data.folds=demo_k5", f"data.classes={tuple(written.data.classes)}",
                                     "predict.tta=hflip", "data.batch_size=2"], "x") == {
        "predict.tta": "hflip", "data.batch_size": 2}


def test_a_run_without_a_written_config_says_to_train_first() -> None:
    run = Run("never_trained", 0)
    with pytest.raises(CxrdetError, match=r"config.py not found: train first"):
        run.config()
    with pytest.raises(CxrdetError, match="train first"):
        run.final_checkpoint()
    assert Experiment("never_trained").runs() == [] and run.best_record() == {}
    with pytest.raises(CxrdetError, match="tune the ensemble first"):
        EnsembleRun("never_tuned").read_params()


def _save_checkpoint(path: Path, val_score: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"cxrdet": {"val_score": val_score, "val_threshold": 0.5}}, path)


def test_a_curriculum_runs_report_shows_its_final_stages_checkpoint() -> None:
    from cxrdet.report.data import ReportData
    from cxrdet.report.detection import per_fold_table

    cfg = load_config(TINY, ["train.stages=[{'name': 'crops', 'epochs': 1}, {'name': 'full', 'epochs': 1}]"])
    run = Run(cfg.experiment, 0)
    run.write_config(cfg.pretty_text)
    _save_checkpoint(run.folder / "stage1_crops" / "checkpoints" / "best.ckpt", 0.11)
    _save_checkpoint(run.folder / "stage2_full" / "checkpoints" / "best.ckpt", 0.77)
    # The rule the report used before (first `**/checkpoints/best.ckpt` in sorted order) picks the first stage:
    from cxrdet.runs import checkpoint_record

    first_found = sorted(run.folder.glob("**/checkpoints/best.ckpt"))[0]
    assert checkpoint_record(first_found)["val_score"] == 0.11
    # The run owner picks the final stage, and the report asks it.
    assert run.final_checkpoint() == run.folder / "stage2_full" / "checkpoints" / "best.ckpt"
    ids = pd.Index(["a", "b"])
    gt = pd.DataFrame({"image_id": ["a"], "x1": [0.0], "y1": [0.0], "x2": [10.0], "y2": [10.0]})
    pred = gt.assign(score=0.9)
    data = ReportData(name=cfg.experiment, kind="experiment", image_ids=ids, image_fold=pd.Series(0, index=ids),
                      gt=gt, predictions={cfg.experiment: pred}, chosen={cfg.experiment: 0.5}, meta=pd.DataFrame(),
                      cache=Path("."), runs=[run])
    table = per_fold_table(data)
    assert table[f"{cfg.experiment} val/rsna"].tolist() == [0.77]


@pytest.mark.slow
def test_predict_reads_the_fold_file_the_run_was_trained_with(tmp_path: Path) -> None:
    from cxrdet.tasks import train

    squares = write_squares_dataset(tmp_path / "data")
    trained_folds = tmp_path / "trained_k3.csv"
    shutil.copy(squares["data.folds"], trained_folds)
    options = tiny_options({**squares, "data.folds": str(trained_folds)})
    train(load_config(TINY, options), fold=0)
    Path(squares["data.folds"]).unlink()  # the config's other fold file is gone: only the run's may be read

    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(TINY), "--fold", "0"])  # no option repeated
    assert result.exit_code == 0, result.output
    sidecar = json.loads(Run(load_config(TINY).experiment, 0).sidecar_path("oof").read_text())
    assert sidecar["folds_file"] == str(trained_folds) and len(sidecar["folds_sha256"]) == 64
    cfg = run_config(TINY, 0)
    assert cfg.data.folds == str(trained_folds) and cfg.data.root == squares["data.root"]

    other = tmp_path / "other.csv"
    result = runner.invoke(app, ["predict", str(TINY), "--fold", "0", "-o", f"data.folds={other}"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert f"data.folds='{other}' but the run was trained with data.folds='{trained_folds}'" in text
    # Prediction settings may differ from training's.
    result = runner.invoke(app, ["predict", str(TINY), "--fold", "0", "-o", "predict.tta=hflip"])
    assert result.exit_code == 0, result.output
    assert json.loads(Run(load_config(TINY).experiment, 0).sidecar_path("oof").read_text())["tta"] == "hflip"
