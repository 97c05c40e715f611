"""`cxrdet score` and `cxrdet validate-submission` end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrdet.cli import app
from tests.helpers import reference

RUNNER = CliRunner()
LABELS = (
    "patientId,x,y,width,height,Target\n"
    "a,0,0,10,10,1\n"
    "a,100,100,50,50,1\n"
    "b,,,,,0\n"
    "c,,,,,0\n"
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def flat(text: str) -> str:
    """Output with line wrapping undone (the error console wraps long messages at the terminal width)."""
    return " ".join(text.split())


def test_score_json_last_line(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.csv", LABELS)
    # a: one of two GT boxes found exactly: TP=1, FN=1 -> 1/2 at every threshold; b: empty, c: empty (left out).
    sub = write(tmp_path / "sub.csv", "patientId,PredictionString\na,0.9 0 0 10 10\nb,\nc,\n")
    result = RUNNER.invoke(app, ["score", "--labels", str(labels), "--submission", str(sub), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["metric"] == "rsna"
    assert report["score"] == 0.5
    assert report["n_images"] == 1
    assert report["per_threshold"] == {f"{t:.2f}": 0.5 for t in (0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75)}


def test_score_text_and_coco(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.csv", LABELS)
    sub = write(tmp_path / "sub.csv", "patientId,PredictionString\na,0.9 0 0 10 10 0.8 100 100 50 50\nb,\nc,\n")
    text = RUNNER.invoke(app, ["score", "--labels", str(labels), "--submission", str(sub)])
    assert text.exit_code == 0, text.output
    assert "rsna score 1.000000 over 1 image(s)" in text.stdout
    args = ["score", "--labels", str(labels), "--submission", str(sub), "--metric", "coco", "--json"]
    coco = RUNNER.invoke(app, args)
    assert coco.exit_code == 0, coco.output
    report = json.loads(coco.stdout.strip().splitlines()[-1])
    assert (report["metric"], report["score"], report["map_40"], report["n_images"]) == ("coco", 1.0, 1.0, 3)


def test_score_id_errors_and_allow_missing(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.csv", LABELS)
    extra = write(tmp_path / "extra.csv", "patientId,PredictionString\na,\nb,\nc,\nnew-id,\n")
    result = RUNNER.invoke(app, ["score", "--labels", str(labels), "--submission", str(extra)])
    assert result.exit_code == 1
    assert "line 5: patientId='new-id' is not an expected image id" in flat(result.output)

    partial = write(tmp_path / "partial.csv", "patientId,PredictionString\na,0.9 0 0 10 10\n")
    result = RUNNER.invoke(app, ["score", "--labels", str(labels), "--submission", str(partial), "--json"])
    assert result.exit_code == 1
    assert "patientId='b' has no row" in flat(result.output) and "patientId='c' has no row" in flat(result.output)
    result = RUNNER.invoke(app, ["score", "--labels", str(labels), "--submission", str(partial), "--json",
                                 "--allow-missing"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["score"] == 0.5
    assert "2 labelled image(s) had no submission row" in flat(result.stderr)


def test_score_rejects_unknown_metric(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.csv", LABELS)
    sub = write(tmp_path / "sub.csv", "patientId,PredictionString\na,\nb,\nc,\n")
    result = RUNNER.invoke(app, ["score", "--labels", str(labels), "--submission", str(sub), "--metric", "f1"])
    assert result.exit_code == 1
    assert "metric 'f1' is unknown" in flat(result.output)


def test_validate_submission(tmp_path: Path) -> None:
    sample = write(tmp_path / "sample.csv", "patientId,PredictionString\nx,0.5 0 0 100 100\ny,0.5 0 0 100 100\n")
    good = write(tmp_path / "good.csv", "patientId,PredictionString\ny,\nx,0.5 10 10 20 20\n")
    result = RUNNER.invoke(app, ["validate-submission", str(good), "--sample", str(sample)])
    assert result.exit_code == 0, result.output
    assert "OK: 2 rows, 1 boxes, 1 empty rows" in result.stdout

    bad = write(tmp_path / "bad.csv", "patientId,PredictionString\nx,0.5 10 10 20\nz,0.5 500 0 100 100\n")
    result = RUNNER.invoke(app, ["validate-submission", str(bad), "--sample", str(sample), "--image-size", "512"])
    assert result.exit_code == 1
    for part in ("3 problem(s)", "line 2: PredictionString has 4 values", "line 3: patientId='z' is not",
                 "patientId='y' has no row"):
        assert part in flat(result.output)


@pytest.mark.real_data
def test_score_json_matches_reference_on_real_labels(tmp_path: Path, real_rsna_labels: Path) -> None:
    from cxrdet.data.labels import read_rsna_labels
    from cxrdet.submission import write_submission

    labels = read_rsna_labels(real_rsna_labels)
    pred = reference.simulate_predictions(labels.boxes, labels.image_ids, seed=2)
    sub = tmp_path / "sub.csv"
    write_submission(sub, pred, labels.image_ids)
    result = RUNNER.invoke(app, ["score", "--labels", str(real_rsna_labels), "--submission", str(sub), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])

    # The reference scores the boxes as written (rounded), read back by an independent parser.
    import pandas as pd

    rows = []
    for line in sub.read_text().splitlines()[1:]:
        image_id, text = line.split(",")
        values = [float(v) for v in text.split()]
        for k in range(0, len(values), 5):
            c, x, y, w, h = values[k:k + 5]
            rows.append((image_id, x, y, x + w, y + h, c))
    written = pd.DataFrame(rows, columns=["image_id", "x1", "y1", "x2", "y2", "score"])
    ref_score, ref_per_image = reference.reference_rsna_score(labels.boxes, written, labels.image_ids)
    assert report["score"] == pytest.approx(ref_score, abs=1e-9)
    assert report["n_images"] == len(ref_per_image)
