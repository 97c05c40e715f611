"""The `Competition` object and its registry: what differs between the chest X-ray competitions cxrdet serves.

A competition owns its download layout, label reader, classes, metric, submission format and fold stratification;
the data root tells which one it is (`detect`), or a config's `data.competition` names it. A new competition is one
module that registers one `Competition` (`cxrdet.competitions.rsna`, `cxrdet.competitions.vinbigdata`) and is
imported by `cxrdet.competitions`, whose functions (re-exported from here) callers use: importing the package is
what registers them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrdet.data.labels import FORMATS, Annotations, detect_format
from cxrdet.errors import ConfigError, CxrdetError, TableError
from cxrdet.registry import Registry


@dataclass(frozen=True)
class Competition:
    """One competition.

    Attributes:
        name: Registry name (`rsna`, `vinbigdata`), the value of `data.competition`.
        title: The competition's name on Kaggle.
        classes: The detection classes, indexed by a box's `label`.
        label_format: The `cxrdet.data.labels` format of its label table.
        layout: `root -> layout` of its download (`labels_csv`, `images_dir(split)`, `sample_submission`, ...).
        image_size: `(width, height)` of every image, or None when sizes vary (read from each DICOM).
        metric: The metric's name (`rsna`, `voc@0.4`), as `cxrdet score` prints it.
        score: `(labels, submission_path, image_ids, allow_missing, metric) -> report dict`: a submission file scored
            against the competition's labels (`metric` None: the competition's own).
        validate: `(submission_path, image_ids, image_size) -> summary line`: a submission file checked against the
            test set (`image_size` None: the competition's own sizes).
        sample_ids: `sample_submission_path -> test image ids`.
        submission_columns: The header of its submission files.
        fold_columns: Per-image columns its folds are stratified on, most important first.
    """

    name: str
    title: str
    classes: tuple[str, ...]
    label_format: str
    layout: Callable[[Path], Any]
    image_size: tuple[int, int] | None
    metric: str
    score: Callable[[Annotations, Path, Sequence[str], bool, str | None], dict[str, Any]]
    validate: Callable[[Path, Sequence[str] | None, int | None], str]
    sample_ids: Callable[[Path], list[str]]
    submission_columns: tuple[str, ...]
    fold_columns: tuple[str, ...] = ()

    def read_labels(self, path: str | Path) -> Annotations:
        """The competition's label table as canonical annotations."""
        return FORMATS.get(self.label_format).reader(Path(path))


COMPETITIONS: Registry[Competition] = Registry("competition", key="data.competition")


def get_competition(name: str) -> Competition:
    """The registered competition `name`.

    Raises:
        ConfigError: Unknown name (the message lists the registered ones).
    """
    return COMPETITIONS.get(name)


def competition_of_labels(path: str | Path) -> Competition:
    """The competition whose label format the table's header matches.

    Raises:
        TableError: No (or more than one) format matches. CxrdetError: A format no competition uses (NIH).
    """
    fmt = detect_format(path)
    for _, competition in COMPETITIONS.items():
        if competition.label_format == fmt:
            return competition
    raise CxrdetError(f"{path}: a {fmt!r} label table, which belongs to no competition (registered: "
                      f"{', '.join(COMPETITIONS.names())})")


def competition_of_submission(path: str | Path) -> Competition:
    """The competition whose submission header a file (a submission or a sample submission) has.

    Raises:
        TableError: The header is none of the registered competitions'.
    """
    from cxrdet.data.labels import _read_header

    header = _read_header(Path(path))
    for _, competition in COMPETITIONS.items():
        if header == list(competition.submission_columns):
            return competition
    known = "; ".join(f"{c.name}: {','.join(c.submission_columns)}" for _, c in COMPETITIONS.items())
    raise TableError(path, [f"line 1: header {','.join(header)!r} is no competition's submission header ({known})"])


def detect(root: str | Path) -> Competition:
    """The competition of a data root, told by the label table its layout expects.

    Raises:
        ConfigError: No registered competition's label table is in `root`, or several are.
    """
    root = Path(root)
    found = [c for _, c in COMPETITIONS.items() if Path(c.layout(root).labels_csv).is_file()]
    if len(found) != 1:
        expected = "; ".join(f"{c.name}: {Path(c.layout(root).labels_csv).name}" for _, c in COMPETITIONS.items())
        what = "none" if not found else f"several ({', '.join(c.name for c in found)})"
        raise ConfigError(f"{root}: {what} of the competitions' label tables found; expected one of {expected}")
    return found[0]
