"""Submission from tuned parameters: validated CSV, provenance record, fold merging by hand, single members."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrdet import paths
from cxrdet.cli import app
from cxrdet.ensemble.spec import load_ensemble, resolve
from cxrdet.ensemble.submit import predict_test, submit
from cxrdet.ensemble.tune import tune
from cxrdet.errors import ConfigError, TableError
from cxrdet.io import file_sha256, write_parquet
from cxrdet.submission import read_submission, validate_submission
from tests.helpers.ensemble_world import write_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.slow
def test_submit_writes_a_valid_csv_and_its_provenance(world, tmp_path: Path) -> None:
    spec = load_ensemble(write_config(tmp_path / "ens.py", world, n_trials=5))
    with pytest.raises(ConfigError, match="tune the ensemble first"):
        submit(spec, tmp_path / "sub" / "ens.csv")
    tuned = tune(spec, honest=False)
    result = submit(spec, tmp_path / "sub" / "ens.csv")
    stats = validate_submission(result.csv, world["test_ids"], 1024)
    assert stats.n_rows == len(world["test_ids"]) and stats.n_boxes == result.n_boxes > 0
    record = json.loads((tmp_path / "sub" / "ens.json").read_text())
    assert record["sha256"] == file_sha256(result.csv)
    assert record["config"]["sha256"] == file_sha256(spec.path)
    assert record["folds"]["sha256"] == file_sha256(world["folds"])
    assert record["scores"]["optimistic"] == pytest.approx(tuned.optimistic)
    assert record["params"]["iou_thr"] == pytest.approx(tuned.best_params["iou_thr"])
    assert [m["experiment"] for m in record["members"]] == ["det_a", "det_b"]
    assert {"git", "date", "stats", "params_json"} <= set(record)
    # The written boxes are the ensemble's test boxes, clipped and rounded.
    boxes, _ = predict_test(spec, resolve(spec, record["params"]), world["test_ids"])
    assert len(read_submission(result.csv, world["test_ids"])) == len(boxes)
    # A changed config is not submitted with parameters tuned for the old one.
    spec.path.write_text(spec.path.read_text() + "\n# changed\n")
    with pytest.raises(ConfigError, match="changed since it was tuned"):
        submit(load_ensemble(spec.path), tmp_path / "sub" / "again.csv")


def write_box(experiment: str, fold: int, split: str, rows: list[tuple]) -> None:
    frame = pd.DataFrame(rows, columns=["image_id", "x1", "y1", "x2", "y2", "score"])
    frame["label"] = 0
    write_parquet(paths.predictions_path(experiment, fold, split), frame)


@pytest.mark.parametrize("merge", ["before", "after"])
def test_fold_models_are_merged_on_the_test_set(world, tmp_path: Path, merge: str) -> None:
    # One member, method none: its two fold models' boxes on image test00 are fused by WBF (avg, IoU 0.5).
    for k in range(3):
        box = [(0, 0, 100, 100), (0, 0, 100, 80), (500, 500, 600, 600)][k]
        write_box("solo", k, "test", [("test00", *box, [0.9, 0.5, 0.6][k])])
    extra = ("members = [dict(experiment='solo', folds=[0, 1, 2])]\nsearch_space = dict()\n"
             f"fusion = dict(method='none', iou_thr=0.5, test_fold_merge='{merge}')\n")
    spec = load_ensemble(write_config(tmp_path / "solo.py", world, extra=extra))
    boxes, ids = predict_test(spec, resolve(spec, {"final_thr": 0.0}), world["test_ids"])
    frame = boxes.to_frame(ids).sort_values("score", ascending=False)
    # Folds 0 and 1 overlap (IoU 0.8): y2 = (0.9 * 100 + 0.5 * 80) / 1.4, score (0.9 + 0.5) / 2 * 2 / 3;
    # fold 2 alone: 0.6 / 3.
    assert frame["score"].tolist() == pytest.approx([0.7 * 2 / 3, 0.2], rel=1e-6)
    assert frame["y2"].iloc[0] == pytest.approx((0.9 * 100 + 0.5 * 80) / 1.4, rel=1e-6)
    assert set(frame["image_id"]) == {"test00"}


def test_fold_merge_with_max_keeps_the_single_model_score_scale(world, tmp_path: Path) -> None:
    # Same boxes as above, merged with conf_type 'max': a box keeps its best fold model's score, unscaled by the
    # share of fold models that found it (the scale the OOF-tuned thresholds were fitted on).
    for k in range(3):
        box = [(0, 0, 100, 100), (0, 0, 100, 80), (500, 500, 600, 600)][k]
        write_box("solo", k, "test", [("test00", *box, [0.9, 0.5, 0.6][k])])
    extra = ("members = [dict(experiment='solo', folds=[0, 1, 2])]\nsearch_space = dict()\n"
             "fusion = dict(method='none', iou_thr=0.5, test_fold_merge='before', test_fold_conf_type='max')\n")
    spec = load_ensemble(write_config(tmp_path / "solo.py", world, extra=extra))
    boxes, ids = predict_test(spec, resolve(spec, {"final_thr": 0.0}), world["test_ids"])
    frame = boxes.to_frame(ids).sort_values("score", ascending=False)
    assert frame["score"].tolist() == pytest.approx([0.9, 0.6], rel=1e-6)
    assert frame["y2"].iloc[0] == pytest.approx((0.9 * 100 + 0.5 * 80) / 1.4, rel=1e-6)


def test_single_member_is_submitted_the_same_way(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "SUBMISSIONS_DIR", tmp_path / "submissions")
    extra = ("members = [dict(experiment='det_a', folds=[0, 1, 2])]\n"
             "fusion = dict(method='none', test_fold_merge='before')\n"
             "search_space = dict(final_thr=dict(type='float', low=0.1, high=0.8))\n")
    spec = load_ensemble(write_config(tmp_path / "det_a_alone.py", world, n_trials=4, extra=extra))
    result = tune(spec, honest=False)
    assert result.optimistic >= 0.0
    out = submit(spec)  # default location: submissions/NAME.csv
    assert out.csv == tmp_path / "submissions" / "det_a_alone.csv"
    assert out.provenance == tmp_path / "submissions" / "det_a_alone.json"
    validate_submission(out.csv, world["test_ids"], 1024)


def test_cli_tune_and_submit(world, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ens.py", world, n_trials=3)
    runner = CliRunner()
    done = runner.invoke(app, ["tune", str(config), "--n-trials", "3"])
    assert done.exit_code == 0, done.output
    assert "honest" in done.output and "ensemble" in done.output
    params = json.loads((paths.ensemble_dir("ens") / "params.json").read_text())
    assert params["study"]["n_complete"] == 3 and params["scores"]["honest"] is not None
    out = tmp_path / "s" / "ens.csv"
    done = runner.invoke(app, ["submit", str(config), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert out.is_file() and out.with_suffix(".json").is_file()
    missing = runner.invoke(app, ["tune", str(tmp_path / "nope.py")])
    assert missing.exit_code == 1 and "ensemble config not found" in missing.output


def test_missing_prediction_files_are_all_listed(world, tmp_path: Path) -> None:
    from cxrdet.ensemble.problem import load_oof
    from cxrdet.errors import TableError

    spec = load_ensemble(write_config(tmp_path / "ghost.py", world, experiments=("det_a", "ghost")))
    n_folds = int(world["n_folds"])
    for split, run in (("oof", lambda: load_oof(spec)),
                       ("test", lambda: predict_test(spec, resolve(spec, {}), world["test_ids"]))):
        with pytest.raises(TableError) as err:
            run()
        text = str(err.value)
        assert f"{n_folds} problem(s)" in text
        for k in range(n_folds):
            assert str(paths.predictions_path("ghost", k, split)) in text
        assert "det_a" not in text


def test_a_classifier_column_gates_the_oof_and_test_boxes(world, tmp_path: Path) -> None:
    """A two-class classifier table; the ensemble gates with its `opacity` column, on OOF and test images alike."""
    from cxrdet.ensemble.problem import load_oof

    ids, test_ids, n_folds = world["ids"], world["test_ids"], int(world["n_folds"])
    # opacity: 1 on even images, 0 on odd ones; 'other' (0.5 everywhere) must be ignored.
    for k in range(n_folds):
        part = [i for j, i in enumerate(ids) if j % n_folds == k]
        write_parquet(paths.predictions_path("cls_x", k, "oof"), pd.DataFrame(
            {"image_id": part, "opacity": [float(int(i[3:]) % 2 == 0) for i in part], "other": 0.5}))
        write_parquet(paths.predictions_path("cls_x", k, "test"), pd.DataFrame(
            {"image_id": test_ids, "opacity": [float(j % 2 == 0) for j in range(len(test_ids))], "other": 0.5}))
    extra = "classifier = dict(experiment='cls_x', column='opacity')\npostprocess = dict(cls_tau=0.5)"
    spec = load_ensemble(write_config(tmp_path / "gated.py", world, extra=extra))
    oof = load_oof(spec)
    assert oof.problem.prob.tolist() == [float(int(i[3:]) % 2 == 0) for i in oof.problem.image_ids]
    fixed = resolve(spec, {})
    kept = oof.problem.image_ids[oof.problem.predict(fixed).image]
    assert len(kept) and all(int(i[3:]) % 2 == 0 for i in kept)
    boxes, test_index = predict_test(spec, fixed, test_ids)
    assert len(boxes) and all(test_ids.index(i) % 2 == 0 for i in test_index[boxes.image])
    # Without a column, a two-class table is refused with its columns listed.
    spec = load_ensemble(write_config(tmp_path / "ambiguous.py", world,
                                      extra="classifier = dict(experiment='cls_x')\npostprocess = dict(cls_tau=0.5)"))
    with pytest.raises(TableError, match=r"has 2 class columns \['opacity', 'other'\]"):
        load_oof(spec)
