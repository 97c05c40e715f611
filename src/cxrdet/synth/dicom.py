"""DICOM writing of synthetic images: the header fields the RSNA files carry, JPEG-baseline pixel data, UIDs derived
from the seed so that the same seed gives the same bytes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from cxrdet import io as cio
from cxrdet.synth.render import IMAGE_SIZE


class DicomFields(Protocol):
    """The per-image header fields a synthetic DICOM carries (`cxrdet.synth.rsna.ImageLabels` has them)."""

    patient_id: str
    view: str
    sex: str
    age: int
    pixel_spacing: float


def encode_jpeg(pixels: npt.NDArray[np.uint8], quality: int = 95) -> bytes:
    """Encode one 8-bit grayscale frame as a baseline JPEG (the RSNA images' compression)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _new_dataset(sop_class: str, transfer_syntax: str, entropy: list[str]) -> Any:
    """A dataset with its file meta and SOP identity set, and its study, series and instance UIDs derived from
    `entropy` (the same sources give the same UIDs)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

    uids = {k: generate_uid(entropy_srcs=[*entropy, k]) for k in ("study", "series", "instance")}
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uids["instance"]
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uids["instance"]
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    return ds


def build_dicom(pixels: npt.NDArray[np.uint8], labels: DicomFields, seed: int) -> Any:
    """A `pydicom.Dataset` for one synthetic image, with the header fields the RSNA files carry.

    Secondary Capture SOP class and the dummy study date and time, as in the RSNA release; JPEG baseline transfer
    syntax; UIDs derived from the seed and patient id, so the same seed gives the same bytes.
    """
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage

    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE) or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8 of shape {(IMAGE_SIZE, IMAGE_SIZE)}, got {pixels.dtype} {pixels.shape}")
    ds = _new_dataset(SecondaryCaptureImageStorage, JPEGBaseline8Bit,
                         ["cxrdet-synth", str(seed), labels.patient_id])
    ds.SpecificCharacterSet = "ISO_IR 100"
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


def write_dicom(path: str | Path, pixels: npt.NDArray[np.uint8], labels: DicomFields, seed: int) -> Path:
    """Write one synthetic image as a DICOM file (128-byte preamble, file meta, JPEG baseline), atomically."""
    ds = build_dicom(pixels, labels, seed)
    with cio.atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)


def write_raw_dicom(path: str | Path, stored: npt.NDArray[np.uint16], image_id: str, photometric: str,
                    bits_stored: int, seed: int, sex: str = "", age: int | None = None, patient_id: str = "") -> Path:
    """Write one uncompressed 16-bit-allocated greyscale DICOM (Explicit VR Little Endian), atomically.

    The header has what the VinBigData files carry (Digital X-Ray, PA chest, photometric interpretation and bit
    depth as given, de-identified patient fields); UIDs derive from the seed and image id, so the same seed gives
    the same bytes.

    Args:
        stored: `(rows, columns)` stored values, below `2**bits_stored`.
        photometric: `MONOCHROME1` or `MONOCHROME2`.
        bits_stored: 12 to 16.
    """
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

    if stored.ndim != 2 or not 8 < bits_stored <= 16 or int(stored.max(initial=0)) >= 2**bits_stored:
        raise ValueError(f"stored values of shape {stored.shape}, max {int(stored.max(initial=0))}: expected a 2-D "
                         f"array below 2**{bits_stored}")
    ds = _new_dataset(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian,
                         ["cxrdet-synth-raw", str(seed), image_id])
    ds.Modality = "DX"
    ds.PatientID = patient_id
    ds.PatientName = ""
    ds.PatientSex = sex
    ds.PatientAge = f"{min(age, 999):03d}Y" if age is not None else ""
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    with cio.atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)


def refuse_foreign_root(root: Path) -> None:
    """Refuse to write a synthetic data set into a folder holding data that `cxrdet synth` did not make (a real
    download): one that is not empty and has no `synth_truth.csv` (VinBigData, SIIM).

    Raises:
        CxrdetError: Naming the folder.
    """
    from cxrdet.errors import CxrdetError

    root = Path(root)
    if root.exists() and not (root / "synth_truth.csv").exists() and any(root.iterdir()):
        raise CxrdetError(f"{root}: not empty and not a synthetic data set (no synth_truth.csv): refusing to "
                          "overwrite it; choose an empty or new folder")


def check_draw_args(n_train: int, n_test: int, seed: int, scale: float, what: str, sides: str) -> None:
    """The checks of a synthetic data set's counts, seed and size factor (VinBigData, SIIM).

    Args:
        what: What the counts count (`images`, `studies`), named in the message.
        sides: The real images' sides (`2,000-3,000 px`), named in the message.

    Raises:
        ConfigError: Negative counts, no training item, a seed outside [0, 2**32), a scale outside [0.01, 1].
    """
    from cxrdet.errors import ConfigError

    if n_train < 1 or n_test < 0:
        raise ConfigError(f"n_train={n_train}, n_test={n_test}: expected n_train >= 1 and n_test >= 0 {what}")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed}: expected an integer in [0, 2**32)")
    if not 0.01 <= scale <= 1.0:
        raise ConfigError(f"scale={scale}: expected a factor in [0.01, 1] of the real image sides ({sides})")
