"""Synthetic VinBigData-format data: the Kaggle layout, multi-reader `train.csv`, 12-16 bit DICOMs of varying size.

The VinBigData path (14 finding classes, three readers per training image, per-class mAP) needs VinBigData-format data,
which cannot be downloaded here. Three layers, as in `cxrdet.synth.nih`:

- `sample_vinbigdata_images`: the per-image draws, no pixels: normal or abnormal, which findings an abnormal image
  has, its size, bit depth and photometric interpretation, and which 3 of the 17 readers read it.
- `VinBigDataSigns` + `render_vinbigdata_image`: the RSNA renderer's chest with one sign per finding (the NIH
  generator's signs where one fits: `SIGNS`; an enlarged aortic knob and small dense calcified spots drawn here),
  stretched to the image's size. The true boxes are where each sign was drawn.
- `reader_rows`: what each reader writes: each true box seen with the reader's own sensitivity, drawn with the
  reader's own jitter of position and size, now and then named as a confusable class, now and then an extra box;
  a reader who sees nothing on an image where another reader drew writes no row, and where no reader drew (a normal
  image, or a finding all three missed) all three write "No finding" (the real table has exactly 3 "No finding"
  rows per normal image: 31,818 rows for 10,606 images).
- `generate_vinbigdata_dataset`: the layout on disk (`cxrdet.competitions.vinbigdata.VinBigDataLayout`):
  `train.csv`, `train/<image_id>.dicom`, `test/<image_id>.dicom`, `sample_submission.csv`; beyond the download,
  `synth_test_labels.csv` (the test images' true boxes in `train.csv`'s format, one consensus reader `R0`, as the
  hidden test labels were a 5-reader consensus) and `synth_truth.csv` (per image: split, size, bits, photometric,
  findings, readers).

Calibration (`REAL_BOX_ROWS`, `REAL_NO_FINDING_IMAGES`): the class counts of the real `train.csv` (67,914 rows over
15,000 images: "No finding" 31,818 rows, then Aortic enlargement 7,162, Cardiomegaly 5,427, Pleural thickening 4,842,
Pulmonary fibrosis 4,655, Nodule/Mass 2,580, Lung Opacity 2,483, Pleural effusion 2,476, Other lesion 2,203,
Infiltration 1,247, ILD 1,000, Calcification 960, Consolidation 556, Atelectasis 279, Pneumothorax 226), as public
exploratory notebooks of the competition print them; 3 of 17 readers per training image (vindr.ai/datasets/cxr;
Nguyen et al., VinDr-CXR, Scientific Data 9, 429 (2022)). `benchmarks/bench_synth_vinbigdata.py` prints the
synthetic table's figures beside these.

Design choices, not calibrated (no public count found): image sides 2,000-3,000 px before `scale` (the competition
page: "about 2,000-3,000"), a fifth of the images MONOCHROME1, stored depth 12, 14 or 16 bits, reader sensitivities
0.55-0.85, box jitter 3-8% of a box's size, 6% of seen boxes named as a confusable class, 8% of readings with an
extra box. Every draw is seeded from `(seed, index, purpose)`: the bytes depend on the seed and counts only.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet import io as cio
from cxrdet.competitions.vinbigdata import CLASSES, COLUMNS, NO_FINDING, NO_FINDING_ID, VinBigDataLayout
from cxrdet.synth.nih import FindingSigns, _Draft, _ellipse, _lung_point
from cxrdet.synth.dicom import check_draw_args, refuse_foreign_root
from cxrdet.synth.render import IMAGE_SIZE, Anatomy, Canvas, Layers, LungField, child_rng, render_image

# ---- calibration (see the module docstring for the sources) ----
REAL_TRAIN_IMAGES: Final = 15_000
REAL_NO_FINDING_IMAGES: Final = 10_606  # 31,818 "No finding" rows / 3 readers
REAL_BOX_ROWS: Final[dict[str, int]] = {
    "Aortic enlargement": 7162, "Atelectasis": 279, "Calcification": 960, "Cardiomegaly": 5427,
    "Consolidation": 556, "ILD": 1000, "Infiltration": 1247, "Lung Opacity": 2483, "Nodule/Mass": 2580,
    "Other lesion": 2203, "Pleural effusion": 2476, "Pleural thickening": 4842, "Pneumothorax": 226,
    "Pulmonary fibrosis": 4655,
}  # fmt: skip
N_READERS: Final = 17
READERS_PER_IMAGE: Final = 3
# The sign drawn for each class: an NIH generator sign (`cxrdet.synth.nih.FindingSigns`), or one of this module's.
SIGNS: Final[dict[str, str]] = {
    "Aortic enlargement": "Aorta", "Atelectasis": "Atelectasis", "Calcification": "Calcification",
    "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation", "ILD": "Edema", "Infiltration": "Infiltration",
    "Lung Opacity": "Pneumonia", "Nodule/Mass": "Nodule", "Other lesion": "Hernia", "Pleural effusion": "Effusion",
    "Pleural thickening": "Pleural_Thickening", "Pneumothorax": "Pneumothorax", "Pulmonary fibrosis": "Fibrosis",
}  # fmt: skip
MASS_SHARE: Final = 0.3  # of Nodule/Mass findings drawn as one mass rather than small nodules
# Boxes a sign draws per finding, on average (several patches, both lungs), measured over 1,000 rendered images
# (`python benchmarks/bench_synth_vinbigdata.py --images 1000 --measure-signs`; Atelectasis, 2 images there, is
# its sign's expectation 1.3); they turn the real box-row counts into how often each finding is present.
BOXES_PER_FINDING: Final[dict[str, float]] = {
    "Aortic enlargement": 1.0, "Atelectasis": 1.3, "Calcification": 1.68, "Cardiomegaly": 1.0,
    "Consolidation": 1.0, "ILD": 2.0, "Infiltration": 3.56, "Lung Opacity": 1.0, "Nodule/Mass": 1.26,
    "Other lesion": 1.0, "Pleural effusion": 1.38, "Pleural thickening": 1.26, "Pneumothorax": 1.0,
    "Pulmonary fibrosis": 2.0,
}  # fmt: skip
# Classes a reader may name instead of the true one (readers disagree on labels, not only on boxes).
CONFUSABLE: Final[dict[str, tuple[str, ...]]] = {
    "Infiltration": ("Lung Opacity", "Consolidation"), "Lung Opacity": ("Infiltration", "Consolidation"),
    "Consolidation": ("Lung Opacity",), "ILD": ("Pulmonary fibrosis",), "Pulmonary fibrosis": ("ILD",),
    "Nodule/Mass": ("Calcification", "Other lesion"), "Calcification": ("Nodule/Mass",),
    "Pleural thickening": ("Other lesion", "Pleural effusion"), "Pleural effusion": ("Pleural thickening",),
    "Other lesion": ("Nodule/Mass",), "Atelectasis": ("Lung Opacity",),
}  # fmt: skip
SENSITIVITY: Final = (0.55, 0.85)  # each reader's chance of drawing a true box, drawn per reader
JITTER: Final = (0.03, 0.08)  # each reader's sd of box edges, as a fraction of the box's width or height
RELABEL: Final = 0.06
EXTRA_BOX: Final = 0.08
SIDES: Final = (2000, 3000)
MONOCHROME1_SHARE: Final = 0.2
BITS: Final = (12, 14, 16)
TRUTH_COLUMNS: Final = ("image_id", "split", "width", "height", "bits_stored", "photometric", "findings", "readers")
CONSENSUS_READER: Final = "R0"
_PURPOSE_DRAW, _PURPOSE_PIXELS, _PURPOSE_READ, _PURPOSE_READERS = 1, 2, 3, 4


def finding_rates() -> dict[str, float]:
    """Chance that an abnormal image has each finding, from the real box-row counts: rows = abnormal images x rate x
    boxes per finding x readers x mean sensitivity (capped at 0.95)."""
    abnormal = REAL_TRAIN_IMAGES - REAL_NO_FINDING_IMAGES
    seen = READERS_PER_IMAGE * float(np.mean(SENSITIVITY))
    return {c: min(0.95, REAL_BOX_ROWS[c] / (abnormal * BOXES_PER_FINDING[c] * seen)) for c in CLASSES}


@dataclass(frozen=True)
class Reader:
    """One radiologist: id (`R1`..`R17`), sensitivity (chance of drawing a true box) and jitter (sd of the box
    edges as a fraction of the box's size)."""

    rad_id: str
    sensitivity: float
    jitter: float


def readers(seed: int) -> tuple[Reader, ...]:
    """The 17 readers of a data set (their traits depend on the seed only)."""
    rng = np.random.default_rng([seed, 0, _PURPOSE_READERS])
    return tuple(Reader(f"R{k + 1}", float(rng.uniform(*SENSITIVITY)), float(rng.uniform(*JITTER)))
                 for k in range(N_READERS))


@dataclass(frozen=True)
class VinImage:
    """Everything drawn for one synthetic image before its pixels.

    Attributes:
        index: Position in the data set (train first, then test); seeds every draw of the image.
        split: `train` or `test`.
        findings: Class ids present (empty: a normal image), ascending.
        width, height: Pixel size of the DICOM.
        bits_stored: 12, 14 or 16.
        photometric: `MONOCHROME1` (bright = air) or `MONOCHROME2`.
        sex: `M` or `F` (drawn: the renderer needs one; VinBigData's headers are mostly empty).
        age: Years.
        readers: Indices into `readers(seed)` of the 3 readers (training images; test images: none).
        mass: A Nodule/Mass finding is one mass (else small nodules).
    """

    index: int
    split: str
    findings: tuple[int, ...]
    width: int
    height: int
    bits_stored: int
    photometric: str
    sex: str
    age: int
    readers: tuple[int, ...]
    mass: bool
    seed: int

    @property
    def image_id(self) -> str:
        """A 32-hex-digit id like the competition's (derived from the seed and index)."""
        return hashlib.md5(f"cxrdet-vinbigdata-{self.seed}-{self.index}".encode()).hexdigest()


def _rng(seed: int, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, purpose]))


def _draw_image(seed: int, index: int, split: str, scale: float) -> VinImage:
    rng = _rng(seed, index, _PURPOSE_DRAW)
    abnormal = rng.random() >= REAL_NO_FINDING_IMAGES / REAL_TRAIN_IMAGES
    findings: tuple[int, ...] = ()
    if abnormal:
        rates = np.array([finding_rates()[c] for c in CLASSES])
        while not findings:  # an abnormal image has at least one finding
            findings = tuple(int(k) for k in np.flatnonzero(rng.random(len(CLASSES)) < rates))
    width = int(round(rng.uniform(*SIDES) * scale))
    height = int(round(width * rng.uniform(0.95, 1.25)))
    chosen = tuple(int(k) for k in rng.choice(N_READERS, READERS_PER_IMAGE, replace=False)) if split == "train" else ()
    return VinImage(
        index=index, split=split, findings=findings, width=width, height=height,
        bits_stored=int(rng.choice(BITS)),
        photometric="MONOCHROME1" if rng.random() < MONOCHROME1_SHARE else "MONOCHROME2",
        sex="M" if rng.random() < 0.5 else "F", age=int(rng.integers(20, 85)), readers=chosen,
        mass=bool(rng.random() < MASS_SHARE), seed=seed,
    )  # fmt: skip


def sample_vinbigdata_images(n_train: int, n_test: int, seed: int = 0, scale: float = 1.0) -> list[VinImage]:
    """The draws of a data set: `n_train` training images then `n_test` test images (sizes times `scale`).

    Raises:
        ConfigError: Negative counts, no training image, a seed or scale out of range.
    """
    check_draw_args(n_train, n_test, seed, scale, "images", "2,000-3,000 px")
    return [_draw_image(seed, i, "train" if i < n_train else "test", scale) for i in range(n_train + n_test)]


# ---- pixels ----


class VinBigDataSigns(FindingSigns):
    """The NIH generator's signs for the VinBigData classes that have one (`SIGNS`), plus an enlarged aortic knob
    (`Aorta`) and small dense calcified spots (`Calcification`). `vin_boxes` holds `(class id, x1, y1, x2, y2)` in
    pixels of the 1024 render after `render_image`."""

    OWN: Final = ("Aorta", "Calcification")

    def __init__(self, findings: Sequence[int], mass: bool, ss: np.random.SeedSequence) -> None:
        names = [SIGNS[CLASSES[k]] for k in findings]
        if mass:
            names = ["Mass" if n == "Nodule" else n for n in names]
        self.vin_names = names
        super().__init__([n for n in names if n not in self.OWN], ss, jitter=False)
        self._own_rng = {n: child_rng(ss, 50 + i) for i, n in enumerate(self.OWN) if n in names}

    def layers(self, c: Canvas, a: Anatomy, fields: Sequence[LungField]) -> Layers:
        out = super().layers(c, a, fields)
        draft = _Draft(out.density, out.fill, out.air_gain, out.air_floor, out.vessel_keep)  # type: ignore[arg-type]
        if "Aorta" in self._own_rng:
            self._aorta(self._own_rng["Aorta"], c, a, draft)
        if "Calcification" in self._own_rng:
            self._calcification(self._own_rng["Calcification"], c, a, fields, draft)
        return out

    def _aorta(self, rng: np.random.Generator, c: Canvas, a: Anatomy, out: _Draft) -> None:
        # The aortic knob (drawn by the renderer at the upper image-right mediastinal edge), bulging into the lung.
        med_half = (a.lungs[0].med + a.lungs[1].med) / 2
        h = a.lungs[1].height
        rx, ry = rng.uniform(48, 70), rng.uniform(40, 58)
        cx, cy = a.mid + med_half + rng.uniform(8, 22), a.lungs[1].apex + rng.uniform(0.2, 0.28) * h
        knob = _ellipse(c, cx, cy, rx, ry, 0.25)
        out.fill += 0.9 * knob
        out.density += 0.05 * knob
        self._add_box("Aorta", cx - rx, cy - ry, cx + rx, cy + ry)

    def _calcification(self, rng: np.random.Generator, c: Canvas, a: Anatomy, fields: Sequence[LungField],
                       out: _Draft) -> None:
        lung_mask = fields[0].mask | fields[1].mask
        for _ in range(1 + int(rng.random() < 0.4) + int(rng.random() < 0.2)):
            cx, cy = _lung_point(a, int(rng.integers(2)), rng.uniform(0.15, 0.8), rng.uniform(0.1, 0.7))
            radius = rng.uniform(5, 10)
            spot = _ellipse(c, cx, cy, radius, radius * rng.uniform(0.8, 1.2), 0.15) * lung_mask
            out.density += rng.uniform(0.14, 0.22) * spot  # calcium: denser than a soft-tissue nodule
            out.fill += 0.8 * spot
            self._add_box("Calcification", cx - 1.6 * radius, cy - 1.6 * radius, cx + 1.6 * radius, cy + 1.6 * radius)

    def vin_boxes(self) -> list[tuple[int, float, float, float, float]]:
        """Where each finding was drawn: `(class id, x1, y1, x2, y2)`, pixels of 1024, in class order."""
        to_class = {SIGNS[name]: k for k, name in enumerate(CLASSES)} | {"Mass": CLASSES.index("Nodule/Mass")}
        out = [(to_class[name], *xyxy) for name, *xyxy in self.boxes]
        return sorted(out, key=lambda b: b[0])  # type: ignore[return-value]


def render_vinbigdata_image(image: VinImage, grid: int = 256) -> tuple[npt.NDArray[np.uint16],
                                                                       list[tuple[int, float, float, float, float]]]:
    """Render one image: its stored pixel values and where each finding was drawn.

    Returns:
        `(height, width)` uint16 stored values (`bits_stored` deep; MONOCHROME1 inverted: bright = air) and the true
        boxes `(class id, x1, y1, x2, y2)` in pixels of this image.
    """
    from PIL import Image

    ss = np.random.SeedSequence([image.seed, image.index, _PURPOSE_PIXELS])
    signs = VinBigDataSigns(image.findings, image.mass, np.random.SeedSequence(ss.entropy, spawn_key=(100,)))
    opacity = signs.opacity_boxes()
    pixels = render_image(opacity, "PA", image.sex, image.age, (), ss, grid=grid, signs=signs, size=IMAGE_SIZE)
    stretched = Image.fromarray(pixels.astype(np.float32)).resize((image.width, image.height),
                                                                   Image.Resampling.BICUBIC)
    top = 2**image.bits_stored - 1
    rng = _rng(image.seed, image.index, _PURPOSE_PIXELS)
    # Stored values use the full depth: the display byte scaled up, with dither filling the bits below it.
    values = np.asarray(stretched, dtype=np.float64) / 255.0 * top + rng.uniform(-0.5, 0.5, (image.height, image.width)
                                                                                  ) * (top / 255.0)
    stored = np.clip(np.rint(values), 0, top)
    if image.photometric == "MONOCHROME1":
        stored = top - stored
    sx, sy = image.width / IMAGE_SIZE, image.height / IMAGE_SIZE
    boxes = [(k, float(np.clip(x1 * sx, 0, image.width)), float(np.clip(y1 * sy, 0, image.height)),
              float(np.clip(x2 * sx, 0, image.width)), float(np.clip(y2 * sy, 0, image.height)))
             for k, x1, y1, x2, y2 in signs.vin_boxes()]  # fmt: skip
    return stored.astype(np.uint16), [b for b in boxes if b[3] > b[1] and b[4] > b[2]]


# ---- readers ----


def reader_rows(image: VinImage, truth: Sequence[tuple[int, float, float, float, float]],
                team: Sequence[Reader]) -> list[tuple[Any, ...]]:
    """The `train.csv` rows of one training image (see the module docstring for the rules)."""
    rows: list[tuple[Any, ...]] = []
    normal = [(image.image_id, NO_FINDING, NO_FINDING_ID, team[r].rad_id, "", "", "", "") for r in image.readers]
    if not truth:
        return normal
    for r in image.readers:
        reader = team[r]
        rng = np.random.default_rng(np.random.SeedSequence([image.seed, image.index, _PURPOSE_READ, r]))
        drawn: list[tuple[int, float, float, float, float]] = []
        for k, x1, y1, x2, y2 in truth:
            if rng.random() >= reader.sensitivity:
                continue
            name = CLASSES[k]
            if name in CONFUSABLE and rng.random() < RELABEL:
                k = CLASSES.index(CONFUSABLE[name][int(rng.integers(len(CONFUSABLE[name])))])
            drawn.append((k, *_jitter(rng, (x1, y1, x2, y2), reader.jitter, image)))
        if drawn and rng.random() < EXTRA_BOX:  # a second box near one already drawn (a split or a duplicate)
            k, *box = drawn[int(rng.integers(len(drawn)))]
            drawn.append((k, *_jitter(rng, tuple(box), 3 * reader.jitter, image)))  # type: ignore[arg-type]
        rows += [(image.image_id, CLASSES[k], k, reader.rad_id, *(round(v, 1) for v in box)) for k, *box in drawn]
    # Nobody saw the drawn finding: the readers agree on "No finding" (a missed finding, as on real films).
    return rows or normal


def _jitter(rng: np.random.Generator, box: tuple[float, float, float, float], sd: float, image: VinImage
            ) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    e = rng.normal(0.0, sd, 4)
    nx1, nx2 = sorted((float(np.clip(x1 + e[0] * w, 0, image.width)), float(np.clip(x2 + e[1] * w, 0, image.width))))
    ny1, ny2 = sorted((float(np.clip(y1 + e[2] * h, 0, image.height)), float(np.clip(y2 + e[3] * h, 0,
                                                                                     image.height))))
    return nx1, ny1, max(nx2, nx1 + 1.0), max(ny2, ny1 + 1.0)


def label_rows(images: Sequence[VinImage], truths: Sequence[Sequence[tuple[int, float, float, float, float]]],
               seed: int) -> pd.DataFrame:
    """`train.csv` of the training images (every reader's rows), in image order."""
    team = readers(seed)
    rows = [row for image, truth in zip(images, truths, strict=True) if image.split == "train"
            for row in reader_rows(image, truth, team)]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def consensus_rows(images: Sequence[VinImage], truths: Sequence[Sequence[tuple[int, float, float, float, float]]]
                   ) -> pd.DataFrame:
    """The test images' true boxes in `train.csv`'s format, one consensus reader (`CONSENSUS_READER`)."""
    rows: list[tuple[Any, ...]] = []
    for image, truth in zip(images, truths, strict=True):
        if image.split != "test":
            continue
        if not truth:
            rows.append((image.image_id, NO_FINDING, NO_FINDING_ID, CONSENSUS_READER, "", "", "", ""))
        rows += [(image.image_id, CLASSES[k], k, CONSENSUS_READER, *(round(v, 1) for v in box)) for k, *box in truth]
    return pd.DataFrame(rows, columns=list(COLUMNS))


# ---- the data set ----


@dataclass(frozen=True)
class VinSynthSummary:
    """What `generate_vinbigdata_dataset` wrote."""

    root: Path
    seed: int
    n_train: int
    n_test: int
    n_normal: int
    n_rows: int
    seconds: float


def _render_and_write(task: tuple[VinImage, str, int]) -> list[tuple[int, float, float, float, float]]:
    """Worker: render one image, write its DICOM; returns its true boxes (module-level so that it pickles)."""
    from cxrdet.synth.dicom import write_raw_dicom

    image, path, grid = task
    stored, truth = render_vinbigdata_image(image, grid)
    write_raw_dicom(path, stored, image.image_id, image.photometric, image.bits_stored, image.seed, image.sex,
                    image.age)
    return truth


def generate_vinbigdata_dataset(out: str | Path, n_train: int, n_test: int, seed: int = 0, scale: float = 0.25,
                                workers: int | None = None, grid: int = 256) -> VinSynthSummary:
    """Write a synthetic VinBigData data set into `out` (see the module docstring for the files).

    Args:
        out: The data root (created; an existing folder must be empty or an earlier synthetic set).
        n_train, n_test: Image counts.
        seed: Data-set seed: the same seed and counts give the same bytes.
        scale: Factor of the real image sides (2,000-3,000 px); 0.25 gives 500-750 px images.
        workers: Rendering processes (default: the CPU count); 1 renders here.
        grid: The renderer's internal grid (256 is enough below 1,000 px).

    Raises:
        ConfigError: Bad counts, seed or scale. CxrdetError: `out` holds other data.
    """
    start = time.perf_counter()
    images = sample_vinbigdata_images(n_train, n_test, seed, scale)
    layout = VinBigDataLayout(Path(out))
    refuse_foreign_root(layout.root)
    for split in ("train", "test"):
        layout.images_dir(split).mkdir(parents=True, exist_ok=True)
        for stale in layout.images_dir(split).glob("*.dicom"):
            stale.unlink()
    tasks = [(image, str(layout.dicom_path(image.split, image.image_id)), grid) for image in images]
    n_workers = min(workers or os.cpu_count() or 1, len(tasks))
    if n_workers <= 1:
        truths = [_render_and_write(t) for t in tasks]
    else:
        with ProcessPoolExecutor(n_workers) as pool:
            truths = list(pool.map(_render_and_write, tasks, chunksize=4))
    labels = label_rows(images, truths, seed)
    cio.write_csv(layout.labels_csv, labels)
    cio.write_csv(layout.synth_test_labels, consensus_rows(images, truths))
    test_ids = [i.image_id for i in images if i.split == "test"]
    cio.write_csv(layout.sample_submission, pd.DataFrame({"image_id": test_ids,
                                                          "PredictionString": "14 1 0 0 1 1"}))
    team = readers(seed)
    truth = pd.DataFrame([(i.image_id, i.split, i.width, i.height, i.bits_stored, i.photometric,
                           "|".join(CLASSES[k] for k in i.findings), " ".join(team[r].rad_id for r in i.readers))
                          for i in images], columns=list(TRUTH_COLUMNS))
    cio.write_csv(layout.root / "synth_truth.csv", truth)
    return VinSynthSummary(layout.root, seed, n_train, n_test, sum(not i.findings for i in images), len(labels),
                           time.perf_counter() - start)
