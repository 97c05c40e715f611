"""Synthetic RSNA-format chest X-ray data: Kaggle folder layout, DICOM files, labels calibrated to the real table.

The generator exists so that the whole pipeline (prepare, folds, train, predict, tune, submit) runs and is tested
without the real images, which cannot be downloaded here. Three layers:

- `sample_labels`: the label table alone (view, sex, age, boxes, distractors), drawn from distributions calibrated
  on the real RSNA stage-2 tables (`compute_calibration`, constants below). Cheap: no pixels.
- `render_image`: one 1024 x 1024 8-bit chest-like radiograph for a label row set: lungs, heart, mediastinum,
  ribs, clavicles, diaphragm, soft tissue, film noise; textured opacities inside each labelled box whose visible
  extent is larger than the box (RSNA boxes were intersections of readers' boxes); unlabelled distractors.
- `generate_dataset`: the Kaggle layout on disk (`cxrdet.paths.KaggleLayout`), JPEG-baseline DICOMs written in
  parallel, plus the test labels and a per-image truth table that the real competition does not publish.

Every image is seeded from `(seed, index)` through `numpy.random.SeedSequence`, so output bytes depend on the seed
only, never on the worker count or on how many images are generated after it.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet import io as cio
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.paths import KaggleLayout

IMAGE_SIZE: Final = 1024
LABEL_COLUMNS: Final = ("patientId", "x", "y", "width", "height", "Target")
TRUTH_COLUMNS: Final = ("image_id", "split", "view", "sex", "age", "n_boxes", "distractors")
DISTRACTORS: Final = ("nodule", "tube", "wire", "haze", "effusion")
# Distractors that are findings (the image is "not normal"); devices alone leave an image "Normal".
FINDINGS: Final = ("nodule", "haze", "effusion")
# The labelled box is this fraction of the opacity's visible width and height (RSNA 1st place shrank by 0.875).
BOX_TO_VISIBLE: Final = 0.875

# Quantile levels of the calibration tables.
BOX_LEVELS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975, 0.99, 0.995)
AGE_LEVELS: Final = (0.0, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99, 1.0)
BOX_VARS: Final = ("lat", "cy", "width", "height")

# ---- calibration ----
# Computed by `compute_calibration` from the real RSNA stage-2 tables (stage_2_train_labels.csv: 26,684 images,
# 9,555 boxes; stage_2_train_dicom_headers.csv.gz) via `python benchmarks/bench_synth.py --print-calibration`,
# on 2026-11-23. `lat` is the box centre's horizontal distance from the image midline (x = 512), so one table
# serves both lungs; box groups are by boxes per image ("1", "2", "3+"). Correlations are between normal scores
# (a Gaussian copula); `pair_corr` is for two-box images with one box per lung: image-left box vars, then
# image-right box vars.
CALIBRATION: Final[dict[str, Any]] = {
    "ap_share": 0.4562,
    "male_share": {"AP": 0.5788, "PA": 0.5596},
    "age_quantiles": {
        "AP": [1.0, 8.0, 11.0, 16.0, 22.0, 29.0, 36.0, 43.0, 48.0, 53.0, 57.0, 61.0, 67.0, 72.0, 76.0, 80.0, 92.0],
        "PA": [2.0, 10.0, 15.0, 19.0, 24.0, 33.0, 39.0, 45.0, 50.0, 54.0, 58.0, 62.0, 67.0, 72.0, 75.0, 80.0, 92.0],
    },
    "pixel_spacing": {
        "AP": {"0.168": 0.5475, "0.139": 0.3635, "0.171": 0.0891},
        "PA": {"0.143": 0.6225, "0.168": 0.1494, "0.194311": 0.0893, "0.139": 0.0755, "0.171": 0.0632},
    },
    "positive_rate": {"AP": 0.3831, "PA": 0.0929},
    "n_boxes_probs": {
        "AP": [0.3568, 0.6192, 0.0214, 0.0026],
        "PA": [0.7047, 0.2804, 0.0141, 0.0007],
    },
    "single_box_left_share": 0.619,
    "pair_bilateral_share": 0.9786,
    "box_quantiles": {
        "1": {
            "lat": [32.9, 52.7, 75.7, 96.5, 120.0, 160.0, 199.0, 236.5, 271.9, 291.5, 313.7, 337.8, 347.5],
            "cy": [210.6, 237.0, 283.6, 327.3, 378.6, 465.1, 548.5, 621.0, 689.5, 731.7, 763.0, 802.9, 843.8],
            "width": [76.1, 90.0, 99.0, 113.0, 131.0, 163.0, 201.0, 245.0, 286.0, 307.0, 331.7, 358.9, 374.7],
            "height": [63.1, 69.0, 84.0, 96.6, 122.0, 160.0, 230.0, 313.0, 416.0, 495.3, 582.3, 681.0, 717.9],
        },
        "2": {
            "lat": [32.3, 48.2, 73.1, 94.0, 118.5, 155.5, 196.8, 234.5, 274.5, 296.5, 315.5, 338.5, 353.7],
            "cy": [251.1, 277.2, 320.5, 355.5, 393.0, 455.0, 526.0, 602.5, 671.5, 712.2, 746.0, 787.8, 814.3],
            "width": [92.7, 100.0, 118.0, 133.0, 152.0, 187.0, 225.0, 265.0, 300.0, 322.0, 343.7, 366.7, 380.0],
            "height": [88.0, 96.0, 120.0, 141.0, 170.0, 237.0, 352.0, 485.2, 588.0, 644.4, 683.7, 735.7, 756.4],
        },
        "3+": {
            "lat": [42.7, 54.2, 66.1, 88.1, 105.8, 149.5, 192.5, 237.5, 273.2, 291.5, 309.8, 330.9, 341.7],
            "cy": [152.6, 189.1, 213.7, 244.3, 292.4, 380.0, 517.5, 632.5, 711.7, 742.3, 778.5, 801.7, 861.4],
            "width": [71.1, 76.2, 88.4, 101.4, 114.8, 139.0, 170.0, 206.0, 240.0, 260.2, 272.6, 326.0, 331.9],
            "height": [68.1, 72.0, 84.4, 97.4, 114.0, 148.0, 201.0, 247.0, 316.6, 415.6, 468.8, 549.8, 575.8],
        },
    },
    "box_corr": [
        [1.0, 0.143, 0.151, 0.023],
        [0.143, 1.0, 0.023, -0.148],
        [0.151, 0.023, 1.0, 0.586],
        [0.023, -0.148, 0.586, 1.0],
    ],
    "pair_corr": [
        [1.0, 0.13, 0.213, 0.026, -0.556, 0.081, 0.093, 0.022],
        [0.13, 1.0, -0.026, -0.245, 0.122, 0.708, -0.012, -0.182],
        [0.213, -0.026, 1.0, 0.578, 0.07, 0.0, 0.639, 0.534],
        [0.026, -0.245, 0.578, 1.0, -0.036, -0.118, 0.494, 0.773],
        [-0.556, 0.122, 0.07, -0.036, 1.0, 0.142, 0.115, 0.009],
        [0.081, 0.708, 0.0, -0.118, 0.142, 1.0, 0.014, -0.131],
        [0.093, -0.012, 0.639, 0.494, 0.115, 0.014, 1.0, 0.594],
        [0.022, -0.182, 0.534, 0.773, 0.009, -0.131, 0.594, 1.0],
    ],
}


def compute_calibration(labels: pd.DataFrame, headers: pd.DataFrame) -> dict[str, Any]:
    """Compute the generator's calibration from the real RSNA tables.

    Args:
        labels: The RSNA labels table (`patientId,x,y,width,height,Target`; xywh pixels of 1024 x 1024, one row per
            box, negatives one row with empty box fields).
        headers: The RSNA DICOM header table (`PatientID, PatientSex, PatientAge, ViewPosition, PixelSpacing`).

    Returns:
        A dict of the same shape as `CALIBRATION` (plain floats and lists, rounded for pasting into code).
    """
    from scipy.special import ndtri

    def r(v: Any, nd: int = 4) -> Any:
        return np.round(np.asarray(v, dtype=np.float64), nd).tolist()

    per_image = labels.groupby("patientId").agg(positive=("Target", "max"), n_boxes=("x", "count")).reset_index()
    head = headers.rename(columns={"PatientID": "patientId"})[
        ["patientId", "ViewPosition", "PatientSex", "PatientAge", "PixelSpacing"]
    ]
    img = per_image.merge(head, on="patientId", how="inner", validate="one_to_one")
    views = ("AP", "PA")
    cal: dict[str, Any] = {"ap_share": round(float((img["ViewPosition"] == "AP").mean()), 4)}
    male = img["PatientSex"] == "M"
    cal["male_share"] = {v: round(float(male[img.ViewPosition == v].mean()), 4) for v in views}
    # Ages above 100 (a handful: 148, 155) are data-entry errors in the real table; they would distort the tail.
    ages = pd.to_numeric(img["PatientAge"], errors="coerce")
    cal["age_quantiles"] = {
        v: r(np.quantile(ages[(img.ViewPosition == v) & (ages <= 100)], AGE_LEVELS), 1) for v in views
    }
    spacing: dict[str, dict[str, float]] = {}
    for v in views:
        share = pd.to_numeric(img.loc[img.ViewPosition == v, "PixelSpacing"]).round(6).value_counts(normalize=True)
        share = share[share >= 0.01]
        spacing[v] = {f"{k:.6g}": round(float(p / share.sum()), 4) for k, p in share.items()}
    cal["pixel_spacing"] = spacing
    cal["positive_rate"] = {v: round(float(img.loc[img.ViewPosition == v, "positive"].mean()), 4) for v in views}
    pos = img[img.positive == 1]
    cal["n_boxes_probs"] = {
        v: r(pos.loc[pos.ViewPosition == v, "n_boxes"].clip(1, 4).value_counts(normalize=True).reindex(
            [1, 2, 3, 4], fill_value=0.0)) for v in views
    }

    b = labels.dropna(subset=["x", "y", "width", "height"]).copy()
    b["cx"] = b["x"] + b["width"] / 2
    b["cy"] = b["y"] + b["height"] / 2
    b["lat"] = (b["cx"] - IMAGE_SIZE / 2).abs()
    b["left"] = b["cx"] < IMAGE_SIZE / 2
    b["n"] = b.groupby("patientId")["x"].transform("count")
    b["group"] = np.where(b["n"] == 1, "1", np.where(b["n"] == 2, "2", "3+"))
    cal["single_box_left_share"] = round(float(b.loc[b.n == 1, "left"].mean()), 4)
    sides = b[b.n == 2].groupby("patientId")["left"].nunique()
    cal["pair_bilateral_share"] = round(float((sides == 2).mean()), 4)
    cal["box_quantiles"] = {
        g: {c: r(np.quantile(d[c], BOX_LEVELS), 1) for c in BOX_VARS} for g, d in b.groupby("group")
    }
    # Normal scores within each group, so the copula's correlation does not mix the groups' different marginals.
    for c in BOX_VARS:
        ranks = b.groupby("group")[c].rank(method="average")
        sizes = b.groupby("group")[c].transform("size")
        b["z_" + c] = ndtri((ranks - 0.5) / sizes)
    zc = ["z_" + c for c in BOX_VARS]
    cal["box_corr"] = r(b[zc].corr().to_numpy(), 3)
    pairs = b[(b.n == 2)].groupby("patientId").filter(lambda d: d["left"].nunique() == 2)
    left = pairs[pairs.left].set_index("patientId")[zc]
    right = pairs[~pairs.left].set_index("patientId").loc[left.index, zc]
    both = np.concatenate([left.to_numpy(), right.to_numpy()], axis=1)
    cal["pair_corr"] = r(np.corrcoef(both, rowvar=False), 3)
    return cal


# ---- label sampling ----

# Not calibrated (the real tables do not record devices or findings other than opacity): chosen so that about 56% of
# negative images carry a finding, the real share of "No Lung Opacity / Not Normal" among RSNA stage-2 negatives
# (11,821 of 20,672 in stage_2_detailed_class_info.csv), and so that devices are far more common on AP (portable,
# bedside) films than on PA films.
DISTRACTOR_PROBS: Final[dict[str, dict[str, float]]] = {
    "AP": {"nodule": 0.20, "tube": 0.45, "wire": 0.40, "haze": 0.35, "effusion": 0.20},
    "PA": {"nodule": 0.25, "tube": 0.05, "wire": 0.08, "haze": 0.33, "effusion": 0.10},
}
_STREAM_LABELS: Final = 0
_STREAM_PIXELS: Final = 1


@dataclass(frozen=True)
class ImageLabels:
    """Everything sampled for one synthetic image before any pixel is drawn.

    Attributes:
        index: Position of the image in the data set (train first, then test); with the seed it fixes all randomness.
        patient_id: UUID-like id, as RSNA's (`0004cfab-14fd-4e49-80ba-63a80b6bddd6`).
        view: `AP` or `PA`.
        sex: `M` or `F`.
        age: Age in years.
        pixel_spacing: Row and column spacing in mm written to the header.
        boxes: Opacity boxes, xywh, integer-valued pixels of the 1024 x 1024 image, in sampling order.
        distractors: Unlabelled look-alikes present, from `DISTRACTORS`, in that order.
    """

    index: int
    patient_id: str
    view: str
    sex: str
    age: int
    pixel_spacing: float
    boxes: tuple[tuple[float, float, float, float], ...]
    distractors: tuple[str, ...]


def _image_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The random generator of one image and purpose (`_STREAM_LABELS` or `_STREAM_PIXELS`)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def cholesky_psd(corr: Sequence[Sequence[float]]) -> npt.NDArray[np.float64]:
    """Cholesky factor of a correlation matrix, after clipping eigenvalues (rounded tables may be barely non-PSD)."""
    c = np.asarray(corr, dtype=np.float64)
    vals, vecs = np.linalg.eigh(c)
    c = (vecs * np.clip(vals, 1e-6, None)) @ vecs.T
    d = np.sqrt(np.diag(c))
    return np.linalg.cholesky(c / np.outer(d, d))


_CHOL_BOX: Final = cholesky_psd(CALIBRATION["box_corr"])
_CHOL_PAIR: Final = cholesky_psd(CALIBRATION["pair_corr"])


def _box_values(z: npt.NDArray[np.float64], group: str) -> npt.NDArray[np.float64]:
    """Map copula normal scores `(n, 4)` to box variables (lat, cy, width, height) with the group's quantiles."""
    from scipy.special import ndtr

    u = np.clip(ndtr(z), BOX_LEVELS[0], BOX_LEVELS[-1])
    q = CALIBRATION["box_quantiles"][group]
    return np.stack([np.interp(u[:, k], BOX_LEVELS, q[v]) for k, v in enumerate(BOX_VARS)], axis=1)


def _separate_same_side(xyxy: npt.NDArray[np.float64], left: npt.NDArray[np.bool_]) -> None:
    """Split overlapping boxes of the same lung at the middle of their overlap, in place (xyxy pixels of 1024).

    RSNA readers drew one box per distinct opacity, so boxes of one image almost never overlap (3% of same-lung
    pairs in the real table).
    """
    order = np.argsort((xyxy[:, 1] + xyxy[:, 3]) / 2)
    for a_pos, a in enumerate(order):
        for b in order[a_pos + 1 :]:
            if left[a] != left[b]:
                continue
            overlap_x = min(xyxy[a, 2], xyxy[b, 2]) - max(xyxy[a, 0], xyxy[b, 0])
            overlap_y = xyxy[a, 3] - xyxy[b, 1]
            if overlap_x > 0 and overlap_y > 0:
                cut = (xyxy[a, 3] + xyxy[b, 1]) / 2
                xyxy[a, 3] = max(cut - 4, xyxy[a, 1] + 24)
                xyxy[b, 1] = min(cut + 4, xyxy[b, 3] - 24)


def _sample_boxes(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    """Draw `n` opacity boxes from the calibrated copula; returns xywh, integer-valued pixels of 1024 x 1024."""
    cal = CALIBRATION
    if n == 1:
        z = (_CHOL_BOX @ rng.standard_normal(4))[None, :]
        left = np.array([rng.random() < cal["single_box_left_share"]])
        group = "1"
    else:
        z = (_CHOL_PAIR @ rng.standard_normal(8)).reshape(2, 4)
        left = np.array([True, False])
        if rng.random() >= cal["pair_bilateral_share"]:
            left[:] = rng.random() < cal["single_box_left_share"]
        extra = n - 2
        if extra:
            z = np.concatenate([z, (_CHOL_BOX @ rng.standard_normal((4, extra))).T])
            left = np.concatenate([left, rng.random(extra) < 0.5])
        group = "2" if n == 2 else "3+"
    lat, cy, w, h = _box_values(z, group).T
    cx = IMAGE_SIZE / 2 + np.where(left, -lat, lat)
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).clip(0, IMAGE_SIZE)
    _separate_same_side(xyxy, left)
    xyxy = np.round(xyxy)
    return np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)


def sample_image_labels(seed: int, index: int) -> ImageLabels:
    """Draw the labels and header fields of image `index` of the data set made with `seed` (no pixels)."""
    cal = CALIBRATION
    rng = _image_rng(seed, index, _STREAM_LABELS)
    patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    view = "AP" if rng.random() < cal["ap_share"] else "PA"
    sex = "M" if rng.random() < cal["male_share"][view] else "F"
    age = max(1, round(float(np.interp(rng.random(), AGE_LEVELS, cal["age_quantiles"][view]))))
    spacings = cal["pixel_spacing"][view]
    weights = np.array(list(spacings.values()))
    spacing = float(rng.choice(list(spacings), p=weights / weights.sum()))
    boxes: npt.NDArray[np.float64] = np.zeros((0, 4))
    if rng.random() < cal["positive_rate"][view]:
        probs = np.asarray(cal["n_boxes_probs"][view], dtype=np.float64)
        boxes = _sample_boxes(rng, int(rng.choice(4, p=probs / probs.sum())) + 1)
    present = tuple(d for d in DISTRACTORS if rng.random() < DISTRACTOR_PROBS[view][d])
    return ImageLabels(index, patient_id, view, sex, age, spacing, tuple(map(tuple, boxes.tolist())), present)


def labels_frame(images: Sequence[ImageLabels]) -> pd.DataFrame:
    """The label table of `images`: one row per box (xywh pixels of 1024 x 1024), a negative image one row with
    empty box fields and `Target=0`; RSNA's columns first, then view, sex, age, pixel_spacing, distractors, index."""
    rows: list[dict[str, Any]] = []
    for im in images:
        extra = {"view": im.view, "sex": im.sex, "age": im.age, "pixel_spacing": im.pixel_spacing,
                 "distractors": ";".join(im.distractors), "index": im.index}  # fmt: skip
        if not im.boxes:
            rows.append({"patientId": im.patient_id, "x": np.nan, "y": np.nan, "width": np.nan, "height": np.nan,
                         "Target": 0, **extra})  # fmt: skip
        for x, y, w, h in im.boxes:
            rows.append({"patientId": im.patient_id, "x": x, "y": y, "width": w, "height": h, "Target": 1, **extra})
    frame = pd.DataFrame(rows, columns=[*LABEL_COLUMNS, "view", "sex", "age", "pixel_spacing", "distractors", "index"])
    return frame.astype({"x": np.float64, "y": np.float64, "width": np.float64, "height": np.float64,
                         "Target": np.int64, "age": np.int64, "index": np.int64})  # fmt: skip


def sample_labels(n_images: int, seed: int) -> pd.DataFrame:
    """Sample the label table of a synthetic data set without rendering pixels (the renderer draws the same rows).

    Args:
        n_images: Number of images.
        seed: Data-set seed (non-negative). Image `i`'s rows depend only on `(seed, i)`.

    Returns:
        See `labels_frame`: RSNA's `patientId,x,y,width,height,Target` (xywh pixels of 1024 x 1024) plus per-image
        view, sex, age, pixel_spacing, distractors (`;`-joined) and index.
    """
    _check_seed(seed)
    return labels_frame([sample_image_labels(seed, i) for i in range(n_images)])


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")


# ---- rendering ----
# Anatomy is built as a density map D in arbitrary units (0 = air outside the body, about 0.5 = soft tissue, more for
# bone and heart) on a coarse grid, upsampled to 1024 and mapped to 8 bits: MONOCHROME2, bright = dense.
# Geometry is stated in pixels of the 1024 x 1024 output image; the grid has `grid` pixels per side.
# `Lung`, `Anatomy`, `Canvas`, `LungField`, `Layers`, `Signs`, `smoothstep`, `smooth_noise`, `child_rng` and
# `cholesky_psd` are public so that other generators (`cxrdet.data.synth_nih`) can draw their own findings into the same
# chest through `render_image`.

_AIR: Final = 0.8  # fraction of the trunk's tissue path that full-depth lung air replaces
_SOFT: Final = 0.5  # soft-tissue density of the trunk


@dataclass(frozen=True)
class Lung:
    """One lung field; `sign` -1 is the image-left lung (patient's right), +1 the image-right lung."""

    sign: int
    med: float  # medial edge: distance from the midline, pixels of 1024
    lat: float  # lateral edge at the widest row
    apex: float  # y of the apex
    cp: float  # y of the costophrenic angle, the lowest point of the lung
    dome: float  # height of the diaphragm dome above the costophrenic angle

    @property
    def height(self) -> float:
        return self.cp - self.apex


@dataclass(frozen=True)
class Anatomy:
    """One patient's geometry, pixels of the 1024 output image."""

    mid: float  # x of the body midline
    lungs: tuple[Lung, Lung]
    heart_width: float
    heart_top: float
    body_half: float  # half-width of the chest wall
    neck_half: float
    shoulder_y: float
    clavicle_drop: float  # how far the sternal end of the clavicle sits below the apex, in lung heights


def smoothstep(x: npt.NDArray[np.floating[Any]] | float) -> Any:
    """0 below 0, 1 above 1, a smooth cubic in between."""
    t = np.clip(x, 0.0, 1.0)
    if isinstance(t, np.ndarray):
        # In place: these run on full render grids many times per image.
        out = np.multiply(t, -2.0, dtype=t.dtype)
        out += 3.0
        out *= t
        out *= t
        return out
    return t * t * (3.0 - 2.0 * t)


def _visible_xyxy(boxes_xyxy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The visible extent of the opacity behind each box: the box grown by `1 / BOX_TO_VISIBLE` around its centre
    (xyxy pixels of 1024, not clipped)."""
    from cxrdet.boxes import shrink_xyxy

    return shrink_xyxy(boxes_xyxy, 1.0 / BOX_TO_VISIBLE)


def _sample_anatomy(rng: np.random.Generator, view: str, sex: str, boxes_xyxy: npt.NDArray[np.float64]) -> Anatomy:
    """Draw the patient's geometry, then grow the lungs where needed so every box lies in a lung field.

    AP (portable, supine, bedside) films magnify the heart, project the clavicles higher, show a shallower inspiration
    (higher diaphragm) and less careful centring than PA films.
    """
    ap = view == "AP"
    mid = IMAGE_SIZE / 2 + rng.normal(0, 18 if ap else 10)
    scale = rng.normal(1.0, 0.04) * (0.96 if sex == "F" else 1.0)
    apex = rng.normal(150 if ap else 140, 18)
    cp = rng.normal(810 if ap else 865, 28)
    lat = rng.normal(385, 20) * scale
    lungs = []
    for sign in (-1, 1):
        # The right hemidiaphragm (image-left) sits higher: the liver lies under it.
        lung_cp = cp - (rng.normal(22, 8) if sign == -1 else 0.0)
        lung = Lung(sign, rng.normal(72, 8), lat * rng.normal(1.0, 0.025), apex + rng.normal(0, 8), lung_cp,
                     rng.normal(115, 18))  # fmt: skip
        vis = _visible_xyxy(boxes_xyxy)
        vis = vis[(vis[:, 0] + vis[:, 2] < 2 * mid) == (sign == -1)]
        if len(vis):
            dist = np.abs(vis[:, [0, 2]] - mid)
            inner = np.where((vis[:, 0] < mid) & (vis[:, 2] > mid), 0.0, dist.min(axis=1)).min()
            lung = Lung(sign, min(lung.med, max(20.0, inner - 10)), max(lung.lat, dist.max() / 0.96 + 10),
                         min(lung.apex, float(vis[:, 1].min()) - 10),
                         min(1000.0, max(lung.cp, float(vis[:, 3].max()) + 0.5 * lung.dome)), lung.dome)  # fmt: skip
        lungs.append(lung)
    ctr = rng.normal(0.54, 0.05) if ap else rng.normal(0.45, 0.04)
    heart_width = ctr * (lungs[0].lat + lungs[1].lat)
    heart_top = apex + (0.40 if ap else 0.44) * (cp - apex) + rng.normal(0, 15)
    body_half = max(lungs[0].lat, lungs[1].lat) + rng.normal(75 if ap else 60, 15)
    clavicle_drop = rng.normal(0.02 if ap else 0.13, 0.03)
    # The shoulders' top sits just above the clavicles' lateral ends.
    shoulder_y = apex + (clavicle_drop - 0.12) * (cp - apex) - rng.normal(50, 10)
    return Anatomy(mid, (lungs[0], lungs[1]), heart_width, heart_top, body_half, rng.normal(100, 10), shoulder_y,
                    clavicle_drop)  # fmt: skip


class Canvas:
    """Coordinate grids of the coarse render grid, in pixels of the 1024 output image."""

    def __init__(self, grid: int) -> None:
        self.grid = grid
        self.step = IMAGE_SIZE / grid
        axis = (np.arange(grid, dtype=np.float32) + 0.5) * self.step
        self.x = axis[None, :]
        self.y = axis[:, None]

    def to_grid(self, v: npt.ArrayLike) -> Any:
        """Pixels of 1024 -> grid pixel units (continuous)."""
        return np.asarray(v, dtype=np.float64) / self.step

    def window(self, x1: float, y1: float, x2: float, y2: float) -> tuple[slice, slice]:
        """Row and column slices of the grid covering the 1024-pixel rectangle (clipped to the grid)."""
        g = self.grid
        c0, c1 = (int(np.clip(np.floor(v / self.step), 0, g)) for v in (x1, x2 + self.step))
        r0, r1 = (int(np.clip(np.floor(v / self.step), 0, g)) for v in (y1, y2 + self.step))
        return slice(r0, r1), slice(c0, c1)


_Canvas = Canvas  # its name before it became public

@dataclass(frozen=True)
class LungField:
    """A lung's binary mask on the full grid, and on the window around it: its lateral coordinate `u` (0 at the
    medial edge, 1 at the lateral edge) and the y of its lower edge (pixels of 1024) per pixel."""

    mask: npt.NDArray[np.bool_]
    rows: slice
    cols: slice
    u: Any
    bottom: Any


def _lung_field(c: Canvas, a: Anatomy, lung: Lung) -> LungField:
    """Rasterise one lung (computed on its bounding window only: the field is a third of the grid)."""
    near, far = a.mid + lung.sign * (lung.med - 40), a.mid + lung.sign * (lung.lat + 40)
    rows, cols = c.window(min(near, far), lung.apex - 40, max(near, far), lung.cp + 40)
    x, y = c.x[:, cols], c.y[rows, :]
    t = np.clip((y - lung.apex) / lung.height, 0.0, 1.0)
    # The lateral wall slopes outwards down to the lower third, where the lung is widest.
    lat_row = lung.med + (lung.lat - lung.med) * (0.86 + 0.14 * smoothstep(t / 0.75))
    u = (lung.sign * (x - a.mid) - lung.med) / (lat_row - lung.med)
    # The apex is a rounded cap peaking a third of the way out; the lateral wall meets it lower than the medial one.
    off = np.abs(u - 0.35)
    top = lung.apex + lung.height * np.where(u > 0.35, 0.45 * (off / 0.65) ** 1.4, 0.12 * (off / 0.35) ** 1.6)
    # Diaphragm dome: highest a third of the way out, down to a sharp costophrenic angle laterally.
    rise = np.where(u > 0.35, 1.0 - (off / 0.65) ** 2, 1.0 - 0.45 * (off / 0.35) ** 2)
    bottom = lung.cp - lung.dome * rise
    mask = np.zeros((c.grid, c.grid), bool)
    mask[rows, cols] = (u >= 0) & (u <= 1) & (y >= top) & (y <= bottom)
    return LungField(mask, rows, cols, u, bottom)


def _add_band(d: npt.NDArray[np.float32], c: Canvas, xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64],
              half_width: float, amp: float, cortex: float = 0.35) -> None:
    """Add a bone-like band along the curve y = ys(xs) (pixels of 1024, xs increasing) into `d`, in place.

    The profile is flat-topped with brighter margins (cortical bone seen edge-on) and fades at both ends.
    """
    cols = np.arange(int(max(0, np.floor(xs[0] / c.step))), int(min(c.grid, np.ceil(xs[-1] / c.step))))
    if len(cols) < 2:
        return
    xc = (cols + 0.5) * c.step
    yc = np.interp(xc, xs, ys)
    slope = np.gradient(yc, xc)
    hw = half_width * np.sqrt(1.0 + slope**2)
    r0 = int(max(0, np.floor((yc - hw).min() / c.step) - 1))
    r1 = int(min(c.grid, np.ceil((yc + hw).max() / c.step) + 2))
    if r1 <= r0:
        return
    rows = ((np.arange(r0, r1) + 0.5) * c.step).astype(np.float32)[:, None]
    v2 = ((rows - yc[None, :].astype(np.float32)) / hw[None, :].astype(np.float32)) ** 2
    profile = np.exp(-(v2 * v2 * v2)) * (1.0 - cortex + cortex * v2)
    along = (xc - xs[0]) / (xs[-1] - xs[0])
    fade = (amp * smoothstep(along / 0.08) * smoothstep((1.0 - along) / 0.08)).astype(np.float32)
    d[r0:r1, cols] += profile * fade[None, :]


def _splat(acc: npt.NDArray[np.float32], c: Canvas, xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64],
           weights: npt.NDArray[np.float64] | float) -> None:
    """Accumulate points (pixels of 1024) into a grid, to be blurred into lines afterwards."""
    gx = np.floor(xs / c.step).astype(np.int64)
    gy = np.floor(ys / c.step).astype(np.int64)
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), gx.shape)
    ok = (gx >= 0) & (gx < c.grid) & (gy >= 0) & (gy < c.grid)
    np.add.at(acc, (gy[ok], gx[ok]), w[ok].astype(np.float32))


def _path(rng: np.random.Generator, points: npt.ArrayLike, jitter: float, n: int = 400) -> npt.NDArray[np.float64]:
    """A smooth curve from the first to the last control point, near the jittered inner ones (pixels of 1024):
    `(n, 2)` x, y samples evenly spaced along the curve."""
    p = np.asarray(points, dtype=np.float64)
    p = p + rng.normal(0, jitter, p.shape) * np.r_[0, np.ones(len(p) - 2), 0][:, None]
    for _ in range(4):
        # Chaikin corner cutting (converges to a quadratic B-spline); the end points stay put.
        q = np.stack([0.75 * p[:-1] + 0.25 * p[1:], 0.25 * p[:-1] + 0.75 * p[1:]], axis=1).reshape(-1, 2)
        p = np.concatenate([p[:1], q, p[-1:]])
    s = np.r_[0, np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))]
    t = np.linspace(0, s[-1], n)
    return np.stack([np.interp(t, s, p[:, 0]), np.interp(t, s, p[:, 1])], axis=1)


def _line_weight(curve: npt.NDArray[np.float64], c: Canvas, sigma: float, peak: float) -> float:
    """Splat weight per curve point that gives a line of about `peak` after a gaussian blur of `sigma` grid px."""
    spacing = np.linalg.norm(np.diff(curve, axis=0), axis=1).mean() / c.step
    return peak * spacing * np.sqrt(2 * np.pi) * sigma


def _resize(field: npt.NDArray[np.float32], shape: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Bicubic resize of a float image to `shape` (rows, cols)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32))
    return np.array(img.resize((shape[1], shape[0]), Image.Resampling.BICUBIC), dtype=np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> npt.NDArray[np.float32]:
    """A smooth random field of `shape`, roughly in [0, 1], with about `cells` random values across its longer side."""
    ny = max(2, round(cells * shape[0] / max(shape)))
    nx = max(2, round(cells * shape[1] / max(shape)))
    return np.clip(_resize(rng.random((ny, nx)).astype(np.float32), shape), 0.0, 1.0)


def child_rng(ss: np.random.SeedSequence, k: int) -> np.random.Generator:
    """Independent stream `k` of an image's pixel seed (anatomy, opacities, distractors, noise stay decoupled, so
    adding a box or a distractor does not change the rest of the image)."""
    return np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, k)))


def _body(c: Canvas, a: Anatomy, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Soft-tissue density of neck, shoulders, chest wall and abdomen (thickness falls off towards the skin)."""
    h = a.lungs[0].height
    from scipy.ndimage import gaussian_filter1d

    # Neck, sloping shoulders, then the chest wall and abdomen.
    knots_y = [0.0, a.shoulder_y - 40, a.shoulder_y + 80, a.lungs[0].apex + 0.3 * h, a.lungs[0].cp,
               float(IMAGE_SIZE)]  # fmt: skip
    knots_w = [a.neck_half, a.neck_half * 1.3, a.body_half + 55, a.body_half + 20, a.body_half,
               a.body_half + rng.normal(15, 10)]  # fmt: skip
    half = gaussian_filter1d(np.interp(c.y[:, 0], knots_y, knots_w), 40.0 / c.step, mode="nearest")[:, None]
    profile = np.clip(1.0 - ((c.x - a.mid) / half) ** 2, 0.0, 1.0) ** 0.5
    # The abdomen is thicker than the chest: denser below the diaphragm.
    belly = 0.08 * smoothstep((c.y - (a.lungs[1].cp - 120)) / 220)
    return ((_SOFT + belly) * profile).astype(np.float32)


def _ribs_and_bones(d: npt.NDArray[np.float32], c: Canvas, a: Anatomy, view: str, rng: np.random.Generator) -> None:
    """Add posterior and anterior ribs, clavicles, spine, scapulae and humeral heads to `d`, in place."""
    for lung in a.lungs:
        h, sgn = lung.height, lung.sign
        s = np.linspace(0.0, 1.0, 60)
        for i in range(12):
            y0 = lung.apex + 0.01 * h + i * 0.083 * h + rng.normal(0, 4)
            if y0 > lung.cp - 0.02 * h:
                break
            # Upper ribs are short tight arcs (the thorax is narrow at the apex), lower ones long and flatter.
            reach = lung.lat * (0.55 + 0.45 * smoothstep(i / 4.0)) + 35
            curv = 0.36 - 0.012 * i
            ys = y0 + h * (-0.12 * s + curv * s**2.5)
            xs = a.mid + sgn * (18 + s * (reach - 18))
            order = np.argsort(xs)
            _add_band(d, c, xs[order], ys[order], 9.5 + 0.5 * i, 0.065)
        for i in range(6):
            ya = lung.apex + 0.03 * h + i * 0.105 * h + rng.normal(0, 4)
            sa = np.linspace(0.25, 1.0, 40)
            ys = ya + 0.26 * h * ((1.0 - sa) / 0.75) ** 1.1
            xs = a.mid + sgn * sa * (lung.lat + 10)
            order = np.argsort(xs)
            _add_band(d, c, xs[order], ys[order], 12.0, 0.035, cortex=0.2)
        # Clavicle: from the sternal end near the midline out and up to the shoulder, a gentle S.
        top = a.lungs[0].apex
        sc = np.linspace(0.0, 1.0, 50)
        y_med = top + a.clavicle_drop * h
        ys = y_med - 0.12 * h * sc**1.2 + 0.012 * h * np.sin(2 * np.pi * sc)
        xs = a.mid + sgn * (30 + sc * (lung.lat * 0.98))
        order = np.argsort(xs)
        _add_band(d, c, xs[order], ys[order], 15.0, 0.13)
        # Humeral head in the upper corner.
        hx, hy, hr = a.mid + sgn * (a.body_half + 40), a.shoulder_y + 100, rng.normal(62, 6)
        r2 = ((c.x - hx) ** 2 + (c.y - hy) ** 2) / hr**2
        d += (0.12 * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))).astype(np.float32)
        # Scapula: on AP films it is not rotated out of the way and overlies the upper lateral lung.
        if view == "AP" or rng.random() < 0.2:
            # A triangle: medial border down to the inferior angle, lateral border back up to the shoulder.
            tip = top + rng.uniform(0.5, 0.62) * h
            medial = np.interp(c.y[:, 0], [top, tip], [lung.lat * 0.7, lung.lat * 0.92])[:, None]
            lateral = np.interp(c.y[:, 0], [top, tip], [lung.lat * 1.25, lung.lat * 0.92])[:, None]
            dist = sgn * (c.x - a.mid)
            inside = smoothstep((dist - medial) / 10.0) * smoothstep((lateral - dist) / 25.0) * (c.y <= tip)
            d += (0.055 * inside * smoothstep((c.y - (top - 60)) / 40.0)).astype(np.float32)
    # Spine: vertebral bodies with darker disc spaces, seen faintly through the mediastinum.
    period = a.lungs[0].height * 0.085
    phase = ((c.y - a.lungs[0].apex) / period) % 1.0
    discs = 1.0 - 0.3 * np.exp(-(((phase - 0.5) / 0.09) ** 2))
    col = np.sqrt(np.clip(1.0 - ((c.x - a.mid) / 42.0) ** 2, 0.0, 1.0))
    d += (0.06 * col * discs).astype(np.float32)


def _heart_and_mediastinum(c: Canvas, a: Anatomy) -> tuple[Any, Any]:
    """Density of heart, great vessels and mediastinum, and the fraction of lung air they hide (0..1).

    The cardiac silhouette is bounded row by row: the right heart border (image-left) bulges gently, the left
    border (image-right) runs down and out to the apex on the left hemidiaphragm; its top merges into the
    mediastinum, so no upper edge shows.
    """
    w = a.heart_width
    med_half = (a.lungs[0].med + a.lungs[1].med) / 2
    base = a.lungs[1].cp - 0.75 * a.lungs[1].dome
    tau = np.clip((c.y - a.heart_top) / (base - a.heart_top), 0.0, 1.0)
    right = med_half + (0.64 * w - med_half) * np.sin(0.5 * np.pi * np.clip(tau / 0.9, 0.0, 1.0)) ** 0.8
    left = med_half + (0.36 * w - med_half) * np.sin(np.pi * (0.08 + 0.84 * tau)) ** 0.7
    dx = c.x - a.mid
    inside = smoothstep((right - dx) / 10.0) * smoothstep((left + dx) / 10.0) * smoothstep((c.y - a.heart_top) / 40)
    core = np.clip(np.minimum(right - dx, left + dx) / (0.25 * w), 0.0, 1.0) * inside
    band = smoothstep((med_half + 4 - np.abs(dx)) / 10.0)
    h = a.lungs[1].height
    knob_x, knob_y = a.mid + med_half - 4, a.lungs[1].apex + 0.24 * h
    knob = smoothstep((1.0 - ((c.x - knob_x) / 34) ** 2 - ((c.y - knob_y) / 30) ** 2) / 0.6)
    density = 0.03 * np.sqrt(core) + 0.07 * band + 0.02 * knob
    hides = np.clip(0.82 * inside + 0.75 * knob, 0.0, 1.0)
    return density, hides


def _airways(c: Canvas, a: Anatomy, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Negative density of the trachea and main bronchi (air columns)."""
    h = a.lungs[0].height
    carina = (a.mid + rng.normal(4, 4), a.lungs[0].apex + 0.3 * h)
    trachea = _path(rng, [(a.mid + rng.normal(0, 4), 0.0), (a.mid, carina[1] * 0.5), carina], 3.0, n=60)
    centre = np.interp(c.y[:, 0], trachea[:, 1], trachea[:, 0])[:, None]
    column = np.exp(-(((c.x - centre) / 17.0) ** 2)) * smoothstep((carina[1] - c.y) / 25.0)
    air = (-0.12 * column).astype(np.float32)
    for sgn in (-1, 1):
        xs = np.linspace(carina[0], carina[0] + sgn * 0.07 * h, 20)
        ys = carina[1] + (xs - carina[0]) * sgn * rng.uniform(1.1, 1.6)
        order = np.argsort(xs)
        _add_band(air, c, xs[order], ys[order], 9.0, -0.06, cortex=0.0)
    return air


def _vessels(c: Canvas, a: Anatomy, lung_mask: npt.NDArray[np.bool_], rng: np.random.Generator) -> Any:
    """Density of pulmonary vessels: tapering branches fanning out from each hilum, plus the hilar shadows."""
    from scipy.ndimage import gaussian_filter

    # Points of all vessels are collected first and splatted in one call per width class (fewer small numpy calls).
    thick: list[npt.NDArray[np.float64]] = []  # rows of x, y, weight
    thin: list[npt.NDArray[np.float64]] = []
    hila = np.zeros((c.grid, c.grid), np.float32)
    for lung in a.lungs:
        hx, hy = a.mid + lung.sign * (lung.med + 30), lung.apex + 0.45 * lung.height
        rows, cols = c.window(hx - 135, hy - 270, hx + 135, hy + 270)
        hila[rows, cols] += np.exp(-(((c.x[:, cols] - hx) / 45) ** 2 + ((c.y[rows, :] - hy) / 90) ** 2))
        for _ in range(12):
            theta = rng.uniform(-1.25, 1.25)
            length = rng.uniform(0.45, 0.95) * (lung.lat - lung.med)
            sx, sy = hx + lung.sign * rng.uniform(0, 30), hy + rng.normal(0, 45)
            end = (sx + lung.sign * length * np.cos(theta), sy + 1.4 * length * np.sin(theta))
            midp = (sx + (end[0] - sx) * 0.45, sy + (end[1] - sy) * 0.45)
            vessel = _path(rng, [(sx, sy), midp, end], 18.0, n=160)
            taper = np.linspace(1.0, 0.15, len(vessel))
            thick.append(np.c_[vessel[:80], _line_weight(vessel, c, 1.6, 1.0) * taper[:80]])
            thin.append(np.c_[vessel[80:], _line_weight(vessel, c, 0.9, 1.0) * taper[80:]])
            for _ in range(rng.integers(1, 3)):
                k = int(rng.integers(40, 130))
                start = vessel[k]
                ang = np.arctan2(*(vessel[k] - vessel[k - 5])[::-1]) + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9)
                blen = rng.uniform(0.15, 0.35) * (lung.lat - lung.med)
                bend = start + blen * np.array([np.cos(ang), np.sin(ang)])
                branch = _path(rng, [start, (start + bend) / 2, bend], 8.0, n=60)
                thin.append(np.c_[branch, np.full(len(branch), _line_weight(branch, c, 0.9, 0.6) * taper[k])])
    field = np.zeros((c.grid, c.grid), np.float32)
    for points, sigma in ((thick, 1.6), (thin, 0.9)):
        acc = np.zeros((c.grid, c.grid), np.float32)
        p = np.concatenate(points)
        _splat(acc, c, p[:, 0], p[:, 1], p[:, 2])
        field += 0.035 * gaussian_filter(acc, sigma)
    return field * lung_mask + 0.05 * hila


def _opacities(c: Canvas, boxes_xyxy: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Fraction of lung air replaced by pneumonia (0..1) for each box: a textured cluster of soft blobs.

    The cluster fades to nothing at `1 / BOX_TO_VISIBLE` times the box size around the box centre, so the box
    is tighter than what is visible, as the RSNA boxes were (intersections of several readers' boxes).
    """
    field = np.zeros((c.grid, c.grid), np.float32)
    for x1, y1, x2, y2 in boxes_xyxy:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        hw, hh = (x2 - x1) / 2 / BOX_TO_VISIBLE, (y2 - y1) / 2 / BOX_TO_VISIBLE
        rows, cols = c.window(cx - hw, cy - hh, cx + hw, cy + hh)
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        if min(shape) < 2:
            continue
        dx = (c.x[:, cols] - cx) / hw
        dy = (c.y[rows, :] - cy) / hh
        p = rng.uniform(2.2, 4.0)
        r = (np.abs(dx) ** p + np.abs(dy) ** p) ** (1 / p)
        # Substantial out to the box edge (r = 0.875), fading to nothing at the visible extent (r = 1).
        envelope = smoothstep((1.0 - r) / 0.18)
        blobs = np.zeros(shape, np.float32)
        for _ in range(int(rng.integers(3, 9))):
            bx, by = rng.uniform(-0.7, 0.7, 2)
            sx, sy = rng.uniform(0.3, 0.5, 2)
            blobs += np.exp(-0.5 * (((dx - bx) / sx) ** 2 + ((dy - by) / sy) ** 2)).astype(np.float32)
        cluster = 1.0 - np.exp(-2.0 * blobs)
        texture = 0.6 + 0.25 * smooth_noise(rng, shape, 6) + 0.15 * smooth_noise(rng, shape, 18)
        amount = rng.uniform(0.5, 0.95)
        field[rows, cols] = np.maximum(field[rows, cols], amount * envelope * cluster * texture)
    return field


def _random_lung_point(rng: np.random.Generator, c: Canvas, lung_mask: npt.NDArray[np.bool_],
                       avoid_xyxy: npt.NDArray[np.float64]) -> tuple[float, float] | None:
    """A random point (pixels of 1024) inside the lungs and outside every rectangle in `avoid_xyxy`."""
    rows, cols = np.nonzero(lung_mask)
    if len(rows) == 0:
        return None
    for _ in range(30):
        k = int(rng.integers(len(rows)))
        x, y = (cols[k] + 0.5) * c.step, (rows[k] + 0.5) * c.step
        inside = (avoid_xyxy[:, 0] <= x) & (x <= avoid_xyxy[:, 2]) & (avoid_xyxy[:, 1] <= y) & (y <= avoid_xyxy[:, 3])
        if not inside.any():
            return x, y
    return None


def _distractors(c: Canvas, a: Anatomy, names: Sequence[str], fields: Sequence[LungField],
                 boxes_xyxy: npt.NDArray[np.float64], ss: np.random.SeedSequence) -> tuple[Any, Any]:
    """Unlabelled look-alikes: returns (added density, fraction of lung air replaced).

    Nodules are small, round and sharp; tubes and wires are thin lines; haze is wide, faint and untextured;
    effusion fills the lung base under a meniscus. Each kind draws from its own random stream.
    """
    from scipy.ndimage import gaussian_filter

    density = np.zeros((c.grid, c.grid), np.float32)
    fill = np.zeros((c.grid, c.grid), np.float32)
    lung_mask = fields[0].mask | fields[1].mask
    h = a.lungs[0].height
    apex = min(lung.apex for lung in a.lungs)
    visible = _visible_xyxy(boxes_xyxy)
    if "nodule" in names:
        rng = child_rng(ss, 10)
        for _ in range(int(rng.integers(1, 4))):
            point = _random_lung_point(rng, c, lung_mask, visible)
            if point is None:
                continue
            radius = rng.uniform(8, 24)
            r = np.sqrt((c.x - point[0]) ** 2 + (c.y - point[1]) ** 2) / radius
            density += (rng.uniform(0.1, 0.22) * smoothstep((1.0 - r) / 0.35)).astype(np.float32)
    if "tube" in names:
        rng = child_rng(ss, 11)
        lines = np.zeros_like(density)
        lumen = np.zeros_like(density)
        carina_y = apex + 0.3 * h
        kinds = [k for k in ("ett", "ng", "cvc") if rng.random() < 0.55] or ["ett"]
        for kind in kinds:
            if kind == "ett":
                path = _path(rng, [(a.mid + rng.normal(0, 6), 0.0), (a.mid, carina_y * 0.5),
                                   (a.mid + rng.normal(0, 4), carina_y - rng.uniform(30, 90))], 4.0)  # fmt: skip
                _splat(lumen, c, path[:, 0], path[:, 1], _line_weight(path, c, 3.0, 1.0))
            elif kind == "ng":
                base = (a.lungs[1].cp - a.lungs[1].dome) + 40
                path = _path(rng, [(a.mid + 12, 0.0), (a.mid + 18, apex + 0.5 * h), (a.mid + 40, base - 40),
                                   (a.mid + 0.45 * a.lungs[1].lat, base + 50),
                                   (a.mid + 0.3 * a.lungs[1].lat, base + 130)], 10.0)  # fmt: skip
            else:
                sgn = rng.choice([-1, 1])
                path = _path(rng, [(a.mid + sgn * a.lungs[0].lat * 0.95, apex + 0.02 * h),
                                   (a.mid + sgn * a.lungs[0].lat * 0.45, apex + 0.1 * h),
                                   (a.mid - 28, apex + rng.uniform(0.25, 0.38) * h)], 12.0)  # fmt: skip
            _splat(lines, c, path[:, 0], path[:, 1], _line_weight(path, c, 0.8, 1.0))
        density += 0.3 * gaussian_filter(lines, 0.8) + 0.07 * gaussian_filter(lumen, 3.0)
    if "wire" in names:
        rng = child_rng(ss, 12)
        wires = np.zeros_like(density)
        for _ in range(int(rng.integers(2, 5))):
            sgn = rng.choice([-1, 1])
            ex = a.mid + sgn * rng.uniform(0.25, 1.05) * a.lungs[0].lat
            ey = apex + rng.uniform(-0.1, 0.75) * h
            exit_point = rng.choice([(ex + rng.normal(0, 150), -20.0), (a.mid + sgn * 560, ey + rng.normal(0, 200))])
            path = _path(rng, [(ex, ey), ((ex + exit_point[0]) / 2, (ey + exit_point[1]) / 2), exit_point], 60.0)
            _splat(wires, c, path[:, 0], path[:, 1], _line_weight(path, c, 0.7, 1.0))
            r = np.sqrt((c.x - ex) ** 2 + (c.y - ey) ** 2)
            ring_r = rng.uniform(11, 16)
            density += (0.3 * np.exp(-(((r - ring_r) / 2.5) ** 2)) + 0.35 * np.exp(-((r / 4.0) ** 2))).astype(
                np.float32)
        density += 0.22 * gaussian_filter(wires, 0.7)
    if "haze" in names:
        rng = child_rng(ss, 13)
        for _ in range(int(rng.integers(1, 3))):
            point = _random_lung_point(rng, c, lung_mask, np.zeros((0, 4)))
            if point is None:
                continue
            sx, sy = rng.uniform(0.3, 0.5) * a.lungs[0].lat, rng.uniform(0.2, 0.4) * h
            blob = np.exp(-0.5 * (((c.x - point[0]) / sx) ** 2 + ((c.y - point[1]) / sy) ** 2))
            fill += (rng.uniform(0.25, 0.45) * blob).astype(np.float32)
    if "effusion" in names:
        rng = child_rng(ss, 14)
        sides = [k for k in (0, 1) if rng.random() < 0.6] or [int(rng.integers(2))]
        for k in sides:
            f = fields[k]
            level = rng.uniform(0.1, 0.25) * h
            # Meniscus: the fluid climbs higher along the lateral chest wall.
            top = f.bottom - level * (0.2 + 0.8 * np.clip(f.u, 0.0, 1.0) ** 1.5)
            y = c.y[f.rows, :]
            fluid = smoothstep((y - top) / 25.0) * f.mask[f.rows, f.cols]
            fill[f.rows, f.cols] += (0.95 * fluid).astype(np.float32)
            density[f.rows, f.cols] += (0.04 * fluid).astype(np.float32)
    return density, fill


@dataclass(frozen=True)
class Layers:
    """Changes that a caller's findings make to the density model of one chest, as arrays on the render grid
    (`(grid, grid)` float32; None leaves that part unchanged). See `Signs`.

    Attributes:
        density: Added density (bright), e.g. a nodule or a pleural line.
        fill: Added fraction of lung air replaced by fluid or tissue (0..1), e.g. an effusion or consolidation.
        air_gain: Multiplies the lung air (above 1: hyperlucent lung, below 1: collapsed lung).
        air_floor: Lower bound of the air fraction (pneumothorax: free pleural air at full depth).
        vessel_keep: Multiplies the pulmonary vessels (0 where no lung markings reach).
    """

    density: npt.NDArray[np.float32] | None = None
    fill: npt.NDArray[np.float32] | None = None
    air_gain: npt.NDArray[np.float32] | None = None
    air_floor: npt.NDArray[np.float32] | None = None
    vessel_keep: npt.NDArray[np.float32] | None = None


class Signs(Protocol):
    """Findings drawn into a chest by `render_image`: first the anatomy they change, then the layers they add."""

    def anatomy(self, a: Anatomy) -> Anatomy:
        """The patient's geometry with the findings' changes (a wider heart, larger lungs, a raised diaphragm)."""
        ...

    def layers(self, c: Canvas, a: Anatomy, fields: Sequence[LungField]) -> Layers:
        """The findings' layers on the render grid of `c`, for the final anatomy and its two lung fields."""
        ...


def render_image(boxes: npt.ArrayLike, view: str, sex: str, age: int = 50, distractors: Sequence[str] = (),
                 seed: int | np.random.SeedSequence = 0, *, grid: int = 512, opacity_strength: float = 1.0,
                 signs: Signs | None = None, anatomy_seed: np.random.SeedSequence | None = None,
                 size: int = IMAGE_SIZE) -> npt.NDArray[np.uint8]:
    """Render one synthetic chest radiograph.

    Args:
        boxes: Opacity boxes, xywh, pixels of the 1024 x 1024 image, shape `(N, 4)` (N may be 0).
        view: `AP` or `PA`.
        sex: `M` or `F` (adult women get breast shadows).
        age: Age in years.
        distractors: Unlabelled look-alikes to draw, from `DISTRACTORS`.
        seed: Integer or `SeedSequence`; the same seed and arguments give the same pixels.
        grid: Internal render resolution (upsampled to 1024); lower is faster and blurrier.
        opacity_strength: Scales the opacities (0 draws the same image without them, for checks and figures).
        signs: Findings to draw besides the boxes and distractors (see `Signs`); None draws none.
        anatomy_seed: Seed of the patient's anatomy (body, lungs, heart, bones, vessels) in place of the one derived
            from `seed`, so that follow-up images of one patient show the same person.
        size: Side of the returned image; geometry stays in pixels of 1024 x 1024 (1024 is the RSNA size).

    Returns:
        `(size, size)` uint8 pixels, MONOCHROME2 (bright = dense).
    """
    from PIL import Image
    from scipy.ndimage import distance_transform_edt, uniform_filter

    from cxrdet.boxes import xywh_to_xyxy

    if view not in ("AP", "PA"):
        raise ConfigError(f"view must be 'AP' or 'PA', got {view!r}")
    if sex not in ("M", "F"):
        raise ConfigError(f"sex must be 'M' or 'F', got {sex!r}")
    unknown = sorted(set(distractors) - set(DISTRACTORS))
    if unknown:
        raise ConfigError(f"unknown distractors {unknown}; expected some of {list(DISTRACTORS)}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    rng_anatomy, rng_opacity, rng_noise = (child_rng(ss, k) for k in range(3))
    if anatomy_seed is not None:
        rng_anatomy = np.random.default_rng(anatomy_seed)
    xyxy = xywh_to_xyxy(boxes)
    a = _sample_anatomy(rng_anatomy, view, sex, xyxy)
    if signs is not None:
        a = signs.anatomy(a)
    c = Canvas(grid)

    d = _body(c, a, rng_anatomy)
    fields = [_lung_field(c, a, lung) for lung in a.lungs]
    lung_mask = fields[0].mask | fields[1].mask
    extra = signs.layers(c, a, fields) if signs is not None else Layers()
    # Air thickness grows from the lung edge inwards and is smaller at the apices (more tissue in front).
    # Distance to the lung edge on a half-size grid: four times cheaper, and it only feeds a smooth depth map.
    edge = _resize((distance_transform_edt(lung_mask[::2, ::2]) * 2 * c.step).astype(np.float32), lung_mask.shape)
    upper = smoothstep((c.y - min(lu.apex for lu in a.lungs)) / (0.35 * a.lungs[0].height))
    depth = (1.0 - np.exp(-edge / 45.0)) * (0.7 + 0.3 * upper)
    heart, hides = _heart_and_mediastinum(c, a)
    air = _AIR * depth * (1.0 - hides) * (0.9 + 0.2 * smooth_noise(rng_anatomy, (grid, grid), 8))
    if extra.air_gain is not None:
        air = np.clip(air * extra.air_gain, 0.0, 0.97)
    if extra.air_floor is not None:
        air = np.maximum(air, extra.air_floor)
    body = d
    bones = np.zeros_like(body)
    _ribs_and_bones(bones, c, a, view, rng_anatomy)
    d = heart.astype(np.float32) + bones * smoothstep(body / 0.1)
    d += _airways(c, a, rng_anatomy)
    vessels = _vessels(c, a, lung_mask, rng_anatomy)
    d += vessels if extra.vessel_keep is None else vessels * extra.vessel_keep
    if sex == "F" and age >= 15:
        for lung in a.lungs:
            # Breast shadow over the lower lung: faint above, ending in a sharp inferior fold.
            bx, by = a.mid + lung.sign * lung.lat * 0.6, lung.cp - 0.22 * lung.height
            rx, ry = 0.42 * lung.lat, 0.18 * lung.height
            ry_eff = np.where(c.y < by, 2.5 * ry, ry)
            r2 = ((c.x - bx) / rx) ** 2 + ((c.y - by) / ry_eff) ** 2
            d += (rng_anatomy.uniform(0.02, 0.05) * smoothstep((1.0 - r2) / 0.5)).astype(np.float32)
    d += (0.05 * (smooth_noise(rng_anatomy, (grid, grid), 90) - 0.5) * lung_mask).astype(np.float32)

    opacity = opacity_strength * _opacities(c, xyxy, rng_opacity)
    extra_density, extra_fill = _distractors(c, a, distractors, fields, xyxy, ss)
    if extra.fill is not None:
        extra_fill = extra_fill + extra.fill
    if extra.density is not None:
        extra_density = extra_density + extra.density
    filled = np.clip(opacity + extra_fill, 0.0, 1.0)
    # Consolidation also adds a little density of its own, so it shows faintly behind the heart too.
    d = d + body * (1.0 - air * (1.0 - filled)) + extra_density + 0.05 * opacity * lung_mask
    # Computed radiography is edge-enhanced before it is stored; an unsharp mask gives the same crisp look (two box
    # filters approximate a gaussian blur at a fraction of the cost).
    d = d + 0.6 * (d - uniform_filter(uniform_filter(d, 11), 11))

    # Film-like characteristic curve: compresses dense regions, so lungs sit mid-dark and bone and heart near white.
    k = rng_noise.uniform(1.7, 2.4)
    gain = rng_noise.uniform(215, 240)
    heel = np.linspace(rng_noise.uniform(0.95, 1.0), rng_noise.uniform(1.0, 1.05), grid, dtype=np.float32)[:, None]
    display = 4.0 + gain * (1.0 - np.exp(-k * np.clip(d * heel, 0.0, None))) / (1.0 - np.exp(-k * 0.8))
    small = Image.fromarray(np.clip(np.rint(display), 0, 255).astype(np.uint8))
    pixels = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
    # Film grain at full resolution: uniform on -3..3 (sd 2), far cheaper to draw than gaussian noise.
    grain = rng_noise.integers(-3, 4, pixels.shape, dtype=np.int8)
    return np.clip(pixels + grain, 0, 255).astype(np.uint8)


# ---- DICOM ----


def encode_jpeg(pixels: npt.NDArray[np.uint8], quality: int = 95) -> bytes:
    """Encode one 8-bit grayscale frame as a baseline JPEG (the RSNA images' compression)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def build_dicom(pixels: npt.NDArray[np.uint8], labels: ImageLabels, seed: int) -> Any:
    """A `pydicom.Dataset` for one synthetic image, with the header fields the RSNA files carry.

    Secondary Capture SOP class and the dummy study date and time, as in the RSNA release; JPEG baseline transfer
    syntax; UIDs derived from the seed and patient id, so the same seed gives the same bytes.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        JPEGBaseline8Bit,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE) or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8 of shape {(IMAGE_SIZE, IMAGE_SIZE)}, got {pixels.dtype} {pixels.shape}")
    uids = {k: generate_uid(entropy_srcs=["cxrdet-synth", str(seed), labels.patient_id, k])
            for k in ("study", "series", "instance")}  # fmt: skip
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uids["instance"]
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uids["instance"]
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {labels.view}"
    ds.PatientName = labels.patient_id
    ds.PatientID = labels.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = labels.sex
    # RSNA wrote bare numbers ('58'), which is not a valid DICOM age string; write the standard form '058Y'.
    ds.PatientAge = f"{min(labels.age, 999):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = labels.view
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    spacing = f"{labels.pixel_spacing:.6g}"
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([encode_jpeg(pixels)])
    ds["PixelData"].VR = "OB"
    return ds


def write_dicom(path: str | Path, pixels: npt.NDArray[np.uint8], labels: ImageLabels, seed: int) -> Path:
    """Write one synthetic image as a DICOM file (128-byte preamble, file meta, JPEG baseline), atomically."""
    ds = build_dicom(pixels, labels, seed)
    with cio.atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)


# ---- data set ----


@dataclass(frozen=True)
class SynthSummary:
    """What `generate_dataset` wrote.

    Attributes:
        root: The Kaggle-layout folder.
        seed: Data-set seed.
        n_train, n_test: Images per split.
        n_train_positive, n_test_positive: Images with at least one box.
        n_train_boxes, n_test_boxes: Boxes per split.
        images_written: DICOM files rendered (0 with `labels_only`).
        seconds: Wall time.
    """

    root: Path
    seed: int
    n_train: int
    n_test: int
    n_train_positive: int
    n_test_positive: int
    n_train_boxes: int
    n_test_boxes: int
    images_written: int
    seconds: float


def _render_and_write(task: tuple[ImageLabels, str, int]) -> str:
    """Worker: render one image and write its DICOM; returns the path (module-level so it pickles)."""
    labels, path, seed = task
    pixels = render_image(labels.boxes, labels.view, labels.sex, labels.age, labels.distractors,
                          np.random.SeedSequence([seed, labels.index, _STREAM_PIXELS]))  # fmt: skip
    write_dicom(path, pixels, labels, seed)
    return path


def _check_output_folder(layout: KaggleLayout) -> None:
    """Refuse to write into a folder that holds data not made by `cxrdet synth` (a real download, say)."""
    owned = layout.synth_truth.exists()
    foreign = [p for p in (layout.labels_csv, layout.sample_submission) if p.exists()]
    for folder in (layout.train_images, layout.test_images):
        if folder.exists() and any(folder.glob("*.dcm")):
            foreign.append(folder)
    if foreign and not owned:
        raise CxrdetError(
            f"{layout.root}: holds {', '.join(p.name for p in foreign)} but no {layout.synth_truth.name}, so it was "
            "not written by `cxrdet synth`; choose an empty or new folder for --out"
        )


def _remove_stale_images(layout: KaggleLayout, keep: dict[str, set[str]]) -> None:
    """Delete DICOMs of an earlier synth run in the same folder that the new data set does not contain."""
    for split, ids in keep.items():
        folder = layout.images_dir(split)
        if folder.exists():
            for path in folder.glob("*.dcm"):
                if path.stem not in ids:
                    path.unlink()


def generate_dataset(out: Path, n_train: int, n_test: int, seed: int = 0, workers: int | None = None,
                     progress: bool = True, labels_only: bool = False) -> SynthSummary:
    """Write a synthetic data set laid out like the RSNA Kaggle download.

    Files (see `cxrdet.paths.KaggleLayout`): `stage_2_train_labels.csv` (xywh pixels of 1024 x 1024, one row per
    box, negatives one row with empty box fields), `stage_2_detailed_class_info.csv`, `stage_2_train_images/*.dcm`,
    `stage_2_test_images/*.dcm`, `stage_2_sample_submission.csv` (every test id, empty PredictionString); and
    beyond the Kaggle files, `synth_test_labels.csv` (the test labels, same format) and `synth_truth.csv` (per
    image: split, view, sex, age, n_boxes, distractors). The labels CSV is written last, so a run that stops early
    leaves none.

    Args:
        out: Target folder; created if missing. A folder from an earlier synth run is overwritten.
        n_train: Training images (indices 0 .. n_train - 1).
        n_test: Test images (indices n_train .. n_train + n_test - 1).
        seed: Non-negative data-set seed; the same seed gives byte-identical files.
        workers: Rendering processes (default: all CPUs); the output does not depend on it.
        progress: Show a progress bar.
        labels_only: Write the tables but no images.

    Returns:
        A `SynthSummary`.

    Raises:
        ConfigError: Negative counts or seed, or no images at all.
        CxrdetError: `out` holds data that `cxrdet synth` did not write.
    """
    from cxrdet.progress import progress as progress_bar

    _check_seed(seed)
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ConfigError(f"need n_train >= 0, n_test >= 0 and at least one image, got {n_train} and {n_test}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    start = time.perf_counter()
    layout = KaggleLayout(Path(out))
    _check_output_folder(layout)
    images = [sample_image_labels(seed, i) for i in range(n_train + n_test)]
    splits = {"train": images[:n_train], "test": images[n_train:]}
    if len({im.patient_id for im in images}) != len(images):
        raise CxrdetError(f"seed {seed}: two images drew the same patientId; use another seed")

    # The truth table marks the folder as synth's before any image is written (so a crashed run can be redone);
    # the labels CSV goes first and comes back last, so it exists only when the data set is complete.
    layout.labels_csv.unlink(missing_ok=True)
    cio.write_csv(layout.synth_truth, _truth_frame(splits))
    _remove_stale_images(layout, {s: {im.patient_id for im in ims} for s, ims in splits.items()})
    written = 0
    if not labels_only:
        for split in splits:
            layout.images_dir(split).mkdir(parents=True, exist_ok=True)
        tasks = [(im, str(layout.dicom_path(s, im.patient_id)), seed) for s, ims in splits.items() for im in ims]
        bar = progress_bar(total=len(tasks), desc="synth: rendering", unit="img", enabled=progress)
        if workers == 1:
            for task in tasks:
                _render_and_write(task)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
                for future in as_completed([pool.submit(_render_and_write, t) for t in tasks]):
                    future.result()
                    bar.update()
        bar.close()
        written = len(tasks)

    tables = {s: labels_frame(ims) for s, ims in splits.items()}
    cio.write_csv(layout.synth_test_labels, tables["test"][list(LABEL_COLUMNS)])
    cio.write_csv(layout.sample_submission, pd.DataFrame(
        {"patientId": [im.patient_id for im in splits["test"]], "PredictionString": ""}))  # fmt: skip
    cio.write_csv(layout.detailed_class_info, _class_info(tables["train"]))
    cio.write_csv(layout.labels_csv, tables["train"][list(LABEL_COLUMNS)])
    return SynthSummary(
        root=layout.root, seed=seed, n_train=n_train, n_test=n_test,
        n_train_positive=sum(bool(im.boxes) for im in splits["train"]),
        n_test_positive=sum(bool(im.boxes) for im in splits["test"]),
        n_train_boxes=sum(len(im.boxes) for im in splits["train"]),
        n_test_boxes=sum(len(im.boxes) for im in splits["test"]),
        images_written=written, seconds=time.perf_counter() - start,
    )  # fmt: skip


def _truth_frame(splits: dict[str, list[ImageLabels]]) -> pd.DataFrame:
    """One row per image: what the generator knows and the Kaggle files do not say."""
    rows = [(im.patient_id, split, im.view, im.sex, im.age, len(im.boxes), ";".join(im.distractors))
            for split, ims in splits.items() for im in ims]  # fmt: skip
    return pd.DataFrame(rows, columns=list(TRUTH_COLUMNS))


def _class_info(labels: pd.DataFrame) -> pd.DataFrame:
    """RSNA's `stage_2_detailed_class_info.csv`: one row per label row; "Lung Opacity" for boxes, "No Lung Opacity /
    Not Normal" for negatives with a finding distractor (nodule, haze, effusion), else "Normal"."""
    has_finding = labels["distractors"].str.split(";").map(lambda ds: any(d in FINDINGS for d in ds))
    cls = np.where(labels["Target"] == 1, "Lung Opacity",
                   np.where(has_finding, "No Lung Opacity / Not Normal", "Normal"))  # fmt: skip
    return pd.DataFrame({"patientId": labels["patientId"], "class": cls})
