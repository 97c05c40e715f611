"""Read one chest X-ray DICOM into a display-ready greyscale image plus the header fields the pipeline uses.

Pixels go through the DICOM grayscale pipeline in the standard's order: stored values -> modality LUT (or rescale
slope/intercept) -> VOI LUT (or window centre/width) -> MONOCHROME1 inversion, so that bright always means dense
(bone) whatever the file's photometric interpretation. Decoding covers uncompressed, RLE, JPEG baseline/extended/
lossless, JPEG-LS and JPEG 2000 through pydicom 3's pixel backends (pylibjpeg plugins, pyjpegls).

Every failure -- a missing, truncated or non-DICOM file, no pixel data, a colour or multi-frame image, a decoder or
LUT error -- is raised as a `DicomError` naming the file and the reason; no pydicom traceback leaks out.

A file whose header claims more pixel data than a chest radiograph has (`max_image_bytes`: rows x columns x frames x
samples x bytes per sample) is refused from its header, before anything is decoded: a few bytes of compressed data
can declare gigabytes. The limit is sized for the largest real chest radiographs (about 4,300 x 4,300 pixels at 16
bits: 4,400 x 4,400 x 2 bytes, 38.7 MB) and moved with `CXRDET_MAX_IMAGE_BYTES`.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, apply_voi_lut, apply_windowing
from pydicom.uid import DeflatedExplicitVRLittleEndian

from cxrdet.errors import CxrdetError, DicomError

GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
# The largest real chest radiographs are about 4,300 x 4,300 pixels at up to 16 bits.
DEFAULT_MAX_IMAGE_BYTES = 4400 * 4400 * 2
MAX_IMAGE_BYTES_ENV = "CXRDET_MAX_IMAGE_BYTES"
_AGE = re.compile(r"^\s*(\d+)\s*([DWMY]?)\s*$", re.IGNORECASE)
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


@dataclass(frozen=True)
class DicomHeader:
    """What the pipeline needs from a DICOM header (no pixels).

    Attributes:
        image_id: The file name without its suffix (the Kaggle patientId).
        width: Columns of the stored image, in pixels.
        height: Rows of the stored image, in pixels.
        bits_stored: BitsStored (8 for the RSNA images, 15 for `RG1_UNCR.dcm`).
        photometric: PhotometricInterpretation (`MONOCHROME1` or `MONOCHROME2`).
        pixel_spacing: (row, col) spacing in mm from PixelSpacing, else ImagerPixelSpacing; None when absent or not
            positive (some files store 0).
        sex: PatientSex as written (`M`, `F`, `O`), None when empty.
        age: PatientAge in whole years (`058Y` -> 58, `18M` -> 1, RSNA's bare `58` -> 58), None when empty or
            unreadable.
        view: ViewPosition (`PA`, `AP`, ...), None when empty.
        patient: PatientID as written, None when empty (RSNA: the image id; SIIM: the patient, who can have several
            studies; VinBigData: empty).
    """

    image_id: str
    width: int
    height: int
    bits_stored: int
    photometric: str
    pixel_spacing: tuple[float, float] | None
    sex: str | None
    age: int | None
    view: str | None
    patient: str | None


@dataclass(frozen=True, eq=False)
class DicomImage(DicomHeader):
    """A decoded DICOM: the header fields plus the display-ready pixels.

    Attributes:
        pixels: (height, width) float32 in [0, 1], bright = dense, after modality LUT, VOI LUT/window and
            MONOCHROME1 inversion (see `display_pixels`).
    """

    pixels: np.ndarray


def read_header(path: str | Path, *, allow_no_preamble: bool = False) -> DicomHeader:
    """Read the header fields of one DICOM without decoding its pixels (fast: stops before the pixel data).

    Args:
        path: The `.dcm` file.
        allow_no_preamble: Read files without the 128-byte preamble and `DICM` prefix (pydicom `force=True`);
            by default such a file is refused, since a non-DICOM file looks the same.

    Returns:
        The header; it is checked to describe a single greyscale frame.

    Raises:
        DicomError: The file is missing, not DICOM, not an image, colour or multi-frame.
    """
    path = Path(path)
    ds, _ = _open(path, stop_before_pixels=True, allow_no_preamble=allow_no_preamble)
    return _header(path, ds)


def read_dicom(path: str | Path, *, allow_no_preamble: bool = False) -> DicomImage:
    """Read and decode one single-frame greyscale DICOM.

    Args:
        path: The `.dcm` file.
        allow_no_preamble: Read files without the 128-byte preamble and `DICM` prefix (see `read_header`).

    Returns:
        The header fields and the display-ready pixels (float32 in [0, 1], bright = dense).

    Raises:
        DicomError: The file is missing, truncated, not DICOM, has no pixel data, is colour or multi-frame, or its
            pixel data or LUTs cannot be decoded.
    """
    path = Path(path)
    ds, read_warnings = _open(path, stop_before_pixels=False, allow_no_preamble=allow_no_preamble)
    tag, end, size = _last_element_end(path, ds)
    if end > size:
        raise DicomError(path, f"truncated file: it ends at byte {size}, inside element {tag} (which ends at {end})")
    if "PixelData" not in ds:
        stray = f"; {size - end} stray bytes follow its last complete element (truncated?)" if end < size else ""
        raise DicomError(path, _no_pixels_reason(ds, read_warnings) + stray)
    header = _header(path, ds)
    try:
        with warnings.catch_warnings():
            # pydicom warns about benign oddities (odd padding, pixel representation mismatches it corrects).
            warnings.simplefilter("ignore")
            stored = ds.pixel_array
    except Exception as err:  # any decoder failure becomes a DicomError with its reason
        syntax = _transfer_syntax_name(ds)
        # Fewer pixel bytes than Rows x Columns x BitsAllocated need: a file cut and re-saved, or a wrong header.
        short = "pixel data shorter than the header says (truncated?): " if "less than expected" in str(err) else ""
        raise DicomError(path, f"{short}cannot decode the pixel data ({syntax}): {_describe(err)}") from err
    if stored.shape != (header.height, header.width):
        raise DicomError(
            path, f"decoded pixel array has shape {stored.shape}, expected (Rows, Columns) = "
            f"({header.height}, {header.width}); a single greyscale frame is needed"
        )
    try:
        pixels = display_pixels(ds, stored)
    except Exception as err:  # a malformed LUT or window is the file's fault, not a bug
        raise DicomError(path, f"cannot apply the modality/VOI LUT: {_describe(err)}") from err
    return DicomImage(**vars(header), pixels=pixels)


def display_pixels(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Turn stored pixel values into display values in [0, 1], bright = dense.

    The order is the standard's: modality LUT (or RescaleSlope/RescaleIntercept), then the VOI LUT (preferred) or
    window centre/width, then inversion of MONOCHROME1. The result is scaled by the output range of the last
    transform, so a given window always maps to the same [0, 1] scale:

    - VOI LUT: the range of the LUT's entries; window: the window's output range (pydicom's `apply_windowing`).
    - No VOI transform and BitsStored <= 8: the nominal stored range (e.g. 0..255) through the rescale, so 8-bit
      images such as the RSNA ones keep their intensities (`to_uint8` gives back the stored bytes).
    - No VOI transform and deeper images: the image's own min..max, as a DICOM viewer does without a window.

    Args:
        ds: The dataset holding the Modality LUT, VOI LUT and photometric attributes.
        stored: The decoded stored values, shape (Rows, Columns).

    Returns:
        float32 array of the same shape, in [0, 1].
    """
    values = apply_modality_lut(stored, ds)
    with warnings.catch_warnings():
        # A VOI LUT applied to rescaled (float) values warns; the values are integral in practice.
        warnings.simplefilter("ignore")
        values = apply_voi_lut(values, ds, prefer_lut=True)
    lo, hi = _output_range(ds, values)
    # float32 in place: exact for stored values up to 2**24 and a third of the time of float64 temporaries.
    out = values.astype(np.float32)
    if hi > lo:
        out -= np.float32(lo)
        out *= np.float32(1.0 / (hi - lo))
        np.clip(out, 0.0, 1.0, out=out)
    else:
        out[:] = 0.0
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        np.subtract(np.float32(1.0), out, out=out)
    return out


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Quantise [0, 1] display pixels to uint8 (0..255), rounding to nearest; values outside [0, 1] are clipped."""
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def parse_age(value: object) -> int | None:
    """Whole years from a DICOM age string (`058Y`, `018M`, `003W`, `010D`) or a bare number (`58`); else None."""
    if value is None:
        return None
    match = _AGE.match(str(value))
    if not match:
        return None
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    if unit == "Y":
        return number
    return int(number * _DAYS_PER_UNIT[unit] // _DAYS_PER_UNIT["Y"])


def _open(path: Path, *, stop_before_pixels: bool, allow_no_preamble: bool) -> tuple[Dataset, list[str]]:
    """Parse a file with pydicom; return the dataset and the warnings pydicom raised while reading."""
    if not path.is_file():
        raise DicomError(path, "file not found" if not path.exists() else "not a regular file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=allow_no_preamble)
    except InvalidDicomError as err:
        raise DicomError(
            path, "not a DICOM file: no DICOM preamble ('DICM' prefix at byte 128 is missing); "
            "pass allow_no_preamble=True to read a preamble-less DICOM anyway"
        ) from err
    except OSError as err:
        raise DicomError(path, f"cannot read the file: {err.strerror or _describe(err)}") from err
    except Exception as err:  # any parser failure becomes a DicomError with its reason
        raise DicomError(path, f"cannot parse the DICOM header (corrupt or truncated?): {_describe(err)}") from err
    return ds, [str(w.message) for w in caught]


def _header(path: Path, ds: Dataset) -> DicomHeader:
    """Extract and check the header fields; any unreadable required value becomes a DicomError."""
    try:
        with warnings.catch_warnings():
            # pydicom warns on an invalid value (NumberOfFrames '1A') before int() fails; the error says it all.
            warnings.simplefilter("ignore")
            return _header_fields(path, ds)
    except CxrdetError:  # a DicomError, or a bad CXRDET_MAX_IMAGE_BYTES: already says what to fix
        raise
    except Exception as err:  # e.g. NumberOfFrames '1A': a malformed value, named in the reason
        raise DicomError(path, f"malformed image header value: {_describe(err)}") from err


def max_image_bytes() -> int:
    """The most pixel data a header may declare: `CXRDET_MAX_IMAGE_BYTES`, else `DEFAULT_MAX_IMAGE_BYTES`.

    Raises:
        ConfigError: The variable is not a positive integer.
    """
    from cxrdet.errors import ConfigError

    raw = os.environ.get(MAX_IMAGE_BYTES_ENV)
    if raw is None:
        return DEFAULT_MAX_IMAGE_BYTES
    if not raw.strip().isdigit() or int(raw) <= 0:
        raise ConfigError(f"{MAX_IMAGE_BYTES_ENV}={raw!r}: expected a positive integer number of bytes")
    return int(raw)


def check_declared_size(path: Path, width: int, height: int, frames: int = 1, samples: int = 1,
                        bits_allocated: int = 16) -> None:
    """Refuse an image whose header declares more pixel data than `max_image_bytes`, before it is decoded.

    Raises:
        DicomError: Naming the file, the declared size and the limit.
    """
    declared = width * height * frames * samples * math.ceil(bits_allocated / 8)
    limit = max_image_bytes()
    if declared > limit:
        raise DicomError(path, f"the header declares {width} x {height} pixels x {frames} frame(s) x {samples} "
                         f"sample(s) at {bits_allocated} bits = {declared:,} bytes of pixel data, over the limit of "
                         f"{limit:,} bytes (the largest chest radiographs are about 4,300 x 4,300 x 16 bits; raise "
                         f"{MAX_IMAGE_BYTES_ENV} for larger images); refused before decoding")


def _header_fields(path: Path, ds: Dataset) -> DicomHeader:
    """The checks and conversions of `_header`, which turns their unexpected exceptions into DicomErrors."""
    if "Rows" not in ds or "Columns" not in ds:
        raise DicomError(path, f"not an image: Rows/Columns missing{_kind(ds)}")
    check_declared_size(path, int(ds.Columns), int(ds.Rows), int(ds.get("NumberOfFrames", 1) or 1),
                        int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 16) or 16))
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if not photometric:
        raise DicomError(path, "PhotometricInterpretation (0028,0004) missing")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric not in GREYSCALE or samples != 1:
        raise DicomError(
            path, f"colour image (PhotometricInterpretation {photometric}, SamplesPerPixel "
            f"{samples}); a single greyscale frame (MONOCHROME1 or MONOCHROME2) is needed"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicomError(path, f"multi-frame image ({frames} frames); a single greyscale frame is needed")
    if "BitsStored" not in ds:
        raise DicomError(path, "BitsStored (0028,0101) missing")
    return DicomHeader(
        image_id=path.stem,
        width=int(ds.Columns),
        height=int(ds.Rows),
        bits_stored=int(ds.BitsStored),
        photometric=photometric,
        pixel_spacing=_pixel_spacing(ds),
        sex=_text(ds.get("PatientSex")),
        age=parse_age(_text(ds.get("PatientAge"))),
        view=_text(ds.get("ViewPosition")),
        patient=_text(ds.get("PatientID")),
    )


def _output_range(ds: Dataset, values: np.ndarray) -> tuple[float, float]:
    """The value range that maps to [0, 1]: output range of the VOI transform applied, else see `display_pixels`."""
    voi_items = ds.get("VOILUTSequence")
    if voi_items and voi_items[0].get("LUTDescriptor") is not None and voi_items[0].get("LUTData") is not None:
        # Evaluate the LUT at every entry through pydicom, which decodes its OW/US data and endianness.
        entries, first = int(voi_items[0].LUTDescriptor[0]) or 2**16, int(voi_items[0].LUTDescriptor[1])
        lut = apply_voi(np.arange(first, first + entries), ds)
        return float(lut.min()), float(lut.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        ends = apply_windowing(np.array([-np.inf, np.inf]), ds)
        return float(ends.min()), float(ends.max())
    bits = int(ds.BitsStored)
    if bits <= 8 and not ds.get("ModalityLUTSequence"):
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        nominal = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
        ends = apply_modality_lut(nominal, ds)
        return float(np.min(ends)), float(np.max(ends))
    return float(values.min()), float(values.max())


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, col) mm from PixelSpacing, else ImagerPixelSpacing; None when absent, malformed or not positive."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        try:
            numbers = [float(v) for v in (value if isinstance(value, MultiValue | list | tuple) else [value])]
        except (TypeError, ValueError):
            continue
        if len(numbers) == 1:
            numbers = numbers * 2
        if len(numbers) == 2 and all(np.isfinite(n) and n > 0 for n in numbers):
            return numbers[0], numbers[1]
    return None


def _last_element_end(path: Path, ds: Dataset) -> tuple[str, int, int]:
    """(tag, end offset, file size) of the last top-level element read; pydicom stops silently at a cut file.

    When unknown (deflated data set, whose offsets count inflated bytes; an undefined-length last element) the end is
    reported as the file size.
    """
    size = path.stat().st_size
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return "", size, size
    elements = list(ds.elements())  # raw elements, in file (tag) order, without converting their values
    last = elements[-1] if elements else None
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if last is None or tell is None or length is None or length == 0xFFFFFFFF:
        return "", size, size
    return str(last.tag), int(tell) + int(length), size


def _no_pixels_reason(ds: Dataset, read_warnings: list[str]) -> str:
    """Why a parsed dataset has no PixelData: cut short while reading, or not an image at all."""
    eof = [w for w in read_warnings if "end of file" in w.lower() or "truncat" in w.lower()]
    if eof:
        detail = re.sub(r"\s+in file .*$", "", eof[0])  # the path is already in the error
        return f"truncated file: the pixel data is cut short ({detail})"
    if "Rows" in ds and "Columns" in ds:
        return "no pixel data (7FE0,0010) although Rows/Columns are set: the file is probably truncated"
    return f"no pixel data (7FE0,0010): not an image{_kind(ds)}"


def _kind(ds: Dataset) -> str:
    """`' (Modality RTPLAN)'` or similar, to say what the file holds instead of an image."""
    try:
        modality = _text(ds.get("Modality"))
    except Exception:  # only decorates a message; a malformed Modality must not replace the real reason
        return ""
    return f" (Modality {modality})" if modality else ""


def _transfer_syntax_name(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return f"transfer syntax {syntax.name}" if syntax is not None else "no transfer syntax in the file meta"


def _text(value: object) -> str | None:
    """A header string stripped of DICOM padding, None when empty or absent."""
    if value is None:
        return None
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _describe(err: BaseException, limit: int = 600) -> str:
    """One line naming the exception type and its message (lines joined: a decoder lists each plugin's failure)."""
    message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    if len(message) > limit:
        message = message[: limit - 3] + "..."
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
