"""SIIM-COVID: the two label tables and their errors, the six-class metric (hand-computed and against the devkit
loops), what `complete` adds, the submission format and its refusals, the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrdet.cli import app
from cxrdet.competitions import competition_of_labels, competition_of_submission, detect, get_competition
from cxrdet.competitions.siim import (
    METRIC_CLASSES,
    NONE_ID,
    OPACITY_ID,
    STUDY_OFFSET,
    SiimEvaluator,
    complete,
    read_siim_labels,
    read_submission,
    score_submission,
    study_table,
    write_submission,
)
from cxrdet.ensemble.postprocess import PostParams
from cxrdet.errors import ConfigError, TableError
from tests.helpers.reference import reference_siim_score

IMAGE_HEADER = "id,boxes,label,StudyInstanceUID"
STUDY_HEADER = "id,Negative for Pneumonia,Typical Appearance,Indeterminate Appearance,Atypical Appearance"
IMAGES = [
    "i1_image,\"[{'x': 10.0, 'y': 10.0, 'width': 40.0, 'height': 40.0}]\",opacity 1 10 10 50 50,s1",
    "i2_image,,none 1 0 0 1 1,s2",
    "i3_image,,none 1 0 0 1 1,s2",
]
STUDIES = ["s1_study,0,1,0,0", "s2_study,1,0,0,0"]


def write_tables(folder: Path, images: list[str] = IMAGES, studies: list[str] = STUDIES,
                 prefix: str = "train") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}_study_level.csv").write_text("\n".join([STUDY_HEADER, *studies]) + "\n")
    path = folder / f"{prefix}_image_level.csv"
    path.write_text("\n".join([IMAGE_HEADER, *images]) + "\n")
    return path


def frame(rows: list[tuple[str, int, float, float, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["image_id", "label", "score", "x1", "y1", "x2", "y2"])


# ---- label tables ----


def test_the_tables_parse_into_opacity_boxes_and_per_image_study_columns(tmp_path: Path) -> None:
    ann = read_siim_labels(write_tables(tmp_path))
    assert ann.classes == ("opacity",)
    assert ann.boxes[["image_id", "patient_id", "x1", "y1", "x2", "y2", "label"]].values.tolist() == [
        ["i1", "s1", 10.0, 10.0, 50.0, 50.0, 0]]
    images = ann.images.set_index("image_id")
    assert images["study_id"].tolist() == ["s1", "s2", "s2"]
    assert images["patient_id"].tolist() == ["s1", "s2", "s2"]  # folds keep a study together
    assert images["study_label"].tolist() == ["typical", "negative", "negative"]
    assert images[["negative", "typical", "indeterminate", "atypical"]].values.tolist() == [[0, 1, 0, 0],
                                                                                          [1, 0, 0, 0],
                                                                                          [1, 0, 0, 0]]
    assert images["n_boxes"].tolist() == [1, 0, 0]
    assert study_table(tmp_path / "synth_test_image_level.csv").name == "synth_test_study_level.csv"


def test_competition_is_told_by_the_image_table_and_the_sample_submission(tmp_path: Path) -> None:
    path = write_tables(tmp_path)
    assert competition_of_labels(path).name == "siim"
    assert detect(tmp_path).name == "siim"
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("id,PredictionString\ns9_study,negative 1 0 0 1 1\ni9_image,none 1 0 0 1 1\n")
    assert competition_of_submission(sample).name == "siim"
    siim = get_competition("siim")
    assert siim.sample_ids(sample) == ["s9_study", "i9_image"]
    assert siim.test_image_ids(tmp_path) == ["i9"]


def test_bad_image_rows_are_named_by_file_line(tmp_path: Path) -> None:
    path = write_tables(tmp_path, [
        "i1,,none 1 0 0 1 1,s1",  # line 2: no _image suffix
        "i2_image,\"[{'x': 1, 'y': 1, 'width': 5, 'height': 5}]\",opacity 1 1 1 6 9,s1",  # line 3: disagree
        "i3_image,\"[{'x': 1, 'y': 1, 'width': 5, 'height': 5}]\",none 1 0 0 1 1,s1",  # line 4: none with boxes
        "i4_image,,opacity 1 5 5 2 9,s1",  # line 5: inverted box
        "i5_image,,covid 1 0 0 1 1,s1",  # line 6: unknown class
        "i6_image,,opacity 1 0 0,s1",  # line 7: 4 tokens
        "i7_image,,none 1 0 0 1 1,",  # line 8: no study
        "i8_image,not a list,opacity 1 1 1 2 2,s1",  # line 9: boxes unreadable
    ], ["s1_study,0,1,0,0"])
    with pytest.raises(TableError) as err:
        read_siim_labels(path)
    text = str(err.value)
    for line, words in [(2, "ending in '_image'"), (3, "disagree"), (4, "expected empty for a 'none' image"),
                        (5, "x_max > x_min"), (6, "'covid'"), (7, "4 tokens"), (8, "StudyInstanceUID"),
                        (9, "boxes='not a list'")]:
        assert f"line {line}:" in text and words in text, (line, words, text)


def test_bad_study_rows_and_orphans_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=r"line 3: .*exactly one 1"):
        read_siim_labels(write_tables(tmp_path / "a", studies=["s1_study,0,1,0,0", "s2_study,1,1,0,0"]))
    with pytest.raises(TableError, match=r"StudyInstanceUID='s2': no row 's2_study'"):
        read_siim_labels(write_tables(tmp_path / "b", studies=["s1_study,0,1,0,0"]))
    with pytest.raises(TableError, match=r"study row\(s\) without any image.*s3_study"):
        read_siim_labels(write_tables(tmp_path / "c", studies=[*STUDIES, "s3_study,0,0,0,1"]))
    with pytest.raises(TableError, match="file not found"):
        read_siim_labels(write_tables(tmp_path / "d"), study_path=tmp_path / "missing.csv")


def test_boxes_outside_their_image_are_refused_when_sizes_are_known(tmp_path: Path) -> None:
    path = write_tables(tmp_path)
    read_siim_labels(path, sizes={"i1": (50, 50)})
    with pytest.raises(TableError, match=r"line 2: box 10 10 50 50: expected inside the image \(40 x 60"):
        read_siim_labels(path, sizes={"i1": (40, 60)})


# ---- the metric ----

GT = pd.DataFrame({"image_id": ["i1"], "x1": [10.0], "y1": [10.0], "x2": [50.0], "y2": [50.0], "label": [0]})
STUDY_INFO = pd.DataFrame({"image_id": ["i1", "i2", "i3"], "study_id": ["s1", "s2", "s2"], "study_class": [1, 0, 0]})
PRED = frame([
    ("i1", 0, 0.9, 10, 10, 50, 50), ("i2", 0, 0.8, 0, 0, 20, 20),  # opacity: TP then FP -> AP 1
    ("i3", 1, 0.7, 0, 0, 1, 1), ("i1", 1, 0.2, 0, 0, 1, 1), ("i2", 1, 0.1, 0, 0, 1, 1),  # none: TP FP TP -> 5/6
    ("s1_study", 2, 0.3, 0, 0, 1, 1), ("s2_study", 2, 0.2, 0, 0, 1, 1),  # negative: FP TP -> 1/2
    ("s2_study", 3, 0.7, 0, 0, 1, 1), ("s1_study", 3, 0.6, 0, 0, 1, 1),  # typical: FP TP -> 1/2
    ("s1_study", 4, 0.05, 0, 0, 1, 1), ("s1_study", 5, 0.05, 0, 0, 1, 1),  # no ground truth: not counted
])


def test_the_metric_by_hand_six_classes_weigh_alike() -> None:
    result = SiimEvaluator(GT, ["i1", "i2", "i3"], STUDY_INFO).score(PRED)
    ap = result.per_class.set_index("class")["ap"]
    assert ap["opacity"] == pytest.approx(1.0) and ap["none"] == pytest.approx(5 / 6)
    assert ap["negative"] == pytest.approx(0.5) and ap["typical"] == pytest.approx(0.5)
    assert np.isnan(ap["indeterminate"]) and np.isnan(ap["atypical"])  # absent from the truth
    assert result.score == pytest.approx((1 + 5 / 6 + 0.5 + 0.5) / 4)
    assert result.image_map == pytest.approx((1 + 5 / 6) / 2) and result.study_map == pytest.approx(0.5)


def test_without_studies_only_the_image_level_is_scored() -> None:
    result = SiimEvaluator(GT, ["i1", "i2", "i3"]).score(PRED[PRED["label"] < STUDY_OFFSET])
    assert result.score == pytest.approx((1 + 5 / 6) / 2) and np.isnan(result.study_map)


def test_a_box_needs_iou_above_one_half() -> None:
    ev = SiimEvaluator(GT, ["i1"])
    # 10..50 against 10..30 x 10..50: IoU exactly 0.5 is a miss; 10..31 (0.525) a hit.
    at = ev.score(frame([("i1", 0, 0.9, 10, 10, 30, 50), ("i1", 1, 0.1, 0, 0, 1, 1)]))
    above = ev.score(frame([("i1", 0, 0.9, 10, 10, 31, 50), ("i1", 1, 0.1, 0, 0, 1, 1)]))
    assert at.per_class.set_index("class").at["opacity", "ap"] == 0.0
    assert above.per_class.set_index("class").at["opacity", "ap"] == 1.0


def test_missing_none_and_study_rows_are_completed_from_the_boxes() -> None:
    ev = SiimEvaluator(GT, ["i1", "i2", "i3"])
    # none = 1 - top opacity: i1 0.1, i2 0.2, i3 1.0 -> ranked i3 (TP), i2 (TP), i1 (FP): AP 1.
    result = ev.score(PRED[PRED["label"] == 0])
    assert result.per_class.set_index("class").at["none", "ap"] == pytest.approx(1.0)
    # With studies: negative = the mean none of a study's images (s1 0.1, s2 0.6: AP 1), typical = 1 - that (AP 1).
    full = SiimEvaluator(GT, ["i1", "i2", "i3"], STUDY_INFO).score(PRED[PRED["label"] == 0])
    ap = full.per_class.set_index("class")["ap"]
    assert ap["negative"] == pytest.approx(1.0) and ap["typical"] == pytest.approx(1.0)
    assert full.score == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(6))
def test_the_metric_equals_the_devkit_loops_on_random_cases(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_studies = 12
    study_truth = {f"s{k}": str(rng.choice(["negative", "typical", "indeterminate", "atypical"]))
                   for k in range(n_studies)}
    study_of, image_truth, rows = {}, {}, {}
    for k in range(n_studies):
        for j in range(int(rng.integers(1, 3))):
            image_id = f"s{k}i{j}"
            study_of[image_id] = f"s{k}"
            boxes = [] if study_truth[f"s{k}"] == "negative" else [
                tuple(float(v) for v in (x, y, x + w, y + h))
                for x, y, w, h in rng.uniform([0, 0, 20, 20], [200, 200, 120, 120], (int(rng.integers(0, 3)), 4))]
            image_truth[image_id] = boxes
            groups = []
            for b in boxes:  # a jittered copy of most true boxes, plus random false ones
                if rng.random() < 0.8:
                    x1, y1, x2, y2 = (v + rng.normal(0, 8) for v in b)
                    groups.append(("opacity", float(rng.random()), x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)))
            for _ in range(int(rng.integers(0, 3))):
                x, y = rng.uniform(0, 250, 2)
                groups.append(("opacity", float(rng.random()), x, y, x + 40, y + 40))
            groups.append(("none", float(rng.random()), 0.0, 0.0, 1.0, 1.0))
            rows[f"{image_id}_image"] = groups
        rows[f"s{k}_study"] = [(c, float(rng.random()), 0.0, 0.0, 1.0, 1.0)
                               for c in ("negative", "typical", "indeterminate", "atypical")]
    gt = pd.DataFrame([(i, *b, 0) for i, bs in image_truth.items() for b in bs],
                      columns=["image_id", "x1", "y1", "x2", "y2", "label"])
    info = pd.DataFrame({"image_id": list(study_of), "study_id": list(study_of.values()),
                         "study_class": [["negative", "typical", "indeterminate", "atypical"].index(study_truth[s])
                                         for s in study_of.values()]})
    pred = frame([(key.removesuffix("_image"), METRIC_CLASSES.index(name), conf, x1, y1, x2, y2)
                  for key, groups in rows.items() for name, conf, x1, y1, x2, y2 in groups])
    ours = SiimEvaluator(gt, list(study_of), info).score(pred).score
    assert ours == pytest.approx(reference_siim_score(image_truth, study_of, study_truth, rows), abs=1e-12)


@pytest.mark.parametrize("rows", ["boxes", "with_none", "with_all", "no_studies"])
def test_the_one_pass_sweep_equals_scoring_each_cut(rows: str) -> None:
    """The sweep (one matching of the opacity boxes; none and study rows completed per cut from each image's top
    box, or given) against scoring each cut's kept opacity boxes with the other rows as they are."""
    rng = np.random.default_rng(11)
    images = [f"s{k}i{j}" for k in range(10) for j in range(int(k % 3 == 0) + 1)]
    info = pd.DataFrame({"image_id": images, "study_id": [i.split("i")[0] for i in images],
                         "study_class": [int(i[1]) % 4 for i in images]})
    gt_rows, pred_rows = [], []
    for image_id, cls in zip(images, info["study_class"], strict=True):
        for _ in range(int(rng.integers(0, 3)) if cls else 0):
            x, y, w, h = rng.uniform([0, 0, 20, 20], [200, 200, 120, 120])
            gt_rows.append((image_id, x, y, x + w, y + h, OPACITY_ID))
            pred_rows.append((image_id, OPACITY_ID, float(rng.random()), x + 3, y - 2, x + w, y + h))
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.uniform(0, 250, 2)
            pred_rows.append((image_id, OPACITY_ID, float(rng.random()), x, y, x + 40, y + 40))
    gt = pd.DataFrame(gt_rows, columns=["image_id", "x1", "y1", "x2", "y2", "label"])
    pred = frame(pred_rows)
    studies = None if rows == "no_studies" else info
    if rows in ("with_none", "with_all"):
        full = complete(pred, images, rng.random(len(images)),
                        info[["image_id", "study_id"]] if rows == "with_all" else None)
        pred = full if rows == "with_all" else full[full["label"] <= NONE_ID]
    ev = SiimEvaluator(gt, images, studies)
    cuts = [0.5, 0.0, 0.2, float(pred["score"].iloc[2]), 0.9, 1.01]
    curve = ev.score_vs_threshold(pred, cuts)
    opacity = pred["label"].to_numpy() == OPACITY_ID
    for cut, got in zip(cuts, curve["score"], strict=True):
        kept = pred[~opacity | (pred["score"].to_numpy() >= cut)]
        assert got == pytest.approx(ev.score(kept).score, abs=1e-12)


# ---- complete ----


def test_complete_adds_none_by_rule_and_pools_study_probabilities() -> None:
    boxes = PRED[PRED["label"] == 0]
    ids = ["i1", "i2", "i3"]
    plain = complete(boxes, ids).set_index(["image_id", "label"])["score"]
    assert plain[("i1", NONE_ID)] == pytest.approx(0.1) and plain[("i3", NONE_ID)] == pytest.approx(1.0)
    prob = np.array([0.6, 0.4, 0.2])  # P(opacity) of each image
    mixed = complete(boxes, ids, prob, post=PostParams(none_weight=0.5)).set_index(["image_id", "label"])["score"]
    assert mixed[("i1", NONE_ID)] == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    only_cls = complete(boxes, ids, prob).set_index(["image_id", "label"])["score"]  # default: the classifier
    assert only_cls[("i2", NONE_ID)] == pytest.approx(0.6)
    images = STUDY_INFO[["image_id", "study_id"]].assign(prob_negative=[0.1, 0.5, 0.9], prob_typical=[0.7, 0.3, 0.1],
                                                        prob_indeterminate=0.1, prob_atypical=0.1)
    mean = complete(boxes, ids, prob, images).set_index(["image_id", "label"])["score"]
    assert mean[("s2_study", STUDY_OFFSET)] == pytest.approx(0.7)
    assert mean[("s1_study", STUDY_OFFSET + 1)] == pytest.approx(0.7)  # default weight and power: the classifier
    high = complete(boxes, ids, prob, images, PostParams(study_pool="max")).set_index(["image_id", "label"])["score"]
    assert high[("s2_study", STUDY_OFFSET)] == pytest.approx(0.9)
    assert len(mean[mean.index.get_level_values(0).str.endswith("_study")]) == 8  # 2 studies x 4 classes
    # Without study probabilities: negative is the pooled none confidence, the others a third of its complement each.
    fallback = complete(boxes, ids, None, STUDY_INFO[["image_id", "study_id"]]).set_index(["image_id", "label"])
    assert fallback.at[("s2_study", STUDY_OFFSET), "score"] == pytest.approx((0.2 + 1.0) / 2)
    assert fallback.at[("s2_study", STUDY_OFFSET + 3), "score"] == pytest.approx((1 - 0.6) / 3)
    # study_weight mixes the classifier's P(negative) with the detector's; study_power 0 spreads the rest evenly.
    mixed = complete(boxes, ids, prob, images, PostParams(study_weight=0.25, study_power=0.0))
    mixed = mixed.set_index(["image_id", "label"])["score"]
    negative = 0.25 * 0.7 + 0.75 * (0.2 + 1.0) / 2  # s2: classifier 0.7, detector none 0.6
    assert mixed[("s2_study", STUDY_OFFSET)] == pytest.approx(negative)
    assert mixed[("s2_study", STUDY_OFFSET + 1)] == pytest.approx((1 - negative) / 3)
    sharp = complete(boxes, ids, prob, images, PostParams(study_power=2.0)).set_index(["image_id", "label"])["score"]
    q = np.array([0.7, 0.1, 0.1]) ** 2  # s1's positive categories
    assert sharp[("s1_study", STUDY_OFFSET + 1)] == pytest.approx(0.9 * q[0] / q.sum())
    with pytest.raises(ConfigError, match="study_weight 1.5"):
        PostParams(study_weight=1.5)
    kept = complete(PRED, ids, prob, images)  # rows already there are kept as given
    assert len(kept) == len(PRED)


# ---- submissions ----


def test_a_written_submission_reads_back_and_scores_as_the_evaluator(tmp_path: Path) -> None:
    path = write_submission(tmp_path / "sub.csv", PRED, ["i1", "i2", "i3"])
    text = path.read_text().splitlines()
    assert text[0] == "id,PredictionString"
    assert text[1].startswith("s1_study,typical 0.600000 0.0 0.0 1.0 1.0 negative 0.300000")
    assert text[-1] == "i3_image,none 0.700000 0.0 0.0 1.0 1.0"
    back = read_submission(path, ["s1_study", "s2_study", "i1_image", "i2_image", "i3_image"])
    assert len(back) == len(PRED)
    ann = read_siim_labels(write_tables(tmp_path / "labels"))
    report = score_submission(ann, path, ["i1", "i2", "i3"])
    assert report["score"] == pytest.approx((1 + 5 / 6 + 0.5 + 0.5) / 4)
    assert report["n_studies"] == 2 and report["per_class"]["atypical"] is None


def test_malformed_submissions_are_refused_with_the_row_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([
        "id,PredictionString",
        "s1_study,opacity 0.5 10 10 20 20",  # line 2: an opacity box on a study row
        "i1_image,covid 0.5 0 0 1 1",  # line 3: a class outside the six
        "i2_image,typical 0.5 0 0 1 1",  # line 4: a study class on an image row
        "i3_image,none 0.5 0 0 10 10",  # line 5: a none box that is not 0 0 1 1
        "s2_study,negative 1.5 0 0 1 1",  # line 6: confidence above 1
        "x9,none 1 0 0 1 1",  # line 7: no suffix
        "s3_study,negative 1 0 0 1",  # line 8: 5 tokens
    ]) + "\n")
    with pytest.raises(TableError) as err:
        read_submission(path, ["s1_study", "s2_study", "s3_study", "s4_study", "i1_image", "i2_image", "i3_image"])
    text = str(err.value)
    for expected in ["line 2, box 1: class 'opacity' on a study row (s1_study)", "line 3, box 1: class 'covid'",
                     "line 4, box 1: class 'typical' on a image row", "line 5, box 1: none box 0 0 10 10",
                     "line 6, box 1: confidence=1.5", "line 7: id='x9'", "line 8: PredictionString has 5 tokens",
                     "1 test study(s) have no row, e.g. ['s4_study']"]:
        assert expected in text, (expected, text)


def test_readers_are_refused_and_scoring_takes_no_other_metric(tmp_path: Path) -> None:
    siim = get_competition("siim")
    ann = read_siim_labels(write_tables(tmp_path))
    with pytest.raises(ConfigError, match="one reader per image"):
        siim.ground_truth(ann, {"mode": "fuse"})
    with pytest.raises(ConfigError, match="own metric only"):
        score_submission(ann, tmp_path / "x.csv", ["i1"], metric="coco")


def test_cli_score_and_validate_take_a_siim_submission(tmp_path: Path) -> None:
    labels = write_tables(tmp_path, prefix="synth_test")
    sub = write_submission(tmp_path / "sub.csv", PRED, ["i1", "i2", "i3"])
    result = CliRunner().invoke(app, ["score", "--labels", str(labels), "--submission", str(sub)])
    assert result.exit_code == 0, result.output
    assert "0.7083" in result.output
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("id,PredictionString\ns1_study,negative 1 0 0 1 1\ns2_study,negative 1 0 0 1 1\n"
                      "i1_image,none 1 0 0 1 1\ni2_image,none 1 0 0 1 1\ni3_image,none 1 0 0 1 1\n")
    result = CliRunner().invoke(app, ["validate-submission", str(sub), "--sample", str(sample)])
    assert result.exit_code == 0, result.output
    assert "2 studies, 3 images, 2 opacity boxes" in result.output
