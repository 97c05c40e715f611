"""Post-processing of fused boxes: each step optional, tunable and a pure function of a `BoxSet`.

Applied by `postprocess` in this order (a step whose parameter has its neutral value does nothing):

1. `drop_non_finite`: fused boxes with non-finite corners (ensemble-boxes gives NaN corners to a cluster of
   zero-confidence boxes) are dropped; the metric refuses them.
2. `scale_by_votes`: score * (votes / n_members) ** vote_power, where votes is the number of members that voted for
   the fused box (RSNA 1st place: power 1). Neutral: power 0.
3. `apply_classifier`: with an image-level probability p (a pneumonia classifier), boxes of images with p < tau are
   dropped and the others' scores become score * p ** alpha. Neutral: alpha 0 and tau 0.
4. `threshold`: boxes with score < final_thr are dropped, and (`class_thr`, one cut per class index) boxes of class k
   with score < class_thr[k]. Neutral: 0 and () (with non-negative scores).
5. `shrink`: width and height scaled by `factor` around each box centre (RSNA 1st place: 0.875). Neutral: 1.
6. `cap_per_image`: at most `max_boxes` boxes per image, the highest scores first. Neutral: None.

Two parameters act after these steps, in the competition's `complete` (the rows a submission needs besides the
boxes): `none_weight`, the weight of the classifier against the detector in an image's no-finding confidence
(VinBigData's class 14, SIIM's `none`; None: the classifier alone when there is one), and for SIIM's study rows
`study_pool` (how a study's images are pooled: `mean` or `max`), `study_weight` (the weight of the classifier's
P(negative) against the detector's in the study's `negative`) and `study_power` (how sharply the classifier's split
among the three positive categories applies: 0 ignores it).

The per-member confidence threshold acts before fusion (`FusionInput.fuse(member_thr=...)`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet.boxes import shrink_xyxy
from cxrdet.ensemble.fuse import BoxSet
from cxrdet.errors import ConfigError, TableError

_MAX_LISTED = 10


@dataclass(frozen=True)
class PostParams:
    """Parameters of the post-processing steps (see the module docstring); the defaults do nothing.

    Attributes:
        vote_power: Exponent of the vote fraction multiplying each score.
        cls_alpha: Exponent of the classifier probability multiplying each score.
        cls_tau: Boxes of images whose classifier probability is below this are dropped.
        shrink: Factor of width and height around the centre.
        final_thr: Lowest score kept.
        max_boxes: Most boxes kept per image (None: no cap).
        class_thr: Lowest score kept per class index (classes past its end: no cut of their own).
        none_weight: In [0, 1]: the no-finding confidence is `w * (1 - p) + (1 - w) * (1 - top box score)` with
            `p` the classifier's probability; None: 1 with a classifier, 0 without (see `Competition.complete`).
        study_pool: `mean` or `max` of a study's images' class probabilities (SIIM).
        study_weight: In [0, 1]: a study's `negative` is `w * classifier P(negative) + (1 - w) * (its images' pooled
            none confidence from the detector)`; None: 1 with a classifier, 0 without (SIIM).
        study_power: >= 0: each positive category's confidence is `(1 - negative) * q ** power` normalised over the
            three, `q` the classifier's probabilities (SIIM; default 1).
    """

    vote_power: float = 0.0
    cls_alpha: float = 0.0
    cls_tau: float = 0.0
    shrink: float = 1.0
    final_thr: float = 0.0
    max_boxes: int | None = None
    class_thr: tuple[float, ...] = ()
    none_weight: float | None = None
    study_pool: str = "mean"
    study_weight: float | None = None
    study_power: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if not self.shrink > 0:
            problems.append(f"shrink {self.shrink!r}: expected a factor > 0")
        if self.max_boxes is not None and self.max_boxes < 1:
            problems.append(f"max_boxes {self.max_boxes!r}: expected an integer >= 1 or None")
        if self.vote_power < 0 or self.cls_alpha < 0:
            problems.append(f"vote_power {self.vote_power!r}, cls_alpha {self.cls_alpha!r}: expected numbers >= 0")
        if self.none_weight is not None and not 0.0 <= self.none_weight <= 1.0:
            problems.append(f"none_weight {self.none_weight!r}: expected None or a number in [0, 1]")
        if self.study_weight is not None and not 0.0 <= self.study_weight <= 1.0:
            problems.append(f"study_weight {self.study_weight!r}: expected None or a number in [0, 1]")
        if not self.study_power >= 0:
            problems.append(f"study_power {self.study_power!r}: expected a number >= 0")
        if self.study_pool not in ("mean", "max"):
            problems.append(f"study_pool {self.study_pool!r}: expected 'mean' or 'max'")
        if problems:
            raise ConfigError("postprocess: " + "; ".join(problems))

    @property
    def uses_classifier(self) -> bool:
        """Whether the steps need classifier probabilities."""
        return self.cls_alpha != 0.0 or self.cls_tau > 0.0


def drop_non_finite(boxes: BoxSet) -> BoxSet:
    """Drop boxes with a non-finite corner or score."""
    ok = np.isfinite(boxes.boxes).all(axis=1) & np.isfinite(boxes.score)
    return boxes if ok.all() else boxes.take(ok)


def scale_by_votes(boxes: BoxSet, n_members: int, power: float) -> BoxSet:
    """Multiply each score by (votes / n_members) ** power (votes: members that voted for the fused box).

    Raises:
        ConfigError: When `power` is not 0 and the votes are unknown (fused by an engine that does not count them).
    """
    if power == 0.0 or len(boxes) == 0:
        return boxes
    if (boxes.votes <= 0).any():
        raise ConfigError("vote_power needs the vote count of each fused box: use method 'wbf' with the fast engine, "
                          "or 'none'")
    return replace(boxes, score=boxes.score * (boxes.votes / n_members) ** power)


def apply_classifier(boxes: BoxSet, prob: npt.NDArray[np.float64], alpha: float, tau: float) -> BoxSet:
    """Gate and rescale by an image-level probability.

    Args:
        boxes: Boxes whose `image` indexes `prob`.
        prob: Probability of each image of the image set (e.g. of pneumonia), in [0, 1].
        alpha: Scores become score * p ** alpha (0: unchanged).
        tau: Boxes of images with p < tau are dropped (0: none).
    """
    if (alpha == 0.0 and tau <= 0.0) or len(boxes) == 0:
        return boxes
    p = prob[boxes.image]
    kept = boxes.take(p >= tau) if tau > 0.0 else boxes
    if alpha == 0.0:
        return kept
    return replace(kept, score=kept.score * prob[kept.image] ** alpha)


def shrink(boxes: BoxSet, factor: float) -> BoxSet:
    """Scale each box's width and height by `factor` around its centre (xyxy pixels stay xyxy pixels)."""
    if factor == 1.0 or len(boxes) == 0:
        return boxes
    return replace(boxes, boxes=shrink_xyxy(boxes.boxes, factor))


def threshold(boxes: BoxSet, thr: float, class_thr: tuple[float, ...] = ()) -> BoxSet:
    """Keep the boxes whose score is >= `thr` and >= their class's cut `class_thr[label]` (when it has one)."""
    keep = boxes.score >= thr
    if class_thr and len(boxes):
        cuts = np.append(np.asarray(class_thr, dtype=np.float64), 0.0)  # the last entry: classes without a cut
        keep &= boxes.score >= cuts[np.minimum(boxes.label, len(class_thr))]
    return boxes if keep.all() else boxes.take(keep)


def cap_per_image(boxes: BoxSet, max_boxes: int | None) -> BoxSet:
    """Keep at most `max_boxes` boxes per image: the highest scores, equal scores by ascending (x1, y1, x2, y2)
    (the metric's own visiting order, so that the kept boxes never depend on row order)."""
    if max_boxes is None or len(boxes) == 0:
        return boxes
    b = boxes.boxes
    order = np.lexsort([b[:, 3], b[:, 2], b[:, 1], b[:, 0], -boxes.score, boxes.image])
    image = boxes.image[order]
    first = np.r_[True, image[1:] != image[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(image)), 0))
    keep = order[np.arange(len(image)) - start < max_boxes]
    return boxes.take(np.sort(keep))


def postprocess(boxes: BoxSet, params: PostParams, n_members: int,
                prob: npt.NDArray[np.float64] | None = None) -> BoxSet:
    """Apply every post-processing step in the module's order.

    Args:
        boxes: Fused boxes (xyxy pixels of the original image).
        params: The steps' parameters.
        n_members: Number of members fused (the denominator of the vote fraction).
        prob: Classifier probability of each image of the image set; needed when `params.uses_classifier`.

    Raises:
        ConfigError: The classifier steps are on and no probabilities were given.
    """
    out = drop_non_finite(boxes)
    out = scale_by_votes(out, n_members, params.vote_power)
    if params.uses_classifier:
        if prob is None:
            raise ConfigError("postprocess: cls_alpha / cls_tau are set but the ensemble has no classifier")
        out = apply_classifier(out, prob, params.cls_alpha, params.cls_tau)
    out = threshold(out, params.final_thr, params.class_thr)  # before shrinking: fewer boxes, same result
    out = shrink(out, params.shrink)
    return cap_per_image(out, params.max_boxes)


def classifier_column(frame: pd.DataFrame, column: str | None = None, source: str | Path = "classifier") -> str:
    """The probability column of a classifier's table: `column`, or, when None, its only column besides `image_id`.

    Raises:
        TableError: `column` is absent, or it is None and the table has no or several class columns (all listed).
    """
    classes = [str(c) for c in frame.columns if c != "image_id"]
    if column is not None:
        if column not in frame.columns:
            raise TableError(source, [f"lacks the classifier column {column!r}; its class columns are {classes}"])
        return column
    if len(classes) != 1:
        problem = (f"has {len(classes)} class columns {classes}: name the one to gate with, "
                   "classifier=dict(experiment=..., column=NAME)")
        raise TableError(source, [problem])
    return classes[0]


def classifier_probs(frame: pd.DataFrame, image_ids: pd.Index, source: str | Path = "classifier",
                     column: str | None = None) -> npt.NDArray[np.float64]:
    """The seam for an image-level classifier: one probability column of its table, aligned with an image set.

    Several rows of one image (e.g. one per fold model on the test set) are averaged.

    Args:
        frame: Columns `image_id` and one probability in [0, 1] per class (a classifier's prediction file).
        image_ids: The image set the boxes index.
        source: The file the table came from, named in errors.
        column: The class column to read; None: the table's only class column (`classifier_column`).

    Returns:
        The probability of each image of `image_ids`.

    Raises:
        TableError: Missing columns, probabilities outside [0, 1] or not numbers, or images of the set without a row.
    """
    if "image_id" not in frame.columns:
        raise TableError(source, ["lacks column(s) ['image_id']; expected image_id and one column per class"])
    column = classifier_column(frame, column, source)
    p = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    problems = []
    bad = ~(np.isfinite(p) & (p >= 0.0) & (p <= 1.0))
    if bad.any():
        rows = np.flatnonzero(bad)
        problems.append(f"{len(rows)} row(s) with {column} not in [0, 1] at row(s) "
                        f"{(rows[:_MAX_LISTED] + 1).tolist()}, e.g. {frame[column].iloc[rows[0]]!r}")
    mean = pd.Series(p).groupby(frame["image_id"].to_numpy()).mean()
    aligned = mean.reindex(image_ids)
    absent = aligned.isna()
    if absent.any():
        problems.append(f"{int(absent.sum())} image(s) of the set have no probability, e.g. "
                        f"{list(image_ids[absent.to_numpy()][:_MAX_LISTED])}")
    if problems:
        raise TableError(source, problems)
    return aligned.to_numpy(dtype=np.float64)
