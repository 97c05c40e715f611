"""Fusion of several members' box predictions: ensemble-boxes, and an exact fast path for tuning.

Two engines return the same boxes:

- `library`: per image, the ensemble-boxes functions (`weighted_boxes_fusion`, `nms`, `soft_nms`,
  `non_maximum_weighted`). Pixel boxes are normalised to [0, 1] by each image's size for the library and brought
  back to pixels; its warnings and prints are swallowed (the inputs are checked here instead).
- `fast` (weighted boxes fusion and plain concatenation only): the same algorithm, compiled with numba and run over
  all images in one call. It replays ensemble-boxes 1.0.9 operation by operation so that the boxes are bit-identical:
  boxes sorted by weighted score with the library's own `argsort()[::-1]` wherever weighted scores tie, each box
  matched against the running fused boxes (first best IoU, strictly above `iou_thr`), fused coordinates and
  confidences rounded to float32 as the library's `get_weighted_box` does, and the library's rescaling per
  `conf_type`. It also counts, for each fused box, the members that voted for it (used by the vote post-processing).

What does not change across tuning trials is prepared once in `FusionInput`: boxes normalised, swapped, clipped and
zero-area boxes dropped (as the library does), grouped by image and label. A trial only thresholds, weights, sorts
and clusters.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numba
import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet.boxes import denormalize_xyxy, normalize_xyxy
from cxrdet.errors import ConfigError, TableError

METHODS: tuple[str, ...] = ("wbf", "nms", "soft_nms", "nmw", "none")
CONF_TYPES: tuple[str, ...] = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
SOFT_NMS_KINDS: dict[str, int] = {"linear": 1, "gaussian": 2}
BOX_COLUMNS: list[str] = ["x1", "y1", "x2", "y2"]
MAX_FAST_MEMBERS = 62  # member sets are int64 bit masks
_MAX_LISTED = 10

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class FusionParams:
    """How the members' boxes of one image are fused.

    Attributes:
        method: `wbf` (weighted boxes fusion), `nms`, `soft_nms`, `nmw` (non-maximum weighted) or `none` (the
            members' boxes are concatenated unchanged: a single member passes through).
        iou_thr: Boxes match (wbf, nmw) or suppress each other (nms, soft_nms) when their IoU is above this.
        skip_box_thr: Boxes with a raw confidence below this are dropped before fusion (all methods).
        conf_type: wbf only: how a fused box's confidence is formed (one of `CONF_TYPES`).
        allows_overflow: wbf `avg` only: let a confidence exceed 1 when one member has several boxes in a cluster.
        sigma: soft_nms gaussian width.
        soft_nms_kind: soft_nms `gaussian` or `linear`.
        soft_nms_thr: soft_nms: boxes whose decayed score falls to this or below are dropped.
        weights: One weight per member (None: all 1).
    """

    method: str = "wbf"
    iou_thr: float = 0.55
    skip_box_thr: float = 0.0
    conf_type: str = "avg"
    allows_overflow: bool = False
    sigma: float = 0.5
    soft_nms_kind: str = "gaussian"
    soft_nms_thr: float = 0.001
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.conf_type not in CONF_TYPES:
            problems.append(f"conf_type {self.conf_type!r}: expected one of {', '.join(CONF_TYPES)}")
        if self.soft_nms_kind not in SOFT_NMS_KINDS:
            problems.append(f"soft_nms_kind {self.soft_nms_kind!r}: expected one of {', '.join(SOFT_NMS_KINDS)}")
        if not 0.0 <= self.iou_thr <= 1.0:
            problems.append(f"iou_thr {self.iou_thr!r}: expected a number in [0, 1]")
        if self.weights is not None and not all(np.isfinite(w) and w > 0 for w in self.weights):
            problems.append(f"weights {self.weights!r}: expected positive finite numbers")
        if problems:
            raise ConfigError("fusion: " + "; ".join(problems))

    def member_weights(self, n_members: int) -> FloatArray:
        """The weights as a float64 array of length `n_members` (all 1 when unset)."""
        if self.weights is None:
            return np.ones(n_members, dtype=np.float64)
        if len(self.weights) != n_members:
            raise ConfigError(f"fusion: {len(self.weights)} weight(s) given for {n_members} member(s)")
        return np.asarray(self.weights, dtype=np.float64)


@dataclass(frozen=True)
class BoxSet:
    """Boxes of an image set as parallel arrays (the fused, then post-processed, predictions).

    Attributes:
        image: Position of each box's image in the image index it was built with.
        boxes: `(n, 4)` xyxy, pixels of the original image.
        score: Confidence of each box.
        label: Class index of each box.
        votes: Number of distinct members whose boxes formed each fused box (1 for an unfused box, 0 when the
            engine cannot tell: the library engine).
    """

    image: IntArray
    boxes: FloatArray
    score: FloatArray
    label: IntArray
    votes: IntArray

    def __len__(self) -> int:
        return len(self.image)

    def take(self, index: npt.ArrayLike) -> BoxSet:
        """The boxes at `index` (an integer index or a boolean mask), in that order."""
        return BoxSet(self.image[index], self.boxes[index], self.score[index], self.label[index], self.votes[index])

    def to_frame(self, image_ids: pd.Index) -> pd.DataFrame:
        """As a table `image_id, x1, y1, x2, y2, score, label, votes` (xyxy, pixels of the original image)."""
        frame = pd.DataFrame(self.boxes.reshape(-1, 4), columns=BOX_COLUMNS)
        frame.insert(0, "image_id", np.asarray(image_ids, dtype=object)[self.image])
        frame["score"] = self.score
        frame["label"] = self.label
        frame["votes"] = self.votes
        return frame

    @staticmethod
    def empty() -> BoxSet:
        """A box set without boxes."""
        return BoxSet(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64),
                      np.zeros(0, np.int64))

    @staticmethod
    def concat(parts: Sequence[BoxSet]) -> BoxSet:
        """The boxes of all `parts`, in order."""
        if not parts:
            return BoxSet.empty()
        return BoxSet(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                        ("image", "boxes", "score", "label", "votes")))


def member_problems(frame: pd.DataFrame, name: str) -> list[str]:
    """What is wrong with one member's prediction table (columns `image_id, x1, y1, x2, y2, score[, label]`)."""
    missing = [c for c in ["image_id", *BOX_COLUMNS, "score"] if c not in frame.columns]
    if missing:
        return [f"{name}: lacks column(s) {missing}; expected image_id, x1, y1, x2, y2, score[, label]"]
    problems = []
    cols = [*BOX_COLUMNS, "score"] + (["label"] if "label" in frame.columns else [])
    values = frame[cols].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    for j in np.flatnonzero(bad.any(axis=0)):
        rows = np.flatnonzero(bad[:, j])
        problems.append(f"{name}: {len(rows)} non-finite value(s) in column {cols[j]!r} at row(s) "
                        f"{(rows[:_MAX_LISTED] + 1).tolist()}; expected finite numbers")
    if frame["image_id"].isna().any():
        problems.append(f"{name}: {int(frame['image_id'].isna().sum())} row(s) without image_id")
    return problems


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Swallow the warnings and prints of ensemble-boxes (its inputs are validated before the call instead)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def fuse_image(boxes: Sequence[FloatArray], scores: Sequence[FloatArray], labels: Sequence[IntArray],
               params: FusionParams) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Fuse one image's boxes with ensemble-boxes.

    Args:
        boxes: Per member, `(n_m, 4)` xyxy boxes normalised to [0, 1] by the image size (n_m may be 0).
        scores: Per member, `(n_m,)` confidences.
        labels: Per member, `(n_m,)` class indices.
        params: The fusion method and its parameters; `method` must not be `none`.

    Returns:
        `(boxes, scores, labels)` of the fused boxes: normalised xyxy, in the library's output order.
    """
    import ensemble_boxes

    n_members = len(boxes)
    weights = params.member_weights(n_members)
    boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes]
    scores = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores]
    labels = [np.asarray(lab).reshape(-1) for lab in labels]
    if params.method in ("nms", "soft_nms"):
        # nms_method has no skip threshold and fails on an image without boxes: filter and check here.
        keep = [s >= params.skip_box_thr for s in scores]
        boxes, scores, labels = ([a[k] for a, k in zip(arrs, keep, strict=True)] for arrs in (boxes, scores, labels))
    if sum(len(s) for s in scores) == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0)
    with silenced():
        if params.method == "wbf":
            out = ensemble_boxes.weighted_boxes_fusion(
                boxes, scores, labels, weights=weights, iou_thr=params.iou_thr, skip_box_thr=params.skip_box_thr,
                conf_type=params.conf_type, allows_overflow=params.allows_overflow)
        elif params.method == "nmw":
            out = ensemble_boxes.non_maximum_weighted(
                boxes, scores, labels, weights=weights, iou_thr=params.iou_thr, skip_box_thr=params.skip_box_thr)
        elif params.method == "nms":
            out = ensemble_boxes.nms(boxes, scores, labels, iou_thr=params.iou_thr, weights=weights)
        elif params.method == "soft_nms":
            out = ensemble_boxes.soft_nms(
                boxes, scores, labels, method=SOFT_NMS_KINDS[params.soft_nms_kind], iou_thr=params.iou_thr,
                sigma=params.sigma, thresh=params.soft_nms_thr, weights=weights)
        else:
            raise ConfigError(f"fusion: method {params.method!r} has no ensemble-boxes function")
    fused, fused_scores, fused_labels = out
    return (np.asarray(fused, dtype=np.float64).reshape(-1, 4), np.asarray(fused_scores, dtype=np.float64),
            np.asarray(fused_labels, dtype=np.float64))


# ---- the cached input of all images ----


@dataclass(frozen=True)
class FusionInput:
    """All members' boxes of an image set, prepared once for many fusions.

    Boxes are normalised by their image's size, corner-swapped and clipped to [0, 1] as ensemble-boxes does, and
    boxes of zero area after clipping are dropped (the library skips them whatever the threshold). Rows are
    ordered by (image, label, member, row of the member's table): the order in which ensemble-boxes sees them.

    Attributes:
        image_ids: The image set; `image` indexes it.
        n_members: Number of members (a member without any box still counts, as it does for the library).
        width: Width in pixels of each image of `image_ids`.
        height: Height in pixels of each image of `image_ids`.
        image: Image position of each box.
        label: Class of each box.
        member: Member of each box.
        score: Raw confidence of each box.
        norm: `(n, 4)` xyxy normalised to [0, 1], float64, as the library sees them.
        rank: Position of each box in its image's (member, row) order, to order labels as the library does.
        group_start: Start of each (image, label) group in the rows, plus the end (length n_groups + 1).
        sizes: `(k, 2)` the distinct `(width, height)` of the images.
        size_of_image: Index into `sizes` of each image of `image_ids`.
    """

    image_ids: pd.Index
    n_members: int
    width: FloatArray
    height: FloatArray
    image: IntArray
    label: IntArray
    member: IntArray
    score: FloatArray
    norm: FloatArray
    rank: IntArray
    group_start: IntArray = field(repr=False)
    sizes: FloatArray = field(repr=False)
    size_of_image: IntArray = field(repr=False)

    @staticmethod
    def from_frames(members: Sequence[pd.DataFrame], image_ids: Sequence[str] | pd.Index,
                    width: npt.ArrayLike, height: npt.ArrayLike, names: Sequence[str] | None = None) -> FusionInput:
        """Prepare the members' prediction tables.

        Args:
            members: Per member, a table `image_id, x1, y1, x2, y2, score[, label]` (xyxy, pixels of the original
                image; label 0 when absent). Rows of images outside `image_ids` are an error.
            image_ids: The image set (images without any box included).
            width: Width in pixels of each image of `image_ids` (a scalar applies to all).
            height: Height in pixels of each image of `image_ids` (a scalar applies to all).
            names: Member names for error messages.

        Raises:
            TableError: A table lacks columns, holds non-finite values or images outside `image_ids`.
        """
        ids = pd.Index(image_ids)
        if ids.has_duplicates:
            raise TableError("image set", [f"duplicated image id(s), e.g. {list(ids[ids.duplicated()][:_MAX_LISTED])}"])
        names = list(names) if names is not None else [f"member {m}" for m in range(len(members))]
        w = np.broadcast_to(np.asarray(width, dtype=np.float64), (len(ids),)).copy()
        h = np.broadcast_to(np.asarray(height, dtype=np.float64), (len(ids),)).copy()
        if not (np.isfinite(w).all() and np.isfinite(h).all() and (w > 0).all() and (h > 0).all()):
            raise ConfigError("image sizes must be positive finite numbers")
        problems: list[str] = []
        parts = []
        for m, (frame, name) in enumerate(zip(members, names, strict=True)):
            found = member_problems(frame, name)
            if "image_id" in frame.columns:
                image = ids.get_indexer(frame["image_id"])
                if (image < 0).any():
                    unknown = pd.unique(frame["image_id"][image < 0])
                    found.append(f"{name}: {len(unknown)} image id(s) outside the image set, e.g. "
                                 f"{list(unknown[:_MAX_LISTED])}")
            if found:
                problems += found
                continue
            label = (frame["label"].to_numpy(dtype=np.int64) if "label" in frame.columns
                     else np.zeros(len(frame), dtype=np.int64))
            parts.append((image, label, np.full(len(frame), m, dtype=np.int64), np.arange(len(frame)),
                          frame["score"].to_numpy(dtype=np.float64), frame[BOX_COLUMNS].to_numpy(dtype=np.float64)))
        if problems:
            raise TableError("member predictions", problems)
        if parts:
            image, label, member, row, score, pix = (np.concatenate(a) for a in zip(*parts, strict=True))
        else:
            image, label, member, row = (np.zeros(0, np.int64) for _ in range(4))
            score, pix = np.zeros(0), np.zeros((0, 4))
        sizes, size_of_image = np.unique(np.stack([w, h], axis=1), axis=0, return_inverse=True)
        norm = _library_clip(_per_size(normalize_xyxy, pix, size_of_image.reshape(-1)[image], sizes))
        area = (norm[:, 2] - norm[:, 0]) * (norm[:, 3] - norm[:, 1])
        keep = area != 0.0
        image, label, member, row, score, norm = (a[keep] for a in (image, label, member, row, score, norm))
        rank_order = np.lexsort([row, member, image])
        rank = np.empty(len(image), dtype=np.int64)
        image_start = np.searchsorted(image[rank_order], np.arange(len(ids) + 1))
        rank[rank_order] = np.arange(len(image)) - np.repeat(image_start[:-1], np.diff(image_start))
        order = np.lexsort([row, member, label, image])
        image, label, member, score, norm, rank = (a[order] for a in (image, label, member, score, norm, rank))
        return FusionInput(ids, len(members), w, h, image, label, member, score, norm, rank,
                           _group_starts(image, label), sizes, size_of_image.reshape(-1))

    def subset(self, image_mask: npt.NDArray[np.bool_]) -> FusionInput:
        """The same members restricted to the images where `image_mask` is True (re-indexed, order kept)."""
        image_mask = np.asarray(image_mask, dtype=bool)
        new_pos = np.cumsum(image_mask) - 1
        keep = image_mask[self.image]
        image, label = new_pos[self.image[keep]], self.label[keep]
        return FusionInput(self.image_ids[image_mask], self.n_members, self.width[image_mask],
                           self.height[image_mask], image, label, self.member[keep], self.score[keep],
                           self.norm[keep], self.rank[keep], _group_starts(image, label), self.sizes,
                           self.size_of_image[image_mask])

    def pixel_boxes(self, image: IntArray, norm: FloatArray) -> FloatArray:
        """Normalised xyxy boxes of the given images -> xyxy pixels of the original image."""
        return _per_size(denormalize_xyxy, norm, self.size_of_image[image], self.sizes)

    def fuse(self, params: FusionParams, member_thr: npt.ArrayLike | None = None, engine: str = "fast") -> BoxSet:
        """Fuse the members' boxes of every image.

        Args:
            params: The fusion method and its parameters.
            member_thr: Per member, a box is kept only when its confidence is >= this (None: keep all); applied
                before fusion, on top of `params.skip_box_thr`.
            engine: `fast` (wbf and none only; other methods fall back to the library) or `library`.

        Returns:
            The fused boxes (xyxy pixels of the original image), per image in ensemble-boxes' output order.
        """
        if engine not in ("fast", "library"):
            raise ConfigError(f"fusion engine {engine!r}: expected 'fast' or 'library'")
        thr = self._thresholds(params, member_thr)
        if params.method == "none":
            return self._concat(thr)
        if engine == "library" or params.method != "wbf":
            return self._fuse_library(params, thr)
        fused = self.fuse_wbf(params, thr)
        return fused.take(self.library_output_order(fused))

    def _thresholds(self, params: FusionParams, member_thr: npt.ArrayLike | None) -> FloatArray:
        """Per member, the lowest raw confidence kept: the member's threshold or `skip_box_thr`, whichever is higher."""
        thr = np.full(self.n_members, params.skip_box_thr, dtype=np.float64)
        if member_thr is not None:
            given = np.broadcast_to(np.asarray(member_thr, dtype=np.float64), (self.n_members,))
            thr = np.maximum(thr, given)
        return thr

    def _concat(self, thr: FloatArray) -> BoxSet:
        """No fusion: every kept box as it is, ordered by image then descending confidence."""
        keep = np.flatnonzero(self.score >= thr[self.member])
        keep = keep[np.lexsort([-self.score[keep], self.image[keep]])]
        image = self.image[keep]
        return BoxSet(image, self.pixel_boxes(image, self.norm[keep]), self.score[keep].copy(), self.label[keep],
                      np.ones(len(keep), dtype=np.int64))

    def _fuse_library(self, params: FusionParams, thr: FloatArray) -> BoxSet:
        """Fuse image by image with ensemble-boxes (the reference)."""
        keep = self.score >= thr[self.member]
        image, member = self.image[keep], self.member[keep]
        label, score, norm, rank = self.label[keep], self.score[keep], self.norm[keep], self.rank[keep]
        # Back to the (member, row) order in which the tables listed them.
        order = np.lexsort([rank, image])
        image, member, label, score, norm = (a[order] for a in (image, member, label, score, norm))
        bounds = np.searchsorted(image, np.arange(len(self.image_ids) + 1))
        parts = []
        for i in np.flatnonzero(np.diff(bounds)):
            lo, hi = bounds[i], bounds[i + 1]
            mem = member[lo:hi]
            per = [np.flatnonzero(mem == m) + lo for m in range(self.n_members)]
            boxes, scores, labels = fuse_image([norm[p] for p in per], [score[p] for p in per],
                                               [label[p] for p in per], params)
            img = np.full(len(scores), i, dtype=np.int64)
            parts.append(BoxSet(img, self.pixel_boxes(img, boxes), scores, labels.astype(np.int64),
                                np.zeros(len(scores), dtype=np.int64)))
        return BoxSet.concat(parts)

    def fuse_wbf(self, params: FusionParams, thr: FloatArray) -> BoxSet:
        """Weighted boxes fusion of all images in one compiled pass, bit-identical to ensemble-boxes.

        Args:
            params: wbf parameters (`method` is not looked at).
            thr: Per member, the lowest raw confidence kept.

        Returns:
            Fused boxes (xyxy pixels of the original image) grouped by (image, label), clusters in the order the
            library creates them (not the library's final score order: see `library_output_order`).
        """
        if self.n_members > MAX_FAST_MEMBERS:
            raise ConfigError(f"the fast wbf engine takes at most {MAX_FAST_MEMBERS} members, got {self.n_members}")
        weights = params.member_weights(self.n_members)
        ws = self.score * weights[self.member]
        order, bounds, tied, group_rank = _sort_groups(self.group_start, self.score, self.member, thr, ws, self.rank)
        for g in np.flatnonzero(tied):
            # Equal weighted scores: only numpy's own (unstable) argsort gives the library's order.
            lo, hi = bounds[g], bounds[g + 1]
            seg = np.sort(order[lo:hi])
            order[lo:hi] = seg[ws[seg].argsort()[::-1]]
        out = _cluster_groups(order, bounds, ws, self.norm, self.member, weights, params.iou_thr,
                              params.conf_type == "max")
        group, box, conf, wsum, count, mask, votes, _ = out
        score = _rescale(conf, wsum, count, mask, weights, params)
        group_image = self.image[self.group_start[:-1]]
        group_label = self.label[self.group_start[:-1]]
        image = group_image[group]
        return _FusedSet(image, self.pixel_boxes(image, box), score, group_label[group], votes, group_rank[group])

    def library_output_order(self, fused: BoxSet) -> IntArray:
        """Order of `fuse_wbf` boxes that ensemble-boxes returns: per image, labels in order of first appearance,
        then `argsort()[::-1]` of the confidences (numpy's own order wherever confidences tie)."""
        group_rank = fused.group_rank if isinstance(fused, _FusedSet) else np.zeros(len(fused), np.int64)
        # The library concatenates label groups by the rank of their first kept box, clusters by creation.
        seq = np.lexsort([np.arange(len(fused)), group_rank, fused.image])
        image, score = fused.image[seq], fused.score[seq]
        order = seq[np.lexsort([-score, image])]
        ordered_image, ordered_score = fused.image[order], fused.score[order]
        tie = (ordered_image[1:] == ordered_image[:-1]) & (ordered_score[1:] == ordered_score[:-1])
        if tie.any():
            bounds = np.searchsorted(image, np.arange(len(self.image_ids) + 1))
            for i in np.unique(ordered_image[1:][tie]):
                lo, hi = bounds[i], bounds[i + 1]
                order[lo:hi] = seq[lo:hi][score[lo:hi].argsort()[::-1]]
        return order


@dataclass(frozen=True)
class _FusedSet(BoxSet):
    """A `BoxSet` from `fuse_wbf`, with the image-level rank of the first kept box of each box's label."""

    group_rank: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))


def _library_clip(norm: FloatArray) -> FloatArray:
    """Swap inverted corners, then clip to [0, 1]: ensemble-boxes' prefilter, vectorised."""
    x1 = np.minimum(norm[:, 0], norm[:, 2])
    x2 = np.maximum(norm[:, 0], norm[:, 2])
    y1 = np.minimum(norm[:, 1], norm[:, 3])
    y2 = np.maximum(norm[:, 1], norm[:, 3])
    return np.stack([x1, y1, x2, y2], axis=1).clip(0.0, 1.0)


def _group_starts(image: IntArray, label: IntArray) -> IntArray:
    """Start of each run of equal (image, label) in rows sorted by them, plus the end."""
    new_group = np.r_[True, (image[1:] != image[:-1]) | (label[1:] != label[:-1])] if len(image) else []
    return np.r_[np.flatnonzero(new_group), len(image)].astype(np.int64)


def _per_size(convert: Callable[[FloatArray, float, float], FloatArray], boxes: FloatArray, size_index: IntArray,
              sizes: FloatArray) -> FloatArray:
    """Apply a `cxrdet.boxes` size conversion (`normalize_xyxy`, `denormalize_xyxy`) with each box's image size (one
    vectorised call: as many distinct sizes as images, as VinBigData has, cost no more than one)."""
    if not len(boxes):
        return np.zeros((0, 4))
    if len(sizes) == 1:
        return convert(boxes, float(sizes[0, 0]), float(sizes[0, 1]))
    return convert(boxes, sizes[size_index, 0], sizes[size_index, 1])


def _rescale(conf: FloatArray, wsum: FloatArray, count: IntArray, mask: IntArray, weights: FloatArray,
             params: FusionParams) -> FloatArray:
    """ensemble-boxes' final confidence of each cluster from its running confidence, per `conf_type`.

    The sums over member subsets use numpy on the same values in the same order as the library (pairwise
    summation), looked up per distinct subset.
    """
    n_members = len(weights)
    total = weights.sum()
    if params.conf_type == "max":
        return conf / weights.max()
    if params.conf_type == "avg":
        factor = count if params.allows_overflow else np.minimum(n_members, count)
        return conf * factor / total
    masks, inverse = np.unique(mask, return_inverse=True)
    bits = ((masks[:, None] >> np.arange(n_members)) & 1).astype(bool)
    if params.conf_type == "box_and_model_avg":
        present = np.array([weights[b].sum() for b in bits], dtype=np.float64)
        score = conf * count / wsum
        return score * present[inverse] / total
    absent = np.array([weights[~b].sum() for b in bits], dtype=np.float64)
    return conf * count / (wsum + absent[inverse])


@numba.njit(cache=True, error_model="numpy")
def _sort_groups(group_start: IntArray, score: FloatArray, member: IntArray, thr: FloatArray, ws: FloatArray,
                 rank: IntArray) -> tuple[IntArray, IntArray, npt.NDArray[np.bool_], IntArray]:  # pragma: no cover
    """Per (image, label) group: the kept boxes (score >= thr[member]) by descending weighted score.

    Ties keep the input order and flag the group, whose order the caller redoes with numpy's argsort.

    Returns:
        `order` (kept box rows, group after group), `bounds` (group g is order[bounds[g]:bounds[g + 1]]) and
        `tied` and the lowest `rank` of a kept box (per group).
    """
    n_groups = len(group_start) - 1
    order = np.empty(len(score), dtype=np.int64)
    bounds = np.zeros(n_groups + 1, dtype=np.int64)
    tied = np.zeros(n_groups, dtype=np.bool_)
    first = np.full(n_groups, np.iinfo(np.int64).max, dtype=np.int64)
    n = 0
    for g in range(n_groups):
        lo = n
        for j in range(group_start[g], group_start[g + 1]):
            if score[j] >= thr[member[j]]:
                first[g] = min(first[g], rank[j])
                # Insertion by descending weighted score; stable, so equal scores keep the input order.
                k = n
                while k > lo and ws[order[k - 1]] < ws[j]:
                    order[k] = order[k - 1]
                    k -= 1
                order[k] = j
                n += 1
        for k in range(lo + 1, n):
            if ws[order[k - 1]] == ws[order[k]]:
                tied[g] = True
                break
        bounds[g + 1] = n
    return order[:n], bounds, tied, first


@numba.njit(cache=True, error_model="numpy")
def _cluster_groups(order: IntArray, bounds: IntArray, ws: FloatArray, norm: FloatArray, member: IntArray,
                    weights: FloatArray, iou_thr: float, conf_max: bool):  # pragma: no cover - compiled
    """The clustering loop of ensemble-boxes' weighted_boxes_fusion, for every group.

    Each box (in descending weighted score) joins the cluster whose running fused box has the highest IoU with it
    (the first such cluster on ties) if that IoU is above `iou_thr`, else starts a cluster. A cluster of one box keeps
    the box's own float64 values; from two boxes on, its coordinates, confidence and weight are those of the
    library's `get_weighted_box`: float32 sums of score * coordinate, divided by the float64 sum of scores.

    Returns:
        Per cluster: group, running box (normalised xyxy), running confidence (before the conf_type rescaling),
        weight sum, number of boxes, bit mask of the members in it, number of those members, row of its first box.
    """
    n_total = len(order)
    out_group = np.empty(n_total, dtype=np.int64)
    out_box = np.empty((n_total, 4), dtype=np.float64)
    out_conf = np.empty(n_total, dtype=np.float64)
    out_wsum = np.empty(n_total, dtype=np.float64)
    out_count = np.empty(n_total, dtype=np.int64)
    out_mask = np.empty(n_total, dtype=np.int64)
    out_first = np.empty(n_total, dtype=np.int64)
    out_votes = np.empty(n_total, dtype=np.int64)
    longest = 0
    for g in range(len(bounds) - 1):
        longest = max(longest, bounds[g + 1] - bounds[g])
    # Running sums of the clusters of the current group only.
    acc = np.zeros((longest, 4), dtype=np.float32)
    conf_sum = np.zeros(longest, dtype=np.float64)
    conf_top = np.zeros(longest, dtype=np.float64)
    w_run = np.zeros(longest, dtype=np.float64)
    n_out = 0
    for g in range(len(bounds) - 1):
        start = n_out
        for k in range(bounds[g], bounds[g + 1]):
            j = order[k]
            bx1, by1, bx2, by2 = norm[j, 0], norm[j, 1], norm[j, 2], norm[j, 3]
            s = ws[j]
            area_b = (bx2 - bx1) * (by2 - by1)
            best = -1
            best_iou = -np.inf
            for c in range(start, n_out):
                xa = max(out_box[c, 0], bx1)
                ya = max(out_box[c, 1], by1)
                xb = min(out_box[c, 2], bx2)
                yb = min(out_box[c, 3], by2)
                inter = max(xb - xa, 0.0) * max(yb - ya, 0.0)
                area_a = (out_box[c, 2] - out_box[c, 0]) * (out_box[c, 3] - out_box[c, 1])
                iou = inter / (area_a + area_b - inter)
                if np.isnan(iou):
                    # np.argmax takes the first NaN (a cluster of zero-confidence boxes has NaN corners).
                    best_iou = iou
                    best = c
                    break
                if iou > best_iou:
                    best_iou = iou
                    best = c
            w = weights[member[j]]
            if best < 0 or best_iou <= iou_thr:
                c = n_out
                n_out += 1
                out_group[c] = g
                out_box[c, 0], out_box[c, 1], out_box[c, 2], out_box[c, 3] = bx1, by1, bx2, by2
                out_conf[c] = s
                out_wsum[c] = w
                out_count[c] = 1
                out_mask[c] = np.int64(1) << member[j]
                out_votes[c] = 1
                out_first[c] = j
                r = c - start
                for q in range(4):
                    acc[r, q] = np.float32(0.0 + s * norm[j, q])
                conf_sum[r] = s
                conf_top[r] = s
                w_run[r] = w
            else:
                c = best
                r = c - start
                for q in range(4):
                    acc[r, q] = np.float32(np.float64(acc[r, q]) + s * norm[j, q])
                conf_sum[r] += s
                conf_top[r] = max(conf_top[r], s)
                w_run[r] += w
                out_count[c] += 1
                bit = np.int64(1) << member[j]
                if out_mask[c] & bit == 0:
                    out_mask[c] |= bit
                    out_votes[c] += 1
                for q in range(4):
                    out_box[c, q] = np.float64(np.float32(np.float64(acc[r, q]) / conf_sum[r]))
                if conf_max:
                    out_conf[c] = np.float64(np.float32(conf_top[r]))
                else:
                    out_conf[c] = np.float64(np.float32(conf_sum[r] / out_count[c]))
                out_wsum[c] = np.float64(np.float32(w_run[r]))
    return (out_group[:n_out], out_box[:n_out], out_conf[:n_out], out_wsum[:n_out], out_count[:n_out],
            out_mask[:n_out], out_votes[:n_out], out_first[:n_out])


def fuse_predictions(members: Sequence[pd.DataFrame], image_ids: Sequence[str] | pd.Index, width: npt.ArrayLike,
                     height: npt.ArrayLike, params: FusionParams, member_thr: npt.ArrayLike | None = None,
                     engine: str = "fast", names: Sequence[str] | None = None) -> pd.DataFrame:
    """Fuse the members' prediction tables of an image set.

    Args:
        members: Per member, `image_id, x1, y1, x2, y2, score[, label]` (xyxy, pixels of the original image).
        image_ids: The image set.
        width: Width in pixels of each image of `image_ids` (or one number for all).
        height: Height in pixels of each image of `image_ids` (or one number for all).
        params: The fusion method and its parameters.
        member_thr: Per member, the lowest confidence kept before fusion (None: all).
        engine: `fast` or `library` (see the module docstring).
        names: Member names for error messages.

    Returns:
        `image_id, x1, y1, x2, y2, score, label, votes` (xyxy pixels of the original image), per image in
        ensemble-boxes' output order.
    """
    inp = FusionInput.from_frames(members, image_ids, width, height, names)
    return inp.fuse(params, member_thr, engine).to_frame(inp.image_ids)
