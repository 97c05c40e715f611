"""VinBigData Chest X-ray Abnormalities Detection (Kaggle, 2020-21): its download layout, label table, classes,
metric and submission format.

Facts, from the competition's pages (copied in github.com/grapestone5321/
Kaggle-Prj-VinBigData_Chest_X-ray_Abnormalities_Detection README.md) and the VinDr-CXR description
(vindr.ai/datasets/cxr; arXiv 2012.15029):

- 15,000 training and 3,000 test postero-anterior chest radiographs, DICOM, `train/<image_id>.dicom` and
  `test/<image_id>.dicom`; `train.csv` has `image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max`, one row
  per box; each training image was read independently by 3 of 17 radiologists (`rad_id` R1..R17); the test labels
  are the consensus of 5 radiologists.
- 14 finding classes, `class_id` 0-13 (`CLASSES`), and class 14 "No finding", whose rows have empty box fields.
- Submission `image_id,PredictionString`, the string `class_id confidence x_min y_min x_max y_max ...` in original
  pixels; "no finding" is predicted as `14 confidence 0 0 1 1` (the sample submission's `14 1 0 0 1 1`).
- Metric: "the standard PASCAL VOC 2010 mean Average Precision (mAP) at IoU > 0.4" (`cxrdet.metrics.voc`), over
  the classes present in the ground truth, a no-finding image's ground truth being one class-14 box `0 0 1 1`.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrdet.competitions.base import COMPETITIONS, Competition
from cxrdet.data.labels import (
    Annotations,
    box_field_problems,
    by_line,
    duplicate_problems,
    field_problems,
    file_lines,
    read_str_csv,
    register_format,
    require_columns,
)
from cxrdet.errors import ConfigError, TableError

CLASSES: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD", "Infiltration",
    "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis",
)  # fmt: skip
NO_FINDING_ID = 14
NO_FINDING = "No finding"
# The metric's classes: the 14 findings and "No finding", whose only box is NO_FINDING_BOX.
METRIC_CLASSES: tuple[str, ...] = (*CLASSES, NO_FINDING)
NO_FINDING_BOX: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
IOU_THRESHOLD = 0.4
COLUMNS: tuple[str, ...] = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")
BOX_FIELDS: tuple[str, ...] = ("x_min", "y_min", "x_max", "y_max")
SUBMISSION_COLUMNS: tuple[str, ...] = ("image_id", "PredictionString")
ABNORMAL = "abnormal"
MONITOR = "val/map40"
_RAD_ID = re.compile(r"^R\d+$")
_MAX_LISTED = 10


@dataclass(frozen=True)
class VinBigDataLayout:
    """The folder layout of the VinBigData Kaggle download (and of `cxrdet synth --competition vinbigdata`).

    Attributes:
        root: The folder holding `train.csv` and the image folders.
    """

    root: Path

    @property
    def labels_csv(self) -> Path:
        return self.root / "train.csv"

    @property
    def sample_submission(self) -> Path:
        return self.root / "sample_submission.csv"

    @property
    def synth_test_labels(self) -> Path:
        """Test labels of a synthetic data set (the competition hides them), in `train.csv`'s format."""
        return self.root / "synth_test_labels.csv"

    def images_dir(self, split: str) -> Path:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self.root / split

    def dicom_path(self, split: str, image_id: str) -> Path:
        return self.images_dir(split) / f"{image_id}.dicom"


# ---- the label table ----


def read_vinbigdata_labels(path: str | Path, sizes: Mapping[str, tuple[int, int]] | None = None) -> Annotations:
    """Parse a VinBigData `train.csv`: one row per reader's box, or one "No finding" row per reader and image.

    Args:
        path: The label table.
        sizes: `(width, height)` of each image in pixels (from the DICOM headers), to check that boxes lie inside;
            None skips that check (the table itself does not say).

    Returns:
        Annotations whose `boxes` are every reader's finding boxes (xyxy pixels of the original image, `label` the
        class id 0-13) with a `reader` column (`rad_id`), and whose `images` carry, besides `n_boxes` and
        `positive` (any reader drew a finding), `n_readers` (distinct `rad_id`), `no_finding_readers` (readers who
        said "No finding") and one 0/1 column per class (some reader drew it). VinBigData has no patient id:
        `patient_id == image_id`.

    Raises:
        TableError: Listing every problem by file line: missing columns, an empty image id, a class id outside
            0-14, a class name that is not its id's, a missing or malformed rad_id, a finding row whose box is
            missing, not a number or inverted (x_max < x_min, y_max < y_min), a "No finding" row with a box, a box
            outside its image, duplicate rows, a reader who said "No finding" and drew a finding on one image.
    """
    path = Path(path)
    df = read_str_csv(path)
    require_columns(path, df, COLUMNS)
    problems, finding, nums = _problems(df, sizes)
    if problems:
        raise TableError(path, by_line(problems))
    rows = df[finding]
    ids = df["image_id"].drop_duplicates()
    boxes = pd.DataFrame({
        "image_id": rows["image_id"].to_numpy(), "patient_id": rows["image_id"].to_numpy(),
        **{c: nums[f][finding].to_numpy(dtype=np.float64) for c, f in zip(("x1", "y1", "x2", "y2"), BOX_FIELDS,
                                                                         strict=True)},
        "label": rows["class_id"].astype(np.int64).to_numpy(), "reader": rows["rad_id"].to_numpy(),
    })  # fmt: skip
    n_boxes = boxes["image_id"].value_counts().reindex(ids, fill_value=0).to_numpy(dtype=np.int64)
    images = pd.DataFrame({"image_id": ids.to_numpy(), "patient_id": ids.to_numpy(), "n_boxes": n_boxes,
                           "positive": n_boxes > 0})
    images["n_readers"] = df.groupby("image_id", sort=False)["rad_id"].nunique().reindex(ids).to_numpy(np.int64)
    normal = df[df["class_id"] == str(NO_FINDING_ID)].groupby("image_id", sort=False)["rad_id"].nunique()
    images["no_finding_readers"] = normal.reindex(ids, fill_value=0).to_numpy(dtype=np.int64)
    # The 2-class filter's target (a classifier's `data.classes=('abnormal',)`): some reader drew a finding.
    images[ABNORMAL] = images["positive"].astype(np.int64)
    present = pd.crosstab(boxes["image_id"], boxes["label"]).reindex(index=ids, columns=range(len(CLASSES)),
                                                                    fill_value=0)
    for k, name in enumerate(CLASSES):
        images[name] = (present[k].to_numpy() > 0).astype(np.int64)
    return Annotations(boxes=boxes, images=images, classes=CLASSES)


def _problems(df: pd.DataFrame, sizes: Mapping[str, tuple[int, int]] | None
              ) -> tuple[list[str], pd.Series, dict[str, pd.Series]]:
    """Every problem of a VinBigData table (fields as stripped strings), the finding-row mask and the numbers."""
    problems = field_problems(df, df["image_id"] == "", "image_id", "a non-empty image id")
    class_id = pd.to_numeric(df["class_id"].where(df["class_id"] != ""), errors="coerce")
    valid_id = class_id.isin(range(NO_FINDING_ID + 1)) & (df["class_id"].str.fullmatch(r"\d+"))
    problems += field_problems(df, ~valid_id, "class_id", f"an integer 0-{NO_FINDING_ID} (14 = 'No finding')")
    expected_name = class_id.where(valid_id).map(dict(enumerate(METRIC_CLASSES)))
    wrong_name = valid_id & (df["class_name"] != expected_name)
    problems += [f"line {n}: class_name={df.at[i, 'class_name']!r}: expected {expected_name[i]!r} (class_id "
                 f"{df.at[i, 'class_id']})" for i, n in zip(df.index[wrong_name], file_lines(wrong_name), strict=True)]
    problems += field_problems(df, ~df["rad_id"].str.fullmatch(_RAD_ID.pattern), "rad_id",
                               "a radiologist id such as R8 (every row is one reader's)")
    finding = valid_id & (class_id < NO_FINDING_ID)
    normal = valid_id & (class_id == NO_FINDING_ID)
    found, nums = box_field_problems(
        df, BOX_FIELDS, finding, normal, "a number (finding rows, class_id 0-13, need a box)",
        "an empty cell ('No finding' rows, class_id 14, have no box)",
        also=[(lambda num: num < 0, "a number >= 0 (inside the image)")])
    problems += found
    for lo, hi in (("x_min", "x_max"), ("y_min", "y_max")):
        inverted = finding & (nums[hi] < nums[lo])
        problems += [f"line {n}: {hi}={df.at[i, hi]!r} < {lo}={df.at[i, lo]!r}: expected {hi} >= {lo} (xyxy box)"
                     for i, n in zip(df.index[inverted], file_lines(inverted), strict=True)]
    if sizes is not None:
        width = df["image_id"].map(lambda k: sizes.get(k, (math.inf, math.inf))[0])
        height = df["image_id"].map(lambda k: sizes.get(k, (math.inf, math.inf))[1])
        for field, limit in (("x_max", width), ("y_max", height)):
            over = finding & (nums[field] > limit)
            problems += [f"line {n}: {field}={df.at[i, field]!r}: expected <= {limit[i]:g} (the width or height of "
                         f"image {df.at[i, 'image_id']!r})" for i, n in zip(df.index[over], file_lines(over),
                                                                              strict=True)]
    problems += duplicate_problems(df, COLUMNS, "row")
    both = df[valid_id].assign(normal=normal[valid_id]).groupby(["image_id", "rad_id"], sort=False)["normal"]
    mixed = both.nunique()
    for (image_id, rad_id) in mixed.index[mixed > 1]:
        lines = ", ".join(map(str, df.index[(df["image_id"] == image_id) & (df["rad_id"] == rad_id)] + 2))
        problems.append(f"image_id={image_id!r}, rad_id={rad_id!r}: 'No finding' and findings on lines {lines}: "
                        "expected a reader to give either one 'No finding' row or finding rows for an image")
    return problems, finding, nums


@register_format("vinbigdata", COLUMNS)
def _read(path: Path) -> Annotations:
    return read_vinbigdata_labels(path)


def metric_ground_truth(boxes: pd.DataFrame, image_ids: Sequence[str]) -> pd.DataFrame:
    """The metric's ground truth: `boxes` (`image_id, x1, y1, x2, y2, label`; one set of boxes per image, e.g.
    fused readers) plus one class-14 box `0 0 1 1` on every image of `image_ids` that has no box."""
    gt = boxes[["image_id", "x1", "y1", "x2", "y2", "label"]]
    normal = pd.Index(image_ids).difference(pd.Index(gt["image_id"].unique()), sort=False)
    x1, y1, x2, y2 = NO_FINDING_BOX
    extra = pd.DataFrame({"image_id": normal, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "label": NO_FINDING_ID})
    return pd.concat([gt, extra], ignore_index=True)


# ---- submissions ----


def format_prediction_string(rows: pd.DataFrame) -> str:
    """One image's boxes as `class_id confidence x_min y_min x_max y_max ...` (descending confidence; confidence to
    6 decimals, coordinates to 1 decimal pixel; `label` is the class id, 14 for the no-finding box)."""
    rows = rows.sort_values("score", ascending=False, kind="stable")
    return " ".join(f"{int(r.label)} {r.score:.6f} {r.x1:.1f} {r.y1:.1f} {r.x2:.1f} {r.y2:.1f}"
                    for r in rows.itertuples(index=False))


def write_submission(path: str | Path, pred: pd.DataFrame, image_ids: Sequence[str]) -> Path:
    """Write `image_id,PredictionString` for every image of `image_ids` (an image without boxes gets an empty
    string), atomically.

    Args:
        pred: `image_id, x1, y1, x2, y2, score, label` (xyxy, original pixels; label 0-14).
    """
    from cxrdet.io import atomic_path

    groups = dict(tuple(pred.groupby("image_id", sort=False)))
    out = Path(path)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SUBMISSION_COLUMNS)
        for image_id in image_ids:
            rows = groups.get(image_id)
            writer.writerow([image_id, "" if rows is None else format_prediction_string(rows)])
    return out


def read_submission(path: str | Path, image_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Parse and validate a VinBigData submission.

    Args:
        path: The CSV (`image_id,PredictionString`).
        image_ids: The test image set (the sample submission's ids): every one must have exactly one row.

    Returns:
        One row per predicted box: `image_id, label, score, x1, y1, x2, y2` (xyxy, original pixels).

    Raises:
        TableError: Listing every problem by file line: missing columns, a token count that is not a multiple of 6,
            a class id outside 0-14, a confidence or coordinate that is not a finite number, a confidence outside
            [0, 1], an inverted box, a repeated, unknown or missing image id.
    """
    path = Path(path)
    df = read_str_csv(path)
    require_columns(path, df, SUBMISSION_COLUMNS)
    problems = field_problems(df, df["image_id"] == "", "image_id", "a non-empty image id")
    problems += duplicate_problems(df, ["image_id"], "image_id")
    records = []
    for line, image_id, text in zip(df.index + 2, df["image_id"], df["PredictionString"], strict=True):
        tokens = text.split()
        if len(tokens) % 6:
            problems.append(f"line {line}: PredictionString has {len(tokens)} tokens: expected groups of 6 "
                            "(class_id confidence x_min y_min x_max y_max)")
            continue
        for b in range(0, len(tokens), 6):
            group = tokens[b:b + 6]
            where = f"line {line}, box {b // 6 + 1}"
            if not re.fullmatch(r"\d+", group[0]) or int(group[0]) > NO_FINDING_ID:
                problems.append(f"{where}: class_id={group[0]!r}: expected an integer 0-{NO_FINDING_ID}")
                continue
            try:
                score, x1, y1, x2, y2 = (float(t) for t in group[1:])
            except ValueError:
                problems.append(f"{where}: {' '.join(group[1:])!r}: expected 5 numbers (confidence x_min y_min x_max "
                                "y_max)")
                continue
            if not all(math.isfinite(v) for v in (score, x1, y1, x2, y2)):
                problems.append(f"{where}: {' '.join(group[1:])!r}: expected finite numbers")
            elif not 0.0 <= score <= 1.0:
                problems.append(f"{where}: confidence={group[1]!r}: expected a number in [0, 1]")
            elif x2 < x1 or y2 < y1:
                problems.append(f"{where}: box {' '.join(group[2:])!r}: expected x_max >= x_min and y_max >= y_min")
            else:
                records.append((image_id, int(group[0]), score, x1, y1, x2, y2))
    if image_ids is not None:
        expected = pd.Index(image_ids)
        unknown = df.index[~df["image_id"].isin(expected) & (df["image_id"] != "")]
        problems += [f"line {i + 2}: image_id={df.at[i, 'image_id']!r}: not a test image (not in the sample "
                     "submission)" for i in unknown[:_MAX_LISTED]]
        missing = expected.difference(pd.Index(df["image_id"]))
        if len(missing):
            problems.append(f"{len(missing)} test image(s) have no row, e.g. {list(missing[:_MAX_LISTED])}: expected "
                            "one row per image of the sample submission")
    if problems:
        raise TableError(path, by_line(problems))
    return pd.DataFrame(records, columns=["image_id", "label", "score", "x1", "y1", "x2", "y2"])


# ---- the competition ----


def ground_truth(labels: Annotations, readers: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The metric's ground truth of a label table: the readers' boxes made one ground truth (`data.readers`, by
    default fused per class by WBF at IoU 0.4), plus the class-14 box `0 0 1 1` on every image left without a box.

    An image counts as "No finding" exactly when no fused finding box remains; the hidden test labels (one
    consensus per image) pass through fusion unchanged.
    """
    from cxrdet.data.readers import apply_readers

    fused = apply_readers(labels.boxes, readers)
    return metric_ground_truth(fused, labels.image_ids)


def score_submission(labels: Annotations, path: Path, image_ids: Sequence[str], allow_missing: bool = False,
                     metric: str | None = None) -> dict[str, Any]:
    """A submission file's VOC mAP at IoU > 0.4 against a label table (fused readers), per class too.

    Raises:
        ConfigError: Another metric asked for. TableError: A malformed submission, or ids outside the labels.
    """
    from cxrdet.metrics.voc import VocEvaluator

    if metric not in (None, "voc"):
        raise ConfigError(f"metric {metric!r}: vinbigdata is scored by its own metric only (voc: mAP at IoU > 0.4)")
    pred = read_submission(path, None if allow_missing else image_ids)
    ids = pd.Index(image_ids)
    unknown = pd.Index(pred["image_id"].unique()).difference(ids)
    if len(unknown):
        raise TableError(path, [f"{len(unknown)} image id(s) are not in the labels, e.g. "
                                f"{list(unknown[:_MAX_LISTED])}"])
    result = VocEvaluator(ground_truth(labels), ids, METRIC_CLASSES, IOU_THRESHOLD).score(pred)
    per_class = {row["class"]: (None if math.isnan(row["ap"]) else float(row["ap"]))
                 for row in result.per_class.to_dict("records")}
    return {"metric": "voc@0.4", "submission": str(path), "score": result.map, "n_images": len(ids),
            "per_class": per_class, "n_labelled_images": len(ids),
            "n_missing": len(ids.difference(pd.Index(pred["image_id"].unique()))), "n_boxes": len(pred)}


def complete(pred: pd.DataFrame, image_ids: Sequence[str], prob: np.ndarray | None = None,
             images: pd.DataFrame | None = None, post: Any = None) -> pd.DataFrame:
    """The finding boxes plus one no-finding box `14 conf 0 0 1 1` per image, unless `pred` already has class 14.

    The no-finding confidence is `w * (1 - p) + (1 - w) * (1 - top)`: `p` an image-level probability of "abnormal"
    (the 2-class filter: a classifier's output, aligned with `image_ids`), `top` the image's highest finding
    confidence (0 on an image without a finding box), `w` = `post.none_weight` (default 1 with a classifier, and 0
    without one). Only its rank among images matters to the metric (AP of class 14).

    Args:
        pred: `image_id, x1, y1, x2, y2, score, label` (labels 0-13; extra columns are dropped).
        image_ids: The image set (every image gets its box).
        prob: P(abnormal) per image of `image_ids`, or None.
        images: Unused (VinBigData has no studies).
        post: Anything with a `none_weight` attribute (`cxrdet.ensemble.postprocess.PostParams`), or None.
    """
    cols = ["image_id", "x1", "y1", "x2", "y2", "score", "label"]
    pred = pred[cols]
    if len(pred) and (pred["label"].to_numpy() == NO_FINDING_ID).any():
        return pred
    ids = pd.Index(image_ids)
    top = pred.groupby(pd.Index(np.asarray(pred["image_id"], dtype=object)), sort=False)["score"].max()
    normal = 1.0 - top.reindex(ids, fill_value=0.0).to_numpy(dtype=np.float64)
    if prob is not None:
        weight = getattr(post, "none_weight", None)
        weight = 1.0 if weight is None else float(weight)
        normal = weight * (1.0 - np.asarray(prob, dtype=np.float64)) + (1.0 - weight) * normal
    x1, y1, x2, y2 = NO_FINDING_BOX
    extra = pd.DataFrame({"image_id": ids.to_numpy(dtype=object), "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                          "score": np.clip(normal, 0.0, 1.0), "label": NO_FINDING_ID})
    plain = pred.assign(image_id=np.asarray(pred["image_id"], dtype=object))
    return pd.concat([plain, extra], ignore_index=True) if len(plain) else extra


@dataclass(frozen=True)
class VinBigDataResult:
    """The metric of one prediction set: `score` (mAP at IoU > 0.4; 0 when no class has ground truth) and the
    `per_class` table of `cxrdet.metrics.voc.VocResult`."""

    score: float
    per_class: pd.DataFrame


class VinBigDataEvaluator:
    """The competition metric on one image set (a `cxrdet.competitions.Evaluator`).

    Args:
        gt: The finding boxes (`ground_truth`'s table before the no-finding boxes: labels 0-13, readers fused).
        image_ids: The image set; an image without a finding box is a "No finding" image.
        images: Unused (per-image metadata plays no part in this metric).
    """

    def __init__(self, gt: pd.DataFrame, image_ids: Sequence[str], images: pd.DataFrame | None = None) -> None:
        from cxrdet.metrics.voc import VocEvaluator

        self.image_ids = pd.Index(image_ids)
        findings = gt[gt["label"] != NO_FINDING_ID]
        self._voc = VocEvaluator(metric_ground_truth(findings, self.image_ids), self.image_ids, METRIC_CLASSES,
                                 IOU_THRESHOLD)

    def score(self, pred: pd.DataFrame) -> VinBigDataResult:
        """The mAP of `pred`, completed by `complete` when it has no no-finding box."""
        result = self._voc.score(complete(pred, self.image_ids))
        return VinBigDataResult(0.0 if math.isnan(result.map) else float(result.map), result.per_class)

    def score_vs_threshold(self, pred: pd.DataFrame, thresholds: Sequence[float] | np.ndarray) -> pd.DataFrame:
        """The mAP of the finding boxes with score >= each cut (each completed by its own no-finding boxes), from one
        matching of the finding boxes (`cxrdet.metrics.voc.completed_ap_vs_threshold`).

        A lower cut never lowers a finding class's AP (a box ranked last only adds recall), so the curve rises to
        the lowest cut apart from the no-finding class, whose confidences come from the kept boxes.
        """
        from cxrdet.metrics.voc import completed_ap_vs_threshold

        cuts = np.asarray(thresholds, dtype=np.float64).ravel()
        pred = pred[["image_id", "x1", "y1", "x2", "y2", "score", "label"]]
        given = bool((pred["label"].to_numpy() == NO_FINDING_ID).any())
        findings = [c for c in range(len(METRIC_CLASSES)) if c != NO_FINDING_ID]
        ap = completed_ap_vs_threshold(self._voc, pred, cuts, findings, lambda p: complete(p, self.image_ids),
                                       varies=not given)
        return pd.DataFrame({"threshold": cuts, "score": [_mean_ap(row) for row in ap],
                             "n_images": len(self.image_ids)})


def _mean_ap(ap: np.ndarray) -> float:
    """The mAP of one row of per-class APs: the mean over the classes with ground truth (0 when none has any), as
    `VinBigDataEvaluator.score`."""
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


def _ground_truth(labels: Annotations, readers: Mapping[str, Any] | None) -> pd.DataFrame:
    """The finding boxes the metric compares with: the readers made one ground truth by `data.readers` (default:
    fused per class by WBF at IoU 0.4, as `ground_truth`), without the no-finding boxes (`VinBigDataEvaluator`
    adds them)."""
    from cxrdet.data.readers import apply_readers

    return apply_readers(labels.boxes, readers)[["image_id", "x1", "y1", "x2", "y2", "label"]]


def _write(path: Path, pred: pd.DataFrame, image_ids: Sequence[str], sizes: Mapping[str, tuple[int, int]]
           ) -> dict[str, int]:
    """Write and read back a submission; boxes are clipped to their image (`sizes`) and those left without width or
    height dropped."""
    pred = pred.copy()
    n_before = len(pred)
    if sizes:
        finding = pred["label"].to_numpy() != NO_FINDING_ID
        wh = np.array([sizes.get(i, (np.inf, np.inf)) for i in pred["image_id"]], dtype=np.float64).reshape(-1, 2)
        for col, limit in (("x1", wh[:, 0]), ("x2", wh[:, 0]), ("y1", wh[:, 1]), ("y2", wh[:, 1])):
            values = pred[col].to_numpy(dtype=np.float64)
            pred[col] = np.where(finding, np.clip(values, 0.0, limit), values)
    pred["score"] = pred["score"].clip(0.0, 1.0)
    pred = pred[(pred["x2"] > pred["x1"]) & (pred["y2"] > pred["y1"])]
    write_submission(path, pred, image_ids)
    boxes = read_submission(path, image_ids)
    n_empty = len(image_ids) - boxes["image_id"].nunique()
    return {"n_rows": len(image_ids), "n_boxes": len(boxes), "n_empty": int(n_empty), "n_dropped": n_before - len(pred)}


def _validate(path: Path, image_ids: Sequence[str] | None, image_size: int | None) -> str:
    if image_size is not None:
        raise ConfigError(f"image size {image_size}: VinBigData images vary in size; a submission is checked without "
                          "one")
    boxes = read_submission(path, image_ids)
    return f"{boxes['image_id'].nunique()} images with boxes, {len(boxes)} boxes"


def sample_image_ids(path: Path) -> list[str]:
    """The test image ids of a sample submission (its `image_id` column, in file order)."""
    df = read_str_csv(Path(path))
    require_columns(Path(path), df, SUBMISSION_COLUMNS)
    return df["image_id"].tolist()


VINBIGDATA = COMPETITIONS.register(Competition(
    name="vinbigdata", title="VinBigData Chest X-ray Abnormalities Detection (2020-21)", classes=CLASSES,
    label_format="vinbigdata", layout=VinBigDataLayout, image_size=None, metric="voc@0.4", score=score_submission,
    validate=_validate, sample_ids=sample_image_ids, submission_columns=SUBMISSION_COLUMNS, fold_columns=CLASSES,
    evaluator=VinBigDataEvaluator, ground_truth=_ground_truth, complete=complete, write_submission=_write,
    monitor=MONITOR, image_suffix=".dicom",
), name="vinbigdata")  # fmt: skip
