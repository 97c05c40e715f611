"""Submission files: exact writer output, reader round trip, and a validator that lists every problem by line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrdet.errors import TableError
from cxrdet.metrics.rsna import rsna_score
from cxrdet.submission import (
    format_predictions,
    read_image_ids,
    read_submission,
    score_submission,
    validate_submission,
    write_submission,
)

PRED_COLS = ["image_id", "x1", "y1", "x2", "y2", "score"]


def pred_df(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=PRED_COLS)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---- writer ----


def test_writer_output_is_exact(tmp_path: Path) -> None:
    pred = pred_df(
        ("b", 10.04, 20.0, 110.06, 70.0, 0.25),  # corners round to 10.0 and 110.1: w = 100.1
        ("b", 0.0, 0.0, 50.0, 50.0, 0.912345),  # higher confidence: written first
        ("c", -20.0, 1000.0, 30.0, 1100.0, 0.5),  # clipped to the 1024 x 1024 image: x 0..30, y 1000..1024
    )
    stats = write_submission(tmp_path / "sub.csv", pred, ["a", "b", "c"])
    assert (tmp_path / "sub.csv").read_text() == (
        "patientId,PredictionString\n"
        "a,\n"
        "b,0.9123 0.0 0.0 50.0 50.0 0.2500 10.0 20.0 100.1 50.0\n"
        "c,0.5000 0.0 1000.0 30.0 24.0\n"
    )
    assert (stats.n_rows, stats.n_boxes, stats.n_empty, stats.n_dropped) == (3, 3, 1, 0)
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]  # no temporary file left behind


def test_equal_confidences_keep_input_order() -> None:
    pred = pred_df(("a", 5, 5, 6, 6, 0.5), ("a", 1, 1, 2, 2, 0.5), ("a", 3, 3, 4, 4, 0.7))
    table, _ = format_predictions(pred, ["a"])
    assert table.iloc[0, 1] == "0.7000 3.0 3.0 1.0 1.0 0.5000 5.0 5.0 1.0 1.0 0.5000 1.0 1.0 1.0 1.0"


def test_boxes_without_size_after_clipping_or_rounding_are_dropped(tmp_path: Path) -> None:
    pred = pred_df(("a", 1030, 10, 1100, 20, 0.9), ("a", 10.0, 10.0, 10.04, 20.0, 0.8), ("a", 1, 1, 3, 3, 0.1))
    stats = write_submission(tmp_path / "s.csv", pred, ["a"])
    assert stats.n_dropped == 2
    assert (tmp_path / "s.csv").read_text().splitlines()[1] == "a,0.1000 1.0 1.0 2.0 2.0"


def test_per_image_sizes_and_decimals() -> None:
    pred = pred_df(("a", 0, 0, 700, 700, 0.123456), ("b", 0, 0, 700, 700, 0.5))
    table, _ = format_predictions(pred, ["a", "b"], image_size={"a": (600, 500), "b": (1024, 1024)},
                                  conf_decimals=2, coord_decimals=0)
    assert table["PredictionString"].tolist() == ["0.12 0 0 600 500", "0.50 0 0 700 700"]


def test_writer_rejects_invalid_predictions(tmp_path: Path) -> None:
    with pytest.raises(TableError) as err:
        write_submission(tmp_path / "s.csv", pred_df(("a", 0, 0, 1, 1, 1.5), ("zz", 0, 0, 1, 1, 0.5)), ["a"])
    assert "score outside [0, 1]" in str(err.value)
    assert "not among the test image ids" in str(err.value)
    assert not (tmp_path / "s.csv").exists()
    with pytest.raises(TableError, match="duplicated id"):
        write_submission(tmp_path / "s.csv", pred_df(), ["a", "a"])


def test_round_trip_keeps_boxes_and_score(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 300
    ids = [f"p{i}" for i in range(100)]
    xy = rng.uniform(0, 900, (n, 2))
    wh = rng.uniform(10, 120, (n, 2))
    pred = pd.DataFrame({"image_id": rng.choice(ids, n), "x1": xy[:, 0], "y1": xy[:, 1], "x2": xy[:, 0] + wh[:, 0],
                         "y2": xy[:, 1] + wh[:, 1], "score": rng.random(n)})
    write_submission(tmp_path / "s.csv", pred, ids)
    back = read_submission(tmp_path / "s.csv", image_ids=ids)
    assert len(back) == n
    key = ["image_id", "score"]
    a = pred.assign(score=pred["score"].round(4)).sort_values(key).reset_index(drop=True)
    b = back.sort_values(key).reset_index(drop=True)
    np.testing.assert_allclose(b[["x1", "y1", "x2", "y2"]], a[["x1", "y1", "x2", "y2"]], atol=0.05 + 1e-9)
    assert (b["image_id"] == a["image_id"]).all()
    # Scored against the un-rounded boxes as ground truth, the read-back boxes are still near-perfect.
    assert rsna_score(pred[PRED_COLS[:5]], back, ids).score == 1.0


# ---- reader and validator ----


def test_valid_file_is_read_as_xyxy(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "patientId,PredictionString\na,0.9 10 20 30 40 0.5 0 0 1024 1024\nb,\n")
    pred = read_submission(path, image_ids=["a", "b"])
    assert pred.to_dict("records") == [
        {"image_id": "a", "x1": 10.0, "y1": 20.0, "x2": 40.0, "y2": 60.0, "score": 0.9},
        {"image_id": "a", "x1": 0.0, "y1": 0.0, "x2": 1024.0, "y2": 1024.0, "score": 0.5},
    ]
    stats = validate_submission(path, image_ids=["a", "b"])
    assert (stats.n_rows, stats.n_boxes, stats.n_empty) == (2, 2, 1)


def test_every_problem_is_listed_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", "\n".join([
        "id,Prediction",                          # 1: wrong header
        "a,0.9 10 20 30",                         # 2: 4 values
        "b,0.9 ten 20 30 40",                     # 3: non-numeric
        "c,nan 10 20 30 40",                      # 4: NaN
        "d,0.9 10 20 0 40 0.8 10 20 30 -1",       # 5: w = 0 (box 1), h = -1 (box 2)
        "e,1.5 10 20 30 40",                      # 6: confidence > 1
        "f,0.9 1000 20 30 40 0.5 -2 0 10 10",     # 7: x + w = 1030 > 1024 (box 1), x < 0 (box 2)
        "a,",                                     # 8: duplicate of line 2
        "zz,",                                    # 9: not an expected id
        "g,0.9 1 1 1 1,extra",                    # 10: 3 fields
        ",0.5 1 1 1 1",                           # 11: empty id
    ]) + "\n")
    with pytest.raises(TableError) as err:
        read_submission(path, image_ids=["a", "b", "c", "d", "e", "f", "g", "h"])
    problems = err.value.problems
    expected = [
        "line 1: header is 'id,Prediction'",
        "line 2: PredictionString has 4 values: expected a multiple of 5",
        "line 3: value 2 of PredictionString is 'ten': expected a number",
        "line 4: value 1 of PredictionString is 'nan': expected a finite number",
        "line 5: box 1: w=0: expected a width > 0",
        "line 5: box 2: h=-1: expected a height > 0",
        "line 6: box 1: conf=1.5: expected a confidence in [0, 1]",
        "line 7: box 1: x+w=1030: expected x + w <= the image width 1024",
        "line 7: box 2: x=-2: expected x >= 0",
        "line 8: patientId='a' repeats line 2",
        "line 9: patientId='zz' is not an expected image id",
        "line 10: 3 field(s): expected 2",
        "line 11: empty patientId",
        "patientId='g' has no row",
        "patientId='h' has no row",
    ]
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), (problem, start)
    assert str(path) in str(err.value)


def test_missing_ids_can_be_allowed(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "patientId,PredictionString\na,0.5 1 1 2 2\n")
    with pytest.raises(TableError, match="'b' has no row"):
        read_submission(path, image_ids=["a", "b"])
    assert len(read_submission(path, image_ids=["a", "b"], allow_missing=True)) == 1


def test_image_size_bounds_the_boxes(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "patientId,PredictionString\na,0.5 0 0 600 500\n")
    assert len(read_submission(path, image_size=(600, 500))) == 1
    with pytest.raises(TableError, match="y\\+h=500: expected y \\+ h <= the image height 400"):
        read_submission(path, image_size=(600, 400))


def test_sample_ids_are_read_in_order(tmp_path: Path) -> None:
    path = write(tmp_path / "sample.csv", "patientId,PredictionString\nb,0.5 0 0 100 100\na,0.5 0 0 100 100\n")
    assert read_image_ids(path) == ["b", "a"]
    dup = write(tmp_path / "dup.csv", "patientId,PredictionString\nb,\nb,\n")
    with pytest.raises(TableError, match="line 3: patientId='b' repeats line 2"):
        read_image_ids(dup)


def test_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="file not found"):
        read_submission(tmp_path / "nope.csv")
    with pytest.raises(TableError, match="the file is empty"):
        read_submission(write(tmp_path / "empty.csv", ""))


# ---- scoring a file against labels ----


LABELS = (
    "patientId,x,y,width,height,Target\n"
    "a,0,0,10,10,1\n"
    "b,,,,,0\n"
    "c,,,,,0\n"
)


def test_score_submission_rsna(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.csv", LABELS)
    # a: IoU 0.5 -> matched at 0.40 and 0.45 only (2/8); b: a false positive (0); c: nothing (left out).
    sub = write(tmp_path / "s.csv", "patientId,PredictionString\na,0.9 0 0 10 5\nb,0.3 100 100 10 10\nc,\n")
    report = score_submission(labels, sub)
    assert report["score"] == pytest.approx((2 / 8 + 0) / 2, abs=1e-15)
    assert report["n_images"] == 2
    assert report["per_threshold"]["0.40"] == 0.5
    assert report["per_threshold"]["0.50"] == 0.0


def test_score_submission_id_rules(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.csv", LABELS)
    extra = write(tmp_path / "extra.csv", "patientId,PredictionString\na,\nb,\nc,\nq,\n")
    with pytest.raises(TableError, match="line 5: patientId='q' is not an expected image id"):
        score_submission(labels, extra)
    partial = write(tmp_path / "partial.csv", "patientId,PredictionString\na,0.9 0 0 10 10\n")
    with pytest.raises(TableError, match="'b' has no row"):
        score_submission(labels, partial)
    report = score_submission(labels, partial, allow_missing=True)
    assert (report["score"], report["n_images"], report["n_missing"]) == (1.0, 1, 2)
