"""The local leaderboard (`cxrdet runs`, `cxrdet report --all`): run states, sorting, an experiment's and an ensemble's
rows against the figures their own files hold, and outputs/index.html linking the reports."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrdet import paths
from cxrdet.cli import app
from cxrdet.config import load_config
from cxrdet.errors import CxrdetError
from cxrdet.io import write_csv, write_json
from cxrdet.report.leaderboard import _overall, ensemble_row, sort_rows
from cxrdet.runs import Run, resolve_stages
from tests.helpers.ensemble_world import make_world, write_config
from tests.helpers.squares import TINY, tiny_options, write_squares_dataset


def _run_with_config(fold: int = 0) -> Run:
    """A run folder with a written config (the tiny squares config), nothing else."""
    cfg = load_config(TINY)
    run = Run(cfg["experiment"], fold)
    run.write_config(cfg.pretty_text)
    return run


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_runs_state_follows_its_status_and_done_files() -> None:
    run = _run_with_config()
    assert run.state() == "not started"
    run.write_status("running")  # this process: alive
    assert run.state() == "running"
    write_json(run.status_path, {**run.status(), "pid": _dead_pid()})  # its process is gone: killed, not running
    assert run.state() == "killed"
    write_json(run.status_path, {**run.status(), "pid": os.getpid(), "pid_start": "1"})  # the pid, reused
    assert run.state() == "killed"
    write_json(run.status_path, {**run.status(), "host": platform.node() + "-elsewhere"})  # taken at its word
    assert run.state() == "running"
    run.write_status("failed", error="ValueError: boom")
    assert run.state() == "failed" and run.status()["error"] == "ValueError: boom"
    run.mark_done(resolve_stages(run.config())[-1], {"best_score": 0.5})
    assert run.state() == "finished"  # done.json wins over any status


def test_checkpoints_without_a_status_read_as_killed() -> None:
    run = _run_with_config()
    stage = resolve_stages(run.config())[-1]
    run.checkpoints_dir(stage).mkdir(parents=True)
    (run.checkpoints_dir(stage) / "last.ckpt").write_bytes(b"x")
    assert run.state() == "killed"


def test_an_experiments_status_and_sorting() -> None:
    assert _overall({0: "finished", 1: "finished"}, [0, 1]) == "finished"
    assert _overall({0: "finished"}, [0, 1, 2]) == "incomplete"
    assert _overall({0: "finished", 1: "killed", 2: "running"}, [0, 1, 2]) == "running"
    assert _overall({0: "failed", 1: "killed"}, [0, 1]) == "failed"
    rows = [{"name": "a", "oof": 0.2}, {"name": "b", "oof": None}, {"name": "c", "oof": 0.5}, {"name": "d", "oof": 0.1}]
    assert [r["name"] for r in sort_rows(rows, "oof")] == ["c", "a", "d", "b"]  # highest first, missing last
    assert [r["name"] for r in sort_rows(rows, "oof", ascending=True)] == ["d", "a", "c", "b"]
    assert [r["name"] for r in sort_rows(rows, "name", ascending=True)] == ["a", "b", "c", "d"]


def test_an_unknown_sort_column_is_named() -> None:
    result = CliRunner().invoke(app, ["runs", "--sort", "nope"])
    assert result.exit_code == 1 and "--sort 'nope': expected a column" in result.output


def test_training_that_raises_leaves_a_failed_status(tmp_path: Path) -> None:
    from cxrdet.tasks import train

    data = write_squares_dataset(tmp_path / "data")
    Path(data["data.folds"]).unlink()  # the data module cannot read its fold file
    cfg = load_config(TINY, tiny_options(data))
    with pytest.raises(CxrdetError):
        train(cfg, fold=0)
    run = Run(cfg["experiment"], 0)
    assert run.state() == "failed" and "squares_k3.csv" in run.status()["error"]


def _rsna_test_labels(path: Path, world: dict[str, Any]) -> Path:
    """RSNA-format labels of the world's test images (their simulated opacities), as the synthetic data has."""
    rows = []
    test_ids = list(world["test_ids"])
    gt = world["gt"].iloc[: 2 * len(test_ids)]
    for i, box in enumerate(gt.itertuples()):
        rows.append((test_ids[i % len(test_ids)], box.x1, box.y1, box.x2 - box.x1, box.y2 - box.y1, 1))
    with_boxes = {r[0] for r in rows}
    rows += [(t, "", "", "", "", 0) for t in test_ids if t not in with_boxes]
    return write_csv(path, pd.DataFrame(rows, columns=["patientId", "x", "y", "width", "height", "Target"]))


def test_an_ensembles_row_has_its_tuned_scores_and_its_scored_submissions(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    config = write_config(tmp_path / "ens.py", world, n_trials=3)
    runner = CliRunner()
    assert runner.invoke(app, ["tune", str(config), "--n-trials", "3"]).exit_code == 0
    out = tmp_path / "s" / "ens.csv"
    for _ in range(2):  # written twice to the same path: one entry
        done = runner.invoke(app, ["submit", str(config), "--out", str(out)])
        assert done.exit_code == 0, done.output
    labels = _rsna_test_labels(tmp_path / "test_labels.csv", world)
    result = runner.invoke(app, ["runs", "--json", "--test-labels", str(labels)])
    assert result.exit_code == 0, result.output
    board = json.loads(result.output)
    assert board["experiments"] == []  # the world's members have predictions but no run config
    (row,) = board["ensembles"]
    params = json.loads((paths.ensemble_dir("ens") / "params.json").read_text())
    assert row["ensemble"] == "ens" and row["members"] == ["det_a", "det_b"]
    assert row["optimistic"] == pytest.approx(params["scores"]["optimistic"])
    assert row["honest"] == pytest.approx(params["scores"]["honest"]) and row["trials"] == 3
    assert row["submissions"] == [str(out.resolve())]
    scored = runner.invoke(app, ["score", "--labels", str(labels), "--submission", str(out), "--json"])
    assert row["test"] == pytest.approx(json.loads(scored.output.strip().splitlines()[-1])["score"])
    # Without test labels (a Kaggle download), the test score is missing and says why.
    bare = ensemble_row("ens")
    assert bare["test"] is None and bare["submission_details"][0]["test_note"] == "no test labels"
    table = runner.invoke(app, ["runs"])
    assert table.exit_code == 0 and "ens.csv" in table.output and "Ensembles (1)" in table.output


@pytest.mark.slow
def test_an_experiments_row_and_the_index_page(tiny_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrdet.report.data import pooled_detection_score

    monkeypatch.setenv("CXRDET_OUTPUTS", str(tiny_run["outputs"]))
    experiment = tiny_run["experiment"]
    result = CliRunner().invoke(app, ["runs", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = [r for r in json.loads(result.output)["experiments"] if r["experiment"] == experiment]
    done = Run(experiment, 0).done(resolve_stages(Run(experiment, 0).config())[-1])
    n_folds = len(pd.read_csv(paths.folds_file(Run(experiment, 0).config()["data"]["folds"]))["fold"].unique())
    assert row["folds"] == f"1/{n_folds}" and row["missing"] == list(range(1, n_folds))
    assert row["status"] == "incomplete" and row["per_fold"]["0"]["state"] == "finished"
    assert row["val_per_fold"]["0"] == pytest.approx(done["best_score"]) and row["epochs"] == "2"
    assert row["wall_s"] == pytest.approx(done["wall_s"]) and row["wall_s"] > 0
    assert row["metric"] == "rsna" and row["oof"] == pytest.approx(pooled_detection_score(experiment)[1])
    assert (paths.outputs_dir() / experiment / "leaderboard.json").is_file()  # cached for the next call
    result = CliRunner().invoke(app, ["report", "--all"])
    assert result.exit_code == 0, result.output
    index = paths.outputs_dir() / "index.html"
    assert result.output.strip().splitlines()[-1] == str(index)
    page = index.read_text()
    links = re.findall(r'href="([^"]+)"', page)
    assert f"{experiment}/report/index.html" in links
    assert all((index.parent / link).is_file() for link in links)


def test_a_folder_that_cannot_be_read_is_a_row_saying_why() -> None:
    run = _run_with_config()
    run.config_path.write_text("model = dict(type=\n")  # a hand-edited config cut short
    broken = paths.ensemble_dir("half_written") / "params.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"scores": ')
    result = CliRunner().invoke(app, ["runs", "--json"])
    assert result.exit_code == 0, result.output
    board = json.loads(result.output)
    (row,) = board["experiments"]
    assert row["experiment"] == run.experiment and row["status"].startswith("unreadable: ")
    (ens,) = board["ensembles"]
    assert ens["ensemble"] == "half_written" and ens["tuned"].startswith("unreadable: ")
    # report --all lists what it could not write and still writes the index page.
    result = CliRunner().invoke(app, ["report", "--all"])
    assert result.exit_code == 0, result.output
    assert "warning: half_written: no report" in result.output
    assert "half_written" in (paths.outputs_dir() / "index.html").read_text()


def test_the_expected_folds_come_from_the_fold_file_by_path_or_by_name() -> None:
    from cxrdet.report.leaderboard import _expected_folds

    folds = paths.outputs_dir() / "folds" / "k3.csv"
    write_csv(folds, pd.DataFrame({"image_id": ["a", "b", "c", "d"], "patient_id": ["a", "b", "c", "d"],
                                   "fold": [0, 1, 2, 0]}))
    assert _expected_folds({"data": {"folds": str(folds)}}) == [0, 1, 2]
    assert _expected_folds({"data": {"folds": "k3"}}) == [0, 1, 2]  # a name, as configs give it
    assert _expected_folds({"data": {"folds": "missing"}}) == []


def test_report_needs_a_name_or_all_but_not_both() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["report"])
    assert result.exit_code == 1 and "name an experiment or a tuned ensemble, or pass --all" in result.output
    result = runner.invoke(app, ["report", "some_experiment", "--all"])
    assert result.exit_code == 1 and "give no NAME and no --out" in result.output
