"""Image-level classification metrics on out-of-fold probabilities: per-class AUROC and ROC curves, per-fold AUROC,
and for a binary task the F1 at its best threshold.

Inputs are tables aligned on `image_id`:

- probabilities: `image_id` plus one float column per class name (sigmoid outputs in [0, 1]), the format of a
  classifier's prediction files (`cxrdet.runs.Run.predictions_path`);
- truth: `image_id` plus one 0/1 column per class (`cxrdet.data.classify.truth_table` builds it from a label table:
  a class of the table's image columns, e.g. an NIH finding, is that column; any other class is "the image has >= 1
  box of that class", e.g. RSNA's `opacity`).

Pure functions: no file is read here (`cxrdet.report.data` loads an experiment's OOF files).

AUROC is the Mann-Whitney statistic: the probability that a random positive image scores above a random negative
one, ties counting one half. It is computed for all classes at once from ranks (ties share their average rank),
which equals the area under the step ROC curve with ties joined by a straight segment (scikit-learn's
`roc_auc_score`). A class whose images all carry one label value has no AUROC: NaN, and a note says so. The mean
AUROC is over the classes that have one.

F1 at the best threshold (binary tasks): images with probability >= t are called positive; every distinct
probability is tried as t and the one of highest F1 wins (the highest such t on ties).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.stats import rankdata


@dataclass(frozen=True)
class F1Point:
    """The best F1 of a binary task over all thresholds.

    Attributes:
        f1: Its F1 (NaN when there is no positive image).
        threshold: Probabilities >= this are called positive.
        precision: Precision at the threshold.
        recall: Recall at the threshold.
    """

    f1: float
    threshold: float
    precision: float
    recall: float


@dataclass(frozen=True)
class ClassificationResult:
    """Per-class, per-fold and pooled OOF metrics of a classifier.

    Attributes:
        classes: Class names, in the order of the prediction columns.
        per_class: One row per class: `class, auroc, n_images, n_positive, prevalence` (NaN AUROC when unscorable).
        per_fold: One row per fold: `fold, images, mean_auroc`, then one AUROC column per class (the class name).
        roc: Per class, the ROC curve points `fpr, tpr, threshold` (empty for an unscorable class).
        mean_auroc: Mean AUROC over the scorable classes (NaN when none is).
        f1: The best F1 point of a binary (one-class) task, else None.
        truth: `image_id`-indexed 0/1 table, one column per class, of the scored images.
        probs: `image_id`-indexed probabilities, same rows and columns as `truth`.
        image_fold: Fold of each scored image (`image_id` index).
        notes: Lines explaining NaNs and choices.
    """

    classes: tuple[str, ...]
    per_class: pd.DataFrame
    per_fold: pd.DataFrame
    roc: dict[str, pd.DataFrame]
    mean_auroc: float
    f1: F1Point | None
    truth: pd.DataFrame
    probs: pd.DataFrame
    image_fold: pd.Series
    notes: list[str] = field(default_factory=list)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 1

    def ranked_classes(self) -> list[str]:
        """Scorable classes, highest AUROC first (ties in class order)."""
        table = self.per_class.dropna(subset=["auroc"])
        return table.sort_values("auroc", ascending=False, kind="stable")["class"].tolist()


# ---- pure functions ----


def auroc(truth: npt.ArrayLike, scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """AUROC of every column at once.

    Args:
        truth: `(N,)` or `(N, K)` 0/1 labels.
        scores: Same shape, higher = more likely positive.

    Returns:
        `(K,)` AUROC (a 0-d array for 1-D inputs); NaN for a column with no positive or no negative.
    """
    y = np.asarray(truth).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"truth {y.shape} and scores {s.shape} differ in shape")
    one_d = y.ndim == 1
    y, s = y.reshape(len(y), -1), s.reshape(len(s), -1)
    n_pos = y.sum(axis=0).astype(np.float64)
    n_neg = len(y) - n_pos
    ranks = rankdata(s, axis=0, method="average") if len(s) else np.zeros_like(s)
    # Mann-Whitney U of the positives: their rank sum minus its minimum P(P + 1)/2; AUROC = U / (P * N).
    u = np.where(y, ranks, 0.0).sum(axis=0) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
    return out[0] if one_d else out


def roc_points(truth: npt.ArrayLike, scores: npt.ArrayLike) -> pd.DataFrame:
    """ROC curve of one class: `fpr, tpr, threshold` from (0, 0) to (1, 1) (scikit-learn's `roc_curve`, collinear
    points dropped); empty when the class has no positive or no negative."""
    from sklearn.metrics import roc_curve

    y = np.asarray(truth).astype(bool)
    if y.all() or not y.any():
        return pd.DataFrame({"fpr": [], "tpr": [], "threshold": []}, dtype=np.float64)
    fpr, tpr, thr = roc_curve(y, np.asarray(scores, dtype=np.float64))
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def best_f1(truth: npt.ArrayLike, scores: npt.ArrayLike) -> F1Point:
    """The threshold of highest F1 for one binary label (probabilities >= threshold are positive).

    Every distinct score is tried; among equal F1 the highest threshold wins. With no positive image F1 is NaN.
    """
    y = np.asarray(truth).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0 or len(s) == 0:
        return F1Point(f1=math.nan, threshold=math.nan, precision=math.nan, recall=math.nan)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    called = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True]  # the last image of each group of equal scores: one threshold per group
    tp, called, thr = tp[last], called[last], s[last]
    f1 = 2 * tp / (called + n_pos)
    i = int(np.argmax(f1))
    return F1Point(f1=float(f1[i]), threshold=float(thr[i]), precision=float(tp[i] / called[i]),
                   recall=float(tp[i] / n_pos))


def evaluate(probs: pd.DataFrame, truth: pd.DataFrame, image_fold: pd.Series | None = None) -> ClassificationResult:
    """Score OOF probabilities against the truth.

    Args:
        probs: `image_id`-indexed probabilities, one column per class.
        truth: `image_id`-indexed 0/1 table holding at least `probs`' images and columns.
        image_fold: Fold of each image of `probs` (default: all fold 0).

    Returns:
        The metrics (see `ClassificationResult`).
    """
    classes = tuple(str(c) for c in probs.columns)
    y = truth.reindex(index=probs.index, columns=list(classes)).to_numpy(dtype=np.int64)
    p = probs.to_numpy(dtype=np.float64)
    folds = (image_fold.reindex(probs.index) if image_fold is not None
             else pd.Series(0, index=probs.index)).to_numpy(dtype=np.int64)
    values = auroc(y, p)
    n_pos = y.sum(axis=0)
    per_class = pd.DataFrame({"class": list(classes), "auroc": values, "n_images": len(y), "n_positive": n_pos,
                              "prevalence": n_pos / max(len(y), 1)})
    notes = [f"{c}: all {len(y)} images are {'positive' if k == len(y) else 'negative'}; AUROC undefined (NaN), left "
             "out of the mean" for c, k, v in zip(classes, n_pos, values, strict=True) if np.isnan(v)]
    rows = []
    for k in np.unique(folds):
        in_fold = folds == k
        fold_values = auroc(y[in_fold], p[in_fold])
        rows.append({"fold": int(k), "images": int(in_fold.sum()), "mean_auroc": _nanmean(fold_values),
                     **dict(zip(classes, fold_values.tolist(), strict=True))})
    per_fold = pd.DataFrame(rows, columns=["fold", "images", "mean_auroc", *classes])
    return ClassificationResult(
        classes=classes, per_class=per_class, per_fold=per_fold,
        roc={c: roc_points(y[:, i], p[:, i]) for i, c in enumerate(classes)}, mean_auroc=_nanmean(values),
        f1=best_f1(y[:, 0], p[:, 0]) if len(classes) == 1 else None,
        truth=pd.DataFrame(y, index=probs.index, columns=list(classes)), probs=probs,
        image_fold=pd.Series(folds, index=probs.index), notes=notes,
    )  # fmt: skip


def group_map(truth: npt.ArrayLike, probs: npt.ArrayLike, groups: npt.ArrayLike, pool: str = "mean") -> float:
    """The mAP of group-level predictions from image-level probabilities: SIIM's study level.

    Each group (study) takes the `pool` (`mean` or `max`) of its images' probabilities per class and the truth of its
    first image (a study's images share its class); per class, the groups ranked by that probability are scored by
    the VOC 2010 all-point AP (`cxrdet.metrics.voc.all_point_ap`: a group is a true positive when it has the class,
    as a `0 0 1 1` study box matches its truth); the mean is over the classes some group has.

    Args:
        truth: `(N, K)` 0/1 labels of the images.
        probs: `(N, K)` probabilities.
        groups: `(N,)` group key of each image.
    """
    from cxrdet.metrics.voc import all_point_ap

    y = np.asarray(truth, dtype=np.float64).reshape(len(truth), -1)
    p = np.asarray(probs, dtype=np.float64).reshape(y.shape)
    frame = pd.DataFrame(p).groupby(np.asarray(groups), sort=False)
    pooled = frame.agg(pool).to_numpy()
    first = pd.DataFrame(y).groupby(np.asarray(groups), sort=False).first().to_numpy()
    aps = []
    for c in range(y.shape[1]):
        n_pos = first[:, c].sum()
        if n_pos == 0:
            continue
        order = np.argsort(-pooled[:, c], kind="stable")
        hits = first[order, c] > 0.5
        cum = np.cumsum(hits)
        aps.append(all_point_ap(cum / n_pos, cum / np.arange(1, len(hits) + 1)))
    return float(np.mean(aps)) if aps else math.nan


def _nanmean(values: npt.NDArray[np.float64]) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else math.nan
