"""Synthetic NIH ChestX-ray14-format data: the NIH download layout, 8-bit PNGs, 14 findings drawn visibly.

The image-level (multi-label) path needs NIH-format images, which cannot be downloaded here. Three layers, as in
`cxrdet.synth.rsna` (whose chest renderer draws every image):

- `sample_nih_images`: the label table alone, drawn patient by patient: how many images a patient has, sex, age,
  and per image the view and the 14 findings, from a Gaussian copula calibrated on the real
  `Data_Entry_2017_v2020.csv` (`compute_nih_calibration`, constants below). A patient's images share a latent
  disease state (follow-ups repeat findings), and patients with many images are sicker and more often AP, as in
  the real table. Cheap: no pixels.
- `FindingSigns` + `render_nih_image`: the RSNA renderer's chest (anatomy, lungs, ribs, vessels, devices) with one
  radiological sign per finding (a wider heart, a basal meniscus, a round spot, a lucent rim without vessels, ...).
  A patient's follow-ups show the same anatomy (its seed is the patient's), slightly repositioned.
- `generate_nih_dataset`: the NIH layout on disk (`cxrdet.paths.NihLayout`): `Data_Entry_2017_v2020.csv` with the
  real header, `images/<patient:08d>_<follow-up:03d>.png`, patient-disjoint `train_val_list.txt` and
  `test_list.txt`; beyond NIH's files, `synth_truth.csv` (per image: split, view, sex, age, findings, devices) and
  `synth_boxes.csv` (where each finding was drawn, xywh pixels of the PNG).

Every draw is seeded from `(seed, patient, follow-up, purpose)` through `numpy.random.SeedSequence`, so the bytes
depend on the seed and the requested counts only, never on the worker count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet import io as cio
from cxrdet.data.labels import NIH_FINDINGS, NIH_NO_FINDING
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.paths import NihLayout
from cxrdet.synth.render import (
    IMAGE_SIZE,
    Anatomy,
    Canvas,
    Layers,
    LungField,
    child_rng,
    render_image,
    smooth_noise,
    smoothstep,
)
from cxrdet.synth.rsna import AGE_LEVELS, DISTRACTOR_PROBS, cholesky_psd

# The columns of the real table as a CSV reader splits its header: the two bracketed names hold unquoted commas, so
# the header line written from them is the real one, `...,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]`.
NIH_TABLE_COLUMNS: Final = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position",
    "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
)  # fmt: skip
NIH_HEADER: Final = ",".join(NIH_TABLE_COLUMNS)
TRUTH_COLUMNS: Final = ("image_id", "split", "patient_id", "follow_up", "view", "sex", "age", "findings", "devices")
BOX_COLUMNS: Final = ("image_id", "finding", "x", "y", "width", "height")
# Latent variables of the copula: the view (AP when "present"), then the findings.
VARIABLES: Final = ("AP", *NIH_FINDINGS)
# Groups of patients by their number of images (lower bounds): the more images, the sicker and the more often AP.
COUNT_BUCKETS: Final = (1, 2, 3, 5, 9, 17)
# Quantile levels of the number of images of patients with more than `len(pmf)` images.
TAIL_LEVELS: Final = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
DEVICES: Final = ("tube", "wire")
DEFAULT_SIZE: Final = 1024  # side of the NIH PNGs

# ---- calibration ----
# Computed by `compute_nih_calibration` from the real NIH table (Data_Entry_2017_v2020.csv: 112,120 images of 30,805
# patients) via `python benchmarks/bench_synth.py --print-nih-calibration`. `images_per_patient`: the share of
# patients with 1..16 images, then quantiles (`TAIL_LEVELS`) of the count of those with more. `male_share`: per count
# bucket (`COUNT_BUCKETS`), the share of men among patients. `rates`: per count bucket, the share of images with each
# of `VARIABLES`. `latent_corr`: correlations of the normal
# latents of `VARIABLES` within an image (tetrachoric, fitted to the pooled pair rates given the buckets'
# thresholds); `patient_corr`: each variable's latent correlation between consecutive images of one patient.
# `size_spacing`: the most common `OriginalImage[Width,Height]` and pixel spacing, with their shares.
NIH_CALIBRATION: Final[dict[str, Any]] = {
    "images_per_patient": {
        "pmf": [
            0.5682, 0.1335, 0.0682, 0.0432, 0.0304, 0.0255, 0.0197, 0.016, 0.0126, 0.0104, 0.0091, 0.0076, 0.0054,
            0.0059, 0.0039, 0.0039,
        ],
        "tail_quantiles": [17.0, 20.0, 25.0, 37.0, 55.0, 113.4, 184.0],
    },
    "male_share": {"1": 0.5272, "2": 0.5458, "3": 0.5411, "5": 0.5624, "9": 0.5674, "17": 0.6096},
    "age_quantiles": [
        0.0, 6.0, 11.0, 17.0, 23.0, 31.0, 37.0, 43.0, 47.0, 52.0, 56.0, 61.0, 66.0, 71.0, 75.0, 79.0, 95.0,
    ],
    "age_years_per_followup": 0.6476,
    "size_spacing": [
        [2500, 2048, 0.168, 0.3341],
        [2992, 2991, 0.143, 0.2446],
        [3056, 2544, 0.139, 0.1709],
        [2500, 2048, 0.171, 0.0796],
        [2048, 2500, 0.168, 0.0648],
        [2021, 2021, 0.194311, 0.0475],
        [2048, 2500, 0.171, 0.0316],
        [2544, 3056, 0.139, 0.0269],
    ],
    "rates": {
        "1": [
            0.0685, 0.0446, 0.0253, 0.0302, 0.1083, 0.0286, 0.0457, 0.0045, 0.0034, 0.011, 0.0016, 0.0068, 0.0174,
            0.0218, 0.002,
        ],
        "2": [
            0.185, 0.0663, 0.0254, 0.0549, 0.1229, 0.0377, 0.0489, 0.0069, 0.0102, 0.0125, 0.0032, 0.0113, 0.0193,
            0.0225, 0.004,
        ],
        "3": [
            0.2708, 0.0866, 0.0224, 0.074, 0.1412, 0.0489, 0.055, 0.0104, 0.0199, 0.0261, 0.0099, 0.0122, 0.0207,
            0.0281, 0.0027,
        ],
        "5": [
            0.3868, 0.1073, 0.019, 0.1006, 0.1499, 0.0586, 0.0633, 0.0114, 0.0331, 0.0299, 0.0166, 0.0171, 0.0167,
            0.027, 0.0032,
        ],
        "9": [
            0.443, 0.1332, 0.0198, 0.1389, 0.1594, 0.0618, 0.0624, 0.0116, 0.0609, 0.0429, 0.0237, 0.0286, 0.0132,
            0.0331, 0.0013,
        ],
        "17": [
            0.6314, 0.1255, 0.0308, 0.1878, 0.2588, 0.0573, 0.0571, 0.0202, 0.0848, 0.0731, 0.0372, 0.0349, 0.0113,
            0.0365, 0.0012,
        ],
    },
    "latent_corr": [
        [1.0, 0.08, 0.03, 0.01, 0.14, -0.08, -0.11, 0.08, -0.24, 0.22, 0.45, -0.11, -0.27, -0.2, -0.22],
        [0.08, 1.0, 0.07, 0.34, 0.19, 0.05, -0.04, 0.12, 0.06, 0.28, -0.06, 0.1, 0.07, 0.08, 0.13],
        [0.03, 0.07, 1.0, 0.4, 0.04, -0.07, -0.07, 0.02, -0.2, 0.07, 0.16, -0.07, 0.04, 0.05, 0.04],
        [0.01, 0.34, 0.4, 1.0, 0.2, 0.18, 0.05, 0.07, 0.06, 0.23, 0.16, -0.01, 0.01, 0.22, -0.02],
        [0.14, 0.19, 0.04, 0.2, 1.0, 0.03, 0.12, 0.26, -0.07, 0.08, 0.27, -0.04, 0.06, 0.06, -0.02],
        [-0.08, 0.05, -0.07, 0.18, 0.03, 1.0, 0.3, -0.02, 0.09, 0.24, -0.01, 0.1, 0.07, 0.24, 0.14],
        [-0.11, -0.04, -0.07, 0.05, 0.12, 0.3, 1.0, -0.03, 0.02, 0.12, -0.01, -0.05, 0.12, 0.19, -0.04],
        [0.08, 0.12, 0.02, 0.07, 0.26, -0.02, -0.03, 1.0, -0.14, 0.11, 0.54, -0.08, -0.08, 0.01, 0.02],
        [-0.24, 0.06, -0.2, 0.06, -0.07, 0.09, 0.02, -0.14, 1.0, -0.08, -0.28, 0.48, 0.03, 0.12, 0.01],
        [0.22, 0.28, 0.07, 0.23, 0.08, 0.24, 0.12, 0.11, -0.08, 1.0, 0.05, -0.05, 0.05, 0.11, -0.09],
        [0.45, -0.06, 0.16, 0.16, 0.27, -0.01, -0.01, 0.54, -0.28, 0.05, 1.0, -0.14, -0.17, -0.04, -0.03],
        [-0.11, 0.1, -0.07, -0.01, -0.04, 0.1, -0.05, -0.08, 0.48, -0.05, -0.14, 1.0, 0.01, 0.13, -0.01],
        [-0.27, 0.07, 0.04, 0.01, 0.06, 0.07, 0.12, -0.08, 0.03, 0.05, -0.17, 0.01, 1.0, 0.27, 0.11],
        [-0.2, 0.08, 0.05, 0.22, 0.06, 0.24, 0.19, 0.01, 0.12, 0.11, -0.04, 0.13, 0.27, 1.0, 0.03],
        [-0.22, 0.13, 0.04, -0.02, -0.02, 0.14, -0.04, 0.02, 0.01, -0.09, -0.03, -0.01, 0.11, 0.03, 1.0],
    ],
    "patient_corr": [
        0.732, 0.523, 0.67, 0.625, 0.376, 0.705, 0.578, 0.43, 0.822, 0.528, 0.647, 0.788, 0.57, 0.53, 0.903,
    ],
}


def _upper_orthant(h: npt.ArrayLike, k: npt.ArrayLike, r: float) -> npt.NDArray[np.float64]:
    """P(X > h, Y > k) for standard normals of correlation `r` (Owen's T form; vectorised over h and k)."""
    from scipy.special import ndtr, owens_t

    a = -np.asarray(h, dtype=np.float64)
    b = -np.asarray(k, dtype=np.float64)
    a = np.where(a == 0, 1e-12, a)
    b = np.where(b == 0, 1e-12, b)
    s = np.sqrt(1.0 - r * r)
    beta = np.where(a * b > 0, 0.0, 0.5)
    return 0.5 * ndtr(a) + 0.5 * ndtr(b) - owens_t(a, (b - r * a) / (a * s)) - owens_t(b, (a - r * b) / (b * s)) - beta


def _fit_correlation(target: float, weights: npt.NDArray[np.float64], h: npt.NDArray[np.float64],
                     k: npt.NDArray[np.float64], low: float) -> float:
    """The latent correlation whose bucket mixture `sum(weights * P(X > h, Y > k))` equals `target`."""
    from scipy.optimize import brentq

    def gap(r: float) -> float:
        return float(np.sum(weights * _upper_orthant(h, k, r))) - target

    hi = 0.99
    if gap(low) >= 0:
        return low
    if gap(hi) <= 0:
        return hi
    return float(brentq(gap, low, hi, xtol=1e-5))


def _thresholds(rates: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Latent thresholds of present/absent for given rates (clipped away from 0 and 1)."""
    from scipy.special import ndtri

    return -ndtri(np.clip(np.asarray(rates, dtype=np.float64), 1e-5, 1 - 1e-5))


def _bucket(counts: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Index into `COUNT_BUCKETS` of each patient image count."""
    return np.searchsorted(COUNT_BUCKETS, np.asarray(counts), side="right") - 1


def compute_nih_calibration(table: pd.DataFrame) -> dict[str, Any]:
    """Compute the generator's calibration from the real NIH table.

    Args:
        table: `Data_Entry_2017_v2020.csv` as `pandas.read_csv` reads it (`NIH_TABLE_COLUMNS`).

    Returns:
        A dict of the same shape as `NIH_CALIBRATION` (plain floats and lists, rounded for pasting into code).
    """

    def r(v: Any, nd: int = 4) -> Any:
        return np.round(np.asarray(v, dtype=np.float64), nd).tolist()

    df = table.assign(follow_up=table["Image Index"].str.slice(9, 12).astype(int))
    df = df.sort_values(["Patient ID", "follow_up"], kind="stable").reset_index(drop=True)
    counts = df.groupby("Patient ID").size()
    pmf = counts.value_counts(normalize=True).reindex(range(1, 17), fill_value=0.0)
    tail = counts[counts > 16] if (counts > 16).any() else pd.Series([17])  # a small table may have no long history
    cal: dict[str, Any] = {
        "images_per_patient": {"pmf": r(pmf.to_numpy()), "tail_quantiles": r(np.quantile(tail, TAIL_LEVELS), 1)},
    }
    first = df.groupby("Patient ID").first()
    # Per count bucket: men have more images than women in the real table.
    male = (first["Patient Gender"] == "M").groupby(_bucket(counts.reindex(first.index).to_numpy())).mean()
    cal["male_share"] = {str(lo): round(float(male.get(b, male.mean())), 4) for b, lo in enumerate(COUNT_BUCKETS)}
    cal["age_quantiles"] = r(np.quantile(first["Patient Age"][first["Patient Age"] <= 100], AGE_LEVELS), 1)
    ages = df.groupby("Patient ID")["Patient Age"]
    many = counts > 1
    cal["age_years_per_followup"] = round(float(((ages.max() - ages.min())[many] / (counts[many] - 1)).mean()), 4)
    combos = df.groupby(["OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x"]).size()
    top = (combos / combos.sum()).sort_values(ascending=False).head(8)
    cal["size_spacing"] = [[int(w), int(h), round(float(s), 6), round(float(p / top.sum()), 4)]
                           for (w, h, s), p in top.items()]  # fmt: skip

    findings = df["Finding Labels"].str.get_dummies(sep="|").reindex(columns=list(NIH_FINDINGS), fill_value=0)
    x = np.column_stack([(df["View Position"] == "AP").to_numpy(), findings.to_numpy() > 0])
    bucket = _bucket(df.groupby("Patient ID")["Image Index"].transform("size").to_numpy())
    n_buckets = len(COUNT_BUCKETS)
    # A bucket without images (a small table) takes the overall rates.
    rates = np.stack([x[bucket == b].mean(axis=0) if (bucket == b).any() else x.mean(axis=0) for b in range(n_buckets)])
    cal["rates"] = {str(lo): r(rates[b]) for b, lo in enumerate(COUNT_BUCKETS)}
    # Fit with the rounded rates, as the sampler will use them.
    t = _thresholds(np.round(rates, 4))
    weights = np.bincount(bucket, minlength=n_buckets) / len(bucket)
    n_vars = len(VARIABLES)
    corr = np.eye(n_vars)
    for i in range(n_vars):
        for j in range(i + 1, n_vars):
            target = float((x[:, i] & x[:, j]).mean())
            corr[i, j] = corr[j, i] = _fit_correlation(target, weights, t[:, i], t[:, j], -0.99)
    cal["latent_corr"] = r(corr, 2)
    same = (df["Patient ID"].to_numpy()[1:] == df["Patient ID"].to_numpy()[:-1])
    pair_bucket = bucket[1:][same]
    pair_weights = np.bincount(pair_bucket, minlength=n_buckets) / len(pair_bucket)
    both = x[1:][same] & x[:-1][same]
    cal["patient_corr"] = r([_fit_correlation(float(both[:, j].mean()), pair_weights, t[:, j], t[:, j], 0.0)
                             for j in range(n_vars)], 3)  # fmt: skip
    return cal


# ---- label sampling ----

# Purposes of the random streams `SeedSequence([seed, patient, follow-up, purpose])`; a patient's own draws use the
# follow-up `_PATIENT`, beyond any real follow-up number (NIH's largest is 183).
_PATIENT: Final = 1 << 20
_LABELS: Final = 0
_PIXELS: Final = 1
_ANATOMY: Final = 2


def _adjusted_cholesky(cal: dict[str, Any]) -> npt.NDArray[np.float64]:
    """Cholesky factor of the correlation that the patient and image parts of the latents are each drawn with.

    An image's latent is `sqrt(rho) * z_patient + sqrt(1 - rho) * e_image`; with per-variable `rho`, variables a and b
    correlate by `C_ab * (sqrt(rho_a rho_b) + sqrt((1 - rho_a)(1 - rho_b)))` when both parts are drawn with C, so
    the parts use C divided by that factor, and the image latents correlate by the calibrated `latent_corr`.
    """
    rho = np.asarray(cal["patient_corr"], dtype=np.float64)
    k = np.sqrt(np.outer(rho, rho)) + np.sqrt(np.outer(1 - rho, 1 - rho))
    return cholesky_psd(np.asarray(cal["latent_corr"], dtype=np.float64) / k)


_CHOL: Final = _adjusted_cholesky(NIH_CALIBRATION)
_RHO: Final = np.asarray(NIH_CALIBRATION["patient_corr"], dtype=np.float64)
_THRESHOLDS: Final = np.stack([_thresholds(NIH_CALIBRATION["rates"][str(lo)]) for lo in COUNT_BUCKETS])


@dataclass(frozen=True)
class NihImage:
    """Everything sampled for one synthetic NIH image before any pixel is drawn.

    Attributes:
        patient: Patient number (1-based), NIH's `Patient ID`.
        follow_up: 0-based follow-up number, NIH's `Follow-up #` and the file name's suffix.
        split: `train` (in `train_val_list.txt`) or `test` (in `test_list.txt`); one per patient.
        view: `AP` or `PA`.
        sex: `M` or `F`.
        age: Age in years at this image.
        original_size: NIH's `OriginalImage[Width,Height]` (pixels of the scanned film; the PNG is square).
        spacing: NIH's `OriginalImagePixelSpacing[x,y]` (mm, square pixels).
        findings: Findings present, in `NIH_FINDINGS` order (empty: 'No Finding').
        devices: Unlabelled tubes and wires drawn, from `DEVICES`.
    """

    patient: int
    follow_up: int
    split: str
    view: str
    sex: str
    age: int
    original_size: tuple[int, int]
    spacing: float
    findings: tuple[str, ...]
    devices: tuple[str, ...]

    @property
    def image_id(self) -> str:
        """`<patient:08d>_<follow-up:03d>`, NIH's `Image Index` without `.png` (as `cxrdet` ids are)."""
        return f"{self.patient:08d}_{self.follow_up:03d}"

    @property
    def file_name(self) -> str:
        return f"{self.image_id}.png"

    @property
    def finding_labels(self) -> str:
        """NIH's `Finding Labels`: the findings in alphabetical order, `|`-separated, or 'No Finding'."""
        return "|".join(sorted(self.findings)) or NIH_NO_FINDING


def _rng(seed: int, patient: int, follow_up: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(_seed_sequence(seed, patient, follow_up, purpose))


def _seed_sequence(seed: int, patient: int, follow_up: int, purpose: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, patient, follow_up, purpose])


def _draw_count(rng: np.random.Generator) -> int:
    """A patient's number of images in the real table's distribution (before any cap)."""
    cal = NIH_CALIBRATION["images_per_patient"]
    probs = np.append(cal["pmf"], max(0.0, 1.0 - sum(cal["pmf"])))
    k = int(rng.choice(len(probs), p=probs / probs.sum()))
    tail = float(rng.random())
    if k < len(probs) - 1:
        return k + 1
    return max(len(probs), round(float(np.interp(tail, TAIL_LEVELS, cal["tail_quantiles"]))))


def _patient_images(seed: int, patient: int, split: str, room: int, cap: int) -> list[NihImage]:
    """The images of one patient: its drawn count of them, at most `cap` and `room`."""
    cal = NIH_CALIBRATION
    rng = _rng(seed, patient, _PATIENT, _LABELS)
    drawn = _draw_count(rng)
    sex = "M" if rng.random() < cal["male_share"][str(COUNT_BUCKETS[_bucket(drawn)])] else "F"
    base_age = round(float(np.interp(rng.random(), AGE_LEVELS, cal["age_quantiles"])))
    years_per_followup = rng.exponential(cal["age_years_per_followup"])
    z = _CHOL @ rng.standard_normal(len(VARIABLES))
    # The thresholds follow the patient's drawn history length, even where the data set keeps fewer of its images.
    thresholds = _THRESHOLDS[_bucket(drawn)]
    combos = np.asarray(cal["size_spacing"], dtype=np.float64)
    images = []
    for follow_up in range(min(drawn, room, cap)):
        rng_i = _rng(seed, patient, follow_up, _LABELS)
        latent = np.sqrt(_RHO) * z + np.sqrt(1.0 - _RHO) * (_CHOL @ rng_i.standard_normal(len(VARIABLES)))
        present = latent > thresholds
        view = "AP" if present[0] else "PA"
        w, h, spacing, _ = combos[rng_i.choice(len(combos), p=combos[:, 3] / combos[:, 3].sum())]
        devices = tuple(d for d in DEVICES if rng_i.random() < DISTRACTOR_PROBS[view][d])
        images.append(NihImage(
            patient=patient, follow_up=follow_up, split=split, view=view, sex=sex,
            age=min(95, base_age + int(follow_up * years_per_followup)), original_size=(int(w), int(h)),
            spacing=float(spacing), findings=tuple(f for f, p in zip(NIH_FINDINGS, present[1:], strict=True) if p),
            devices=devices,
        ))  # fmt: skip
    return images


def default_cap(n_images: int) -> int:
    """Most images kept of one patient in a data set of `n_images`: a fiftieth of it (at least 4), so that no
    patient fills a small data set (the real table's largest patient has 184 of 112,120 images)."""
    return max(4, n_images // 50)


def sample_nih_images(n_train: int, n_test: int, seed: int = 0, max_per_patient: int | None = None) -> list[NihImage]:
    """Draw the patients and images of a synthetic NIH data set (no pixels).

    Patients are drawn one after another; each goes to the test split with probability `n_test / (n_train + n_test)`
    while both splits have room, else to the one that has; its images are its drawn count, capped by
    `max_per_patient` and by the room left in its split, so the splits hold exactly `n_train` and `n_test` images
    and share no patient.

    Args:
        n_train: Images of `train_val_list.txt`.
        n_test: Images of `test_list.txt`.
        seed: Non-negative data-set seed.
        max_per_patient: Most images kept per patient; None is `default_cap(n_train + n_test)`.

    Returns:
        The images sorted by image id.

    Raises:
        ConfigError: Negative counts or seed, no images at all, or a cap below 1.
    """
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ConfigError(f"need n_train >= 0, n_test >= 0 and at least one image, got {n_train} and {n_test}")
    total = n_train + n_test
    cap = default_cap(total) if max_per_patient is None else max_per_patient
    if cap < 1:
        raise ConfigError(f"max_per_patient must be at least 1, got {cap}")
    room = {"train": n_train, "test": n_test}
    images: list[NihImage] = []
    patient = 0
    while room["train"] + room["test"] > 0:
        patient += 1
        # The split draw comes from its own stream so that the patient's labels do not depend on it.
        split = "test" if _rng(seed, patient, _PATIENT, _PIXELS).random() < n_test / total else "train"
        if room[split] == 0:
            split = "train" if split == "test" else "test"
        drawn = _patient_images(seed, patient, split, room[split], cap)
        room[split] -= len(drawn)
        images += drawn
    return sorted(images, key=lambda im: im.image_id)


def nih_table(images: Sequence[NihImage]) -> pd.DataFrame:
    """The `Data_Entry_2017_v2020.csv` table of `images` (`NIH_TABLE_COLUMNS`, one row per image, in given order)."""
    rows = [(im.file_name, im.finding_labels, im.follow_up, im.patient, im.age, im.sex, im.view, *im.original_size,
             im.spacing, im.spacing) for im in images]  # fmt: skip
    return pd.DataFrame(rows, columns=list(NIH_TABLE_COLUMNS))


def sample_nih_labels(n_images: int, seed: int = 0) -> pd.DataFrame:
    """The NIH table of a synthetic data set of `n_images` training images, without rendering (see `nih_table`)."""
    return nih_table(sample_nih_images(n_images, 0, seed))


# ---- rendering: one sign per finding ----
# Geometry in pixels of the 1024 x 1024 chest (`cxrdet.synth.rsna`); arrays on the render grid of the `Canvas`.
# A lung's relative position: u = 0 at its medial edge, 1 at its lateral edge; v = 0 at its apex, 1 at its
# costophrenic angle.

Box = tuple[str, float, float, float, float]  # finding, x1, y1, x2, y2 (xyxy; in `FindingSigns` pixels of 1024)
# Air fraction of a pneumothorax or a bulla: darker than the lung around it (whose air is mostly 0.3-0.7 of the path),
# lighter than air outside the body.
_FREE_AIR: Final = 0.5


def _lung_point(a: Anatomy, lung_index: int, u: float, v: float) -> tuple[float, float]:
    """Pixels of 1024 of the relative position (u, v) of lung `lung_index` (0 image-left, 1 image-right)."""
    lung = a.lungs[lung_index]
    return a.mid + lung.sign * (lung.med + u * (lung.lat - lung.med)), lung.apex + v * lung.height


def _ellipse(c: Canvas, cx: float, cy: float, rx: float, ry: float, soft: float = 0.3) -> npt.NDArray[np.float32]:
    """1 inside the ellipse, 0 outside, a smooth edge `soft` (in radii) wide; on the full grid."""
    out = np.zeros((c.grid, c.grid), np.float32)
    rows, cols = c.window(cx - rx, cy - ry, cx + rx, cy + ry)
    r = np.sqrt(((c.x[:, cols] - cx) / rx) ** 2 + ((c.y[rows, :] - cy) / ry) ** 2)
    out[rows, cols] = smoothstep((1.0 - r) / soft)
    return out


def _segment(c: Canvas, cx: float, cy: float, length: float, angle: float, half_width: float) -> Any:
    """A band of `half_width` around a segment (centre, length, angle in radians), faded at its ends; full grid."""
    out = np.zeros((c.grid, c.grid), np.float32)
    reach = length / 2 + 3 * half_width
    rows, cols = c.window(cx - reach, cy - reach, cx + reach, cy + reach)
    x, y = c.x[:, cols] - cx, c.y[rows, :] - cy
    along = x * np.cos(angle) + y * np.sin(angle)
    across = -x * np.sin(angle) + y * np.cos(angle)
    out[rows, cols] = np.exp(-((across / half_width) ** 2)) * smoothstep((length / 2 - np.abs(along)) / (0.2 * length))
    return out


def _grid_box(c: Canvas, rows: slice, cols: slice, mask: npt.NDArray[np.bool_]) -> tuple[float, float, float, float]:
    """xyxy pixels of 1024 of the true pixels of `mask` (a window at rows, cols of the grid)."""
    r, k = np.nonzero(mask)
    if len(r) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return ((cols.start + k.min()) * c.step, (rows.start + r.min()) * c.step,
            (cols.start + k.max() + 1) * c.step, (rows.start + r.max() + 1) * c.step)  # fmt: skip


class FindingSigns:
    """The NIH findings of one image, drawn into the RSNA renderer's chest (a `cxrdet.synth.render.Signs`).

    Atelectasis: a plate-like band at the base and a raised hemidiaphragm. Cardiomegaly: a heart 30-45% wider.
    Effusion: basal fluid under a meniscus that climbs the lateral wall, blunting the costophrenic angle. Infiltration:
    several faint, ill-defined, mottled patches. Mass: one lobulated round lesion, 35-75 px in radius. Nodule: one to
    three small, sharp, dense spots, 8-18 px. Pneumonia: one textured airspace opacity (the RSNA renderer's opacity,
    through `opacity_boxes`). Pneumothorax: a lucent rim without vessels along the apex and lateral wall, bounded by
    the thin visceral pleural line. Consolidation: a dense homogeneous lobar opacity with air bronchograms. Edema:
    bilateral perihilar haze with Kerley B lines at the lateral bases. Emphysema: large hyperlucent lungs with flat
    diaphragms, pruned peripheral vessels and bullae. Fibrosis: a peripheral, basal reticular net and smaller lungs.
    Pleural_Thickening: a soft-tissue band along the apex or the lateral chest wall. Hernia: a rounded retrocardiac
    density holding gas above a fluid level.

    Each finding draws from its own stream of `ss`, so adding one leaves the others and the chest as they were; the
    per-image repositioning of the patient (`jitter`) has a stream of its own too. After rendering, `boxes` holds
    where each finding was drawn (xyxy pixels of 1024, several boxes for multifocal findings).
    """

    def __init__(self, findings: Sequence[str], ss: np.random.SeedSequence, jitter: bool = True) -> None:
        unknown = sorted(set(findings) - set(NIH_FINDINGS))
        if unknown:
            raise ConfigError(f"unknown findings {unknown}; expected some of {list(NIH_FINDINGS)}")
        self.findings = tuple(f for f in NIH_FINDINGS if f in findings)
        self._ss = ss
        self._jitter = jitter
        self._rng = {f: child_rng(ss, 1 + NIH_FINDINGS.index(f)) for f in self.findings}
        # The lung a one-sided finding lies in (0 image-left, 1 image-right): the anatomy and the layers both need it.
        self._side = {f: int(rng.integers(2)) for f, rng in self._rng.items()}
        self.boxes: list[Box] = []

    def opacity_boxes(self) -> npt.NDArray[np.float64]:
        """Pneumonia's airspace opacity as a box for the RSNA renderer: xywh pixels of 1024, shape (N, 4)."""
        if "Pneumonia" not in self._rng:
            return np.zeros((0, 4))
        rng = self._rng["Pneumonia"]
        sign = -1 if self._side["Pneumonia"] == 0 else 1
        # Typical lung geometry of the renderer (midline 512, medial edge 72, lateral 385, apex 145, angle 840): the
        # renderer grows the lung around the box where needed.
        w, h = rng.uniform(140, 260), rng.uniform(150, 320)
        cx = 512 + sign * (72 + rng.uniform(0.3, 0.7) * 313)
        cy = 145 + rng.uniform(0.35, 0.7) * 695
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        self.boxes.append(("Pneumonia", *box))
        return np.array([[box[0], box[1], w, h]])

    def anatomy(self, a: Anatomy) -> Anatomy:
        """Reposition the patient (follow-ups differ slightly) and apply the findings that change the geometry."""
        lungs = list(a.lungs)
        mid, heart_width = a.mid, a.heart_width
        if self._jitter:
            rng = child_rng(self._ss, 0)
            mid += rng.normal(0, 6)
            breath = rng.normal(0, 12)
            lungs = [replace(lung, cp=min(1000.0, lung.cp + breath)) for lung in lungs]
        if "Emphysema" in self._rng:
            rng = self._rng["Emphysema"]
            grow, lower, flat = rng.uniform(1.05, 1.1), rng.uniform(35, 70), rng.uniform(0.3, 0.5)
            lungs = [replace(lung, lat=lung.lat * grow, cp=min(1000.0, lung.cp + lower), dome=lung.dome * flat,
                             apex=lung.apex - 10) for lung in lungs]  # fmt: skip
            heart_width *= 0.9
        if "Fibrosis" in self._rng:
            shrink = self._rng["Fibrosis"].uniform(20, 40)
            lungs = [replace(lung, cp=lung.cp - shrink, lat=lung.lat * 0.96) for lung in lungs]
        if "Atelectasis" in self._rng:
            k = self._side["Atelectasis"]
            lungs[k] = replace(lungs[k], cp=lungs[k].cp - self._rng["Atelectasis"].uniform(25, 50))
        if "Cardiomegaly" in self._rng:
            rng = self._rng["Cardiomegaly"]
            chest = lungs[0].lat + lungs[1].lat
            heart_width = max(heart_width * rng.uniform(1.3, 1.45), rng.uniform(0.58, 0.66) * chest)
        body_half = max(a.body_half, max(lung.lat for lung in lungs) + 40)
        return replace(a, mid=mid, lungs=(lungs[0], lungs[1]), heart_width=heart_width, body_half=body_half)

    def layers(self, c: Canvas, a: Anatomy, fields: Sequence[LungField]) -> Layers:
        """Every finding's layers on the grid of `c`; records `boxes`."""
        from scipy.ndimage import distance_transform_edt

        shape = (c.grid, c.grid)
        out = _Draft(np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.ones(shape, np.float32),
                     np.zeros(shape, np.float32), np.ones(shape, np.float32))  # fmt: skip
        # Distance to the lung's edge (pixels of 1024) on each lung's window, for the signs along the pleura.
        edges = [distance_transform_edt(f.mask[f.rows, f.cols]).astype(np.float32) * c.step for f in fields]
        for finding in self.findings:
            if finding != "Pneumonia":  # drawn by the RSNA renderer from `opacity_boxes`
                getattr(self, "_" + finding.lower())(self._rng[finding], c, a, fields, edges, out)
        return Layers(density=out.density, fill=out.fill, air_gain=out.air_gain, air_floor=out.air_floor,
                      vessel_keep=out.vessel_keep)  # fmt: skip

    def _add_box(self, finding: str, x1: float, y1: float, x2: float, y2: float) -> None:
        self.boxes.append((finding, float(x1), float(y1), float(x2), float(y2)))

    # Each sign: (its stream, canvas, anatomy, lung fields, edge distances per lung window, layers to add to).

    def _atelectasis(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
                     edges: Sequence[Any], out: _Draft) -> None:
        k = self._side["Atelectasis"]
        lung = a.lungs[k]
        for _ in range(1 + int(rng.random() < 0.3)):
            cx, cy = _lung_point(a, k, rng.uniform(0.3, 0.6), rng.uniform(0.6, 0.8))
            length = rng.uniform(0.45, 0.75) * (lung.lat - lung.med)
            half, angle = rng.uniform(6, 11), rng.uniform(-0.25, 0.25)
            band = _segment(c, cx, cy, length, angle, half) * fields[k].mask
            out.fill += 0.8 * band
            dy = abs(np.sin(angle)) * length / 2 + 2 * half
            self._add_box("Atelectasis", cx - length / 2, cy - dy, cx + length / 2, cy + dy)

    def _cardiomegaly(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
                      edges: Sequence[Any], out: _Draft) -> None:
        # The heart itself is drawn wider by `anatomy`; its silhouette spans -0.36 to +0.64 heart widths.
        base = a.lungs[1].cp - 0.75 * a.lungs[1].dome
        self._add_box("Cardiomegaly", a.mid - 0.36 * a.heart_width, a.heart_top, a.mid + 0.64 * a.heart_width, base)

    def _effusion(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
                  edges: Sequence[Any], out: _Draft) -> None:
        sides = [0, 1] if rng.random() < 0.35 else [self._side["Effusion"]]
        for k in sides:
            f, lung = fields[k], a.lungs[k]
            level = rng.uniform(0.12, 0.3) * lung.height
            top = f.bottom - level * (0.25 + 0.75 * np.clip(f.u, 0.0, 1.0) ** 1.5)
            fluid = smoothstep((c.y[f.rows, :] - top) / rng.uniform(15, 30)) * f.mask[f.rows, f.cols]
            out.fill[f.rows, f.cols] += 0.97 * fluid
            out.density[f.rows, f.cols] += 0.05 * fluid
            self._add_box("Effusion", *_grid_box(c, f.rows, f.cols, fluid > 0.5))

    def _infiltration(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
                      edges: Sequence[Any], out: _Draft) -> None:
        mottle = 0.35 + 0.65 * smooth_noise(rng, (c.grid, c.grid), 60)
        lung_mask = fields[0].mask | fields[1].mask
        for _ in range(int(rng.integers(2, 6))):
            cx, cy = _lung_point(a, int(rng.integers(2)), rng.uniform(0.15, 0.85), rng.uniform(0.2, 0.85))
            rx, ry = rng.uniform(45, 110), rng.uniform(40, 100)
            rows, cols = c.window(cx - 2.5 * rx, cy - 2.5 * ry, cx + 2.5 * rx, cy + 2.5 * ry)
            patch = np.exp(-(((c.x[:, cols] - cx) / rx) ** 2 + ((c.y[rows, :] - cy) / ry) ** 2))
            out.fill[rows, cols] += rng.uniform(0.45, 0.75) * patch * mottle[rows, cols] * lung_mask[rows, cols]
            self._add_box("Infiltration", cx - rx, cy - ry, cx + rx, cy + ry)

    def _mass(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
              edges: Sequence[Any], out: _Draft) -> None:
        cx, cy = _lung_point(a, self._side["Mass"], rng.uniform(0.3, 0.75), rng.uniform(0.2, 0.7))
        radius = rng.uniform(35, 75)
        phase = rng.uniform(0, 2 * np.pi, 2)
        rows, cols = c.window(cx - 1.3 * radius, cy - 1.3 * radius, cx + 1.3 * radius, cy + 1.3 * radius)
        dx, dy = c.x[:, cols] - cx, c.y[rows, :] - cy
        theta = np.arctan2(dy, dx)
        # Lobulated outline: the radius swings by a few tenths around the circle.
        outline = radius * (1.0 + 0.12 * np.sin(3 * theta + phase[0]) + 0.08 * np.sin(5 * theta + phase[1]))
        lesion = smoothstep((1.0 - np.sqrt(dx**2 + dy**2) / outline) / 0.2)
        out.density[rows, cols] += rng.uniform(0.03, 0.06) * lesion
        out.fill[rows, cols] += 0.75 * lesion
        self._add_box("Mass", cx - 1.2 * radius, cy - 1.2 * radius, cx + 1.2 * radius, cy + 1.2 * radius)

    def _nodule(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
                edges: Sequence[Any], out: _Draft) -> None:
        for i in range(1 + int(rng.random() < 0.3) + int(rng.random() < 0.1)):
            side = self._side["Nodule"] if i == 0 else int(rng.integers(2))
            cx, cy = _lung_point(a, side, rng.uniform(0.2, 0.85), rng.uniform(0.15, 0.8))
            radius = rng.uniform(9, 20)
            spot = _ellipse(c, cx, cy, radius, radius, 0.3)
            out.density += rng.uniform(0.06, 0.12) * spot
            out.fill += 0.7 * spot
            self._add_box("Nodule", cx - 1.3 * radius, cy - 1.3 * radius, cx + 1.3 * radius, cy + 1.3 * radius)

    def _pneumothorax(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
                      edges: Sequence[Any], out: _Draft) -> None:
        k = self._side["Pneumothorax"]
        f, lung, edge = fields[k], a.lungs[k], edges[k]
        y = c.y[f.rows, :]
        lateral = smoothstep((f.u - 0.35) / 0.25)
        apical = smoothstep((lung.apex + 0.3 * lung.height - y) / (0.15 * lung.height))
        # Free air rises: widest at the apex and the upper lateral wall, none at the base.
        span = np.maximum(lateral, apical) * smoothstep((f.bottom - 0.1 * lung.height - y) / (0.1 * lung.height))
        width = rng.uniform(30, 80) * span
        inside = f.mask[f.rows, f.cols]
        rim = smoothstep((width - edge) / 3.0) * inside * (width > 3)
        win = (f.rows, f.cols)
        out.air_floor[win] = np.maximum(out.air_floor[win], _FREE_AIR * rim)
        out.vessel_keep[win] *= 1.0 - rim
        out.air_gain[win] *= 1.0 - 0.12 * np.clip(inside - rim, 0.0, 1.0)  # the collapsed lung is denser
        out.density[win] += 0.06 * np.exp(-(((edge - width) / 2.5) ** 2)) * (span > 0.3) * inside
        self._add_box("Pneumothorax", *_grid_box(c, f.rows, f.cols, rim > 0.5))

    def _consolidation(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
                       edges: Sequence[Any], out: _Draft) -> None:
        k = self._side["Consolidation"]
        f, lung = fields[k], a.lungs[k]
        y = c.y[f.rows, :]
        u = np.clip(f.u, 0.0, 1.0)
        if rng.random() < 0.6:  # lower lobe: below an oblique fissure
            v_fissure = rng.uniform(0.5, 0.65)
            lobe = smoothstep((y - lung.apex - lung.height * (v_fissure + 0.12 * (u - 0.5))) / 25.0)
            v_inside = (v_fissure + 0.05, min(0.9, v_fissure + 0.3))
        else:  # upper lobe: above the horizontal fissure
            v_fissure = rng.uniform(0.3, 0.42)
            lobe = smoothstep((lung.apex + lung.height * v_fissure - y) / 25.0)
            v_inside = (0.1, v_fissure - 0.05)
        u0, u1 = rng.uniform(0.0, 0.2), rng.uniform(0.7, 1.0)
        region = lobe * smoothstep((u - u0) / 0.1) * smoothstep((u1 - u) / 0.1) * f.mask[f.rows, f.cols]
        texture = 0.85 + 0.15 * smooth_noise(rng, region.shape, 12)
        # Air bronchograms: dark tubes from the hilum into the opacity, where the bronchi stay full of air.
        hx, hy = _lung_point(a, k, 0.05, 0.45)
        x = c.x[:, f.cols]
        bronchi = np.zeros(region.shape, np.float32)
        for _ in range(int(rng.integers(2, 5))):
            tx, ty = _lung_point(a, k, rng.uniform(0.3, 0.8), rng.uniform(*v_inside))
            length, angle = float(np.hypot(tx - hx, ty - hy)), float(np.arctan2(ty - hy, tx - hx))
            along = (x - hx) * np.cos(angle) + (y - hy) * np.sin(angle)
            across = -(x - hx) * np.sin(angle) + (y - hy) * np.cos(angle)
            tube = np.exp(-((across / 3.0) ** 2)) * smoothstep(along / 20.0) * smoothstep((length - along) / 40.0)
            bronchi = np.maximum(bronchi, tube)
        out.fill[f.rows, f.cols] += 0.92 * region * texture * (1.0 - 0.45 * bronchi)
        out.density[f.rows, f.cols] += 0.03 * region
        self._add_box("Consolidation", *_grid_box(c, f.rows, f.cols, region > 0.5))

    def _edema(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
               edges: Sequence[Any], out: _Draft) -> None:
        amount = rng.uniform(0.45, 0.7)
        for k, f in enumerate(fields):
            lung = a.lungs[k]
            hx, hy = _lung_point(a, k, 0.08, 0.45)
            sx, sy = rng.uniform(0.3, 0.45) * (lung.lat - lung.med), rng.uniform(0.25, 0.35) * lung.height
            haze = np.exp(-0.5 * (((c.x[:, f.cols] - hx) / sx) ** 2 + ((c.y[f.rows, :] - hy) / sy) ** 2))
            out.fill[f.rows, f.cols] += amount * haze * f.mask[f.rows, f.cols]
            out.vessel_keep[f.rows, f.cols] *= 1.0 - 0.4 * haze  # vessels blur into the haze
            self._add_box("Edema", hx - lung.sign * 0.3 * sx - 1.2 * sx, hy - 1.5 * sy, hx + 1.2 * sx, hy + 1.5 * sy)
            # Kerley B lines: short horizontal septal lines reaching the lateral pleura at the base.
            for _ in range(int(rng.integers(3, 7))):
                length = rng.uniform(20, 40)
                ex, ey = _lung_point(a, k, 1.0, rng.uniform(0.7, 0.9))
                line = _segment(c, ex - lung.sign * length / 2, ey, length, 0.0, 1.5) * f.mask
                out.density += 0.05 * line

    def _emphysema(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
                   edges: Sequence[Any], out: _Draft) -> None:
        gain = rng.uniform(1.12, 1.2)
        for k, f in enumerate(fields):
            inside = f.mask[f.rows, f.cols]
            out.air_gain[f.rows, f.cols] *= np.where(inside, gain, 1.0).astype(np.float32)
            out.vessel_keep[f.rows, f.cols] *= 1.0 - 0.4 * smoothstep((f.u - 0.55) / 0.25) * inside
            self._add_box("Emphysema", *_grid_box(c, f.rows, f.cols, inside))
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(2))
            cx, cy = _lung_point(a, k, rng.uniform(0.35, 0.85), rng.uniform(0.1, 0.4))
            radius = rng.uniform(35, 70)
            ry = radius * rng.uniform(0.8, 1.1)
            bulla = _ellipse(c, cx, cy, radius, ry, 0.15) * fields[k].mask
            wall = np.clip(_ellipse(c, cx, cy, radius + 4, ry + 4, 0.1) - bulla, 0.0, 1.0) * fields[k].mask
            out.air_floor = np.maximum(out.air_floor, _FREE_AIR * bulla)
            out.vessel_keep *= 1.0 - bulla
            out.density += 0.03 * wall

    def _fibrosis(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
                  edges: Sequence[Any], out: _Draft) -> None:
        amount = rng.uniform(0.05, 0.08)
        for k, f in enumerate(fields):
            lung = a.lungs[k]
            inside = f.mask[f.rows, f.cols]
            rows_px = (f.rows.stop - f.rows.start) * c.step
            # The 0.5 level set of a smooth random field is a net of curves about 20 px apart: the reticulation.
            noise = smooth_noise(rng, inside.shape, max(2, round(rows_px / 20)))
            net = np.exp(-(((noise - 0.5) / 0.05) ** 2))
            where = smoothstep((f.u - 0.3) / 0.4) * smoothstep((c.y[f.rows, :] - lung.apex - 0.3 * lung.height)
                                                               / (0.4 * lung.height)) * inside  # fmt: skip
            out.density[f.rows, f.cols] += amount * net * where
            out.fill[f.rows, f.cols] += (0.3 * net + 0.1) * where
            self._add_box("Fibrosis", *_grid_box(c, f.rows, f.cols, where > 0.3))

    def _pleural_thickening(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
                            edges: Sequence[Any], out: _Draft) -> None:
        sides = [0, 1] if rng.random() < 0.3 else [self._side["Pleural_Thickening"]]
        for k in sides:
            f, lung, edge = fields[k], a.lungs[k], edges[k]
            y = c.y[f.rows, :]
            thick = rng.uniform(18, 32) * (0.7 + 0.6 * smooth_noise(rng, edge.shape, 6))
            apical = smoothstep((lung.apex + 0.15 * lung.height - y) / (0.08 * lung.height))
            lateral = (smoothstep((f.u - 0.55) / 0.15) * smoothstep((y - lung.apex - 0.15 * lung.height) / 30.0)
                       * smoothstep((lung.apex + 0.75 * lung.height - y) / 40.0))  # fmt: skip
            kind = rng.random()
            where = apical if kind < 0.35 else lateral if kind < 0.7 else np.maximum(apical, lateral)
            band = smoothstep((thick - edge) / 3.0) * where * f.mask[f.rows, f.cols]
            # Near the chest wall the lung is thin, so replacing its air shows little: the pleura's own tissue shows.
            out.fill[f.rows, f.cols] += 0.95 * band
            out.density[f.rows, f.cols] += 0.06 * band
            self._add_box("Pleural_Thickening", *_grid_box(c, f.rows, f.cols, band > 0.5))

    def _hernia(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
                edges: Sequence[Any], out: _Draft) -> None:
        # A hiatus hernia: stomach above the diaphragm behind the heart, slightly to the image-right of the midline.
        radius = rng.uniform(45, 85)
        rx = radius * rng.uniform(1.0, 1.3)
        base = a.lungs[1].cp - 0.75 * a.lungs[1].dome
        cx, cy = a.mid + rng.uniform(0.05, 0.25) * a.lungs[1].lat, base - rng.uniform(0.6, 1.1) * radius
        sac = _ellipse(c, cx, cy, rx, radius, 0.12)
        inner = _ellipse(c, cx, cy, 0.85 * rx, 0.85 * radius, 0.1)
        level = cy + rng.uniform(-0.2, 0.3) * radius
        gas = inner * smoothstep((level - c.y) / 4.0)
        out.density += 0.08 * sac - 0.15 * gas
        self._add_box("Hernia", cx - rx, cy - radius, cx + rx, cy + radius)


@dataclass
class _Draft:
    """The layers being drawn (see `cxrdet.synth.render.Layers`)."""

    density: npt.NDArray[np.float32]
    fill: npt.NDArray[np.float32]
    air_gain: npt.NDArray[np.float32]
    air_floor: npt.NDArray[np.float32]
    vessel_keep: npt.NDArray[np.float32]


def render_grid(size: int) -> int:
    """The render grid used for PNGs of `size` pixels: 256 up to 256 px, else 512 (the RSNA default)."""
    return 256 if size <= 256 else 512


def render_nih_image(image: NihImage, seed: int, size: int = DEFAULT_SIZE,
                     grid: int | None = None) -> tuple[npt.NDArray[np.uint8], list[Box]]:
    """Render one synthetic NIH image.

    Args:
        image: Its labels (`sample_nih_images`); `findings` decides the signs drawn, `devices` the tubes and wires.
        seed: The data-set seed.
        size: Side of the returned image.
        grid: Render grid; None is `render_grid(size)`.

    Returns:
        `(size, size)` uint8 pixels (bright = dense) and where each finding was drawn: `(finding, x1, y1, x2, y2)`,
        xyxy pixels of this image, in `NIH_FINDINGS` order. The same image with other findings shows the same chest.
    """
    ss = _seed_sequence(seed, image.patient, image.follow_up, _PIXELS)
    signs = FindingSigns(image.findings, np.random.SeedSequence(ss.entropy, spawn_key=(100,)))
    boxes = signs.opacity_boxes()
    pixels = render_image(boxes, image.view, image.sex, image.age, image.devices, ss,
                          grid=render_grid(size) if grid is None else grid, signs=signs,
                          anatomy_seed=_seed_sequence(seed, image.patient, _PATIENT, _ANATOMY), size=size)  # fmt: skip
    scale = size / IMAGE_SIZE
    drawn = sorted(signs.boxes, key=lambda b: NIH_FINDINGS.index(b[0]))
    return pixels, [(f, *(float(np.clip(v * scale, 0, size)) for v in xyxy)) for f, *xyxy in drawn]


# ---- data set ----


@dataclass(frozen=True)
class NihSynthSummary:
    """What `generate_nih_dataset` wrote.

    Attributes:
        root: The NIH-layout folder.
        seed: Data-set seed.
        size: Side of the PNGs.
        n_train, n_test: Images in `train_val_list.txt` and `test_list.txt`.
        n_train_patients, n_test_patients: Patients per split.
        n_no_finding: Images labelled 'No Finding'.
        images_written: PNGs rendered (0 with `labels_only`).
        seconds: Wall time.
    """

    root: Path
    seed: int
    size: int
    n_train: int
    n_test: int
    n_train_patients: int
    n_test_patients: int
    n_no_finding: int
    images_written: int
    seconds: float


def write_png(path: str | Path, pixels: npt.NDArray[np.uint8]) -> Path:
    """Write 8-bit greyscale pixels as a PNG, atomically (PIL writes no time stamp: same pixels, same bytes)."""
    from PIL import Image

    with cio.atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="L").save(tmp, format="PNG")
    return Path(path)


def _render_and_write(task: tuple[NihImage, str, int, int]) -> tuple[str, list[Box]]:
    """Worker: render one image and write its PNG; returns its id and finding boxes (module-level so it pickles)."""
    image, path, seed, size = task
    pixels, boxes = render_nih_image(image, seed, size)
    write_png(path, pixels)
    return image.image_id, boxes


def _check_output_folder(layout: NihLayout) -> None:
    """Refuse to write into a folder that holds data not made by `cxrdet synth --format nih` (a real download)."""
    owned = layout.synth_truth.exists()
    foreign = [p for p in (layout.labels_csv, layout.train_val_list, layout.test_list) if p.exists()]
    if layout.images_dir.exists() and any(layout.images_dir.glob("*.png")):
        foreign.append(layout.images_dir)
    if foreign and not owned:
        raise CxrdetError(
            f"{layout.root}: holds {', '.join(p.name for p in foreign)} but no {layout.synth_truth.name}, so it was "
            "not written by `cxrdet synth --format nih`; choose an empty or new folder for --out"
        )


def generate_nih_dataset(out: str | Path, n_train: int, n_test: int, seed: int = 0, size: int = DEFAULT_SIZE,
                         workers: int | None = None, progress: bool = True, labels_only: bool = False,
                         max_per_patient: int | None = None) -> NihSynthSummary:
    """Write a synthetic data set laid out like the NIH ChestX-ray14 download.

    Files (see `cxrdet.paths.NihLayout`): `Data_Entry_2017_v2020.csv` (the real header and columns, sorted by image),
    `images/<patient:08d>_<follow-up:03d>.png` (8-bit greyscale, `size` x `size`), `train_val_list.txt` and
    `test_list.txt` (file names, patient-disjoint); and beyond NIH's files `synth_truth.csv` (`TRUTH_COLUMNS`) and
    `synth_boxes.csv` (`BOX_COLUMNS`: where each finding was drawn, xywh pixels of the PNGs). The label table is
    written last, so a run that stops early leaves none.

    Args:
        out: Target folder; created if missing. A folder from an earlier run of this function is overwritten.
        n_train: Images of `train_val_list.txt`.
        n_test: Images of `test_list.txt`.
        seed: Non-negative data-set seed; the same seed and counts give byte-identical files.
        size: Side of the PNGs (NIH's are 1024).
        workers: Rendering processes (default: all CPUs); the output does not depend on it.
        progress: Show a progress bar.
        labels_only: Write the tables but no images.
        max_per_patient: Most images per patient; None is `default_cap(n_train + n_test)`.

    Returns:
        A `NihSynthSummary`.

    Raises:
        ConfigError: Negative counts or seed, no images at all, a size below 32 or a worker count below 1.
        CxrdetError: `out` holds data that this function did not write.
    """
    from cxrdet.progress import progress as progress_bar

    if size < 32:
        raise ConfigError(f"size must be at least 32 pixels, got {size}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    start = time.perf_counter()
    images = sample_nih_images(n_train, n_test, seed, max_per_patient)
    layout = NihLayout(Path(out))
    _check_output_folder(layout)

    # The truth table marks the folder as synth's before any image is written (so a crashed run can be redone);
    # the label table goes first and comes back last, so it exists only when the data set is complete.
    layout.labels_csv.unlink(missing_ok=True)
    cio.write_csv(layout.synth_truth, truth_frame(images))
    keep = {im.file_name for im in images}
    if layout.images_dir.exists():
        for path in layout.images_dir.glob("*.png"):
            if path.name not in keep:
                path.unlink()
    boxes: dict[str, list[Box]] = {}
    if not labels_only:
        layout.images_dir.mkdir(parents=True, exist_ok=True)
        tasks = [(im, str(layout.image_path(im.image_id)), seed, size) for im in images]
        bar = progress_bar(total=len(tasks), desc="synth nih: rendering", unit="img", enabled=progress)
        if workers == 1:
            for task in tasks:
                image_id, drawn = _render_and_write(task)
                boxes[image_id] = drawn
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
                for future in as_completed([pool.submit(_render_and_write, t) for t in tasks]):
                    image_id, drawn = future.result()
                    boxes[image_id] = drawn
                    bar.update()
        bar.close()
    rows = [(image_id, f, x1, y1, x2 - x1, y2 - y1)
            for image_id in sorted(boxes) for f, x1, y1, x2, y2 in boxes[image_id]]  # fmt: skip
    cio.write_csv(layout.synth_boxes, pd.DataFrame(rows, columns=list(BOX_COLUMNS)).round(1))
    for path, split in ((layout.train_val_list, "train"), (layout.test_list, "test")):
        cio.write_text(path, "".join(f"{im.file_name}\n" for im in images if im.split == split))
    cio.write_csv(layout.labels_csv, nih_table(images))
    return NihSynthSummary(
        root=layout.root, seed=seed, size=size, n_train=n_train, n_test=n_test,
        n_train_patients=len({im.patient for im in images if im.split == "train"}),
        n_test_patients=len({im.patient for im in images if im.split == "test"}),
        n_no_finding=sum(not im.findings for im in images), images_written=len(boxes) if not labels_only else 0,
        seconds=time.perf_counter() - start,
    )  # fmt: skip


def truth_frame(images: Sequence[NihImage]) -> pd.DataFrame:
    """One row per image (`TRUTH_COLUMNS`): what the generator knows, findings and devices `;`-joined."""
    rows = [(im.image_id, im.split, im.patient, im.follow_up, im.view, im.sex, im.age, ";".join(im.findings),
             ";".join(im.devices)) for im in images]  # fmt: skip
    return pd.DataFrame(rows, columns=list(TRUTH_COLUMNS))
