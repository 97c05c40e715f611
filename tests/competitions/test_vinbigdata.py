"""VinBigData: the label table and its errors, the submission format, scoring by the VOC mAP, the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrdet.cli import app
from cxrdet.competitions import competition_of_labels, competition_of_submission, detect, get_competition
from cxrdet.competitions.vinbigdata import (
    CLASSES,
    METRIC_CLASSES,
    NO_FINDING_ID,
    VinBigDataLayout,
    ground_truth,
    read_submission,
    read_vinbigdata_labels,
    score_submission,
    write_submission,
)
from cxrdet.errors import ConfigError, TableError

HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
GOOD = [
    "a,Cardiomegaly,3,R8,100,200,300,400",
    "a,Cardiomegaly,3,R9,110,190,310,410",
    "a,Nodule/Mass,8,R9,500,500,540,540",
    "a,No finding,14,R10,,,,",
    "b,No finding,14,R1,,,,",
    "b,No finding,14,R2,,,,",
    "b,No finding,14,R3,,,,",
]


def write(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_the_label_table_parses_into_readers_boxes_and_per_image_columns(tmp_path: Path) -> None:
    ann = read_vinbigdata_labels(write(tmp_path / "train.csv", *GOOD))
    assert ann.classes == CLASSES and len(CLASSES) == 14
    assert ann.boxes[["image_id", "label", "reader"]].values.tolist() == [["a", 3, "R8"], ["a", 3, "R9"],
                                                                         ["a", 8, "R9"]]
    assert ann.boxes[["x1", "y1", "x2", "y2"]].iloc[0].tolist() == [100, 200, 300, 400]
    images = ann.images.set_index("image_id")
    assert images.loc["a", ["n_boxes", "n_readers", "no_finding_readers", "Cardiomegaly", "Nodule/Mass",
                            "Atelectasis"]].tolist() == [3, 3, 1, 1, 1, 0]
    assert bool(images.loc["a", "positive"]) and not bool(images.loc["b", "positive"])
    assert images.loc["b", ["n_boxes", "n_readers", "no_finding_readers"]].tolist() == [0, 3, 3]


def test_bad_label_rows_are_named_by_file_line(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv",
                 "a,Cardiomegaly,3,R8,300,200,100,400",  # line 2: x_max < x_min
                 "a,Atelectasis,15,R8,1,1,2,2",  # line 3: class id outside 0-14
                 "b,No finding,14,R1,0,0,1,1",  # line 4: a no-finding row with a box
                 "c,Aortic enlargement,0,,10,10,20,20",  # line 5: no rad_id
                 "d,ILD,5,R2,,,,",  # line 6: a finding without its box
                 "e,Lung Opacity,6,R3,1,1,2,2")  # line 7: the name of class 7 with id 6
    with pytest.raises(TableError) as err:
        read_vinbigdata_labels(path)
    text = str(err.value)
    assert "line 2: x_max='100' < x_min='300': expected x_max >= x_min" in text
    assert "line 3: class_id='15': expected an integer 0-14" in text
    assert "line 4: x_min='0': expected an empty cell ('No finding' rows, class_id 14, have no box)" in text
    assert "line 5: rad_id='': expected a radiologist id such as R8" in text
    assert "line 6: x_min='': expected a number (finding rows, class_id 0-13, need a box)" in text
    assert "line 7: class_name='Lung Opacity': expected 'Infiltration' (class_id 6)" in text
    assert text.index("line 2") < text.index("line 7")


def test_a_box_outside_its_image_and_a_reader_saying_both_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "a,Cardiomegaly,3,R8,100,200,2100,400", "a,No finding,14,R8,,,,")
    with pytest.raises(TableError) as err:
        read_vinbigdata_labels(path, sizes={"a": (2000, 2500)})
    text = str(err.value)
    assert "line 2: x_max='2100': expected <= 2000 (the width or height of image 'a')" in text
    assert "image_id='a', rad_id='R8': 'No finding' and findings on lines 2, 3" in text


def test_the_ground_truth_fuses_readers_and_marks_no_finding_images(tmp_path: Path) -> None:
    ann = read_vinbigdata_labels(write(tmp_path / "train.csv", *GOOD))
    gt = ground_truth(ann)
    cardio = gt[gt["label"] == 3]
    assert len(cardio) == 1  # two readers' boxes of one finding, fused
    assert cardio[["x1", "y1", "x2", "y2"]].iloc[0].tolist() == pytest.approx([105, 195, 305, 405])
    assert gt[gt["label"] == NO_FINDING_ID][["image_id", "x1", "y1", "x2", "y2"]].values.tolist() == [
        ["b", 0.0, 0.0, 1.0, 1.0]]


def test_a_submission_round_trips_and_is_scored_by_the_voc_map(tmp_path: Path) -> None:
    ann = read_vinbigdata_labels(write(tmp_path / "train.csv", *GOOD))
    pred = pd.DataFrame([
        ("a", 105, 195, 305, 405, 0.9, 3),  # the fused cardiomegaly box
        ("a", 500, 500, 540, 540, 0.6, 8),  # the nodule
        ("a", 0, 0, 1, 1, 0.2, 14),  # "no finding" on an abnormal image: an FP of class 14
        ("b", 0, 0, 1, 1, 0.7, 14),  # "no finding" on the normal image: TP
    ], columns=["image_id", "x1", "y1", "x2", "y2", "score", "label"])
    sub = write_submission(tmp_path / "sub.csv", pred, ["a", "b"])
    lines = sub.read_text().splitlines()
    assert lines[0] == "image_id,PredictionString"
    assert lines[2] == "b,14 0.700000 0.0 0.0 1.0 1.0"
    back = read_submission(sub, ["a", "b"])
    assert sorted(back["label"].tolist()) == [3, 8, 14, 14]
    report = score_submission(ann, sub, ["a", "b"])
    # Classes with ground truth: 3, 8, 14; each ranked list starts with its TP, so every AP is 1.
    assert report["score"] == pytest.approx(1.0) and report["metric"] == "voc@0.4"
    assert report["per_class"]["Cardiomegaly"] == 1.0 and report["per_class"]["Atelectasis"] is None
    assert list(report["per_class"]) == list(METRIC_CLASSES)


def test_malformed_submissions_name_the_row(tmp_path: Path) -> None:
    sub = write(tmp_path / "sub.csv", "a,15 0.5 0 0 10 10", "b,3 0.5 0 0 10", "c,3 1.5 0 0 10 10",
                "d,3 0.5 10 0 5 10", "a,", header="image_id,PredictionString")
    with pytest.raises(TableError) as err:
        read_submission(sub, ["a", "b", "c", "d", "e"])
    text = str(err.value)
    assert "line 2, box 1: class_id='15': expected an integer 0-14" in text
    assert "line 3: PredictionString has 5 tokens: expected groups of 6" in text
    assert "line 4, box 1: confidence='1.5': expected a number in [0, 1]" in text
    assert "line 5, box 1: box '10 0 5 10': expected x_max >= x_min" in text
    assert "line 6: image_id repeats line 2" in text
    assert "1 test image(s) have no row, e.g. ['e']" in text


def test_the_registry_knows_the_competition_from_its_files(tmp_path: Path) -> None:
    labels = write(tmp_path / "train.csv", *GOOD)
    assert competition_of_labels(labels).name == "vinbigdata"
    assert detect(tmp_path).name == "vinbigdata" and VinBigDataLayout(tmp_path).labels_csv == labels
    sample = write(tmp_path / "sample_submission.csv", "a,14 1 0 0 1 1", header="image_id,PredictionString")
    assert competition_of_submission(sample).name == "vinbigdata"
    rsna = write(tmp_path / "rsna_sample.csv", "x,0.5 0 0 10 10", header="patientId,PredictionString")
    assert competition_of_submission(rsna).name == "rsna"
    with pytest.raises(ConfigError, match="competition='kits'"):
        get_competition("kits")
    with pytest.raises(ConfigError, match="none of the competitions' label tables found"):
        detect(tmp_path / "empty")


def test_cli_scores_and_validates_a_vinbigdata_submission(tmp_path: Path) -> None:
    labels = write(tmp_path / "train.csv", *GOOD)
    sample = write(tmp_path / "sample_submission.csv", "a,14 1 0 0 1 1", "b,14 1 0 0 1 1",
                   header="image_id,PredictionString")
    sub = write(tmp_path / "sub.csv", "a,3 0.9 105 195 305 405 8 0.6 500 500 540 540", "b,14 0.7 0 0 1 1",
                header="image_id,PredictionString")
    runner = CliRunner()
    result = runner.invoke(app, ["score", "--labels", str(labels), "--submission", str(sub)])
    assert result.exit_code == 0, result.output
    assert "voc@0.4 score 1.000000 over 2 image(s)" in result.output and "AP Cardiomegaly: 1.000000" in result.output
    result = runner.invoke(app, ["validate-submission", str(sub), "--sample", str(sample)])
    assert result.exit_code == 0 and "OK: 2 images with boxes, 3 boxes" in result.output
    result = runner.invoke(app, ["score", "--labels", str(labels), "--submission", str(sub), "--metric", "coco"])
    assert result.exit_code == 1 and "vinbigdata is scored by its own metric only" in result.output


def _many_images(path: Path, n: int = 300, seed: int = 0) -> Path:
    """A VinBigData table of `n` images, 3 readers each: about half normal, common and rare findings."""
    import numpy as np

    rng = np.random.default_rng(seed)
    prevalence = np.array([0.25, 0.02, 0.03, 0.2, 0.02, 0.03, 0.02, 0.05, 0.06, 0.04, 0.08, 0.15, 0.015, 0.12])
    rows = []
    for i in range(n):
        image_id = f"img{i:04d}"
        found = np.flatnonzero(rng.random(len(CLASSES)) < prevalence)
        readers = rng.choice([f"R{r}" for r in range(1, 18)], 3, replace=False)
        for reader in readers:
            if len(found) == 0:
                rows.append(f"{image_id},No finding,14,{reader},,,,")
            for c in found:
                x, y = rng.integers(100, 1500, 2)
                rows.append(f"{image_id},{CLASSES[c]},{c},{reader},{x},{y},{x + 200},{y + 150}")
    return write(path, *rows)


def test_folds_spread_every_class_over_every_fold(tmp_path: Path) -> None:
    from cxrdet.data.folds import images_for_folds, make_folds, multilabel_classes

    images = images_for_folds(_many_images(tmp_path / "train.csv", n=600))
    assert (images["patient_id"] == images["image_id"]).all()  # no patient id: an image is its own group
    assert multilabel_classes(images, CLASSES) == list(CLASSES)
    folds = make_folds(images, k=5, seed=42, multilabel=CLASSES).merge(images, on="image_id")
    for name in CLASSES:
        per_fold = folds.groupby("fold")[name].sum().reindex(range(5), fill_value=0)
        total = int(folds[name].sum())
        if total >= 10:  # two images a fold on average: a fold without the class would be a failure
            assert (per_fold >= 1).all(), (name, total, per_fold.tolist())
        # Within one image of an equal share (iterative stratification; keying by the rarest finding was off by 2.2
        # for Nodule/Mass on this table).
        assert (abs(per_fold - total / 5) <= 1.0).all(), (name, total, per_fold.tolist())
    normal = folds[folds[list(CLASSES)].sum(axis=1) == 0].groupby("fold").size()
    assert (abs(normal - normal.sum() / 5) <= 1.0).all(), normal.tolist()


def test_cli_builds_vinbigdata_folds(tmp_path: Path) -> None:
    out = tmp_path / "vin_k5.csv"
    result = CliRunner().invoke(app, ["folds", "--labels", str(_many_images(tmp_path / "train.csv", n=120)), "--out",
                                      str(out), "--k", "5"])
    assert result.exit_code == 0, result.output
    sizes = pd.read_csv(out)["fold"].value_counts().sort_index()
    # Iterative stratification balances the labels first; the fold sizes follow within 15%.
    assert sizes.index.tolist() == [0, 1, 2, 3, 4] and sizes.between(20, 28).all() and sizes.sum() == 120


# ---- the metric as the pipeline asks it: no-finding boxes, the 2-class filter, the writer ----


def boxes(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=["image_id", "x1", "y1", "x2", "y2", "score", "label"])


GT = pd.DataFrame([("A", 10.0, 10.0, 50.0, 50.0, 0)], columns=["image_id", "x1", "y1", "x2", "y2", "label"])


def test_the_evaluator_adds_each_images_no_finding_box_from_its_top_finding_score() -> None:
    from cxrdet.competitions.vinbigdata import VinBigDataEvaluator, complete

    ev = VinBigDataEvaluator(GT, ["A", "B"])  # A: one class-0 box; B: "No finding"
    # By hand. A's box found at 0.9: AP(class 0) = 1. No-finding scores: A 1 - 0.9 = 0.1, B 1 (no box): ranked B
    # (true: B is normal) then A (false): AP(14) = 1. mAP = 1.
    hit = boxes(("A", 10, 10, 50, 50, 0.9, 0))
    assert ev.score(hit).score == pytest.approx(1.0)
    # A false class-0 box on B at 0.95 ranks above A's true one: AP(0) = 1/2 (precision 1/2 at recall 1). B's
    # no-finding score drops to 0.05, below A's 0.1: ranked A (false) then B (true): AP(14) = 1/2. mAP = 1/2.
    both = pd.concat([hit, boxes(("B", 60, 60, 90, 90, 0.95, 0))], ignore_index=True)
    assert ev.score(both).score == pytest.approx(0.5)
    added = complete(both, ["A", "B"])
    assert added[added["label"] == NO_FINDING_ID][["image_id", "score", "x1", "y1", "x2", "y2"]].values.tolist() == [
        ["A", pytest.approx(0.1), 0.0, 0.0, 1.0, 1.0], ["B", pytest.approx(0.05), 0.0, 0.0, 1.0, 1.0]]
    # The 2-class filter: P(abnormal) 0.8 on A and 0.3 on B gives no-finding scores 0.2 and 0.7: B first, AP(14) 1.
    filtered = complete(both, ["A", "B"], prob=pd.Series([0.8, 0.3]).to_numpy())
    assert ev.score(filtered).score == pytest.approx((0.5 + 1.0) / 2)
    # A table that already has class-14 boxes is taken as it is.
    assert complete(filtered, ["A", "B"]).equals(filtered)


def test_the_threshold_sweep_keeps_the_no_finding_boxes() -> None:
    from cxrdet.competitions.vinbigdata import VinBigDataEvaluator, complete

    ev = VinBigDataEvaluator(GT, ["A", "B"])
    pred = complete(boxes(("A", 10, 10, 50, 50, 0.9, 0), ("B", 60, 60, 90, 90, 0.95, 0)), ["A", "B"],
                    prob=pd.Series([0.8, 0.3]).to_numpy())
    curve = ev.score_vs_threshold(pred, [0.0, 0.92, 0.99])
    # Cut 0.92 drops A's true box (AP(0) 0) but not the no-finding boxes (AP(14) 1); cut 0.99 drops both findings.
    assert curve["score"].tolist() == pytest.approx([0.75, 0.5, 0.5])


@pytest.mark.parametrize("given", [False, True])
def test_the_one_pass_sweep_equals_scoring_each_cut(given: bool) -> None:
    """The sweep (one matching of the findings, the no-finding class rescored per cut from each image's top box)
    against scoring each cut's kept findings as they are, with no-finding boxes derived or given."""
    from cxrdet.competitions.vinbigdata import VinBigDataEvaluator, complete

    rng = np.random.default_rng(7)
    ids = [f"im{i}" for i in range(40)]
    gt_rows, pred_rows = [], []
    for image_id in ids:
        for _ in range(rng.poisson(1.0)):
            x, y = rng.uniform(0, 80, 2)
            w, h = rng.uniform(5, 30, 2)
            c = int(rng.integers(0, 5))
            gt_rows.append((image_id, x, y, x + w, y + h, c))
            for _ in range(rng.poisson(1.2)):
                jx, jy = rng.normal(0, 3, 2)
                pred_rows.append((image_id, x + jx, y + jy, x + w + jx, y + h + jy, float(rng.random()), c))
        for _ in range(rng.poisson(0.8)):
            x, y = rng.uniform(0, 80, 2)
            pred_rows.append((image_id, x, y, x + 15, y + 15, float(rng.random()), int(rng.integers(0, 5))))
    gt = pd.DataFrame(gt_rows, columns=["image_id", "x1", "y1", "x2", "y2", "label"])
    pred = pd.DataFrame(pred_rows, columns=["image_id", "x1", "y1", "x2", "y2", "score", "label"])
    if given:
        pred = complete(pred, ids, prob=rng.random(len(ids)))
    ev = VinBigDataEvaluator(gt, ids)
    cuts = [0.6, 0.0, 0.3, float(pred["score"].iloc[3]), 0.95, 1.01]
    curve = ev.score_vs_threshold(pred, cuts)
    finding = pred["label"].to_numpy() != NO_FINDING_ID
    for cut, got in zip(cuts, curve["score"], strict=True):
        kept = pred[~finding | (pred["score"].to_numpy() >= cut)]
        assert got == pytest.approx(ev.score(kept).score, abs=1e-12)


def test_the_competitions_writer_clips_to_each_image_and_validates(tmp_path: Path) -> None:
    from cxrdet.competitions.vinbigdata import complete

    comp = get_competition("vinbigdata")
    pred = complete(boxes(("A", -5, 10, 80, 50, 0.9, 3), ("A", 70, 70, 90, 90, 0.4, 1), ("B", 1, 1, 20, 20, 1.2, 2)),
                    ["A", "B"])
    stats = comp.write_submission(tmp_path / "s.csv", pred, ["A", "B"], {"A": (64, 64), "B": (100, 120)})
    back = read_submission(tmp_path / "s.csv", ["A", "B"])
    # A's first box is clipped to 0..64; its second lies outside the image (no width left): dropped; B's
    # confidence 1.2 is clipped to 1; every image keeps its no-finding box.
    assert stats == {"n_rows": 2, "n_boxes": 4, "n_empty": 0, "n_dropped": 1}
    first = back[(back["image_id"] == "A") & (back["label"] == 3)].iloc[0]
    assert [first.x1, first.x2] == [0.0, 64.0]
    assert back[back["image_id"] == "B"]["score"].max() == 1.0
    assert sorted(back.loc[back["label"] == NO_FINDING_ID, "image_id"]) == ["A", "B"]
