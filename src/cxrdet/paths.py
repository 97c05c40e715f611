"""The only owner of data and output locations.

Every folder the pipeline reads or writes is derived here, from the repository root, the data root the user points
at, an experiment name and a fold. Environment variables move the defaults:

- `CXRDET_HOME`: the project folder holding `configs/`, `folds/` and `submissions/` (default the repository; an
  offline bundle, `cxrdet.deploy.bundle`, sets it to its own copy, cxrdet being installed there from a wheel).
- `CXRDET_OUTPUTS`: the outputs folder (default `<repo>/outputs`, gitignored).
- `CXRDET_DATA`: the data root a config without `data.root` reads (`data_root`).
- `CXRDET_SHARED_DATA`: the folder of real label tables (default `<repo>/../shared/data`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(os.environ.get("CXRDET_HOME") or Path(__file__).resolve().parents[2])
CONFIGS_DIR = REPO_ROOT / "configs"
FOLDS_DIR = REPO_ROOT / "folds"
SUBMISSIONS_DIR = REPO_ROOT / "submissions"


def component(value: object, what: str) -> str:
    """`value` as one plain path component (a folder or file name) that cannot lead outside its parent folder.

    Every name that becomes part of an output path (an experiment, an ensemble, a curriculum stage, an image id) goes
    through this, so that a config, a `-o` option or a label table can never make cxrdet write elsewhere.

    Raises:
        ConfigError: Empty, `.` or `..`, or holding a path separator, a NUL or a drive/absolute prefix; names `what`
            and the value.
    """
    from cxrdet.errors import ConfigError

    text = str(value)
    if text in ("", ".", "..") or any(c in text for c in ("/", "\\", "\0")) or Path(text).is_absolute() or \
            (len(text) > 1 and text[1] == ":"):
        raise ConfigError(f"{what}={text!r}: expected a plain name (no '/', '\\', '..', absolute path or drive): it "
                          "names a folder or file inside cxrdet's output folder")
    return text


def outputs_dir() -> Path:
    """Root of all run outputs (gitignored)."""
    return Path(os.environ.get("CXRDET_OUTPUTS", REPO_ROOT / "outputs"))


def shared_data_dir() -> Path:
    """Folder of the real label tables (no images); may be absent."""
    return Path(os.environ.get("CXRDET_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def real_rsna_labels() -> Path:
    """The real RSNA stage-2 training labels table."""
    return shared_data_dir() / "rsna" / "stage_2_train_labels.csv"


def real_rsna_headers() -> Path:
    """DICOM header fields (age, sex, view) of the real RSNA training images."""
    return shared_data_dir() / "rsna" / "stage_2_train_dicom_headers.csv.gz"


def real_nih_labels() -> Path:
    """The NIH ChestX-ray14 label table."""
    return shared_data_dir() / "nih" / "Data_Entry_2017_v2020.csv.gz"


def data_root(competition: str | None = None) -> Path:
    """The data folder a run reads when its config names none: `CXRDET_DATA`, else the demo's synthetic data set of
    `competition` (`demo_dir(competition)`; None: the reference competition's, `demo_data_dir()`)."""
    env = os.environ.get("CXRDET_DATA")
    if env:
        return Path(env)
    return demo_data_dir() if competition in (None, "rsna") else demo_dir(competition)


def demo_dir(competition: str) -> Path:
    """Where a competition's synthetic demo data set lives: `outputs/demo/<competition>` (RSNA's, the first, is
    `outputs/demo/data`)."""
    return demo_data_dir() if competition == "rsna" else outputs_dir() / "demo" / component(competition, "competition")


def folds_file(name: str | Path) -> Path:
    """Resolve a fold file: an existing path as given, else `folds/<name>.csv` (committed), else
    `outputs/folds/<name>.csv` (generated, e.g. by the demo)."""
    p = Path(name)
    if p.suffix == ".csv" and p.exists():
        return p
    for folder in (FOLDS_DIR, outputs_dir() / "folds"):
        candidate = folder / (p.name if p.suffix == ".csv" else f"{p.name}.csv")
        if candidate.exists():
            return candidate
    return FOLDS_DIR / (p.name if p.suffix == ".csv" else f"{p.name}.csv")


def generated_folds_dir() -> Path:
    """Where generated (uncommitted) fold files go, e.g. the demo's."""
    return outputs_dir() / "folds"


def demo_data_dir() -> Path:
    """Where `make demo` writes its synthetic Kaggle-layout data set."""
    return outputs_dir() / "demo" / "data"


def demo_nih_data_dir() -> Path:
    """Where `cxrdet synth --format nih` writes its synthetic NIH-layout data set by default."""
    return outputs_dir() / "demo" / "nih"


def cache_dir(data_root: str | Path, size: int) -> Path:
    """Default prepare cache for a data root at a given image size: `outputs/cache/<root name>/<size>px`."""
    return outputs_dir() / "cache" / Path(data_root).resolve().name / f"{size}px"


def run_dir(experiment: str, fold: int) -> Path:
    """Run folder of one experiment on one fold: `outputs/<experiment>/fold<k>`."""
    return outputs_dir() / component(experiment, "experiment") / f"fold{int(fold)}"


def stage_dir(experiment: str, fold: int, stage: str | None = None) -> Path:
    """Folder of one training stage: the run folder itself for a single-stage run, else `<run>/<stage>`."""
    run = run_dir(experiment, fold)
    return run if stage is None else run / component(stage, "train.stages name")


def checkpoints_dir(experiment: str, fold: int, stage: str | None = None) -> Path:
    """Checkpoints (`best.ckpt`, `last.ckpt`) of one training stage."""
    return stage_dir(experiment, fold, stage) / "checkpoints"


def predictions_path(experiment: str, fold: int, split: str) -> Path:
    """Predictions of one fold model on a split (`oof` or `test`): boxes, or a classifier's per-image probabilities."""
    return run_dir(experiment, fold) / f"{split}.parquet"


def export_dir(experiment: str, fold: int) -> Path:
    """Exported deployment models of one fold (`model.onnx` and its `model.json` sidecar, ...)."""
    return run_dir(experiment, fold) / "export"


def infer_dir() -> Path:
    """Default output folder of `cxrdet infer` (boxes and overlays of single studies)."""
    return outputs_dir() / "infer"


def explain_dir(experiment: str, fold: int) -> Path:
    """Default folder of `cxrdet explain`'s Grad-CAM overlays of one fold's classifier: `<report>/explain/fold<k>`."""
    return outputs_dir() / component(experiment, "experiment") / "report" / "explain" / f"fold{int(fold)}"


def ensemble_dir(name: str) -> Path:
    """Folder of one ensemble's study, parameters and reports."""
    return outputs_dir() / "ensembles" / component(name, "ensemble name")


def pseudo_dir(name: str) -> Path:
    """Folder of one pseudo-label round (`cxrdet pseudo-label`): `labels.csv` and `provenance.json`."""
    return outputs_dir() / "pseudo" / component(name, "pseudo-label name")


@dataclass(frozen=True)
class KaggleLayout:
    """The folder layout of the RSNA Kaggle download (and of `cxrdet synth` output).

    Attributes:
        root: The folder holding the labels CSV and the image folders.
    """

    root: Path

    @property
    def labels_csv(self) -> Path:
        return self.root / "stage_2_train_labels.csv"

    @property
    def train_images(self) -> Path:
        return self.root / "stage_2_train_images"

    @property
    def test_images(self) -> Path:
        return self.root / "stage_2_test_images"

    @property
    def sample_submission(self) -> Path:
        return self.root / "stage_2_sample_submission.csv"

    @property
    def detailed_class_info(self) -> Path:
        return self.root / "stage_2_detailed_class_info.csv"

    @property
    def synth_test_labels(self) -> Path:
        """Test labels of a `cxrdet synth` data set (not part of the Kaggle download, which hides them)."""
        return self.root / "synth_test_labels.csv"

    @property
    def synth_truth(self) -> Path:
        """Per-image truth of a `cxrdet synth` data set: split, view, sex, age, n_boxes, distractors."""
        return self.root / "synth_truth.csv"

    def images_dir(self, split: str) -> Path:
        """Image folder of `split` (`train` or `test`)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self.train_images if split == "train" else self.test_images

    def dicom_path(self, split: str, image_id: str) -> Path:
        """Path of one image's DICOM file."""
        return self.images_dir(split) / f"{image_id}.dcm"


NIH_LABELS: str = "Data_Entry_2017_v2020.csv"
NIH_LABELS_GLOB: str = "Data_Entry_2017*.csv"


@dataclass(frozen=True)
class NihLayout:
    """The folder layout of the NIH ChestX-ray14 download (and of `cxrdet synth --format nih` output).

    `Data_Entry_2017_v2020.csv` (the 2017 release names it `Data_Entry_2017.csv`), the PNGs in `images/` (the NIH
    download's `images_001/images/` ... `images_012/images/` folders are found too), and the patient-disjoint
    `train_val_list.txt` and `test_list.txt` (one PNG file name per line).

    Attributes:
        root: The folder holding the label table, the lists and the image folder(s).
    """

    root: Path

    @property
    def labels_csv(self) -> Path:
        """The label table: `Data_Entry_2017_v2020.csv`, else another `Data_Entry_2017*.csv` present, else the
        v2020 name (where a new data set writes it)."""
        preferred = self.root / NIH_LABELS
        if preferred.is_file():
            return preferred
        found = sorted(self.root.glob(NIH_LABELS_GLOB))
        return found[0] if found else preferred

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def train_val_list(self) -> Path:
        return self.root / "train_val_list.txt"

    @property
    def test_list(self) -> Path:
        return self.root / "test_list.txt"

    @property
    def synth_truth(self) -> Path:
        """Per-image truth of a `cxrdet synth --format nih` data set: split, view, sex, age, findings, devices."""
        return self.root / "synth_truth.csv"

    @property
    def synth_boxes(self) -> Path:
        """Where a `cxrdet synth --format nih` data set drew each finding (xywh, pixels of its PNGs)."""
        return self.root / "synth_boxes.csv"

    def image_path(self, image_id: str) -> Path:
        """Path of one image's PNG in `images/` (`image_id` without the extension, e.g. `00000001_000`)."""
        return self.images_dir / f"{image_id}.png"

    def image_files(self) -> list[Path]:
        """Every PNG of `images/` and of the download's `images_*/images/` folders, sorted by path."""
        found = list(self.images_dir.glob("*.png")) + list(self.root.glob("images_*/images/*.png"))
        return sorted(found)


@dataclass(frozen=True)
class CacheLayout:
    """The folder layout of a prepare cache (`cxrdet prepare`), a contract with the training code.

    Attributes:
        root: The cache folder, by default `cache_dir(data_root, size)`.
    """

    root: Path

    @property
    def meta(self) -> Path:
        """One row per cached image: original size, header fields, source DICOM and cached PNG."""
        return self.root / "meta.parquet"

    @property
    def errors(self) -> Path:
        """`path,reason` of the files the last prepare run could not use."""
        return self.root / "errors.csv"

    def images_dir(self, split: str) -> Path:
        """Folder of the cached PNGs of `split` (`train` or `test`)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self.root / "images" / split

    def image(self, split: str, image_id: str) -> Path:
        """Cached 8-bit greyscale PNG of one image."""
        return self.images_dir(split) / f"{component(image_id, 'image_id')}.png"
