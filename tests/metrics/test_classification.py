"""Classification metrics: AUROC, ROC points and best F1 by hand and against scikit-learn, truth tables, and the
OOF files of an experiment."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mmengine.config import Config
from sklearn.metrics import precision_recall_curve, roc_auc_score

from cxrdet import paths
from cxrdet.data.classify import truth_table
from cxrdet.errors import CxrdetError, TableError
from cxrdet.metrics.classification import auroc, best_f1, evaluate, roc_points
from cxrdet.report.data import evaluate_experiment, load_experiment_oof, read_probabilities


def test_auroc_by_hand_with_ties_and_one_label_value() -> None:
    # Positive/negative pairs: (0.9, 0.8) win, (0.9, 0.1) win, (0.3, 0.8) loss, (0.3, 0.1) win -> 3/4.
    assert float(auroc([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1])) == pytest.approx(0.75)
    assert float(auroc([1, 0], [0.5, 0.5])) == pytest.approx(0.5)  # a tie counts one half
    # Pairs: (0.5 vs 0.5) = 1/2, (0.2 vs 0.5) = 0 -> 0.25.
    assert float(auroc([1, 1, 0], [0.5, 0.2, 0.5])) == pytest.approx(0.25)
    assert float(auroc([0, 1, 1], [0.1, 0.2, 0.3])) == pytest.approx(1.0)
    assert float(auroc([1, 1, 0], [0.1, 0.2, 0.3])) == pytest.approx(0.0)
    both = auroc(np.array([[1, 1], [0, 1], [1, 1]]), np.array([[0.9, 0.1], [0.2, 0.2], [0.4, 0.3]]))
    assert both[0] == pytest.approx(1.0) and math.isnan(both[1])  # every image positive: undefined


def test_auroc_matches_scikit_learn_on_many_classes_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.random((300, 6)) < np.array([0.02, 0.1, 0.3, 0.5, 0.7, 0.95])
    # Rounded scores make many ties, where rank-based and curve-based AUROC are easiest to get subtly different.
    p = np.round(np.clip(0.3 * y + rng.random(y.shape) * 0.8, 0, 1), 2)
    ours = auroc(y, p)
    for k in range(y.shape[1]):
        assert ours[k] == pytest.approx(roc_auc_score(y[:, k], p[:, k]), abs=1e-12)


def test_roc_points_start_at_the_origin_end_at_one_and_integrate_to_the_auroc() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.3
    p = np.round(0.2 * y + rng.random(200) * 0.8, 2)
    curve = roc_points(y, p)
    assert list(curve.columns) == ["fpr", "tpr", "threshold"]
    assert (curve["fpr"].iloc[0], curve["tpr"].iloc[0]) == (0.0, 0.0)
    assert (curve["fpr"].iloc[-1], curve["tpr"].iloc[-1]) == (1.0, 1.0)
    area = np.trapezoid(curve["tpr"], curve["fpr"])
    assert area == pytest.approx(float(auroc(y, p)), abs=1e-12)
    assert roc_points([1, 1], [0.2, 0.3]).empty


def test_best_f1_by_hand() -> None:
    # Cut 0.9: 1 TP of 1 called, F1 2/3; 0.8: 2/4; 0.3: 2 TP of 3 called, 2 * 2 / (3 + 2) = 0.8; 0.1: 4/6.
    point = best_f1([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1])
    assert (point.f1, point.threshold) == (pytest.approx(0.8), 0.3)
    assert (point.precision, point.recall) == (pytest.approx(2 / 3), 1.0)
    # Equal scores are one cut: calling only one of two 0.5 images is not a choice.
    tied = best_f1([1, 0, 0], [0.5, 0.5, 0.1])
    assert (tied.f1, tied.threshold) == (pytest.approx(2 / 3), 0.5)
    assert math.isnan(best_f1([0, 0], [0.1, 0.2]).f1)


def test_best_f1_matches_scikit_learn() -> None:
    rng = np.random.default_rng(2)
    for seed_prev in (0.05, 0.3, 0.6):
        y = rng.random(500) < seed_prev
        p = np.round(0.25 * y + rng.random(500) * 0.75, 3)
        precision, recall, thresholds = precision_recall_curve(y, p)
        with np.errstate(invalid="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
        point = best_f1(y, p)
        assert point.f1 == pytest.approx(f1.max(), abs=1e-12)
        assert point.threshold == thresholds[np.flatnonzero(np.isclose(f1, f1.max(), atol=1e-12, rtol=0))].max()
        called = p >= point.threshold
        assert point.precision == pytest.approx(y[called].mean()) and point.recall == pytest.approx(called[y].mean())


def test_truth_table_from_box_and_finding_tables() -> None:
    images = pd.DataFrame({"image_id": ["a", "b", "c"], "Effusion": [1, 0, 1], "Mass": [0, 0, 1]})
    boxes = pd.DataFrame({"image_id": ["b", "b", "c"], "label": [0, 0, 1]})
    truth = truth_table(images, boxes, ("opacity", "nodule"), ["opacity", "Effusion", "nodule", "Mass"])
    assert truth.index.tolist() == ["a", "b", "c"]
    assert truth.to_numpy().tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 1]]
    with pytest.raises(CxrdetError, match="class 'Hernia': the label table has no column"):
        truth_table(images, boxes, ("opacity",), ["Hernia"])


def test_evaluate_pools_folds_and_notes_an_unscorable_class() -> None:
    ids = pd.Index([f"i{k}" for k in range(8)], name="image_id")
    truth = pd.DataFrame({"A": [1, 0, 1, 0, 1, 0, 0, 1], "B": [0] * 8}, index=ids)
    probs = pd.DataFrame({"A": [0.9, 0.8, 0.3, 0.1, 0.7, 0.2, 0.6, 0.4], "B": np.linspace(0, 1, 8)}, index=ids)
    fold = pd.Series([0, 0, 0, 0, 1, 1, 1, 1], index=ids)
    result = evaluate(probs, truth, fold)
    a = result.per_class.set_index("class").loc["A"]
    assert a["auroc"] == pytest.approx(roc_auc_score(truth["A"], probs["A"]))
    assert (a["n_positive"], a["n_images"], a["prevalence"]) == (4, 8, 0.5)
    assert math.isnan(result.per_class.set_index("class").loc["B", "auroc"])
    assert result.mean_auroc == pytest.approx(a["auroc"])  # B is left out of the mean
    assert any(n.startswith("B: all 8 images are negative") for n in result.notes)
    # Fold 0: 3/4 (by hand above); fold 1: positives 0.7, 0.4 against 0.2, 0.6 -> 3 of 4 pairs.
    assert result.per_fold["A"].tolist() == pytest.approx([0.75, 0.75])
    assert result.per_fold["images"].tolist() == [4, 4] and result.f1 is None
    assert result.ranked_classes() == ["A"]
    single = evaluate(probs[["A"]], truth, fold)
    assert single.binary and single.f1 is not None and 0 < single.f1.f1 <= 1


def test_read_probabilities_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "oof.parquet"
    pd.DataFrame({"image_id": ["a", "a", "b"], "A": [0.1, 1.5, np.nan]}).to_parquet(path)
    with pytest.raises(TableError) as err:
        read_probabilities(path, ["A"])
    text = str(err.value)
    assert "1 image id(s) repeat, e.g. 'a'" in text
    assert "row 2 (image_id 'a'): A=1.5: expected a probability in [0, 1]" in text
    assert "row 3 (image_id 'b'): A=nan: expected" in text
    with pytest.raises(TableError, match="missing column\\(s\\) 'B'"):
        read_probabilities(path, ["A", "B"])


def write_classifier_experiment(root: Path, experiment: str, probs: dict[int, pd.DataFrame]) -> None:
    """A classifier experiment's run folders as evaluation reads them: the written config and OOF files per fold,
    with an RSNA labels table under `root` (images a, b, c positive: they have a box)."""
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([["a", 1, 2, 30, 40, 1], ["b", 5, 5, 20, 20, 1], ["c", 5, 5, 20, 20, 1], ["d", None, None, None,
                  None, 0], ["e", None, None, None, None, 0], ["f", None, None, None, None, 0]],
                 columns=["patientId", "x", "y", "width", "height", "Target"]).to_csv(
        paths.KaggleLayout(root).labels_csv, index=False)
    cfg = {"task": "classify", "experiment": experiment, "model": {"type": "timm_classifier"},
           "data": {"root": str(root), "size": 64, "folds": "x", "classes": ["opacity"], "batch_size": 2},
           "optim": {"type": "adamw", "lr": 1e-3}, "lr_schedule": {"type": "cosine"}, "train": {"epochs": 1},
           "predict": {"score_floor": 0.0, "max_per_image": 1}, "evaluation": {"thresholds": [0.5]}}
    for fold, frame in probs.items():
        run = paths.run_dir(experiment, fold)
        run.mkdir(parents=True)
        (run / "config.py").write_text(Config(cfg).pretty_text)
        frame.to_parquet(paths.predictions_path(experiment, fold, "oof"), index=False)


def test_experiment_oof_against_the_rsna_boxes(tmp_path: Path) -> None:
    write_classifier_experiment(tmp_path / "data", "cls", {
        0: pd.DataFrame({"image_id": ["a", "d", "b"], "opacity": [0.9, 0.2, 0.4]}),
        1: pd.DataFrame({"image_id": ["c", "e", "f"], "opacity": [0.3, 0.5, 0.1]}),
    })  # fmt: skip
    oof = load_experiment_oof("cls")
    assert oof.truth["opacity"].to_dict() == {"a": 1, "d": 0, "b": 1, "c": 1, "e": 0, "f": 0}
    assert oof.image_fold.to_dict() == {"a": 0, "d": 0, "b": 0, "c": 1, "e": 1, "f": 1}
    result = evaluate_experiment("cls")
    # Positives 0.9, 0.4, 0.3 against 0.2, 0.5, 0.1: wins 3 + 2 + 2 = 7 of 9 pairs.
    assert result.per_class["auroc"].iloc[0] == pytest.approx(7 / 9)
    assert result.per_fold["opacity"].tolist()[0] == pytest.approx(1.0)  # fold 1 has one negative above a positive
    assert result.per_fold["opacity"].tolist()[1] == pytest.approx(0.5)
    # Best cut 0.3: calls 0.9, 0.5, 0.4, 0.3 positive, 3 TP -> F1 = 6 / 7.
    assert (result.f1.f1, result.f1.threshold) == (pytest.approx(6 / 7), 0.3)


def test_experiment_oof_rejects_unknown_images_and_missing_runs(tmp_path: Path) -> None:
    with pytest.raises(CxrdetError, match="no fold<k>/oof.parquet; train and predict first"):
        load_experiment_oof("nothing")
    write_classifier_experiment(tmp_path / "data", "cls", {0: pd.DataFrame({"image_id": ["a", "zz"],
                                                                            "opacity": [0.9, 0.2]})})
    with pytest.raises(TableError, match="1 OOF image id\\(s\\) are not in the label table .* e.g. 'zz'"):
        load_experiment_oof("cls")
