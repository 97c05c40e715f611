"""Report: the analysis functions on hand-made boxes, and a rendered report of a tiny run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrdet.cli import app
from cxrdet.errors import CxrdetError
from cxrdet.metrics.rsna import match_boxes
from cxrdet.report.detection import box_ratios, lung_zone, precision_recall, shrink_factor, size_group
from cxrdet.report.figures import FIGURES, figure_sizes, training_logs
from cxrdet.tasks import report
from tests.helpers.ensemble_world import write_pair_of_one


def boxes(rows: list[tuple[Any, ...]], scored: bool = False) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["image_id", "x1", "y1", "x2", "y2", *(["score"] if scored else [])])


GT = boxes([("a", 0, 0, 10, 10), ("a", 20, 0, 30, 10), ("b", 0, 0, 10, 10)])
PRED = boxes([("a", 0, 0, 10, 12, 0.9),   # IoU 100/120 = 0.83 with a0
              ("a", 1, 0, 11, 10, 0.8),   # IoU 90/110 = 0.82 with a0, but a0 is taken: FP
              ("a", 20, 0, 30, 10, 0.3),  # exact a1
              ("c", 0, 0, 5, 5, 0.7)], scored=True)  # no ground truth on c: FP


def test_matching_is_greedy_by_score_and_strictly_above_the_iou() -> None:
    pred_match, gt_match = match_boxes(GT, PRED, 0.4)
    assert pred_match.tolist() == [0, -1, 1, -1] and gt_match.tolist() == [0, 2, -1]
    # At IoU 100/120 the first box no longer matches (strictly above), the second (0.82) neither; the exact one does.
    assert match_boxes(GT, PRED, 100 / 120)[0].tolist() == [-1, -1, 1, -1]


def test_precision_recall_ranks_boxes_over_all_images() -> None:
    precision, recall = precision_recall(GT, PRED, 0.4)
    # Ranked: 0.9 TP, 0.8 FP, 0.7 FP, 0.3 TP; 3 true boxes.
    assert precision.tolist() == pytest.approx([1, 1 / 2, 1 / 3, 2 / 4])
    assert recall.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3])


def test_size_and_zone_groups() -> None:
    xyxy = np.array([[0, 0, 10, 10], [50, 70, 90, 100], [0, 20, 60, 80]], dtype=float)
    w, h = np.full(3, 100.0), np.full(3, 100.0)
    # sqrt(area / image area) = 0.1, sqrt(1200) / 100 = 0.346, 0.6
    assert size_group(xyxy, w, h).tolist() == ["small <0.15", "large 0.25-0.35", "huge >0.35"]
    assert lung_zone(xyxy, w, h).tolist() == ["upper left", "lower right", "middle left"]


def test_box_ratio_and_the_shrink_factor_that_removes_it() -> None:
    from cxrdet.report.data import ReportData

    gt = boxes([("a", 0, 0, 100, 100), ("b", 0, 0, 100, 200)])
    pred = boxes([("a", 0, 0, 120, 110, 0.9), ("b", 0, 0, 110, 220, 0.9), ("b", 500, 500, 600, 600, 0.1)],
                 scored=True)
    data = ReportData(name="x", kind="experiment", image_ids=pd.Index(["a", "b"]), image_fold=pd.Series([0, 0]),
                      gt=gt, predictions={"x": pred}, chosen={"x": 0.5}, meta=pd.DataFrame(), cache=Path("."),
                      runs=[])
    ratios = box_ratios(data, "x")
    assert ratios["width_ratio"].tolist() == pytest.approx([1.2, 1.1])
    assert ratios["height_ratio"].tolist() == pytest.approx([1.1, 1.1])
    assert shrink_factor(ratios) == pytest.approx(1 / np.sqrt(1.15 * 1.1))
    assert np.isnan(shrink_factor(ratios.iloc[:0]))


def test_training_logs_join_stages_in_order(tmp_path: Path) -> None:
    for stage, rows in (("stage0_crops", [(0, 2.0, None), (0, None, 0.1)]), ("stage1_full", [(0, 1.0, None),
                                                                                              (0, None, 0.3)])):
        csv = tmp_path / stage / "csv" / "version_0" / "metrics.csv"
        csv.parent.mkdir(parents=True)
        pd.DataFrame(rows, columns=["epoch", "train/loss_epoch", "val/rsna"]).to_csv(csv, index=False)
    logs = training_logs(tmp_path)
    assert logs.values.tolist() == [[1, 2.0, 0.1], [2, 1.0, 0.3]]


def test_unknown_name_says_what_to_run() -> None:
    with pytest.raises(CxrdetError, match="no fold<k>/oof.parquet; train and predict first"):
        report("no_such_experiment")


@pytest.mark.slow
def test_report_of_a_tiny_run_has_every_figure_at_its_size(tiny_run: dict[str, Any], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRDET_OUTPUTS", str(tiny_run["outputs"]))
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", tiny_run["experiment"], "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out / "index.html")
    page = (out / "index.html").read_text()
    for name, size in figure_sizes().items():
        with Image.open(out / f"{name}.png") as image:
            image.verify()  # a complete, valid PNG
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and image.size == size
        assert f'src="{name}.png"' in page
    assert set(figure_sizes()) == set(FIGURES) and figure_sizes()["gallery"] == (1200, 900)
    assert "<th>retinanet_mnv3s_128_tiny12e val/rsna</th>" in page and "<td>0</td>" in page  # the fold-0 row
    meta = json.loads((out / "report.json").read_text())
    assert set(meta["gallery"]) == {"best", "worst", "most false positives"}
    assert 0.0 <= meta["chosen"][tiny_run["experiment"]] <= 1.0


@pytest.mark.slow
def test_report_of_a_tuned_ensemble_shows_members_and_the_fused_boxes(tiny_run: dict[str, Any], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrdet.ensemble.spec import load_ensemble
    from cxrdet.ensemble.tune import tune
    from cxrdet.report.data import load_report_data

    monkeypatch.setenv("CXRDET_OUTPUTS", str(tiny_run["outputs"]))
    config = write_pair_of_one(tmp_path / "tiny_pair.py", tiny_run["experiment"])
    tune(load_ensemble(config), honest=False)
    data = load_report_data(str(config))
    assert data.kind == "ensemble" and list(data.predictions) == ["ensemble", "a", "b"]
    params = json.loads((tiny_run["outputs"] / "ensembles" / "tiny_pair" / "params.json").read_text())
    assert data.chosen["ensemble"] == pytest.approx(params["params"]["final_thr"])
    # The fused boxes are kept uncut so that the curve covers every cut.
    assert data.predictions["ensemble"]["score"].min() < data.chosen["ensemble"]
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert "<h1>ensemble tiny_pair</h1>" in page and all(f'src="{n}.png"' in page for n in FIGURES)
    assert "<th>ensemble OOF</th>" in page and "<th>a OOF</th>" in page


def test_gallery_picks_best_worst_and_most_false_positives() -> None:
    from cxrdet.report.data import ReportData
    from cxrdet.report.detection import gallery_picks

    gt = boxes([("hit", 0, 0, 10, 10), ("miss", 0, 0, 10, 10), ("miss2", 0, 0, 10, 10), ("miss2", 50, 50, 60, 60)])
    pred = boxes([("hit", 0, 0, 10, 10, 0.9), ("neg", 0, 0, 5, 5, 0.9), ("fp3", 0, 0, 5, 5, 0.9),
                  ("fp3", 10, 10, 15, 15, 0.8), ("fp3", 20, 20, 25, 25, 0.7), ("hit", 30, 30, 40, 40, 0.1)],
                 scored=True)
    ids = pd.Index(["hit", "miss", "miss2", "neg", "fp3", "empty"])
    data = ReportData(name="x", kind="experiment", image_ids=ids, image_fold=pd.Series(0, index=ids), gt=gt,
                      predictions={"x": pred}, chosen={"x": 0.5}, meta=pd.DataFrame(), cache=Path("."), runs=[])
    picks = gallery_picks(data, "x")
    assert picks["best"] == ["hit", "miss2", "miss"]  # only images with ground truth; ties: more true boxes first
    assert picks["worst"] == ["miss2", "miss", "hit"]
    assert picks["most false positives"] == ["fp3", "neg"]  # the 0.1 box on `hit` is below the cut


# ---- classifier experiments (hand-written run folders: config, OOF probabilities, CSV logs) ----


def write_classifier_runs(root: Path, experiment: str, classes: list[str], seed: int = 0) -> pd.DataFrame:
    """Two folds of a classifier experiment as `cxrdet report` reads them, over 40 images with an NIH label table
    (one finding column per class) under `root`; returns the truth table (image_id, one 0/1 column per class)."""
    from mmengine.config import Config

    from cxrdet import paths

    rng = np.random.default_rng(seed)
    ids = [f"{i:05d}_000.png" for i in range(40)]
    # Prevalence rises with the class's position; Hernia is never present (an unscorable class).
    truth = pd.DataFrame({c: (rng.random(40) < (0.2 + 0.15 * k) * (c != "Hernia")).astype(int)
                          for k, c in enumerate(classes)})
    truth.insert(0, "image_id", [i[:-4] for i in ids])
    root.mkdir(parents=True)
    findings = ["|".join(c for c in classes if row[c]) or "No Finding" for _, row in truth.iterrows()]
    pd.DataFrame({"Image Index": ids, "Finding Labels": findings, "Patient ID": range(40)}).to_csv(
        paths.NihLayout(root).labels_csv, index=False)
    cfg = {"task": "classify", "experiment": experiment, "model": {"type": "timm_classifier"},
           "data": {"root": str(root), "size": 64, "folds": "x", "classes": classes, "batch_size": 2},
           "optim": {"type": "adamw", "lr": 1e-3}, "lr_schedule": {"type": "cosine"}, "train": {"epochs": 2},
           "predict": {"score_floor": 0.0, "max_per_image": 1}, "evaluation": {"thresholds": [0.5]}}
    for fold in (0, 1):
        part = truth.iloc[fold::2]
        run = paths.run_dir(experiment, fold)
        (run / "csv" / "version_0").mkdir(parents=True)
        (run / "config.py").write_text(Config(cfg).pretty_text)
        probs = part[classes] * 0.4 + rng.random((len(part), len(classes))) * 0.6
        probs.insert(0, "image_id", part["image_id"])
        probs.to_parquet(paths.predictions_path(experiment, fold, "oof"), index=False)
        pd.DataFrame({"epoch": [0, 0, 1, 1], "train/loss_epoch": [0.7, None, 0.5, None],
                      "val/auroc": [None, 0.6, None, 0.7 + fold / 10]}).to_csv(
            run / "csv" / "version_0" / "metrics.csv", index=False)
    return truth.set_index("image_id")


@pytest.mark.parametrize("classes", [["Pneumonia"], ["Effusion", "Mass", "Nodule", "Edema", "Hernia"]])
def test_classifier_report_renders_roc_tables_curves_and_histograms(classes: list[str], tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    from cxrdet import paths
    from cxrdet.report.classification import classifier_figure_sizes

    truth = write_classifier_runs(tmp_path / "data", "cls_tiny", classes)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", "cls_tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out / "index.html")
    page = (out / "index.html").read_text()
    sizes = classifier_figure_sizes(len(classes))
    assert set(sizes) == {"roc", "curves", "probabilities"}
    assert sizes["probabilities"] == ((600, 340) if len(classes) == 1 else (1200, 600))
    for name, size in sizes.items():
        with Image.open(out / f"{name}.png") as image:
            image.verify()
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and image.size == size
        assert f'src="{name}.png" width="{size[0]}" height="{size[1]}"' in page
    assert "<h1>classifier cls_tiny</h1>" in page and "<th>prevalence</th>" in page
    assert "<th>val/auroc (best checkpoint)</th>" in page
    meta = json.loads((out / "report.json").read_text())
    oof = pd.concat([pd.read_parquet(paths.predictions_path("cls_tiny", k, "oof")) for k in (0, 1)])
    for c in classes:
        assert f"<td>{c}</td>" in page
        if c == "Hernia":
            assert meta["auroc"][c] is None and "Hernia: all 40 images are negative; AUROC undefined" in page
            continue
        assert meta["auroc"][c] == pytest.approx(roc_auc_score(truth.loc[oof["image_id"], c], oof[c]))
    assert ("F1 at the best threshold" in page) == (len(classes) == 1) and (meta["f1"] is None) == (len(classes) > 1)


@pytest.mark.slow
def test_report_of_a_tiny_classifier_run(tiny_classifier_run: dict[str, Any], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrdet.report.classification import classifier_figure_sizes

    monkeypatch.setenv("CXRDET_OUTPUTS", str(tiny_classifier_run["outputs"]))
    result = CliRunner().invoke(app, ["report", tiny_classifier_run["experiment"], "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "index.html").read_text()
    for name, size in classifier_figure_sizes(1).items():
        with Image.open(tmp_path / f"{name}.png") as image:
            assert image.format == "PNG" and image.size == size
        assert f'src="{name}.png"' in page
    # Both trained folds, each with the AUROC its best checkpoint recorded on validation.
    from cxrdet.report.classification import classifier_fold_table
    from cxrdet.report.data import evaluate_experiment
    from cxrdet.runs import Experiment

    experiment = tiny_classifier_run["experiment"]
    folds = classifier_fold_table(evaluate_experiment(experiment), Experiment(experiment).runs("oof"), "val/auroc")
    assert folds["fold"].tolist() == [0, 1] and folds["images"].tolist() == [15, 15]
    assert folds["val/auroc (best checkpoint)"].between(0, 1).all()
    assert "<th>val/auroc (best checkpoint)</th>" in page and "<td>15</td>" in page
    meta = json.loads((tmp_path / "report.json").read_text())
    assert meta["kind"] == "classifier" and 0.0 <= meta["auroc"]["opacity"] <= 1.0 and meta["f1"]["f1"] > 0
    # The training curves came from the runs' CSV logs: one loss and one val/auroc line per fold.
    from cxrdet import paths

    logs = training_logs(paths.run_dir(tiny_classifier_run["experiment"], 0), "val/auroc")
    assert logs["epoch"].tolist() == [1, 2, 3] and logs["val_auroc"].notna().all()
