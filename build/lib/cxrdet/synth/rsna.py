"""Synthetic RSNA-format chest X-ray data: Kaggle folder layout, DICOM files, labels calibrated to the real table.

The generator exists so that the whole pipeline (prepare, folds, train, predict, tune, submit) runs and is tested
without the real images, which cannot be downloaded here. Three layers:

- `sample_labels`: the label table alone (view, sex, age, boxes, distractors), drawn from distributions calibrated
  on the real RSNA stage-2 tables (`compute_calibration`, constants below). Cheap: no pixels.
- `cxrdet.synth.render.render_image`: one 1024 x 1024 8-bit chest-like radiograph for a label row set: lungs,
  heart, mediastinum, ribs, clavicles, diaphragm, soft tissue, film noise; textured opacities inside each labelled box
  whose visible extent is larger than the box (RSNA boxes were intersections of readers' boxes); unlabelled
  distractors. Written as JPEG-baseline DICOMs by `cxrdet.synth.dicom`.
- `generate_dataset`: the Kaggle layout on disk (`cxrdet.paths.KaggleLayout`), JPEG-baseline DICOMs written in
  parallel, plus the test labels and a per-image truth table that the real competition does not publish.

Every image is seeded from `(seed, index)` through `numpy.random.SeedSequence`, so output bytes depend on the seed
only, never on the worker count or on how many images are generated after it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet import io as cio
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.paths import KaggleLayout
from cxrdet.synth.dicom import write_dicom
from cxrdet.synth.render import DISTRACTORS, IMAGE_SIZE, render_image

LABEL_COLUMNS: Final = ("patientId", "x", "y", "width", "height", "Target")
TRUTH_COLUMNS: Final = ("image_id", "split", "view", "sex", "age", "n_boxes", "distractors")
# Distractors that are findings (the image is "not normal"); devices alone leave an image "Normal".
FINDINGS: Final = ("nodule", "haze", "effusion")

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
