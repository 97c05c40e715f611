"""RSNA Pneumonia Detection Challenge (Kaggle, 2018), the reference competition, behind the `Competition` interface.

Its pieces predate the registry and stay where they are: the layout `cxrdet.paths.KaggleLayout`, the label reader
`cxrdet.data.labels.read_rsna_labels`, the metric `cxrdet.metrics.rsna` and the submission format
`cxrdet.submission` (the facts and their sources are in those modules' docstrings and background.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrdet import submission
from cxrdet.competitions.base import COMPETITIONS, Competition
from cxrdet.data.labels import RSNA_CLASSES, RSNA_IMAGE_SIZE, Annotations
from cxrdet.errors import ConfigError
from cxrdet.paths import KaggleLayout


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


RSNA = COMPETITIONS.register(Competition(
    name="rsna", title="RSNA Pneumonia Detection Challenge (2018)", classes=RSNA_CLASSES, label_format="rsna",
    layout=KaggleLayout, image_size=RSNA_IMAGE_SIZE, metric="rsna", score=_score, validate=_validate,
    sample_ids=submission.read_image_ids,
    submission_columns=submission.SUBMISSION_HEADER, fold_columns=("positive", "n_boxes", "view", "sex", "age"),
), name="rsna")  # fmt: skip
