"""Label tables of chest X-ray competitions, parsed into one canonical annotation table.

Every reader returns an `Annotations`:

- `boxes`: one row per box: `image_id, patient_id, x1, y1, x2, y2, label`; xyxy, pixels of the original image,
  `label` the class index into `classes`. Empty for image-level data sets (NIH).
- `images`: one row per image, negatives included: `image_id, patient_id, n_boxes, positive` plus any per-image
  metadata the table carries (size, sex, age, view, one 0/1 column per finding for multi-label tables).

Readers are registered by format name (`rsna`, `nih`) with the header columns that identify them, so that
`read_labels(path, fmt="auto")` can pick one from the header and a new competition's table needs only a new reader.
All validation is vectorised and reports every bad row at once through `TableError`, naming the 1-based file line
(header = line 1), the field, the value and the expected form.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet.boxes import xywh_to_xyxy
from cxrdet.errors import TableError
from cxrdet.registry import Registry

RSNA_CLASSES: tuple[str, ...] = ("opacity",)
RSNA_IMAGE_SIZE: tuple[int, int] = (1024, 1024)
RSNA_COLUMNS: tuple[str, ...] = ("patientId", "x", "y", "width", "height", "Target")
RSNA_BOX_FIELDS: tuple[str, ...] = ("x", "y", "width", "height")

NIH_NO_FINDING = "No Finding"
NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
NIH_COLUMNS: tuple[str, ...] = ("Image Index", "Finding Labels", "Patient ID")
# The NIH header holds unquoted commas inside brackets ("OriginalImage[Width,Height]"), so a CSV reader splits each
# of these two fields into two columns; they are renamed back to one name per value.
NIH_RENAMES: dict[str, str] = {
    "Image Index": "image_id",
    "Patient ID": "patient_id",
    "Follow-up #": "follow_up",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
    "OriginalImage[Width": "width",
    "Height]": "height",
    "OriginalImagePixelSpacing[x": "spacing_x",
    "y]": "spacing_y",
}

HEADER_RENAMES: dict[str, str] = {
    "PatientID": "image_id",
    "PatientSex": "sex",
    "PatientAge": "age",
    "ViewPosition": "view",
    "PixelSpacing": "pixel_spacing",
    "Modality": "modality",
    "BodyPartExamined": "body_part",
}
METADATA_COLUMNS: tuple[str, ...] = ("image_id", "sex", "age", "view")
SEXES: frozenset[str] = frozenset({"M", "F", "O"})

BOX_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "x1", "y1", "x2", "y2", "label")
IMAGE_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "n_boxes", "positive")


@dataclass(frozen=True)
class Annotations:
    """Canonical annotations of one labelled image set.

    Attributes:
        boxes: One row per box: `image_id, patient_id` (str), `x1, y1, x2, y2` (float64; xyxy, pixels of the
            original image), `label` (int64, index into `classes`). Rows in file order.
        images: One row per image including negatives: `image_id, patient_id` (str), `n_boxes` (int64),
            `positive` (bool), then per-image metadata columns. Rows in order of first appearance in the file.
        classes: Class names; a box's `label` and a multi-label table's 0/1 columns refer to them.
    """

    boxes: pd.DataFrame
    images: pd.DataFrame
    classes: tuple[str, ...]

    @property
    def image_ids(self) -> list[str]:
        """All image ids, negatives included, in the order of `images`."""
        return self.images["image_id"].tolist()

    def boxes_for(self, image_id: str) -> npt.NDArray[np.float64]:
        """The `(N, 4)` xyxy boxes of one image, pixels of the original image, in file order (N = 0 if none).

        Scans the whole table: for many images, group `boxes` by `image_id` once instead.
        """
        rows = self.boxes[self.boxes["image_id"] == image_id]
        return rows[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64).reshape(-1, 4)

    def with_metadata(self, meta: pd.DataFrame, source: str | Path = "<metadata>") -> Annotations:
        """Join per-image metadata (`image_id` plus e.g. `sex, age, view`) onto `images`.

        Args:
            meta: One row per image id; extra ids (test images) are ignored.
            source: The file `meta` came from, named in errors.

        Returns:
            New annotations whose `images` carry the metadata columns; columns already present are replaced.

        Raises:
            TableError: When an image of the labels has no metadata row (the wrong header file was given).
        """
        missing = ~self.images["image_id"].isin(meta["image_id"])
        if missing.any():
            ids = self.images.loc[missing, "image_id"].tolist()
            raise TableError(
                source,
                [
                    f"{len(ids)} labelled image id(s) have no row here, e.g. {', '.join(map(repr, ids[:5]))}: "
                    "expected one row per labelled image (is this the header table of the same data set?)"
                ],
            )
        extra = [c for c in meta.columns if c != "image_id"]
        images = self.images.drop(columns=[c for c in extra if c in self.images.columns])
        images = images.merge(meta[["image_id", *extra]], on="image_id", how="left", validate="one_to_one")
        return Annotations(boxes=self.boxes, images=images, classes=self.classes)


# ---- table helpers (also used by the fold tables) ----


def _read_header(path: Path) -> list[str]:
    """The column names of a CSV(.gz) file's first line, split on commas as a CSV reader would."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError) as err:
        raise TableError(path, [f"line 1: cannot read the header ({err}): expected a UTF-8 CSV file"]) from err
    return [c.strip().strip('"') for c in line.rstrip("\r\n").split(",")]


def read_str_csv(path: Path) -> pd.DataFrame:
    """Read a CSV(.gz) with every field as a stripped string (empty cells as ''), so errors can quote raw values.

    The index is the 0-based position among the file's data lines, blank lines included but dropped, so that
    `index + 2` is the 1-based file line of each row (the header is line 1).

    Raises:
        TableError: The file is missing or not a CSV table, or rows have more or fewer fields than the header
            (each named by its line): pandas would otherwise take a first extra field as the index, silently.
    """
    if not path.exists():
        raise TableError(path, ["file not found"])
    _check_field_counts(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, skip_blank_lines=False,
                         index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        problem = f"cannot parse as CSV ({err}): expected a comma-separated table with a header"
        raise TableError(path, [problem]) from err
    df.columns = [str(c).strip() for c in df.columns]
    for col in df.columns:
        df[col] = df[col].str.strip()
    return df[~(df == "").all(axis=1)]


def _check_field_counts(path: Path, max_listed: int = 20) -> None:
    """Every non-blank row has as many fields as the header (a CSV reader's count: quotes respected)."""
    import csv

    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None:
                return  # pandas names an empty file
            for i, row in enumerate(rows):
                if row and len(row) != len(header) and any(v.strip() for v in row):
                    problems.append(f"line {i + 2}: {len(row)} fields, expected {len(header)} (the header's "
                                    f"{', '.join(h.strip() for h in header)})")
    except (UnicodeDecodeError, csv.Error, OSError, EOFError) as err:
        raise TableError(path, [f"cannot parse as CSV ({err}): expected a comma-separated UTF-8 table with a "
                                "header"]) from err
    if problems:
        more = len(problems) - max_listed
        raise TableError(path, problems[:max_listed] + ([f"... and {more} more rows of the wrong width"]
                                                        if more > 0 else []))


def require_columns(path: Path, df: pd.DataFrame, required: Sequence[str]) -> None:
    """Raise a `TableError` naming every column of `required` that the header lacks."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise TableError(
            path,
            [
                f"line 1: missing column(s) {', '.join(map(repr, missing))}: expected a header with "
                f"{', '.join(required)} (found {', '.join(map(str, df.columns))})"
            ],
        )


def file_lines(mask: pd.Series) -> npt.NDArray[np.int64]:
    """1-based file lines of the rows selected by `mask` (index 0 is line 2: the header is line 1)."""
    return mask.index[mask.to_numpy(dtype=bool)].to_numpy(dtype=np.int64) + 2


def field_problems(df: pd.DataFrame, mask: pd.Series, field: str, expected: str) -> list[str]:
    """One message per selected row: its line, the field, the raw value and the expected form."""
    values = df.loc[mask, field].tolist()
    return [f"line {n}: {field}={v!r}: expected {expected}" for n, v in zip(file_lines(mask), values, strict=True)]


def box_field_problems(
    df: pd.DataFrame, fields: Sequence[str], boxed: pd.Series, empty: pd.Series, need_box: str, no_box: str,
    also: Sequence[tuple[Callable[[pd.Series], pd.Series], str]] = (),
) -> tuple[list[str], dict[str, pd.Series]]:
    """The box fields of a label table whose rows either have a box or have none (a negative, "No finding").

    Args:
        df: The table, every field a stripped string.
        fields: The box's columns.
        boxed, empty: The rows that must have a box, and those that must leave every box field empty.
        need_box, no_box: What is expected of a boxed row's field and of an empty row's field (named in messages).
        also: More checks of a boxed row's number, `(test, expected)`, each run per field after the first two.

    Returns:
        One message per bad field (in field order, each field's checks together) and each field's numbers (NaN where
        a cell is empty or not a number).
    """
    problems: list[str] = []
    nums: dict[str, pd.Series] = {}
    for field in fields:
        raw = df[field]
        num = pd.to_numeric(raw.where(raw != ""), errors="coerce")
        nums[field] = num
        finite = np.isfinite(num.to_numpy(dtype=np.float64, na_value=np.nan))
        problems += field_problems(df, boxed & ~finite, field, need_box)
        problems += field_problems(df, empty & (raw != ""), field, no_box)
        for test, expected in also:
            problems += field_problems(df, boxed & test(num), field, expected)
    return problems, nums


def duplicate_problems(df: pd.DataFrame, keys: Sequence[str], what: str) -> list[str]:
    """One message per row that repeats an earlier row on `keys`, naming both lines."""
    dup = df.duplicated(subset=list(keys), keep=False)
    if not dup.any():
        return []
    lines = pd.Series(df.index.to_numpy(dtype=np.int64) + 2, index=df.index)
    first = lines[dup].groupby([df.loc[dup, k] for k in keys], sort=False).transform("min")
    later = dup & df.duplicated(subset=list(keys), keep="first")
    return [
        f"line {n}: {what} repeats line {f} ({', '.join(f'{k}={df.at[i, k]!r}' for k in keys)}): expected each once"
        for i, n, f in zip(df.index[later], lines[later], first[later], strict=True)
    ]


_LINE = re.compile(r"^line (\d+):")


def by_line(problems: list[str]) -> list[str]:
    """Problems ordered by the file line they start with (stable; those naming no line come last)."""

    def key(problem: str) -> int:
        match = _LINE.match(problem)
        return int(match.group(1)) if match else 1 << 62

    return sorted(problems, key=key)


_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([YMWD]?)$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}


def parse_ages(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Ages in whole years from numbers or DICOM age strings ('043Y', '006M'); returns (ages, bad-value mask).

    Empty cells are missing (not bad); anything else that is not an age is bad.
    """
    text = raw.astype("string").fillna("").str.strip()
    parts = text.str.extract(_AGE)
    number = pd.to_numeric(parts[0], errors="coerce")
    unit = parts[1].fillna("").str.upper().map(_AGE_UNIT_YEARS)
    ages = np.floor(number * unit).astype("Int64")
    bad = (text != "") & ages.isna()
    return ages, bad


def _empty_boxes() -> pd.DataFrame:
    """A box table with no rows and the canonical columns and dtypes (xyxy, pixels of the original image)."""
    dtypes = {"image_id": str, "patient_id": str, "x1": np.float64, "y1": np.float64, "x2": np.float64,
              "y2": np.float64, "label": np.int64}  # fmt: skip
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})


# ---- registry ----

LabelReader = Callable[[Path], Annotations]


@dataclass(frozen=True)
class _Format:
    reader: LabelReader
    columns: tuple[str, ...]


FORMATS: Registry[_Format] = Registry("label format", key="format")


def register_format(name: str, columns: Sequence[str]) -> Callable[[LabelReader], LabelReader]:
    """Register a label reader under `name`; `columns` are the header names that identify its tables."""

    def decorator(reader: LabelReader) -> LabelReader:
        FORMATS.register(_Format(reader=reader, columns=tuple(columns)), name=name)
        return reader

    return decorator


label_formats = FORMATS.names


def detect_format(path: str | Path) -> str:
    """Name of the registered format whose identifying columns all appear in the file's header.

    Raises:
        TableError: When no format (or more than one) matches.
    """
    path = Path(path)
    if not path.exists():
        raise TableError(path, ["file not found: expected a CSV label table"])
    header = set(_read_header(path))
    matches = [name for name, f in FORMATS.items() if set(f.columns) <= header]
    if len(matches) != 1:
        known = "; ".join(f"{name}: {', '.join(f.columns)}" for name, f in FORMATS.items())
        found = "none" if not matches else f"several ({', '.join(matches)})"
        raise TableError(path, [f"line 1: header matches {found} of the known label formats ({known})"])
    return matches[0]


def read_labels(path: str | Path, fmt: str = "auto") -> Annotations:
    """Read any registered label table into canonical annotations.

    Args:
        path: The label table (CSV, optionally gzipped).
        fmt: A registered format name (`rsna`, `nih`) or `auto` to detect it from the header.

    Returns:
        The table's annotations; boxes xyxy in pixels of the original images.
    """
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise TableError(path, [f"format {fmt!r} is unknown: expected 'auto' or one of {', '.join(label_formats())}"])
    return FORMATS.get(fmt).reader(path)


# ---- RSNA ----


def read_rsna_labels(path: str | Path, image_size: tuple[int, int] | None = RSNA_IMAGE_SIZE) -> Annotations:
    """Parse an RSNA `stage_2_train_labels.csv` (`patientId,x,y,width,height,Target`, xywh, one row per box).

    A negative image has one row with empty box fields and `Target=0`. RSNA has one image per patient, so
    `patient_id == image_id`.

    Args:
        path: The labels CSV.
        image_size: `(width, height)` of every image in pixels, to check that boxes lie inside; None skips it.

    Returns:
        Annotations with xyxy boxes in pixels of the original image, class 0 = 'opacity'; `images` also carries
        `width, height` when `image_size` is given.

    Raises:
        TableError: Listing every problem: missing columns, Target not 0/1, a Target=1 row with an empty or
            non-numeric box field, a Target=0 row with a box, width or height <= 0, a box outside the image,
            duplicate rows, an image with both Target values.
    """
    path = Path(path)
    df = read_str_csv(path)
    require_columns(path, df, RSNA_COLUMNS)
    problems = _rsna_problems(df, image_size)
    if problems:
        raise TableError(path, by_line(problems))

    target = df["Target"].astype(np.int64)
    pos = df[target == 1]
    xyxy = xywh_to_xyxy(pos[list(RSNA_BOX_FIELDS)].astype(np.float64).to_numpy())
    boxes = pd.DataFrame(
        {
            "image_id": pos["patientId"].to_numpy(),
            "patient_id": pos["patientId"].to_numpy(),
            "x1": xyxy[:, 0],
            "y1": xyxy[:, 1],
            "x2": xyxy[:, 2],
            "y2": xyxy[:, 3],
            "label": np.zeros(len(pos), dtype=np.int64),
        }
    )
    ids = df["patientId"].drop_duplicates()
    n_boxes = boxes["image_id"].value_counts().reindex(ids, fill_value=0).to_numpy(dtype=np.int64)
    images = pd.DataFrame(
        {"image_id": ids.to_numpy(), "patient_id": ids.to_numpy(), "n_boxes": n_boxes, "positive": n_boxes > 0}
    )
    if image_size is not None:
        images["width"] = np.int64(image_size[0])
        images["height"] = np.int64(image_size[1])
    return Annotations(boxes=boxes, images=images, classes=RSNA_CLASSES)


def _rsna_problems(df: pd.DataFrame, image_size: tuple[int, int] | None) -> list[str]:
    """Every problem of an RSNA labels table (all fields as stripped strings), vectorised."""
    problems: list[str] = []
    problems += field_problems(df, df["patientId"] == "", "patientId", "a non-empty image id")
    target = df["Target"]
    problems += field_problems(df, ~target.isin(["0", "1"]), "Target", "0 or 1")
    is_pos = target == "1"
    is_neg = target == "0"

    found, nums = box_field_problems(df, RSNA_BOX_FIELDS, is_pos, is_neg, "a number (Target=1 rows need a box)",
                                     "an empty cell (Target=0 rows have no box)")
    problems += found
    for field in ("width", "height"):
        problems += field_problems(df, is_pos & (nums[field] <= 0), field, "a number > 0")
    if image_size is not None:
        w, h = image_size
        for field in ("x", "y"):
            problems += field_problems(df, is_pos & (nums[field] < 0), field, "a number >= 0 (inside the image)")
        for start, size, limit in (("x", "width", w), ("y", "height", h)):
            end = nums[start] + nums[size]
            over = is_pos & (end > limit)
            problems += [
                f"line {n}: {start}+{size}={e:g} ({start}={df.at[i, start]!r}, {size}={df.at[i, size]!r}): "
                f"expected <= {limit} (the box must lie inside the {w}x{h} image)"
                for i, n, e in zip(df.index[over], file_lines(over), end[over], strict=True)
            ]
    problems += duplicate_problems(df, RSNA_COLUMNS, "row")

    valid = df[is_pos | is_neg]
    both = valid.groupby("patientId", sort=False)["Target"].nunique()
    mixed = valid[valid["patientId"].isin(both.index[both > 1])]
    for image_id, rows in mixed.groupby("patientId", sort=False):
        lines0 = ", ".join(map(str, rows.index[rows["Target"] == "0"] + 2))
        lines1 = ", ".join(map(str, rows.index[rows["Target"] == "1"] + 2))
        problems.append(
            f"patientId={image_id!r} has Target=0 on line(s) {lines0} and Target=1 on line(s) {lines1}: "
            "expected one Target per image (0 for a single empty row, 1 for box rows)"
        )
    return problems


@register_format("rsna", RSNA_COLUMNS)
def _read_rsna(path: Path) -> Annotations:
    return read_rsna_labels(path)


# ---- NIH ChestX-ray14 ----


def read_nih_labels(path: str | Path) -> Annotations:
    """Parse the NIH ChestX-ray14 table (`Data_Entry_2017*.csv`) as image-level multi-label annotations.

    `image_id` is the `Image Index` without its extension; several images share a `patient_id`. The images
    table carries one 0/1 int column per finding (named as in `classes`), `positive` (any finding other than
    'No Finding'), `n_boxes` = 0, and `follow_up, age, sex, view, width, height, spacing_x, spacing_y` where the
    table has them. There are no boxes.

    Raises:
        TableError: Listing every problem: missing columns, empty ids, empty or unknown findings, 'No Finding'
            together with a finding, non-numeric ages, duplicate images.
    """
    path = Path(path)
    df = read_str_csv(path)
    require_columns(path, df, NIH_COLUMNS)
    df = df[[c for c in df.columns if not c.startswith("Unnamed:")]]

    problems: list[str] = []
    problems += field_problems(df, df["Image Index"] == "", "Image Index", "a non-empty image file name")
    problems += field_problems(df, df["Patient ID"] == "", "Patient ID", "a non-empty patient id")
    findings = df["Finding Labels"].str.replace(r"\s*\|\s*", "|", regex=True).str.get_dummies(sep="|")
    unknown = [c for c in findings.columns if c not in (*NIH_FINDINGS, NIH_NO_FINDING)]
    expected = f"'|'-separated findings among {', '.join(NIH_FINDINGS)}, or {NIH_NO_FINDING!r}"
    bad = df["Finding Labels"] == ""
    if unknown:
        bad |= findings[unknown].sum(axis=1) > 0
    if NIH_NO_FINDING in findings.columns:
        bad |= (findings[NIH_NO_FINDING] == 1) & (findings.drop(columns=[NIH_NO_FINDING]).sum(axis=1) > 0)
    problems += field_problems(df, bad, "Finding Labels", expected)
    if "Patient Age" in df.columns:
        ages, bad_age = parse_ages(df["Patient Age"])
        problems += field_problems(df, bad_age, "Patient Age", "an age in years")
    problems += duplicate_problems(df, ["Image Index"], "image")
    if problems:
        raise TableError(path, by_line(problems))

    images = df.rename(columns=NIH_RENAMES)
    images["image_id"] = images["image_id"].str.replace(r"\.[A-Za-z0-9]+$", "", regex=True)
    labels = findings.reindex(columns=list(NIH_FINDINGS), fill_value=0).astype(np.int64)
    images = images.drop(columns=["Finding Labels"])
    keep = ["image_id", "patient_id"]
    meta = [c for c in ("follow_up", "age", "sex", "view", "width", "height", "spacing_x", "spacing_y") if c in images]
    out = images[keep].copy()
    out["n_boxes"] = np.zeros(len(out), dtype=np.int64)
    out["positive"] = labels.sum(axis=1).to_numpy() > 0
    for col in meta:
        if col == "age":
            out[col] = ages
        elif col in ("sex", "view"):
            out[col] = images[col].replace("", pd.NA)
        else:
            out[col] = pd.to_numeric(images[col], errors="coerce")
    out[list(NIH_FINDINGS)] = labels.to_numpy()
    return Annotations(boxes=_empty_boxes(), images=out.reset_index(drop=True), classes=NIH_FINDINGS)


@register_format("nih", NIH_COLUMNS)
def _read_nih(path: Path) -> Annotations:
    return read_nih_labels(path)


# ---- per-image metadata (DICOM headers) ----


def read_rsna_headers(path: str | Path) -> pd.DataFrame:
    """Read per-image DICOM header fields: the RSNA header table, or any table already in canonical form.

    Accepted inputs: the RSNA `stage_2_train_dicom_headers.csv(.gz)` (`PatientID, PatientSex, PatientAge,
    ViewPosition, ...`; `Filename` stands in for a missing `PatientID`), or a CSV or parquet (for example a
    prepare cache's `meta.parquet`) with columns `image_id, sex, age, view`.

    Returns:
        One row per image: `image_id` (str), `sex` (str: M/F/O, or missing), `age` (Int64 whole years, or
        missing), `view` (str such as AP/PA, or missing), then `pixel_spacing, modality, body_part, patient` when
        present (`patient`: the DICOM PatientID a prepare meta table records).

    Raises:
        TableError: Listing every problem: missing columns, empty or duplicate image ids, sex not M/F/O,
            unreadable ages.
    """
    path = Path(path)
    if not path.exists():
        raise TableError(path, ["file not found: expected a DICOM header table (CSV) or a meta.parquet"])
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
        # Rows of a parquet file have no lines; errors name row + 2 as if it were a CSV with a header.
        df = df.astype({c: "string" for c in df.columns}).fillna("").reset_index(drop=True)
        for col in df.columns:
            df[col] = df[col].str.strip()
    else:
        df = read_str_csv(path)
    if "image_id" not in df.columns:
        if "PatientID" not in df.columns and "Filename" in df.columns:
            df["PatientID"] = df["Filename"].str.replace(r"\.dcm$", "", regex=True, case=False)
        df = df.rename(columns=HEADER_RENAMES)
    missing = [c for c in METADATA_COLUMNS if c not in df.columns]
    if missing:
        raise TableError(
            path,
            [
                f"line 1: missing column(s) {', '.join(map(repr, missing))}: expected either image_id, sex, age, view "
                f"or the DICOM header names PatientID, PatientSex, PatientAge, ViewPosition (found "
                f"{', '.join(map(str, df.columns))})"
            ],
        )

    problems: list[str] = []
    problems += field_problems(df, df["image_id"] == "", "image_id", "a non-empty image id")
    sex = df["sex"].str.upper()
    problems += field_problems(df, (sex != "") & ~sex.isin(SEXES), "sex", "M, F or O (or empty)")
    ages, bad_age = parse_ages(df["age"])
    problems += field_problems(df, bad_age, "age", "an age in years such as 43 or the DICOM form 043Y")
    problems += duplicate_problems(df, ["image_id"], "image_id")
    if problems:
        raise TableError(path, by_line(problems))

    out = pd.DataFrame(
        {
            "image_id": df["image_id"].astype(str),
            "sex": sex.replace("", pd.NA),
            "age": ages,
            "view": df["view"].str.upper().replace("", pd.NA),
        }
    )
    if "pixel_spacing" in df.columns:
        # DICOM PixelSpacing is "row\\col"; one value per image is enough here (square pixels in practice).
        out["pixel_spacing"] = pd.to_numeric(df["pixel_spacing"].str.split("\\").str[0], errors="coerce")
    for col in ("modality", "body_part", "patient"):  # patient: a prepare meta table's DICOM PatientID
        if col in df.columns:
            out[col] = df[col].replace("", pd.NA)
    return out
