"""SIIM-FISABIO-RSNA COVID-19 Detection (Kaggle, 2021, a code competition): its layout, two label tables, classes,
metric and submission format.

Facts, from the competition's overview, evaluation and data pages (copied in github.com/openai/mle-bench
`mlebench/competitions/siim-covid19-detection/description.md`, whose `prepare.py` shows real rows of each table) and
the dataset paper (Lakhani et al., "The 2021 SIIM-FISABIO-RSNA Machine Learning COVID-19 Challenge: Annotation and
Standard Exam Classification of COVID-19 Chest Radiographs", J Digit Imaging 2023, doi 10.1007/s10278-022-00706-8):

- `train_image_level.csv`: `id,boxes,label,StudyInstanceUID`, one row per image; `id` is `<image>_image`;
  `boxes` a Python-literal list of `{'x': ..., 'y': ..., 'width': ..., 'height': ...}` (empty for an image without
  opacity); `label` the same boxes as `opacity 1 x_min y_min x_max y_max ...`, or `none 1 0 0 1 1`.
- `train_study_level.csv`: `id,Negative for Pneumonia,Typical Appearance,Indeterminate Appearance,Atypical Appearance`,
  `id` is `<study>_study`, the four categories one-hot ("four mutually exclusive categories", the paper).
- DICOMs under `train/<study>/<series>/<image>.dcm` and `test/<study>/<series>/<image>.dcm`; a study can hold
  several images; sizes, bit depths and photometric interpretations (MONOCHROME1/2) vary.
- Submission `id,PredictionString`: one row per test study, `<study>_study` with
  `negative|typical|indeterminate|atypical conf 0 0 1 1 ...`, and one per test image, `<image>_image` with
  `opacity conf x_min y_min x_max y_max ...` and/or `none conf 0 0 1 1` (the sample submission: `negative 1 0 0 1 1`
  and `none 1 0 0 1 1`).
- Metric: "the standard PASCAL VOC 2010 mean Average Precision (mAP) at IoU > 0.5", over both levels. How the levels
  are weighted is not stated; the reading the competitors settled on (3rd place, kaggle.com/competitions/
  siim-covid19-detection/discussion/240363: "it probably treats the six classes equally") is the mean AP over the six
  classes `negative, typical, indeterminate, atypical` (studies, each with its class as one `0 0 1 1` box) and
  `opacity, none` (images, `none 0 0 1 1` on an image without opacity): the study level weighs 4/6, the image level
  2/6. `cxrdet.metrics.voc` computes each AP; a `0 0 1 1` prediction matches its `0 0 1 1` truth (IoU 1).
- Code competition: a notebook with internet off, at most 9 hours on CPU or GPU, writing `submission.csv`.
"""

from __future__ import annotations

import ast
import csv
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrdet.competitions.base import COMPETITIONS, Competition, studies_of
from cxrdet.data.labels import (
    Annotations,
    by_line,
    duplicate_problems,
    field_problems,
    read_str_csv,
    register_format,
    require_columns,
)
from cxrdet.errors import ConfigError, TableError

CLASSES: tuple[str, ...] = ("opacity",)  # the detector's classes (box label 0)
OPACITY_ID = 0
NONE_ID = 1
STUDY_CLASSES: tuple[str, ...] = ("negative", "typical", "indeterminate", "atypical")
STUDY_COLUMNS: tuple[str, ...] = ("Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance",
                                  "Atypical Appearance")
STUDY_OFFSET = 2  # a study class's label in the metric's table: 2 + its index in STUDY_CLASSES
# The metric's classes, by label: the image level, then the study level.
METRIC_CLASSES: tuple[str, ...] = ("opacity", "none", *STUDY_CLASSES)
ALL_BOX: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
IOU_THRESHOLD = 0.5
IMAGE_TABLE_COLUMNS: tuple[str, ...] = ("id", "boxes", "label", "StudyInstanceUID")
STUDY_TABLE_COLUMNS: tuple[str, ...] = ("id", *STUDY_COLUMNS)
SUBMISSION_COLUMNS: tuple[str, ...] = ("id", "PredictionString")
IMAGE_SUFFIX, STUDY_SUFFIX = "_image", "_study"
MONITOR = "val/siim_image"
KAGGLE_MINUTES = 9 * 60  # the notebook's run-time limit
STUDY_POOLS: tuple[str, ...] = ("mean", "max")
_MAX_LISTED = 10
_BOX_TOLERANCE = 1e-2  # pixels: `boxes` and `label` print the same box to 5 decimals


@dataclass(frozen=True)
class SiimLayout:
    """The folder layout of the SIIM-COVID download (and of `cxrdet synth --competition siim`).

    Attributes:
        root: The folder holding the two label tables and the image folders.
    """

    root: Path

    @property
    def labels_csv(self) -> Path:
        """The image-level table; its study-level table lies beside it (`study_table`)."""
        return self.root / "train_image_level.csv"

    @property
    def study_csv(self) -> Path:
        return self.root / "train_study_level.csv"

    @property
    def sample_submission(self) -> Path:
        return self.root / "sample_submission.csv"

    @property
    def synth_test_labels(self) -> Path:
        """Test labels of a synthetic data set (the competition hides them), in the image table's format; the study
        table is `synth_test_study_level.csv` beside it."""
        return self.root / "synth_test_image_level.csv"

    def images_dir(self, split: str) -> Path:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self.root / split

    def dicom_path(self, split: str, image_id: str, study_id: str, series_id: str) -> Path:
        return self.images_dir(split) / study_id / series_id / f"{image_id}.dcm"


def study_table(image_table: str | Path) -> Path:
    """The study-level table beside an image-level one: `X_image_level.csv` -> `X_study_level.csv`."""
    path = Path(image_table)
    if "image_level" not in path.name:
        raise ConfigError(f"{path}: expected an image-level table named *image_level*.csv (its study table is named "
                          "alike with study_level)")
    return path.with_name(path.name.replace("image_level", "study_level"))


def image_files(folder: str | Path) -> list[Path]:
    """Every `<study>/<series>/<image>.dcm` under a split folder, sorted by path."""
    return sorted(p for p in Path(folder).glob("*/*/*") if p.suffix.lower() == ".dcm" and p.is_file())


def split_studies(root: str | Path, split: str) -> pd.DataFrame:
    """`image_id, study_id` of every image file of a split folder (the study is the file's grandparent folder)."""
    files = image_files(SiimLayout(Path(root)).images_dir(split))
    return pd.DataFrame({"image_id": [p.stem for p in files], "study_id": [p.parent.parent.name for p in files]},
                        dtype=str)


# ---- the label tables ----


def parse_label_string(text: str) -> tuple[list[tuple[str, float, float, float, float, float]], str | None]:
    """`class conf x1 y1 x2 y2 ...` groups, or a problem (a token count not a multiple of 6, a non-number)."""
    tokens = text.split()
    if len(tokens) % 6:
        return [], f"{len(tokens)} tokens: expected groups of 6 (class confidence x_min y_min x_max y_max)"
    groups = []
    for b in range(0, len(tokens), 6):
        try:
            values = tuple(float(t) for t in tokens[b + 1:b + 6])
        except ValueError:
            return [], f"box {b // 6 + 1}: {' '.join(tokens[b + 1:b + 6])!r}: expected 5 numbers"
        if not all(math.isfinite(v) for v in values):
            return [], f"box {b // 6 + 1}: {' '.join(tokens[b + 1:b + 6])!r}: expected finite numbers"
        groups.append((tokens[b], *values))
    return groups, None


def _parse_boxes(text: str) -> tuple[list[tuple[float, float, float, float]], str | None]:
    """The `boxes` field as xyxy tuples, or a problem."""
    if text == "":
        return [], None
    try:
        value = ast.literal_eval(text)  # a Python literal, as pandas wrote it: single quotes
    except (ValueError, SyntaxError):
        return [], f"boxes={text[:60]!r}: expected a list of {{'x', 'y', 'width', 'height'}} dicts"
    if not isinstance(value, list):
        return [], f"boxes={text[:60]!r}: expected a list of {{'x', 'y', 'width', 'height'}} dicts"
    out = []
    for k, box in enumerate(value):
        if not isinstance(box, dict) or set(box) != {"x", "y", "width", "height"}:
            return [], f"boxes, box {k + 1}: {box!r}: expected a dict with keys x, y, width, height"
        try:
            x, y, w, h = (float(box[c]) for c in ("x", "y", "width", "height"))
        except (TypeError, ValueError):
            return [], f"boxes, box {k + 1}: {box!r}: expected numbers"
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0 or x < 0 or y < 0:
            return [], f"boxes, box {k + 1}: {box!r}: expected finite x, y >= 0 and width, height > 0"
        out.append((x, y, x + w, y + h))
    return out, None


def read_siim_labels(path: str | Path, study_path: str | Path | None = None,
                     sizes: Mapping[str, tuple[int, int]] | None = None) -> Annotations:
    """Parse a SIIM-COVID image-level table and its study-level table.

    Args:
        path: `train_image_level.csv` (or a table of the same format).
        study_path: The study table; default `study_table(path)` (`train_study_level.csv` beside it).
        sizes: `(width, height)` of each image id (from the DICOM headers), to check that boxes lie inside; None
            skips that check.

    Returns:
        Annotations whose `boxes` are the opacity boxes (label 0, xyxy pixels of the original image; `patient_id` is
        the study) and whose `images` have, per image: `image_id` (the id without `_image`), `patient_id` and
        `study_id` (the study: the table has no patient id, so the study is the group folds keep together),
        `n_boxes`, `positive`, `study_label` (the study's class name), `study_class` (its index in
        `STUDY_CLASSES`) and one 0/1 column per study class (the image's study's category).

    Raises:
        TableError: Listing every problem of each table by file line: missing columns, an id without its suffix,
            a repeated id, an empty StudyInstanceUID, a label string that is not `opacity` groups or one
            `none 1 0 0 1 1`, `boxes` that disagree with the label, a box outside its image, a study row that is not
            one-hot, an image whose study has no row, a study without images.
    """
    path = Path(path)
    study_path = Path(study_path) if study_path is not None else study_table(path)
    df = read_str_csv(path)
    require_columns(path, df, IMAGE_TABLE_COLUMNS)
    problems = _id_problems(df, IMAGE_SUFFIX)
    problems += field_problems(df, df["StudyInstanceUID"] == "", "StudyInstanceUID", "a non-empty study id")
    records = []
    for i, line in zip(df.index, df.index + 2, strict=True):
        image_id = df.at[i, "id"].removesuffix(IMAGE_SUFFIX)
        found, problem = _label_boxes(df.at[i, "label"], df.at[i, "boxes"])
        if problem:
            problems.append(f"line {line}: {problem}")
            continue
        for x1, y1, x2, y2 in found:
            if sizes is not None and image_id in sizes and (x2 > sizes[image_id][0] + _BOX_TOLERANCE
                                                            or y2 > sizes[image_id][1] + _BOX_TOLERANCE):
                problems.append(f"line {line}: box {x1:g} {y1:g} {x2:g} {y2:g}: expected inside the image "
                                f"({sizes[image_id][0]} x {sizes[image_id][1]} pixels)")
            records.append((image_id, df.at[i, "StudyInstanceUID"], x1, y1, x2, y2))
    studies, study_problems = _read_study_table(study_path)
    if problems:
        raise TableError(path, by_line(problems))
    if study_problems:
        raise TableError(study_path, by_line(study_problems))
    ids = df["id"].str.removesuffix(IMAGE_SUFFIX)
    study_of = df["StudyInstanceUID"]
    unknown = ~study_of.isin(studies.index)
    if unknown.any():
        lines = [f"line {i + 2}: StudyInstanceUID={study_of[i]!r}: no row {study_of[i] + STUDY_SUFFIX!r} in "
                 f"{study_path}" for i in df.index[unknown][:_MAX_LISTED]]
        raise TableError(path, lines + ([f"... {int(unknown.sum())} image(s) in all"] if unknown.sum() > _MAX_LISTED
                                        else []))
    empty = studies.index.difference(pd.Index(study_of.unique()))
    if len(empty):
        raise TableError(study_path, [f"{len(empty)} study row(s) without any image in {path}, e.g. "
                                      f"{[s + STUDY_SUFFIX for s in empty[:_MAX_LISTED]]}: expected every study "
                                      "to hold an image"])
    boxes = pd.DataFrame(records, columns=["image_id", "patient_id", "x1", "y1", "x2", "y2"])
    boxes["label"] = np.int64(OPACITY_ID)
    boxes = boxes.astype({"x1": np.float64, "y1": np.float64, "x2": np.float64, "y2": np.float64})
    n_boxes = boxes["image_id"].value_counts().reindex(ids, fill_value=0).to_numpy(dtype=np.int64)
    study_class = studies.loc[study_of, "study_class"].to_numpy(dtype=np.int64)
    images = pd.DataFrame({"image_id": ids.to_numpy(), "patient_id": study_of.to_numpy(),
                           "study_id": study_of.to_numpy(), "n_boxes": n_boxes, "positive": n_boxes > 0,
                           "study_label": np.asarray(STUDY_CLASSES, dtype=object)[study_class],
                           "study_class": study_class})
    for k, name in enumerate(STUDY_CLASSES):
        images[name] = (study_class == k).astype(np.int64)
    return Annotations(boxes=boxes, images=images, classes=CLASSES)


def _id_problems(df: pd.DataFrame, suffix: str) -> list[str]:
    bad = ~df["id"].str.fullmatch(r".+" + re.escape(suffix))
    problems = field_problems(df, bad, "id", f"an id ending in {suffix!r}")
    return problems + duplicate_problems(df, ["id"], "id")


def _label_boxes(label: str, boxes: str) -> tuple[list[tuple[float, float, float, float]], str | None]:
    """The opacity boxes of one image row, or its problem."""
    groups, problem = parse_label_string(label)
    if problem:
        return [], f"label: {problem}"
    names = [g[0] for g in groups]
    if not groups:
        return [], "label is empty: expected 'opacity 1 x_min y_min x_max y_max ...' or 'none 1 0 0 1 1'"
    if "none" in names:
        if len(groups) != 1 or tuple(groups[0][2:]) != ALL_BOX:
            return [], f"label={label!r}: expected 'none 1 0 0 1 1' alone for an image without opacity"
        if boxes != "":
            return [], f"boxes={boxes[:60]!r}: expected empty for a 'none' image"
        return [], None
    wrong = sorted(set(names) - {"opacity"})
    if wrong:
        return [], f"label class(es) {wrong}: expected 'opacity' or 'none'"
    found = [g[2:] for g in groups]
    if any(x2 <= x1 or y2 <= y1 or x1 < 0 or y1 < 0 for x1, y1, x2, y2 in found):
        return [], f"label={label[:80]!r}: expected boxes with x_max > x_min >= 0 and y_max > y_min >= 0"
    parsed, problem = _parse_boxes(boxes)
    if problem:
        return [], problem
    if len(parsed) != len(found) or not np.allclose(np.asarray(parsed).reshape(-1, 4), np.asarray(found),
                                                    atol=_BOX_TOLERANCE, rtol=0.0):
        return [], (f"boxes and label disagree ({len(parsed)} and {len(found)} box(es)): expected the label to hold "
                    "each box of `boxes` as x, y, x + width, y + height")
    return found, None


def _read_study_table(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The study table as `study_class` per study id (without `_study`), and its problems."""
    if not path.is_file():
        return pd.DataFrame(), [f"file not found: expected the study-level table ({', '.join(STUDY_TABLE_COLUMNS)})"]
    df = read_str_csv(path)
    require_columns(path, df, STUDY_TABLE_COLUMNS)
    problems = _id_problems(df, STUDY_SUFFIX)
    values = df[list(STUDY_COLUMNS)]
    binary = values.isin(["0", "1"]).all(axis=1)
    one_hot = binary & (values == "1").sum(axis=1).eq(1)
    problems += [f"line {i + 2}: {', '.join(f'{c}={values.at[i, c]!r}' for c in STUDY_COLUMNS)}: expected 0/1 "
                 "values with exactly one 1 (the four categories exclude each other)"
                 for i in df.index[~one_hot]]
    klass = np.argmax((values == "1").to_numpy(), axis=1)
    table = pd.DataFrame({"study_class": klass}, index=df["id"].str.removesuffix(STUDY_SUFFIX).to_numpy())
    return table[one_hot.to_numpy()], problems


@register_format("siim", IMAGE_TABLE_COLUMNS)
def _read(path: Path) -> Annotations:
    return read_siim_labels(path)


# ---- the metric ----


def study_key(study_id: str) -> str:
    """The row id of a study in the metric's and the submission's tables."""
    return f"{study_id}{STUDY_SUFFIX}"


def metric_ground_truth(boxes: pd.DataFrame, image_ids: Sequence[str], studies: pd.DataFrame | None
                        ) -> tuple[pd.DataFrame, pd.Index]:
    """The metric's ground truth and its row ids: the opacity boxes, `none 0 0 1 1` on each image of `image_ids`
    without one, and (with `studies`: `image_id, study_id, study_class`) one `0 0 1 1` box of its class per study,
    keyed `<study>_study`."""
    gt = boxes.loc[boxes["label"] == OPACITY_ID, ["image_id", "x1", "y1", "x2", "y2", "label"]]
    ids = pd.Index(image_ids)
    negative = ids.difference(pd.Index(gt["image_id"].unique()), sort=False)
    x1, y1, x2, y2 = ALL_BOX
    parts = [gt, pd.DataFrame({"image_id": negative, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "label": NONE_ID})]
    keys = ids
    if studies is not None:
        per_study = studies_of(studies, ids).drop_duplicates("study_id")
        study_ids = per_study["study_id"].map(study_key)
        parts.append(pd.DataFrame({"image_id": study_ids.to_numpy(), "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                                   "label": STUDY_OFFSET + per_study["study_class"].to_numpy(dtype=np.int64)}))
        keys = ids.append(pd.Index(study_ids.to_numpy()))
    return pd.concat(parts, ignore_index=True), keys


@dataclass(frozen=True)
class SiimResult:
    """The metric of one prediction set.

    Attributes:
        score: The mean AP over the six classes (over `opacity` and `none` alone when scored without studies).
        image_map: Mean AP of `opacity` and `none`.
        study_map: Mean AP of the four study classes (NaN without studies).
        per_class: `cxrdet.metrics.voc.VocResult.per_class`.
    """

    score: float
    image_map: float
    study_map: float
    per_class: pd.DataFrame


class SiimEvaluator:
    """The competition metric on one image set (a `cxrdet.competitions.Evaluator`).

    Args:
        gt: The opacity boxes (`image_id, x1, y1, x2, y2, label`; label 0).
        image_ids: The image set; an image without a box is a `none` image.
        images: `image_id, study_id, study_class` of the images, or None: then only the image level is scored (a
            detector's validation: the study classes need a study classifier).
    """

    def __init__(self, gt: pd.DataFrame, image_ids: Sequence[str], images: pd.DataFrame | None = None) -> None:
        from cxrdet.metrics.voc import VocEvaluator

        self.image_ids = pd.Index(image_ids)
        self.studies = None if images is None else studies_of(images, self.image_ids)
        truth, self.keys = metric_ground_truth(gt, self.image_ids, self.studies)
        self._voc = VocEvaluator(truth, self.keys, METRIC_CLASSES, IOU_THRESHOLD)

    def score(self, pred: pd.DataFrame) -> SiimResult:
        """The metric of `pred` (`image_id, x1, y1, x2, y2, score, label`: image rows labelled 0 (opacity) or 1
        (none), study rows keyed `<study>_study` labelled 2 + class). What it lacks, `complete` adds from the boxes
        alone, as a detector's submission would hold them: without `none` rows each image's `none` is 1 - its top
        opacity score; without study rows (scored with studies) each study's `negative` is its images' mean none
        confidence and the three other classes its complement."""
        result = self._voc.score(self._completed(pred))
        return self._result(result.per_class["ap"].to_numpy(dtype=np.float64), result.per_class)

    def _completed(self, pred: pd.DataFrame) -> pd.DataFrame:
        """`pred` with what it lacks (none rows, study rows) added by `complete` from its opacity boxes."""
        labels = pred["label"].to_numpy()
        no_study = self.studies is not None and not (labels >= STUDY_OFFSET).any()
        if no_study or not (labels == NONE_ID).any():
            pred = complete(pred, self.image_ids, None, self.studies[["image_id", "study_id"]] if no_study else None)
        return pred[["image_id", "x1", "y1", "x2", "y2", "score", "label"]]

    def _result(self, ap: np.ndarray, per_class: pd.DataFrame | None) -> SiimResult:
        """The metric from the six classes' APs (the study classes ignored when scored without studies)."""
        if self.studies is None:
            ap = ap[:STUDY_OFFSET]
        image = float(np.nanmean(ap[:STUDY_OFFSET])) if np.isfinite(ap[:STUDY_OFFSET]).any() else 0.0
        study = float(np.nanmean(ap[STUDY_OFFSET:])) if np.isfinite(ap[STUDY_OFFSET:]).any() else float("nan")
        total = float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0
        return SiimResult(total, image, study, per_class)

    def score_vs_threshold(self, pred: pd.DataFrame, thresholds: Sequence[float] | np.ndarray) -> pd.DataFrame:
        """The metric of the opacity boxes with score >= each cut (the none and study rows kept as they are; what
        is missing completed per cut from the kept boxes), from one matching of the opacity boxes
        (`cxrdet.metrics.voc.completed_ap_vs_threshold`)."""
        from cxrdet.metrics.voc import completed_ap_vs_threshold

        cuts = np.asarray(thresholds, dtype=np.float64).ravel()
        pred = pred[["image_id", "x1", "y1", "x2", "y2", "score", "label"]]
        labels = pred["label"].to_numpy()
        varies = (self.studies is not None and not (labels >= STUDY_OFFSET).any()) or not (labels == NONE_ID).any()
        ap = completed_ap_vs_threshold(self._voc, pred, cuts, [OPACITY_ID], self._completed, varies)
        return pd.DataFrame({"threshold": cuts, "score": [self._result(row, None).score for row in ap],
                             "n_images": len(self.image_ids)})


# ---- what a submission needs besides the detector's boxes ----


def complete(pred: pd.DataFrame, image_ids: Sequence[str], prob: np.ndarray | None = None,
             images: pd.DataFrame | None = None, post: Any = None) -> pd.DataFrame:
    """The opacity boxes plus each image's `none 0 0 1 1` box and (with `images`) each study's four class boxes.

    - `none`: `w * (1 - p) + (1 - w) * (1 - top opacity score)`, `p` the classifier's P(opacity) of the image
      (`prob`, aligned with `image_ids`), `w` = `post.none_weight` (default 1 with a classifier, else 0). Kept as
      given when `pred` already has `none` rows.
    - studies (`images`: `image_id, study_id` and optional `prob_<class>` columns, a study classifier's
      probabilities): each column is pooled over the study's images by `post.study_pool` (`mean`, default, or `max`),
      and so is the detector's none confidence of each image (1 - top opacity score). The study's `negative` is
      `w * P(negative) + (1 - w) * pooled detector none` with `w` = `post.study_weight` (default 1 with classifier
      probabilities, else 0); each positive category's is `(1 - negative) * q ** s / sum(q ** s)` over the three,
      `q` their pooled probabilities and `s` = `post.study_power` (default 1: with `w = 1` these are the classifier's
      own probabilities; `s = 0`, or no classifier: a third of 1 - negative each). Kept as given when `pred` already
      has study rows.

    Args:
        pred: `image_id, x1, y1, x2, y2, score, label` (extra columns dropped).
        image_ids: The image set.
        prob: P(opacity) per image, or None.
        images: Per image of `image_ids`: `study_id` and optional `prob_<class>` columns; None: no study rows.
        post: Anything with `none_weight` (None or a number in [0, 1]) and `study_pool` attributes
            (`cxrdet.ensemble.postprocess.PostParams`), or None for the defaults.
    """
    cols = ["image_id", "x1", "y1", "x2", "y2", "score", "label"]
    pred = pred[cols].assign(image_id=np.asarray(pred["image_id"], dtype=object))
    ids = pd.Index(image_ids)
    labels = pred["label"].to_numpy()
    parts = [pred]
    x1, y1, x2, y2 = ALL_BOX
    opacity = pred[labels == OPACITY_ID]
    top = opacity.groupby("image_id", sort=False)["score"].max().reindex(ids, fill_value=0.0)
    detector = 1.0 - top.to_numpy(dtype=np.float64)
    weight = getattr(post, "none_weight", None)
    weight = (1.0 if prob is not None else 0.0) if weight is None else float(weight)
    none = detector if prob is None else weight * (1.0 - np.asarray(prob, dtype=np.float64)) + (1 - weight) * detector
    none = np.clip(none, 0.0, 1.0)
    if not (labels == NONE_ID).any():
        parts.append(pd.DataFrame({"image_id": ids.to_numpy(dtype=object), "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                                   "score": none, "label": NONE_ID}))
    if images is not None and not (labels >= STUDY_OFFSET).any():
        pool = getattr(post, "study_pool", None) or "mean"
        if pool not in STUDY_POOLS:
            raise ConfigError(f"postprocess.study_pool={pool!r}: expected one of {list(STUDY_POOLS)}")
        table = studies_of(images, ids, columns=[c for c in images.columns if c != "image_id"])
        columns = [f"prob_{c}" for c in STUDY_CLASSES]
        has_probs = set(columns) <= set(table.columns)
        per_image = pd.DataFrame({"detector": np.clip(detector, 0.0, 1.0)})
        if has_probs:
            per_image[list(STUDY_CLASSES)] = table[columns].to_numpy(dtype=np.float64)
        pooled = per_image.groupby(table["study_id"].to_numpy(), sort=False).agg(pool)
        w = getattr(post, "study_weight", None)
        w = (1.0 if has_probs else 0.0) if w is None else float(w)
        negative = pooled["detector"].to_numpy()
        if has_probs:
            negative = w * pooled[STUDY_CLASSES[0]].to_numpy() + (1.0 - w) * negative
            power = float(getattr(post, "study_power", 1.0))
            q = np.clip(pooled[list(STUDY_CLASSES[1:])].to_numpy(), 1e-12, None) ** power
            share = q / q.sum(axis=1, keepdims=True)
        else:
            share = np.full((len(pooled), len(STUDY_CLASSES) - 1), 1.0 / (len(STUDY_CLASSES) - 1))
        scores = np.column_stack([negative, (1.0 - negative)[:, None] * share])
        keys = np.asarray([study_key(s) for s in pooled.index], dtype=object)
        for k in range(len(STUDY_CLASSES)):
            parts.append(pd.DataFrame({"image_id": keys, "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                                       "score": np.clip(scores[:, k], 0.0, 1.0), "label": STUDY_OFFSET + k}))
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pred


# ---- submissions ----


def format_prediction_string(rows: pd.DataFrame) -> str:
    """One row's boxes as `class confidence x_min y_min x_max y_max ...` (descending confidence; confidence to 6
    decimals, coordinates to 1 decimal pixel; `label` indexes `METRIC_CLASSES`)."""
    rows = rows.sort_values("score", ascending=False, kind="stable")
    return " ".join(f"{METRIC_CLASSES[int(r.label)]} {r.score:.6f} {r.x1:.1f} {r.y1:.1f} {r.x2:.1f} {r.y2:.1f}"
                    for r in rows.itertuples(index=False))


def write_submission(path: str | Path, pred: pd.DataFrame, image_ids: Sequence[str]) -> Path:
    """Write `id,PredictionString`: the study rows of `pred` (keyed `<study>_study`, in order of appearance), then
    one `<image>_image` row per image of `image_ids` (empty when it has no box), atomically."""
    from cxrdet.io import atomic_path

    keys = np.asarray(pred["image_id"], dtype=object)
    is_study = pred["label"].to_numpy() >= STUDY_OFFSET
    groups = dict(tuple(pred.assign(image_id=keys).groupby("image_id", sort=False)))
    studies = list(dict.fromkeys(keys[is_study]))
    out = Path(path)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SUBMISSION_COLUMNS)
        for key in studies:
            writer.writerow([key, format_prediction_string(groups[key])])
        for image_id in image_ids:
            rows = groups.get(image_id)
            writer.writerow([f"{image_id}{IMAGE_SUFFIX}", "" if rows is None else format_prediction_string(rows)])
    return out


def read_submission(path: str | Path, row_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Parse and validate a SIIM-COVID submission.

    Args:
        path: The CSV (`id,PredictionString`).
        row_ids: The expected row ids (`<study>_study` and `<image>_image`, the sample submission's): every one must
            have exactly one row; None checks the rows alone.

    Returns:
        One row per predicted box: `image_id` (an image row's image id, a study row's `<study>_study`), `label`
        (index into `METRIC_CLASSES`), `score, x1, y1, x2, y2`.

    Raises:
        TableError: Listing every problem by file line: missing columns, an id without `_study`/`_image`, a repeated,
            unknown or missing id, a token count not a multiple of 6, a class outside the six, a study class on an
            image row or an image class on a study row, a study row whose box is not `0 0 1 1`, a `none` box that is
            not `0 0 1 1`, a confidence outside [0, 1], a non-finite number or an inverted box.
    """
    path = Path(path)
    df = read_str_csv(path)
    require_columns(path, df, SUBMISSION_COLUMNS)
    kind = np.where(df["id"].str.endswith(STUDY_SUFFIX), "study", np.where(df["id"].str.endswith(IMAGE_SUFFIX),
                                                                           "image", ""))
    problems = field_problems(df, pd.Series(kind == "", index=df.index), "id",
                              f"an id ending in {STUDY_SUFFIX!r} or {IMAGE_SUFFIX!r}")
    problems += duplicate_problems(df, ["id"], "id")
    records = []
    for i, line in zip(df.index, df.index + 2, strict=True):
        groups, problem = parse_label_string(df.at[i, "PredictionString"])
        if problem:
            problems.append(f"line {line}: PredictionString has {problem}")
            continue
        row_id, row_kind = df.at[i, "id"], kind[i]
        allowed = STUDY_CLASSES if row_kind == "study" else ("opacity", "none")
        for b, (name, score, x1, y1, x2, y2) in enumerate(groups):
            where = f"line {line}, box {b + 1}"
            if name not in METRIC_CLASSES:
                problems.append(f"{where}: class {name!r}: expected one of {', '.join(METRIC_CLASSES)}")
            elif row_kind and name not in allowed:
                problems.append(f"{where}: class {name!r} on a{'' if row_kind == 'image' else ''} {row_kind} row "
                                f"({row_id}): expected one of {', '.join(allowed)}")
            elif not 0.0 <= score <= 1.0:
                problems.append(f"{where}: confidence={score!r}: expected a number in [0, 1]")
            elif (row_kind == "study" or name == "none") and (x1, y1, x2, y2) != ALL_BOX:
                problems.append(f"{where}: {name} box {x1:g} {y1:g} {x2:g} {y2:g}: expected 0 0 1 1 (a "
                                f"{'study' if row_kind == 'study' else 'none'} prediction has no box)")
            elif x2 < x1 or y2 < y1:
                problems.append(f"{where}: box {x1:g} {y1:g} {x2:g} {y2:g}: expected x_max >= x_min and y_max >= "
                                "y_min")
            elif row_kind:
                key = row_id if row_kind == "study" else row_id.removesuffix(IMAGE_SUFFIX)
                records.append((key, METRIC_CLASSES.index(name), score, x1, y1, x2, y2))
    if row_ids is not None:
        expected = pd.Index(row_ids)
        unknown = df.index[~df["id"].isin(expected) & (kind != "")]
        problems += [f"line {i + 2}: id={df.at[i, 'id']!r}: not a test study or image (not in the sample "
                     "submission)" for i in unknown[:_MAX_LISTED]]
        missing = expected.difference(pd.Index(df["id"]))
        for what in ("study", "image"):
            gone = [m for m in missing if m.endswith(f"_{what}")]
            if gone:
                problems.append(f"{len(gone)} test {what}(s) have no row, e.g. {gone[:_MAX_LISTED]}: expected one "
                                "row per id of the sample submission")
    if problems:
        raise TableError(path, by_line(problems))
    return pd.DataFrame(records, columns=["image_id", "label", "score", "x1", "y1", "x2", "y2"])


def sample_row_ids(path: Path) -> list[str]:
    """Every row id of a sample submission (`<study>_study` and `<image>_image`), in file order."""
    df = read_str_csv(Path(path))
    require_columns(Path(path), df, SUBMISSION_COLUMNS)
    return df["id"].tolist()


def sample_image_ids(path: Path) -> list[str]:
    """The test image ids of a sample submission: its `_image` rows, without the suffix."""
    return [i.removesuffix(IMAGE_SUFFIX) for i in sample_row_ids(path) if i.endswith(IMAGE_SUFFIX)]


def score_submission(labels: Annotations, path: Path, image_ids: Sequence[str], allow_missing: bool = False,
                     metric: str | None = None) -> dict[str, Any]:
    """A submission file's SIIM metric against the label tables (both levels), with each class's AP.

    Raises:
        ConfigError: Another metric asked for. TableError: A malformed submission, or ids outside the labels.
    """
    if metric not in (None, "voc"):
        raise ConfigError(f"metric {metric!r}: siim is scored by its own metric only (voc: mAP at IoU > 0.5 over the "
                          "study and image classes)")
    ids = pd.Index(image_ids)
    studies = labels.images[labels.images["image_id"].isin(ids)]
    expected = [study_key(s) for s in dict.fromkeys(studies["study_id"])] + [f"{i}{IMAGE_SUFFIX}" for i in ids]
    pred = read_submission(path, None if allow_missing else expected)
    unknown = pd.Index(pred["image_id"].unique()).difference(ids.append(pd.Index([study_key(s) for s in
                                                                                   studies["study_id"]])))
    if len(unknown):
        raise TableError(path, [f"{len(unknown)} id(s) are not in the labels, e.g. {list(unknown[:_MAX_LISTED])}"])
    result = SiimEvaluator(labels.boxes, ids, studies).score(pred)
    per_class = {row["class"]: (None if math.isnan(row["ap"]) else float(row["ap"]))
                 for row in result.per_class.to_dict("records")}
    return {"metric": "siim", "submission": str(path), "score": result.score, "image_map": result.image_map,
            "study_map": result.study_map, "per_class": per_class, "n_images": len(ids),
            "n_studies": int(studies["study_id"].nunique()), "n_labelled_images": len(ids), "n_boxes": len(pred),
            "n_missing": len(ids.difference(pd.Index(pred["image_id"].unique())))}


def _ground_truth(labels: Annotations, readers: Mapping[str, Any] | None) -> pd.DataFrame:
    """The opacity boxes as they are (one reader per image in the released tables)."""
    if readers:
        raise ConfigError(f"data.readers={dict(readers)!r}: SIIM-COVID labels have one reader per image; leave it "
                          "unset")
    return labels.boxes[["image_id", "x1", "y1", "x2", "y2", "label"]].reset_index(drop=True)


def _write(path: Path, pred: pd.DataFrame, image_ids: Sequence[str], sizes: Mapping[str, tuple[int, int]]
           ) -> dict[str, int]:
    """Write and read back a submission; opacity boxes are clipped to their image and those left without width or
    height dropped."""
    pred = pred.copy()
    n_before = len(pred)
    opacity = pred["label"].to_numpy() == OPACITY_ID
    if sizes:
        wh = np.array([sizes.get(i, (np.inf, np.inf)) if o else (np.inf, np.inf)
                       for i, o in zip(pred["image_id"], opacity, strict=True)], dtype=np.float64).reshape(-1, 2)
        for col, limit in (("x1", wh[:, 0]), ("x2", wh[:, 0]), ("y1", wh[:, 1]), ("y2", wh[:, 1])):
            pred[col] = np.clip(pred[col].to_numpy(dtype=np.float64), 0.0, limit)
    pred["score"] = pred["score"].clip(0.0, 1.0)
    pred = pred[(pred["x2"] > pred["x1"]) & (pred["y2"] > pred["y1"])]
    write_submission(path, pred, image_ids)
    keys = np.asarray(pred["image_id"], dtype=object)
    studies = list(dict.fromkeys(keys[pred["label"].to_numpy() >= STUDY_OFFSET]))
    boxes = read_submission(path, studies + [f"{i}{IMAGE_SUFFIX}" for i in image_ids])
    image_rows = boxes[~boxes["image_id"].str.endswith(STUDY_SUFFIX)]
    return {"n_rows": len(image_ids) + len(studies), "n_boxes": int((image_rows["label"] == OPACITY_ID).sum()),
            "n_empty": int(len(image_ids) - image_rows["image_id"].nunique()), "n_dropped": n_before - len(pred),
            "n_studies": len(studies)}


def _validate(path: Path, row_ids: Sequence[str] | None, image_size: int | None) -> str:
    if image_size is not None:
        raise ConfigError(f"image size {image_size}: SIIM-COVID images vary in size; a submission is checked without "
                          "one")
    boxes = read_submission(path, row_ids)
    study = boxes["image_id"].str.endswith(STUDY_SUFFIX)
    return (f"{boxes.loc[study, 'image_id'].nunique()} studies, {boxes.loc[~study, 'image_id'].nunique()} images, "
            f"{int((boxes['label'] == OPACITY_ID).sum())} opacity boxes")


def _evaluator(gt: pd.DataFrame, image_ids: Sequence[str], images: pd.DataFrame | None = None) -> SiimEvaluator:
    return SiimEvaluator(gt, image_ids, images)


SIIM = COMPETITIONS.register(Competition(
    name="siim", title="SIIM-FISABIO-RSNA COVID-19 Detection (2021)", classes=CLASSES, label_format="siim",
    layout=SiimLayout, image_size=None, metric="siim", score=score_submission, validate=_validate,
    sample_ids=sample_row_ids, submission_columns=SUBMISSION_COLUMNS,
    fold_columns=("study_label", "positive", "n_boxes"), evaluator=_evaluator, ground_truth=_ground_truth,
    complete=complete, write_submission=_write, monitor=MONITOR, image_suffix=".dcm", image_glob="*/*/*",
    studies=split_studies, image_ids_of=lambda ids: [i.removesuffix(IMAGE_SUFFIX) for i in ids
                                                     if i.endswith(IMAGE_SUFFIX)],
    study_classes=STUDY_CLASSES, time_limit_minutes=KAGGLE_MINUTES,
), name="siim")  # fmt: skip
