"""The `Competition` object and its registry: what differs between the chest X-ray competitions cxrdet serves.

A competition owns its download layout, label reader, classes, metric, submission format and fold stratification;
the data root tells which one it is (`detect`), or a config's `data.competition` names it. A new competition is one
module that registers one `Competition` (`cxrdet.competitions.rsna`, `cxrdet.competitions.vinbigdata`) and is
imported by `cxrdet.competitions`, whose functions (re-exported from here) callers use: importing the package is
what registers them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet import paths
from cxrdet.data.labels import FORMATS, Annotations, detect_format
from cxrdet.errors import ConfigError, CxrdetError, TableError
from cxrdet.registry import Registry


class Evaluator(Protocol):
    """A competition metric bound to one image set and its ground truth (what validation, tuning and reports ask).

    `score(pred).score` is the metric of a prediction table (`image_id, x1, y1, x2, y2, score, label`, xyxy pixels of
    the original image); `score_vs_threshold(pred, cuts)` has one row per confidence cut (`threshold`, `score`):
    the metric of the boxes with score >= the cut.
    """

    image_ids: pd.Index

    def score(self, pred: pd.DataFrame) -> Any: ...

    def score_vs_threshold(self, pred: pd.DataFrame, thresholds: Sequence[float] | npt.ArrayLike) -> pd.DataFrame: ...


def _as_is(pred: pd.DataFrame, image_ids: Sequence[str], prob: npt.NDArray[np.float64] | None,
           images: pd.DataFrame | None = None, post: Any = None) -> pd.DataFrame:
    return pred


def _same(ids: list[str]) -> list[str]:
    return ids


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
        sample_ids: `sample_submission_path -> its row ids` (RSNA, VinBigData: the test image ids; SIIM:
            `<study>_study` and `<image>_image`).
        submission_columns: The header of its submission files.
        fold_columns: Per-image columns its folds are stratified on, most important first.
        evaluator: `(gt, image_ids, images=None) -> Evaluator`: the metric on one image set; `gt` is
            `ground_truth`'s table, `images` the label table's per-image rows of the set (`Annotations.images`:
            SIIM's study of each image and its class; without them SIIM scores the image level alone).
        ground_truth: `(labels, readers) -> boxes` (`image_id, x1, y1, x2, y2, label`): the boxes the metric
            compares with, made from the label table (several readers fused by `data.readers`; see
            `cxrdet.data.readers`).
        complete: `(pred, image_ids, prob, images=None, post=None) -> pred`: the rows a submission needs besides
            the detector's boxes (VinBigData: the no-finding box of every image, from an image-level probability
            `prob` of "abnormal" when given; SIIM: each image's `none` box and each study's four classes, from
            `images`' `study_id` and `prob_<class>` columns); `post` (`PostParams`) carries their tuned options
            (`none_weight`, `study_pool`). Identity where there are none (RSNA).
        write_submission: `(path, pred, image_ids, sizes) -> stats dict` (`n_rows, n_boxes, n_empty, n_dropped`):
            the competition's file, written atomically and read back through its validator. `sizes` maps an image
            id to `(width, height)`.
        monitor: The validation metric's logged name (`val/rsna`), which picks the best checkpoint.
        image_suffix: The suffix of its image files (`.dcm`, `.dicom`).
        image_glob: Where a split folder's image files lie, as a glob (`*`; SIIM `*/*/*`: study/series/image).
        studies: `(root, split) -> image_id, study_id` of a split's image files, for a competition that predicts
            studies (SIIM), else None.
        image_ids_of: `sample row ids -> test image ids` (identity, SIIM keeps the `_image` rows).
        study_classes: The study-level classes (SIIM's four), else empty.
        time_limit_minutes: A code competition's notebook time limit, else None.
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
    evaluator: Callable[..., Evaluator] | None = None
    ground_truth: Callable[[Annotations, Mapping[str, Any] | None], pd.DataFrame] | None = None
    complete: Callable[..., pd.DataFrame] = _as_is
    write_submission: Callable[[Path, pd.DataFrame, Sequence[str], Mapping[str, tuple[int, int]]],
                               dict[str, int]] | None = None
    monitor: str = "val/score"
    image_suffix: str = ".dcm"
    image_glob: str = "*"
    studies: Callable[[Path, str], pd.DataFrame] | None = None
    image_ids_of: Callable[[list[str]], list[str]] = _same
    study_classes: tuple[str, ...] = ()
    time_limit_minutes: int | None = None

    def image_files(self, folder: str | Path) -> list[Path]:
        """The image files of a split folder (`image_glob`, `image_suffix`), sorted by path."""
        return sorted(p for p in Path(folder).glob(self.image_glob)
                      if p.suffix.lower() == self.image_suffix and p.is_file())

    def test_image_ids(self, root: str | Path) -> list[str]:
        """The test image set of a data root: its sample submission's ids, else its test folder's image files.

        Raises:
            ConfigError: Neither exists.
        """
        layout = self.layout(Path(root))
        if Path(layout.sample_submission).is_file():
            return self.image_ids_of(self.sample_ids(Path(layout.sample_submission)))
        folder = Path(layout.images_dir("test"))
        if folder.is_dir():
            return sorted(p.stem for p in self.image_files(folder))
        raise ConfigError(f"{root}: no test image list: expected {layout.sample_submission} or {folder}/*"
                          f"{self.image_suffix}")

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


def studies_of(images: pd.DataFrame, image_ids: Sequence[str] | pd.Index, source: str | Path = "studies",
               columns: Sequence[str] = ("study_id", "study_class")) -> pd.DataFrame:
    """The rows of `image_ids`, in their order, of a per-image study table (`image_id, study_id`, ...: SIIM's
    `Annotations.images`, or a test split's `Competition.studies`): `image_id` and those of `columns` it has.

    Raises:
        TableError: An image of `image_ids` has no study (named by `source`).
    """
    ids = pd.Index(image_ids)
    kept = [c for c in columns if c in images.columns]
    found = images[["image_id", *kept]].drop_duplicates("image_id").set_index("image_id").reindex(ids)
    if found["study_id"].isna().any():
        missing = ids[found["study_id"].isna().to_numpy()]
        raise TableError(source, [f"{len(missing)} image(s) of the set have no study, e.g. {list(missing[:10])}"])
    return found.rename_axis("image_id").reset_index()


def with_labels(root: Path) -> list[Competition]:
    """The registered competitions whose label table is in `root`."""
    return [c for _, c in COMPETITIONS.items() if Path(c.layout(root).labels_csv).is_file()]


def of_data(data_cfg: Mapping[str, Any] | None) -> Competition:
    """The competition of a config's `data` section: `data.competition` when set, else told by `data.root`'s layout
    (default `cxrdet.paths.data_root()`).

    Raises:
        ConfigError: An unknown name, or a root whose competition cannot be told.
    """
    data_cfg = data_cfg or {}
    if data_cfg.get("competition"):
        return get_competition(str(data_cfg["competition"]))
    return detect(Path(data_cfg["root"]) if data_cfg.get("root") else paths.data_root())  # no competition named


def data_layout(root: str | Path) -> Any:
    """The layout of the data set in `root`: a registered competition's (told by its label table), else an NIH
    ChestX-ray14 one (`cxrdet.paths.NihLayout`, the classifiers' pretraining data, which is no competition).

    Raises:
        ConfigError: Neither (or several) label tables are in `root`.
    """
    root = Path(root)
    nih = paths.NihLayout(root)
    found = with_labels(root)
    if nih.labels_csv.is_file() and not found:
        return nih
    if len(found) == 1 and not nih.labels_csv.is_file():
        return found[0].layout(root)
    expected = "; ".join(f"{c.name}: {Path(c.layout(root).labels_csv).name}" for _, c in COMPETITIONS.items())
    names = [c.name for c in found] + ["nih"] * nih.labels_csv.is_file()
    what = "none" if not found else f"several ({', '.join(names)})"
    raise ConfigError(f"{root}: {what} of the known label tables found: expected one of {expected}; nih: "
                      f"{paths.NIH_LABELS}" + ("" if root.is_dir() else "; the folder does not exist"))


def detect(root: str | Path) -> Competition:
    """The competition of a data root, told by the label table its layout expects.

    Raises:
        ConfigError: No registered competition's label table is in `root`, or several are.
    """
    root = Path(root)
    found = with_labels(root)
    if len(found) != 1:
        expected = "; ".join(f"{c.name}: {Path(c.layout(root).labels_csv).name}" for _, c in COMPETITIONS.items())
        what = "none" if not found else f"several ({', '.join(c.name for c in found)})"
        raise ConfigError(f"{root}: {what} of the competitions' label tables found; expected one of {expected}")
    return found[0]
