"""Cross-validation folds: grouped by patient, stratified on what the label and header tables have.

A fold table has one row per image: `image_id, patient_id, fold` (fold in 0..K-1), sorted by image id. It is built
once per data set, committed under `folds/`, and read by every training, prediction and tuning run, so it must be
byte-for-byte reproducible from the labels, the header table, K and the seed.

The stratum of an image joins, in order of importance: positive or not, its rarest finding (multi-label tables such as
NIH's), number of boxes (0/1/2/3+), view position, sex and age decade (the RSNA winners stratified on label, age
decade, sex and view).

Multi-label tables cannot be stratified on every label combination (NIH has hundreds, most seen once). Two ways:

- One image per patient (VinBigData, whose images carry no patient id: each image is its own group): iterative
  multi-label stratification (Sechidis, Tsoumakas and Vlahavas, ECML PKDD 2011; `iterative-stratification`'s
  `MultilabelStratifiedKFold`) balances every class's presence over the folds at once, rare classes first, with "no
  finding" as one more label (`make_folds(..., multilabel=classes)`).
- Several images per patient (NIH): the iterative method knows no groups, so each image is keyed by the rarest of its
  findings instead (by the table's prevalence; 'none' without findings): a rare finding is what a fold most easily
  ends up without, and the common findings of the images keyed by it spread with them. Rare keys with fewer than K
  images are pooled like any rare stratum (`composite_strata`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from cxrdet.data.labels import (
    Annotations,
    by_line,
    duplicate_problems,
    field_problems,
    read_labels,
    read_rsna_headers,
    read_str_csv,
    require_columns,
)
from cxrdet.errors import ConfigError, TableError
from cxrdet.io import write_csv

FOLD_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "fold")
DEFAULT_STRATA: tuple[str, ...] = ("study_label", "positive", "finding", "n_boxes", "view", "sex", "age")
UNKNOWN = "?"
NO_FINDING = "none"


def stratum_keys(images: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """One short string key per image and stratification column.

    `positive` -> pos/neg, `n_boxes` -> 0/1/2/3+, `age` -> decade 0..9 (90 and over in 9), anything else -> its
    value as text; missing values -> '?'.
    """
    keys = {}
    for col in columns:
        values = images[col]
        if col == "positive":
            key = values.astype(bool).map({True: "pos", False: "neg"})
        elif col == "n_boxes":
            key = values.astype(np.int64).clip(upper=3).astype(str).replace("3", "3+")
        elif col == "age":
            decade = (pd.to_numeric(values, errors="coerce") // 10).clip(0, 9)
            key = decade.astype("Int64").astype("string").fillna(UNKNOWN)
        else:
            key = values.astype("string").fillna(UNKNOWN)
        keys[col] = key.astype(str).to_numpy()
    return pd.DataFrame(keys, index=images.index)


def rarest_finding(images: pd.DataFrame, classes: Sequence[str]) -> pd.Series:
    """Per image, the name of the least prevalent of its findings (`NO_FINDING` when it has none).

    Args:
        images: One row per image with a 0/1 column per name of `classes` (a multi-label `Annotations.images`).
        classes: The finding columns; prevalence ties go to the earlier one.

    Returns:
        Finding names indexed like `images`.
    """
    labels = images[list(classes)].to_numpy(dtype=bool)
    prevalence = labels.mean(axis=0)
    # Absent findings rank after every present one, so argmin picks the rarest present finding.
    rank = np.where(labels, prevalence[None, :], np.inf)
    names = np.asarray(classes, dtype=object)[rank.argmin(axis=1)]
    return pd.Series(np.where(labels.any(axis=1), names, NO_FINDING), index=images.index, name="finding")


def composite_strata(images: pd.DataFrame, columns: Sequence[str], k: int) -> pd.Series:
    """The stratum of each image: its column keys joined by '|', with strata of fewer than `k` images coarsened.

    A stratum with fewer than `k` members cannot have one member in every fold: the splitter then places its few
    members wherever they least disturb the common strata, and (when every stratum is rare) refuses to split.
    Dropping the least important column (the last) for the members of rare strata, repeatedly, pools them with the
    other leftovers of the same coarser stratum (e.g. the positive PA images of women of rare age decades) into a
    group big enough to be spread over the folds, so they are balanced on what they share instead of ignored.

    Args:
        images: One row per image with the `columns`.
        columns: Stratification columns, most important first.
        k: Number of folds.

    Returns:
        Stratum strings indexed like `images`; '*' for images pooled past the first column.
    """
    keys = stratum_keys(images, columns).to_numpy(dtype=object)
    n_rows, n_cols = keys.shape
    depth = np.full(n_rows, n_cols, dtype=np.int64)
    # prefixes[d, i]: the key of image i on its first d columns ('*' for none).
    prefixes = np.stack(
        [np.full(n_rows, "*", dtype=object)]
        + [np.array(["|".join(row) for row in keys[:, :d]], dtype=object) for d in range(1, n_cols + 1)]
    )
    rows = np.arange(n_rows)
    while True:
        strata = pd.Series(prefixes[depth, rows], index=images.index)
        counts = strata.map(strata.value_counts())
        rare = (counts < k).to_numpy() & (depth > 0)
        if not rare.any():
            break
        depth[rare] -= 1
    # The last few leftovers ('*', fewer than k) join the largest stratum: too few to matter for its balance.
    counts = strata.value_counts()
    if counts.get("*", k) < k and len(counts) > 1:
        strata[strata == "*"] = counts.drop("*").idxmax()
    return strata


def make_folds(images: pd.DataFrame, k: int, seed: int, strata_columns: Sequence[str] | None = None,
               multilabel: Sequence[str] | None = None) -> pd.DataFrame:
    """Assign every image to one of `k` folds, grouped by patient and stratified.

    Args:
        images: One row per image: `image_id, patient_id` and the stratification columns (an `Annotations.images`).
        k: Number of folds (>= 2, at most the number of patients).
        seed: Seed of the shuffle; the same inputs and seed give the same folds whatever the row order.
        strata_columns: Columns to stratify on, most important first; None takes those of `DEFAULT_STRATA`
            (study_label, positive, finding, n_boxes, view, sex, age) that `images` has.
        multilabel: The 0/1 class columns of a multi-label table with one image per patient: then the folds are
            made by iterative multi-label stratification of those classes (and "no finding") instead, and
            `strata_columns` is not used.

    Returns:
        `image_id, patient_id, fold` sorted by image id; all images of a patient share a fold.

    Raises:
        ConfigError: When k is out of range or a named stratification column is missing, or `multilabel` is given
            for a table with several images per patient.
        TableError: When image ids repeat.
    """
    require_columns(Path("<images table>"), images, ["image_id", "patient_id"])
    if multilabel is not None:
        return _multilabel_folds(images, k, seed, list(multilabel))
    if strata_columns is None:
        strata_columns = [c for c in DEFAULT_STRATA if c in images.columns]
    missing = [c for c in strata_columns if c not in images.columns]
    if missing:
        raise ConfigError(
            f"stratification column(s) {', '.join(missing)} not in the images table "
            f"(it has {', '.join(map(str, images.columns))})"
        )
    dup = images["image_id"].duplicated()
    if dup.any():
        ids = images.loc[dup, "image_id"].tolist()
        raise TableError("<images table>", [f"image_id={i!r} appears more than once" for i in ids])
    n_patients = images["patient_id"].nunique()
    if not 2 <= k <= n_patients:
        raise ConfigError(f"k={k}: expected 2 <= k <= the number of patients ({n_patients})")

    # Sorting first makes the folds independent of the input row order, so only the data, k and seed matter.
    table = images.sort_values("image_id", kind="stable").reset_index(drop=True)
    strata = composite_strata(table, strata_columns, k)
    from sklearn.model_selection import StratifiedGroupKFold  # here: reading a fold file needs no sklearn (~2 s)

    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(len(table), -1, dtype=np.int64)
    for f, (_, test_idx) in enumerate(splitter.split(np.zeros(len(table)), strata, groups=table["patient_id"])):
        fold[test_idx] = f
    return pd.DataFrame(
        {"image_id": table["image_id"].astype(str), "patient_id": table["patient_id"].astype(str), "fold": fold}
    )


def _multilabel_folds(images: pd.DataFrame, k: int, seed: int, classes: list[str]) -> pd.DataFrame:
    """`make_folds` by iterative multi-label stratification (see the module docstring)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    require_columns(Path("<images table>"), images, classes)
    if images["image_id"].duplicated().any():
        ids = images.loc[images["image_id"].duplicated(), "image_id"].tolist()
        raise TableError("<images table>", [f"image_id={i!r} appears more than once" for i in ids])
    if images["patient_id"].duplicated().any():
        raise ConfigError("multi-label stratification needs one image per patient; this table has patients with "
                          "several images: stratify on the rarest finding instead (leave multilabel out)")
    if not 2 <= k <= len(images):
        raise ConfigError(f"k={k}: expected 2 <= k <= the number of images ({len(images)})")
    table = images.sort_values("image_id", kind="stable").reset_index(drop=True)
    y = table[classes].to_numpy(dtype=np.int64)
    y = np.column_stack([y, (y.sum(axis=1) == 0).astype(np.int64)])  # "no finding" is a label too
    fold = np.full(len(table), -1, dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, test_idx) in enumerate(splitter.split(np.zeros(len(table)), y)):
        fold[test_idx] = f
    return pd.DataFrame(
        {"image_id": table["image_id"].astype(str), "patient_id": table["patient_id"].astype(str), "fold": fold}
    )


def multilabel_classes(images: pd.DataFrame, classes: Sequence[str]) -> list[str] | None:
    """The class columns to stratify `images` on by iterative multi-label stratification, or None where that does
    not apply: a table without one 0/1 column per class (RSNA), or with several images per patient (NIH)."""
    if len(classes) < 2 or not set(classes) <= set(images.columns) or images["patient_id"].duplicated().any():
        return None
    return list(classes)


def fold_summary(folds: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Per-fold balance figures, one row per fold then a row 'all'.

    Columns: `fold` (str), `images`, `patients`, `positive_rate`, `mean_boxes`, `ap_share` (AP among images with a
    known view), `male_share` (M among images with a known sex), `mean_age`; NaN where `images` lacks the column.
    A table with study categories (SIIM's `study_label`) adds one `<category>_share` column per category, in order of
    frequency.
    """
    table = folds[["image_id", "fold"]].merge(images, on="image_id", how="left", validate="one_to_one")
    categories = (table["study_label"].value_counts().index.tolist() if "study_label" in table.columns else [])

    def summarise(part: pd.DataFrame) -> dict[str, float]:
        def share(col: str, value: str) -> float:
            if col not in part.columns:
                return float("nan")
            known = part[col].dropna().astype(str).str.upper()
            return float((known == value).mean()) if len(known) else float("nan")

        def mean(col: str) -> float:
            return float(pd.to_numeric(part[col], errors="coerce").mean()) if col in part.columns else float("nan")

        return {
            "images": len(part),
            "patients": part["patient_id"].nunique(),
            "positive_rate": mean("positive"),
            "mean_boxes": mean("n_boxes"),
            "ap_share": share("view", "AP"),
            "male_share": share("sex", "M"),
            "mean_age": mean("age"),
            **{f"{c}_share": float((part["study_label"] == c).mean()) for c in categories},
        }

    rows = [{"fold": str(f), **summarise(part)} for f, part in table.groupby("fold", sort=True)]
    rows.append({"fold": "all", **summarise(table)})
    return pd.DataFrame(rows)


def summary_table(summary: pd.DataFrame, title: str = "folds") -> Table:
    """A rich table of `fold_summary` output for the terminal."""
    headers = {"positive_rate": "pos %", "mean_boxes": "boxes/img", "ap_share": "AP %", "male_share": "male %",
               "mean_age": "age"}  # fmt: skip
    table = Table(title=title)
    for col in summary.columns:
        name = headers.get(col, col.removesuffix("_share")[:5] + " %" if col.endswith("_share") else col)
        table.add_column(name, justify="left" if col == "fold" else "right")
    formats = {"positive_rate": "{:.2%}", "ap_share": "{:.2%}", "male_share": "{:.2%}", "mean_boxes": "{:.3f}",
               "mean_age": "{:.1f}"}  # fmt: skip
    for col in summary.columns:
        if col.endswith("_share") and col not in formats:  # study categories (SIIM)
            formats[col] = "{:.2%}"
    for _, row in summary.iterrows():
        if row["fold"] == "all":
            table.add_section()
        cells = [
            ("-" if pd.isna(row[col]) else formats[col].format(row[col])) if col in formats else str(row[col])
            for col in summary.columns
        ]
        table.add_row(*cells)
    return table


def fold_problems(df: pd.DataFrame) -> list[str]:
    """Every problem of a fold table whose fields are stripped strings indexed by file position (line = index + 2).

    Checks: fold is a non-negative integer, the folds are 0..K-1 with none empty, no image id twice, no patient in
    two folds.
    """
    problems: list[str] = []
    problems += field_problems(df, df["image_id"] == "", "image_id", "a non-empty image id")
    problems += field_problems(df, df["patient_id"] == "", "patient_id", "a non-empty patient id")
    is_int = df["fold"].str.fullmatch(r"\d+").fillna(False).astype(bool)
    problems += field_problems(df, ~is_int, "fold", "an integer >= 0")
    problems += duplicate_problems(df, ["image_id"], "image_id")
    present = set(df.loc[is_int, "fold"].astype(np.int64).unique().tolist())
    if present and present != set(range(max(present) + 1)):
        absent = sorted(set(range(max(present) + 1)) - present)
        problems.append(f"fold: no image in fold(s) {', '.join(map(str, absent))}: expected folds 0..K-1 all used")
    good = df[is_int & (df["patient_id"] != "")]
    per_patient = good["fold"].astype(np.int64).groupby(good["patient_id"], sort=False).nunique()
    split = good[good["patient_id"].isin(per_patient.index[per_patient > 1])]
    for patient, rows in split.groupby("patient_id", sort=False):
        where = ", ".join(f"fold {f} on line {i + 2}" for i, f in zip(rows.index, rows["fold"], strict=True))
        problems.append(f"patient_id={patient!r} is in several folds ({where}): expected one fold per patient")
    return problems


def write_folds(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a fold table atomically as `image_id,patient_id,fold`, sorted by image id (same table, same bytes).

    Raises:
        TableError: When the table breaks a rule of `fold_problems` (lines as they would be in the file).
    """
    path = Path(path)
    require_columns(path, df, FOLD_COLUMNS)
    out = df[list(FOLD_COLUMNS)].sort_values("image_id", kind="stable").reset_index(drop=True)
    problems = fold_problems(out.astype(str).apply(lambda s: s.str.strip()))
    if problems:
        raise TableError(path, by_line(problems))
    out = out.astype({"image_id": str, "patient_id": str, "fold": np.int64})
    return write_csv(path, out)


def fold_ids(folds: str | Path) -> list[int]:
    """The folds of a config's `data.folds` (a fold file's path or name, `cxrdet.paths.folds_file`), ascending.

    Raises:
        TableError: The fold file is missing or invalid (`read_folds`).
    """
    from cxrdet import paths

    return sorted(set(read_folds(paths.folds_file(folds))["fold"].tolist()))


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read and validate a fold table.

    Returns:
        `image_id, patient_id` (str), `fold` (int64), in file order.

    Raises:
        TableError: Listing every problem, each naming its line: missing columns, a fold that is not an integer
            >= 0, unused fold numbers, repeated image ids, a patient in two folds.
    """
    path = Path(path)
    df = read_str_csv(path)
    require_columns(path, df, FOLD_COLUMNS)
    problems = fold_problems(df)
    if problems:
        raise TableError(path, by_line(problems))
    out = df[list(FOLD_COLUMNS)].astype({"fold": np.int64}).reset_index(drop=True)
    return out


def images_for_folds(labels: str | Path, headers: str | Path | None = None, fmt: str = "auto") -> pd.DataFrame:
    """The images table to build folds from: the labels' images, with header metadata joined when given.

    A multi-label table (one 0/1 column per class, as NIH's) also gets `finding`, each image's rarest finding
    (`rarest_finding`), to stratify on. An NIH table beside its `train_val_list.txt` (the NIH layout) gives the listed
    images only: `test_list.txt` is NIH's held-out test split, as RSNA's test images are.

    Args:
        labels: A label table of a registered format.
        headers: Optional DICOM header table or `meta.parquet` (`image_id, sex, age, view`).
        fmt: Label format name or `auto`.
    """
    from cxrdet import paths
    from cxrdet.data.labels import detect_format

    labels = Path(labels)
    fmt = detect_format(labels) if fmt == "auto" else fmt
    annotations: Annotations = read_labels(labels, fmt=fmt)
    if headers is not None:
        annotations = annotations.with_metadata(read_rsna_headers(headers), source=headers)
    images = annotations.images
    if "patient" in images.columns and images["patient"].notna().any():
        images = images.assign(patient_id=linked_groups(images["patient_id"], images["patient"]))
    train_list = paths.NihLayout(labels.parent).train_val_list
    if fmt == "nih" and train_list.is_file():
        listed = {Path(name).stem for name in train_list.read_text(encoding="utf-8").split()}
        images = images[images["image_id"].isin(listed)].reset_index(drop=True)
    if set(annotations.classes) <= set(images.columns):
        images = images.assign(finding=rarest_finding(images, annotations.classes))
    return images


def linked_groups(groups: pd.Series, patients: pd.Series) -> pd.Series:
    """Each image's group once groups that share a header patient are joined: the folds keep a patient's studies
    together (SIIM: the label table groups by study; the DICOM PatientID, where the header has one, links a patient's
    studies). The joined group is named by its first group id in sorted order; images without a patient keep their
    group.

    Args:
        groups: Each image's group (the label table's `patient_id`: SIIM's study).
        patients: Each image's header patient, missing where the header has none.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    group_codes, group_names = pd.factorize(groups.astype(str), sort=True)
    known = patients.notna().to_numpy() & (patients.astype("string").fillna("") != "").to_numpy()
    patient_codes, _ = pd.factorize(patients[known].astype(str))
    n_groups = len(group_names)
    # A bipartite graph: group nodes 0..G-1, patient nodes G..; an image with a patient joins its two nodes.
    rows, cols = group_codes[known], n_groups + patient_codes
    size = n_groups + (int(patient_codes.max()) + 1 if len(patient_codes) else 0)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    first = pd.Series(np.arange(n_groups)).groupby(component[:n_groups]).transform("min").to_numpy()
    return pd.Series(np.asarray(group_names)[first[group_codes]], index=groups.index, name=groups.name)


def label_classes(labels: str | Path, fmt: str = "auto") -> tuple[str, ...]:
    """The classes of a label table (its format's reader's `classes`)."""
    from cxrdet.data.labels import detect_format

    return read_labels(labels, fmt=detect_format(labels) if fmt == "auto" else fmt).classes
