"""RSNA Pneumonia Detection Challenge (Kaggle, 2018), the reference competition, behind the `Competition` interface.

Its pieces predate the registry and stay where they are: the layout `cxrdet.paths.KaggleLayout`, the label reader
`cxrdet.data.labels.read_rsna_labels`, the metric `cxrdet.metrics.rsna` and the submission format
`cxrdet.submission` (the facts and their sources are in those modules' docstrings and background.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cxrdet import submission
from cxrdet.competitions.base import COMPETITIONS, Competition
from cxrdet.data.labels import RSNA_CLASSES, RSNA_IMAGE_SIZE, Annotations
from cxrdet.errors import ConfigError
from cxrdet.metrics.rsna import RsnaEvaluator
from cxrdet.paths import KaggleLayout

GT_COLUMNS = ["image_id", "x1", "y1", "x2", "y2", "label"]


def _score(labels: Annotations, path: Path, image_ids: Sequence[str], allow_missing: bool, metric: str | None
           ) -> dict[str, Any]:
    """`rsna` (the competition metric, the default) or `coco` (mAP@0.50:0.95, with mAP@0.50 and 0.40)."""
    metric = metric or "rsna"
    if metric not in ("rsna", "coco"):
        raise ConfigError(f"metric {metric!r} is unknown for rsna: expected 'rsna' or 'coco'")
    return submission.score_annotations(labels, path, metric=metric, allow_missing=allow_missing)


def _validate(path: Path, image_ids: Sequence[str] | None, image_size: int | None) -> str:
    stats = submission.validate_submission(path, image_ids=image_ids, image_size=image_size or RSNA_IMAGE_SIZE)
    return f"{stats.n_rows} rows, {stats.n_boxes} boxes, {stats.n_empty} empty rows"


def _ground_truth(labels: Annotations, readers: Mapping[str, Any] | None) -> pd.DataFrame:
    """The label table's boxes as they are: each RSNA image has one (adjudicated) set of boxes."""
    if readers:
        raise ConfigError(f"data.readers={dict(readers)!r}: RSNA labels have one reader per image; leave it unset")
    return labels.boxes[GT_COLUMNS].reset_index(drop=True)


def _evaluator(gt: pd.DataFrame, image_ids: Sequence[str], images: pd.DataFrame | None = None) -> RsnaEvaluator:
    """The RSNA metric (per-image metadata plays no part)."""
    return RsnaEvaluator(gt, image_ids)


def _write(path: Path, pred: pd.DataFrame, image_ids: Sequence[str], sizes: Mapping[str, tuple[int, int]]
           ) -> dict[str, int]:
    size = sizes if sizes else RSNA_IMAGE_SIZE
    written = submission.write_submission(path, pred, image_ids, size)
    stats = submission.validate_submission(path, image_ids, size)
    return {"n_rows": stats.n_rows, "n_boxes": stats.n_boxes, "n_empty": stats.n_empty,
            "n_dropped": written.n_dropped}


RSNA = COMPETITIONS.register(Competition(
    name="rsna", title="RSNA Pneumonia Detection Challenge (2018)", classes=RSNA_CLASSES, label_format="rsna",
    layout=KaggleLayout, image_size=RSNA_IMAGE_SIZE, metric="rsna", score=_score, validate=_validate,
    sample_ids=submission.read_image_ids,
    submission_columns=submission.SUBMISSION_HEADER, fold_columns=("positive", "n_boxes", "view", "sex", "age"),
    evaluator=_evaluator, ground_truth=_ground_truth, write_submission=_write, monitor="val/rsna",
    image_suffix=".dcm",
), name="rsna")  # fmt: skip
