"""Synthetic SIIM-COVID-format data: the Kaggle layout, both label tables, studies of one or more DICOMs.

The SIIM path (a study-level 4-class classifier beside an opacity detector, the six-class metric, the code-competition
bundle) needs SIIM-format data, which cannot be downloaded here. As in `cxrdet.synth.vinbigdata`:

- `sample_siim_studies`: the draws, no pixels: each study's category, its images (their sizes, bit depths,
  photometric interpretations) and each image's opacity boxes, placed by the category's pattern.
- `render_siim_image`: the RSNA renderer's chest with the opacities drawn in the boxes (the same patient anatomy for
  every image of a study), stretched to the image's size and stored 10-16 bits deep.
- `generate_siim_dataset`: the layout on disk (`cxrdet.competitions.siim.SiimLayout`): `train_image_level.csv`,
  `train_study_level.csv`, `train/<study>/<series>/<image>.dcm`, `test/...`, `sample_submission.csv`; beyond the
  download, `synth_test_image_level.csv` and `synth_test_study_level.csv` (the hidden test labels, in the same
  formats) and `synth_truth.csv` (per image: split, study, category, size, bits, photometric, boxes).

What tells the categories apart, after the definitions the annotators used (Lakhani et al., J Digit Imaging 2023,
doi 10.1007/s10278-022-00706-8, adapted from the RSNA consensus statement, Simpson et al., Radiology:
Cardiothoracic Imaging 2020): typical, multifocal bilateral peripheral opacities, lower-lung predominant;
indeterminate, no typical finding and opacities that are unilateral, central or upper-lung predominant; atypical,
findings such as lobar consolidation, a solitary nodule or mass, effusion or pneumothorax; negative, no lung
opacity. Here: typical draws 2 (sometimes 3-4) peripheral
lower-zone boxes on both sides; indeterminate 1-2 boxes, unilateral or central or upper; atypical one large lobar
box (a consolidation) on one side; negative none. Some non-negative images carry no box, as in the real table.

Calibration (`REAL_STUDY_COUNTS`, `REAL_IMAGES`, `REAL_NONE_IMAGES`): the public training tables, as the
competition's exploratory notebooks print them: 6,054 studies (Negative for Pneumonia 1,676, Typical 2,855,
Indeterminate 1,049, Atypical 474) and 6,334 images, of which 2,040 have `none 1 0 0 1 1`. Design choices, not
calibrated: images per study (1: 95.8%, 2: 3.4%, 3: 0.8%, mean 1.05 like 6,334 / 6,054), image sides 2,000-4,000 px
before `scale`, a tenth MONOCHROME1, 10-16 stored bits, and a twentieth of the studies (`SHARED_PATIENT_SHARE`) made
of the same patient as the study before it in its split: the DICOM PatientID says so (the tables have no patient),
which `cxrdet folds --headers <cache>/meta.parquet` uses to keep a patient's studies in one fold. Every draw is
seeded from `(seed, study, purpose)`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet import io as cio
from cxrdet.competitions.siim import (
    IMAGE_SUFFIX,
    IMAGE_TABLE_COLUMNS,
    STUDY_CLASSES,
    STUDY_COLUMNS,
    STUDY_SUFFIX,
    SiimLayout,
)
from cxrdet.synth.dicom import check_draw_args, refuse_foreign_root
from cxrdet.synth.render import IMAGE_SIZE, render_image

REAL_STUDY_COUNTS: Final[dict[str, int]] = {"negative": 1676, "typical": 2855, "indeterminate": 1049, "atypical": 474}
REAL_STUDIES: Final = 6054
REAL_IMAGES: Final = 6334
REAL_NONE_IMAGES: Final = 2040
IMAGES_PER_STUDY: Final[tuple[float, ...]] = (0.958, 0.034, 0.008)  # 1, 2, 3 images
# Share of a non-negative study's images without a box, so that none images total 2,040 of 6,334:
# (2040 - 1676 * 1.05) / (4378 * 1.05) ~ 0.06.
UNBOXED_SHARE: Final = 0.06
SIDES: Final = (2000.0, 4000.0)
BITS: Final = (10, 12, 14, 16)
MONOCHROME1_SHARE: Final = 0.1
SHARED_PATIENT_SHARE: Final = 0.05
TRUTH_COLUMNS: Final = ("image_id", "split", "study_id", "series_id", "patient_id", "category", "width", "height",
                        "bits_stored", "photometric", "n_boxes")
_PURPOSE_DRAW, _PURPOSE_PIXELS, _PURPOSE_PATIENT = 1, 2, 3


@dataclass(frozen=True)
class SiimImage:
    """The draws of one image (no pixels).

    Attributes:
        study: The study's index; `position` the image's place in it.
        boxes: Opacity boxes, xyxy pixels of the 1024 x 1024 render (scaled to the image on writing).
    """

    study: int
    position: int
    split: str
    category: str
    width: int
    height: int
    bits_stored: int
    photometric: str
    sex: str
    age: int
    boxes: tuple[tuple[float, float, float, float], ...]
    seed: int
    patient: int = -1  # the study whose patient this is (-1: its own)

    def _hex(self, what: str, *key: Any) -> str:
        return hashlib.md5(f"cxrdet-siim-{self.seed}-{what}-{'-'.join(map(str, key))}".encode()).hexdigest()[:12]

    @property
    def study_id(self) -> str:
        """A 12-hex-digit id like the competition's."""
        return self._hex("study", self.study)

    @property
    def patient_id(self) -> str:
        """The DICOM PatientID: shared by the studies of one patient."""
        return self._hex("patient", self.study if self.patient < 0 else self.patient)

    @property
    def series_id(self) -> str:
        return self._hex("series", self.study, self.position)

    @property
    def image_id(self) -> str:
        return self._hex("image", self.study, self.position)

    def scaled_boxes(self) -> list[tuple[float, float, float, float]]:
        """The boxes in pixels of this image (rounded to 5 decimals, as the real tables print them)."""
        sx, sy = self.width / IMAGE_SIZE, self.height / IMAGE_SIZE
        return [(round(x1 * sx, 5), round(y1 * sy, 5), round(x2 * sx, 5), round(y2 * sy, 5))
                for x1, y1, x2, y2 in self.boxes]


def _rng(seed: int, study: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, study, purpose]))


def _lung_box(rng: np.random.Generator, side: int, zone: str, where: str, large: bool = False
              ) -> tuple[float, float, float, float]:
    """One opacity box in a lung of the 1024 render: `side` 0 image-left, 1 image-right; `zone` lower / upper /
    any; `where` peripheral (against the chest wall) or central (against the mediastinum)."""
    w = rng.uniform(200, 280) if large else rng.uniform(110, 190)
    h = rng.uniform(300, 420) if large else rng.uniform(150, 280)
    top = {"lower": rng.uniform(470, 600), "upper": rng.uniform(200, 300), "any": rng.uniform(250, 560)}[zone]
    if where == "peripheral":
        x1 = rng.uniform(150, 200)
    else:  # central: the inner half of the lung
        x1 = rng.uniform(470, 500) - w
    if side == 1:  # mirror into the image-right lung
        x1 = IMAGE_SIZE - x1 - w
    y2 = min(top + h, 900.0)
    return (round(x1), round(top), round(x1 + w), round(y2))


def _category_boxes(rng: np.random.Generator, category: str) -> tuple[tuple[float, float, float, float], ...]:
    """The boxes of one image of a study of `category` (see the module docstring)."""
    if category == "negative":
        return ()
    if category == "typical":  # bilateral, peripheral, lower
        boxes = [_lung_box(rng, 0, "lower", "peripheral"), _lung_box(rng, 1, "lower", "peripheral")]
        if rng.random() < 0.25:
            boxes.append(_lung_box(rng, int(rng.integers(2)), "any", "peripheral"))
        return tuple(boxes)
    if category == "indeterminate":  # unilateral, or central, or upper
        side = int(rng.integers(2))
        boxes = [_lung_box(rng, side, str(rng.choice(["upper", "any"])), str(rng.choice(["central", "peripheral"])))]
        if rng.random() < 0.35:
            boxes.append(_lung_box(rng, 1 - side, "any", "central"))
        return tuple(boxes)
    return (_lung_box(rng, int(rng.integers(2)), "any", "central", large=True),)  # atypical: one lobar opacity


def _draw_study(seed: int, study: int, split: str, scale: float, first_of_split: bool) -> list[SiimImage]:
    rng = _rng(seed, study, _PURPOSE_DRAW)
    shared = _rng(seed, study, _PURPOSE_PATIENT).random() < SHARED_PATIENT_SHARE  # its own stream: the rest stays
    patient = study - 1 if shared and not first_of_split else -1
    shares = np.array([REAL_STUDY_COUNTS[c] for c in STUDY_CLASSES], dtype=np.float64)
    category = STUDY_CLASSES[int(rng.choice(len(STUDY_CLASSES), p=shares / shares.sum()))]
    n_images = 1 + int(rng.choice(len(IMAGES_PER_STUDY), p=np.asarray(IMAGES_PER_STUDY) / sum(IMAGES_PER_STUDY)))
    sex, age = ("M" if rng.random() < 0.5 else "F"), int(rng.integers(20, 90))
    out = []
    for position in range(n_images):
        width = int(round(rng.uniform(*SIDES) * scale))
        height = int(round(width * rng.uniform(0.9, 1.2)))
        boxes = _category_boxes(rng, category)
        if boxes and (rng.random() < UNBOXED_SHARE or (position > 0 and rng.random() < 0.5)):
            boxes = ()  # a non-negative image left unannotated (most later images of a study are)
        out.append(SiimImage(
            study=study, position=position, split=split, category=category, width=width, height=height,
            bits_stored=int(rng.choice(BITS)),
            photometric="MONOCHROME1" if rng.random() < MONOCHROME1_SHARE else "MONOCHROME2", sex=sex, age=age,
            boxes=boxes, seed=seed, patient=patient,
        ))  # fmt: skip
    return out


def sample_siim_studies(n_train: int, n_test: int, seed: int = 0, scale: float = 1.0) -> list[SiimImage]:
    """The draws of a data set: the images of `n_train` training studies then of `n_test` test studies.

    Raises:
        ConfigError: Negative counts, no training study, a seed or scale out of range.
    """
    check_draw_args(n_train, n_test, seed, scale, "studies", "2,000-4,000 px")
    images = [image for s in range(n_train + n_test)
              for image in _draw_study(seed, s, "train" if s < n_train else "test", scale, s in (0, n_train))]
    # A study drawn as the previous study's patient takes that study's patient (chains resolve to their first).
    root: dict[int, int] = {}
    for image in images:
        root.setdefault(image.study, image.study if image.patient < 0 else root[image.patient])
    return [replace(i, patient=root[i.study] if root[i.study] != i.study else -1) for i in images]


def render_siim_image(image: SiimImage, grid: int = 256) -> npt.NDArray[np.uint16]:
    """The stored pixel values of one image: `(height, width)` uint16, `bits_stored` deep, MONOCHROME1 inverted."""
    from PIL import Image

    ss = np.random.SeedSequence([image.seed, image.study, _PURPOSE_PIXELS, image.position])
    anatomy = np.random.SeedSequence([image.seed, image.study, _PURPOSE_PIXELS])  # one patient per study
    xyxy = np.asarray(image.boxes, dtype=np.float64).reshape(-1, 4)
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    view = "AP" if (image.study + image.position) % 3 else "PA"  # portable films dominate COVID-era imaging
    pixels = render_image(xywh, view, image.sex, image.age, (), ss, grid=grid, anatomy_seed=anatomy,
                          size=IMAGE_SIZE)
    stretched = Image.fromarray(pixels.astype(np.float32)).resize((image.width, image.height),
                                                                   Image.Resampling.BICUBIC)
    top = 2**image.bits_stored - 1
    rng = np.random.default_rng(ss)
    values = (np.asarray(stretched, dtype=np.float64) / 255.0 * top
              + rng.uniform(-0.5, 0.5, (image.height, image.width)) * (top / 255.0))
    stored = np.clip(np.rint(values), 0, top)
    if image.photometric == "MONOCHROME1":
        stored = top - stored
    return stored.astype(np.uint16)


def _render_and_write(task: tuple[SiimImage, str, int]) -> str:
    """Worker: render one image and write its DICOM (module-level so that it pickles)."""
    from cxrdet.synth.dicom import write_raw_dicom

    image, path, grid = task
    # The header's UIDs are valid DICOM UIDs derived from the image id; the study and series are the folders, as
    # cxrdet reads them (`cxrdet.competitions.siim.split_studies`).
    write_raw_dicom(path, render_siim_image(image, grid), image.image_id, image.photometric, image.bits_stored,
                    image.seed, image.sex, image.age, patient_id=image.patient_id)
    return path


def _num(value: float) -> str:
    """A coordinate as the real tables print it: up to 5 decimals, trailing zeros dropped."""
    return f"{value:.5f}".rstrip("0").rstrip(".")


def image_rows(images: Sequence[SiimImage]) -> pd.DataFrame:
    """The image-level table of `images` (`id, boxes, label, StudyInstanceUID`), in image order."""
    rows = []
    for image in images:
        boxes = image.scaled_boxes()
        if boxes:
            field = str([{"x": x1, "y": y1, "width": round(x2 - x1, 5), "height": round(y2 - y1, 5)}
                         for x1, y1, x2, y2 in boxes])
            # x + width, as the real label strings hold: the same box to the printed precision.
            label = " ".join(f"opacity 1 {_num(x1)} {_num(y1)} {_num(x1 + round(x2 - x1, 5))} "
                             f"{_num(y1 + round(y2 - y1, 5))}" for x1, y1, x2, y2 in boxes)
        else:
            field, label = "", "none 1 0 0 1 1"
        rows.append((image.image_id + IMAGE_SUFFIX, field, label, image.study_id))
    return pd.DataFrame(rows, columns=list(IMAGE_TABLE_COLUMNS))


def study_rows(images: Sequence[SiimImage]) -> pd.DataFrame:
    """The study-level table of the studies of `images` (one-hot), in study order."""
    first = {}
    for image in images:
        first.setdefault(image.study_id, image.category)
    return pd.DataFrame([(s + STUDY_SUFFIX, *(int(c == k) for k in STUDY_CLASSES)) for s, c in first.items()],
                        columns=["id", *STUDY_COLUMNS])


@dataclass(frozen=True)
class SiimSynthSummary:
    """What `generate_siim_dataset` wrote."""

    root: Path
    seed: int
    n_train_studies: int
    n_test_studies: int
    n_images: int
    n_none_images: int
    seconds: float


def generate_siim_dataset(out: str | Path, n_train: int, n_test: int, seed: int = 0, scale: float = 0.2,
                          workers: int | None = None, grid: int = 256) -> SiimSynthSummary:
    """Write a synthetic SIIM-COVID data set into `out` (see the module docstring for the files).

    Args:
        out: The data root (created; an existing folder must be empty or an earlier synthetic set).
        n_train, n_test: Study counts (each study holds 1-3 images).
        seed: Data-set seed: the same seed and counts give the same bytes.
        scale: Factor of the real image sides (2,000-4,000 px); 0.2 gives 400-800 px images.
        workers: Rendering processes (default: the CPU count); 1 renders here.
        grid: The renderer's internal grid.

    Raises:
        ConfigError: Bad counts, seed or scale. CxrdetError: `out` holds other data.
    """
    import shutil

    start = time.perf_counter()
    images = sample_siim_studies(n_train, n_test, seed, scale)
    layout = SiimLayout(Path(out))
    refuse_foreign_root(layout.root)
    for split in ("train", "test"):
        if layout.images_dir(split).exists():
            shutil.rmtree(layout.images_dir(split))  # a synthetic set's own folders (checked above)
        layout.images_dir(split).mkdir(parents=True)
    tasks = [(image, str(layout.dicom_path(image.split, image.image_id, image.study_id, image.series_id)), grid)
             for image in images]
    for _, path, _ in tasks:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    n_workers = min(workers or os.cpu_count() or 1, len(tasks))
    if n_workers <= 1:
        for t in tasks:
            _render_and_write(t)
    else:
        with ProcessPoolExecutor(n_workers) as pool:
            list(pool.map(_render_and_write, tasks, chunksize=4))
    train = [i for i in images if i.split == "train"]
    test = [i for i in images if i.split == "test"]
    cio.write_csv(layout.labels_csv, image_rows(train))
    cio.write_csv(layout.study_csv, study_rows(train))
    cio.write_csv(layout.synth_test_labels, image_rows(test))
    cio.write_csv(layout.root / "synth_test_study_level.csv", study_rows(test))
    sample = [(s + STUDY_SUFFIX, "negative 1 0 0 1 1") for s in dict.fromkeys(i.study_id for i in test)]
    sample += [(i.image_id + IMAGE_SUFFIX, "none 1 0 0 1 1") for i in test]
    cio.write_csv(layout.sample_submission, pd.DataFrame(sample, columns=["id", "PredictionString"]))
    truth = pd.DataFrame([(i.image_id, i.split, i.study_id, i.series_id, i.patient_id, i.category, i.width,
                           i.height, i.bits_stored, i.photometric, len(i.boxes)) for i in images],
                         columns=list(TRUTH_COLUMNS))
    cio.write_csv(layout.root / "synth_truth.csv", truth)
    return SiimSynthSummary(layout.root, seed, n_train, n_test, len(images), sum(not i.boxes for i in images),
                            time.perf_counter() - start)
