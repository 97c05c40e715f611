"""RSNA submission files: write, read, validate, and score against a labels file.

Format (Kaggle RSNA Pneumonia): header `patientId,PredictionString`, one row per test image, the string being
`conf x y w h conf x y w h ...` (xywh, pixels of the original image, (x, y) the top-left corner) or empty for no box.

The writer sorts each image's boxes by descending confidence (equal confidences keep their input order), clips them
to the image, rounds to fixed decimals and drops boxes that end up with no width or height; the reader checks every
row and reports every problem at once, each naming its 1-based file line (header = line 1) and the value.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet.boxes import clip_xyxy, xywh_to_xyxy, xyxy_to_xywh
from cxrdet.errors import CxrdetError, TableError
from cxrdet.io import write_csv

SUBMISSION_HEADER: tuple[str, str] = ("patientId", "PredictionString")
PRED_COLUMNS: tuple[str, ...] = ("image_id", "x1", "y1", "x2", "y2", "score")
CONF_DECIMALS = 4
COORD_DECIMALS = 1
# A box may end this far (pixels) past the image edge: decimal x + w written exactly can exceed it in float.
EDGE_TOLERANCE = 1e-6
_MAX_LISTED = 10

# `int`: square images of that side; `(width, height)`: every image; a mapping: per image id.
ImageSize = int | tuple[int, int] | Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class SubmissionStats:
    """What a submission file holds.

    Attributes:
        path: The file.
        n_rows: Image rows.
        n_boxes: Boxes over all rows.
        n_empty: Rows with an empty PredictionString.
        n_dropped: Boxes the writer dropped because they had no width or height once clipped and rounded (0 when
            reading).
    """

    path: Path
    n_rows: int
    n_boxes: int
    n_empty: int
    n_dropped: int = 0


def _sizes_of(image_ids: Sequence[str],
              image_size: ImageSize) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-image (widths, heights) in pixels, aligned with `image_ids`."""
    if isinstance(image_size, Mapping):
        missing = [i for i in image_ids if i not in image_size]
        if missing:
            raise CxrdetError(f"no image size for {len(missing)} image id(s), e.g. {missing[:_MAX_LISTED]}")
        wh = np.array([image_size[i] for i in image_ids], dtype=np.float64).reshape(-1, 2)
        return wh[:, 0], wh[:, 1]
    w, h = (image_size, image_size) if isinstance(image_size, int) else image_size
    n = len(image_ids)
    return np.full(n, float(w)), np.full(n, float(h))


# ---- writing ----


def _pred_problems(pred: pd.DataFrame, ids: pd.Index) -> list[str]:
    """What is wrong with an in-memory prediction table before it is written."""
    missing = [c for c in PRED_COLUMNS if c not in pred.columns]
    if missing:
        return [f"predictions lack column(s) {missing}; expected {list(PRED_COLUMNS)} (xyxy pixels)"]
    problems = []
    values = pred[list(PRED_COLUMNS[1:])].to_numpy(dtype=np.float64, na_value=np.nan)
    checks = [
        (~np.isfinite(values).all(axis=1), "non-finite box or score"),
        ((values[:, 4] < 0) | (values[:, 4] > 1), "score outside [0, 1]"),
        ((values[:, 2] < values[:, 0]) | (values[:, 3] < values[:, 1]), "x2 < x1 or y2 < y1 (expected xyxy)"),
        (ids.get_indexer(pred["image_id"]) < 0, "image_id not among the test image ids"),
    ]
    for bad, what in checks:
        if bad.any():
            rows = pred.index[bad]
            problems.append(f"{bad.sum()} prediction row(s) with {what}, e.g. row index {list(rows[:_MAX_LISTED])}: "
                            f"{pred.loc[rows[:3]].to_dict('records')}")
    return problems


def format_predictions(pred: pd.DataFrame, image_ids: Sequence[str], image_size: ImageSize = 1024,
                       conf_decimals: int = CONF_DECIMALS, coord_decimals: int = COORD_DECIMALS,
                       ) -> tuple[pd.DataFrame, int]:
    """Turn xyxy predictions into the submission table (one row per image id, in the order of `image_ids`).

    Each box is clipped to its image, then its corners are rounded to `coord_decimals`; a box left with zero width
    or height is dropped (it cannot match anything and the format forbids it). Rounding the corners, not x, y, w and
    h separately, keeps x + w and y + h inside the image.

    Args:
        pred: `image_id, x1, y1, x2, y2, score`: xyxy, pixels of the original image; score in [0, 1].
        image_ids: Every test image id, once each.
        image_size: Image size(s) in pixels (see `ImageSize`).
        conf_decimals: Decimals of the confidence.
        coord_decimals: Decimals of x, y, w, h.

    Returns:
        The `patientId, PredictionString` table and the number of dropped boxes.

    Raises:
        TableError: Missing columns, non-finite values, scores outside [0, 1], inverted boxes, unknown or
            duplicated image ids.
    """
    ids = pd.Index(list(image_ids))
    if ids.has_duplicates:
        raise TableError("test image ids", [f"duplicated id(s), e.g. {list(ids[ids.duplicated()][:_MAX_LISTED])}"])
    problems = _pred_problems(pred, ids)
    if problems:
        raise TableError("predictions", problems)

    image = ids.get_indexer(pred["image_id"])
    order = np.lexsort([-pred["score"].to_numpy(dtype=np.float64), image])  # stable: ties keep input order
    image = image[order]
    score = pred["score"].to_numpy(dtype=np.float64)[order]
    xyxy = pred[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)[order]
    widths, heights = _sizes_of(list(ids), image_size)
    for w, h in {(w, h) for w, h in zip(widths[image], heights[image], strict=True)}:
        same = (widths[image] == w) & (heights[image] == h)
        xyxy[same] = clip_xyxy(xyxy[same], w, h)
    # Integer units of 10**-coord_decimals pixels: x + w is then exact, and formatting prints exact decimals.
    unit = 10.0**coord_decimals
    xywh = xyxy_to_xywh(np.round(xyxy * unit))
    keep = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
    n_dropped = int((~keep).sum())
    image, score, xywh = image[keep], score[keep], xywh[keep] / unit

    tokens = [
        f"{c:.{conf_decimals}f} {x:.{coord_decimals}f} {y:.{coord_decimals}f} {w:.{coord_decimals}f} "
        f"{h:.{coord_decimals}f}"
        for c, (x, y, w, h) in zip(score, xywh, strict=True)
    ]
    strings = pd.Series(tokens, dtype=object).groupby(image, sort=False).agg(" ".join)
    table = pd.DataFrame({SUBMISSION_HEADER[0]: list(ids), SUBMISSION_HEADER[1]: ""})
    table.loc[strings.index.to_numpy(), SUBMISSION_HEADER[1]] = strings.to_numpy()
    return table, n_dropped


def write_submission(path: str | Path, pred: pd.DataFrame, image_ids: Sequence[str], image_size: ImageSize = 1024,
                     conf_decimals: int = CONF_DECIMALS, coord_decimals: int = COORD_DECIMALS) -> SubmissionStats:
    """Write predictions as a submission CSV, atomically; see `format_predictions` for the arguments and rules.

    Returns:
        What was written, including how many boxes were dropped for having no width or height.
    """
    table, n_dropped = format_predictions(pred, image_ids, image_size, conf_decimals, coord_decimals)
    write_csv(path, table)
    empty = table[SUBMISSION_HEADER[1]] == ""
    n_boxes = int(table[SUBMISSION_HEADER[1]].str.split().str.len().fillna(0).sum() // 5)
    return SubmissionStats(Path(path), len(table), n_boxes, int(empty.sum()), n_dropped)


# ---- reading and validation ----


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header fields and `(line number, fields)` of every non-blank data row of a CSV file."""
    if not path.exists():
        raise TableError(path, ["file not found"])
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                expected = ",".join(SUBMISSION_HEADER)
                raise TableError(path, [f"line 1: the file is empty: expected the header {expected}"])
            rows = []
            for fields in reader:
                if fields:  # blank lines are skipped, as pandas and Kaggle's reader skip them
                    rows.append((reader.line_num, fields))
    except (UnicodeDecodeError, csv.Error) as err:
        raise TableError(path, [f"cannot read as a UTF-8 CSV file ({err})"]) from err
    return header, rows


def read_image_ids(path: str | Path) -> list[str]:
    """The `patientId` column of a submission-format file (e.g. Kaggle's sample submission), in file order.

    Raises:
        TableError: The file is missing, has no `patientId` column, or has empty or duplicated ids.
    """
    path = Path(path)
    header, rows = _read_rows(path)
    if SUBMISSION_HEADER[0] not in header:
        raise TableError(path, [f"line 1: no {SUBMISSION_HEADER[0]!r} column in header {header}"])
    col = header.index(SUBMISSION_HEADER[0])
    problems, seen, ids = [], {}, []
    for line, fields in rows:
        value = fields[col].strip() if col < len(fields) else ""
        if not value:
            problems.append(f"line {line}: empty {SUBMISSION_HEADER[0]}: expected an image id")
        elif value in seen:
            problems.append(f"line {line}: {SUBMISSION_HEADER[0]}={value!r} repeats line {seen[value]}: "
                            "expected each image once")
        else:
            seen[value] = line
            ids.append(value)
    if problems:
        raise TableError(path, problems)
    return ids


def _parse_boxes(line: int, text: str, problems: list[str]) -> npt.NDArray[np.float64] | None:
    """The `(N, 5)` conf, x, y, w, h values of one PredictionString, or None (problems appended) if unparsable."""
    tokens = text.split()
    ok = True
    if len(tokens) % 5:
        problems.append(f"line {line}: PredictionString has {len(tokens)} values: expected a multiple of 5 "
                        "(conf x y w h per box)")
        ok = False
    values = []
    for k, tok in enumerate(tokens):
        try:
            v = float(tok)
        except ValueError:
            problems.append(f"line {line}: value {k + 1} of PredictionString is {tok!r}: expected a number")
            ok = False
            continue
        if not np.isfinite(v):
            problems.append(f"line {line}: value {k + 1} of PredictionString is {tok!r}: expected a finite number")
            ok = False
        values.append(v)
    return np.array(values, dtype=np.float64).reshape(-1, 5) if ok else None


def _box_problems(lines: npt.NDArray[np.int64], box_no: npt.NDArray[np.int64], vals: npt.NDArray[np.float64],
                  widths: npt.NDArray[np.float64], heights: npt.NDArray[np.float64]) -> list[tuple[int, int, str]]:
    """`(line, box number, message)` for every box with a confidence outside [0, 1], no size, or a part outside its
    image."""
    conf, x, y, w, h = vals.T
    checks = [
        ((conf < 0) | (conf > 1), "conf", conf, "a confidence in [0, 1]"),
        (w <= 0, "w", w, "a width > 0"),
        (h <= 0, "h", h, "a height > 0"),
        (x < 0, "x", x, "x >= 0 (inside the image)"),
        (y < 0, "y", y, "y >= 0 (inside the image)"),
        (x + w > widths + EDGE_TOLERANCE, "x+w", x + w, "x + w <= the image width {W:g}"),
        (y + h > heights + EDGE_TOLERANCE, "y+h", y + h, "y + h <= the image height {H:g}"),
    ]
    out = []
    for bad, field, value, expected in checks:
        for i in np.flatnonzero(bad):
            exp = expected.format(W=widths[i], H=heights[i])
            message = f"line {lines[i]}: box {box_no[i]}: {field}={value[i]:g}: expected {exp}"
            out.append((int(lines[i]), int(box_no[i]), message))
    return out


def read_submission(path: str | Path, image_ids: Sequence[str] | None = None, image_size: ImageSize = 1024,
                    allow_missing: bool = False) -> pd.DataFrame:
    """Read and validate a submission file; every problem is reported at once.

    Checks: the header; 2 fields per row; empty or duplicated ids; a PredictionString whose value count is not a
    multiple of 5, or with non-numeric, NaN or infinite values; width or height <= 0; a confidence outside [0, 1];
    a box outside its image (tolerance `EDGE_TOLERANCE`); and, when `image_ids` is given, ids not in it (extra) and
    ids of it without a row (missing, unless `allow_missing`).

    Args:
        path: The submission CSV.
        image_ids: The expected image set (e.g. the sample submission's ids or the labels' ids), or None to skip the
            missing/extra checks.
        image_size: Image size(s) in pixels (see `ImageSize`); a mapping must cover every id in the file.
        allow_missing: Accept ids of `image_ids` without a row (they then have no predictions).

    Returns:
        The boxes, `image_id, x1, y1, x2, y2, score` (xyxy, pixels of the original image), in file order.

    Raises:
        TableError: Listing every problem found, each naming the file line and the value.
    """
    pred, _stats = _read_and_check(Path(path), image_ids, image_size, allow_missing)
    return pred


def validate_submission(path: str | Path, image_ids: Sequence[str] | None = None, image_size: ImageSize = 1024,
                        allow_missing: bool = False) -> SubmissionStats:
    """Validate a submission file (the checks of `read_submission`) and say what it holds.

    Raises:
        TableError: Listing every problem found, each naming the file line and the value.
    """
    _pred, stats = _read_and_check(Path(path), image_ids, image_size, allow_missing)
    return stats


def _read_and_check(path: Path, image_ids: Sequence[str] | None, image_size: ImageSize,
                    allow_missing: bool) -> tuple[pd.DataFrame, SubmissionStats]:
    header, rows = _read_rows(path)
    problems: list[tuple[int, int, str]] = []  # (line, box number or 0, message), sorted before reporting
    if [h.strip() for h in header] != list(SUBMISSION_HEADER):
        problems.append((1, 0, f"line 1: header is {','.join(header)!r}: expected {','.join(SUBMISSION_HEADER)!r}"))
    expected = None if image_ids is None else {i: k for k, i in enumerate(image_ids)}

    seen: dict[str, int] = {}
    row_ids, row_lines, row_boxes = [], [], []
    for line, fields in rows:
        if len(fields) != 2:
            problems.append((line, 0, f"line {line}: {len(fields)} field(s): expected 2 "
                                   f"({','.join(SUBMISSION_HEADER)}; the PredictionString has no commas)"))
            continue
        image_id = fields[0].strip()
        if not image_id:
            problems.append((line, 0, f"line {line}: empty patientId: expected an image id"))
            continue
        if image_id in seen:
            problems.append((line, 0, f"line {line}: patientId={image_id!r} repeats line {seen[image_id]}: "
                                   "expected each image once"))
            continue
        seen[image_id] = line
        if expected is not None and image_id not in expected:
            problems.append((line, 0, f"line {line}: patientId={image_id!r} is not an expected image id"))
            continue
        row_problems: list[str] = []
        boxes = _parse_boxes(line, fields[1], row_problems)
        problems += [(line, 0, p) for p in row_problems]
        if boxes is not None:
            row_ids.append(image_id)
            row_lines.append(line)
            row_boxes.append(boxes)

    counts = np.array([len(b) for b in row_boxes], dtype=np.int64)
    vals = np.concatenate(row_boxes) if row_boxes else np.zeros((0, 5))
    box_ids = np.repeat(np.array(row_ids, dtype=object), counts)
    lines = np.repeat(np.array(row_lines, dtype=np.int64), counts)
    box_no = np.arange(len(vals)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    sized = [i for i in row_ids if not isinstance(image_size, Mapping) or i in image_size]
    if len(sized) < len(row_ids):
        unsized = sorted(set(row_ids) - set(sized))
        problems.append((0, 0, f"no image size known for {len(unsized)} id(s), e.g. {unsized[:_MAX_LISTED]}"))
    else:
        widths, heights = _sizes_of(row_ids, image_size)
        row_of_box = np.repeat(np.arange(len(row_ids)), counts)
        problems += _box_problems(lines, box_no, vals, widths[row_of_box], heights[row_of_box])

    if expected is not None and not allow_missing:
        problems += [(10**12, 0, f"patientId={i!r} has no row: expected one row per image")
                     for i in expected if i not in seen]
    if problems:
        problems.sort(key=lambda p: p[:2])  # stable: file order, then the missing ids
        raise TableError(path, [p for _, _, p in problems])

    xyxy = xywh_to_xyxy(vals[:, 1:])
    pred = pd.DataFrame({"image_id": box_ids.astype(str), "x1": xyxy[:, 0], "y1": xyxy[:, 1], "x2": xyxy[:, 2],
                         "y2": xyxy[:, 3], "score": vals[:, 0]})
    stats = SubmissionStats(path, n_rows=len(seen), n_boxes=len(vals), n_empty=int((counts == 0).sum()))
    return pred, stats


# ---- scoring a submission file against a labels file ----


def score_submission(labels_path: str | Path, submission_path: str | Path, metric: str = "rsna",
                     allow_missing: bool = False) -> dict[str, Any]:
    """Score a submission file against an RSNA-format labels file, which defines the image set.

    Submission ids that are not in the labels are an error; labelled ids without a submission row are an error
    unless `allow_missing`, in which case they have no predictions. Boxes must lie inside their images (the labels
    give the image size).

    Args:
        labels_path: RSNA labels CSV (`patientId,x,y,width,height,Target`).
        submission_path: Submission CSV (`patientId,PredictionString`).
        metric: `rsna` (the competition metric) or `coco` (mAP; `score` is mAP@0.50:0.95, with mAP@0.50 and 0.40).
        allow_missing: Treat labelled images without a submission row as having no predictions.

    Returns:
        A JSON-ready dict: `metric`, `score`, `n_images` (images that counted), `n_labelled_images`, `n_missing`
        (labelled images without a row), `n_boxes`, and `per_threshold` (rsna: IoU threshold -> mean precision) or
        `map_50_95, map_50, map_40` (coco).

    Raises:
        TableError: Invalid labels or submission (every problem listed).
        CxrdetError: An unknown metric.
    """
    from cxrdet.data.labels import read_rsna_labels

    if metric not in ("rsna", "coco"):
        raise CxrdetError(f"metric {metric!r} is unknown: expected 'rsna' or 'coco'")
    report = score_annotations(read_rsna_labels(labels_path), submission_path, metric, allow_missing)
    return {"labels": str(labels_path), **report}


def score_annotations(labels: Any, submission_path: str | Path, metric: str = "rsna", allow_missing: bool = False
                      ) -> dict[str, Any]:
    """`score_submission` against labels already read (`cxrdet.data.labels.read_rsna_labels`)."""
    ids = labels.image_ids
    sizes = dict(zip(ids, zip(labels.images["width"], labels.images["height"], strict=True), strict=True))
    pred, stats = _read_and_check(Path(submission_path), ids, sizes, allow_missing)
    report: dict[str, Any] = {"metric": metric, "submission": str(submission_path)}
    if metric == "rsna":
        from cxrdet.metrics.rsna import IOU_THRESHOLDS, rsna_score

        res = rsna_score(labels.boxes, pred, ids)
        report |= {"score": res.score, "n_images": res.n_images,
                   "per_threshold": {f"{t:.2f}": float(v) for t, v in zip(IOU_THRESHOLDS, res.per_threshold,
                                                                              strict=True)}}
    else:
        from cxrdet.metrics.coco import coco_map

        maps = coco_map(labels.boxes, pred.assign(label=0), ids, labels.classes)
        report |= {"score": maps["map_50_95"], "n_images": len(ids), **maps}
    report |= {"n_labelled_images": len(ids), "n_missing": len(ids) - stats.n_rows, "n_boxes": len(pred)}
    return report
