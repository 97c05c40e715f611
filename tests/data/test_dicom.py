"""DICOM reading: real files from pydicom's test data (every transfer syntax family, malformed files) and tiny
datasets built here whose expected display values are computed by hand."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

from cxrdet.data.dicom import DicomHeader, display_pixels, parse_age, read_dicom, read_header, to_uint8
from cxrdet.errors import DicomError


def pydicom_file(name: str) -> Path:
    """A file of the pydicom wheel or the pydicom-data package (never downloaded: both are pinned test deps)."""
    found = get_testdata_file(name, download=False)
    if found is None:
        pytest.skip(f"pydicom test file {name} not installed (pip install pydicom-data)")
    return Path(str(found))


def make_dataset(
    stored: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 8, **attrs: object
) -> Dataset:
    """An uncompressed single-frame greyscale dataset holding `stored`, plus any extra header attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.set_pixel_data(stored, photometric, bits_stored)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def gradient(size: int = 64) -> np.ndarray:
    return (np.add.outer(np.arange(size), np.arange(size)) * 2).astype(np.uint8)


# ---- real files ----


def test_rg1_jpeg2000_lossless_gives_identical_pixels_to_uncompressed() -> None:
    plain = read_dicom(pydicom_file("RG1_UNCR.dcm"))
    j2k = read_dicom(pydicom_file("RG1_J2KR.dcm"))
    assert plain.pixels.shape == (1955, 1841) == (plain.height, plain.width)
    assert np.array_equal(plain.pixels, j2k.pixels)
    assert (plain.bits_stored, plain.photometric, plain.sex, plain.view) == (15, "MONOCHROME1", "F", "PA")


def test_monochrome1_chest_comes_out_with_bright_bones() -> None:
    # RG1 is a PA chest stored MONOCHROME1 (low value = white). After inversion the spine/mediastinum strip in the
    # middle must be brighter than both lung fields beside it (about 0.86 vs 0.57 here; reversed without inversion).
    pixels = read_dicom(pydicom_file("RG1_UNCR.dcm")).pixels
    h, w = pixels.shape
    rows = slice(int(0.2 * h), int(0.5 * h))
    mediastinum = pixels[rows, int(0.45 * w) : int(0.55 * w)].mean()
    right_lung = pixels[rows, int(0.2 * w) : int(0.3 * w)].mean()
    left_lung = pixels[rows, int(0.7 * w) : int(0.8 * w)].mean()
    assert mediastinum > max(right_lung, left_lung) + 0.15


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",  # RLE lossless
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "MR_small_bigendian.dcm",  # explicit VR big endian
        "MR_small_implicit.dcm",  # implicit VR little endian
    ],
)
def test_lossless_transfer_syntaxes_match_the_uncompressed_original(name: str) -> None:
    reference = read_dicom(pydicom_file("MR_small.dcm"))
    image = read_dicom(pydicom_file(name))
    assert np.array_equal(image.pixels, reference.pixels)
    assert image.pixels.dtype == np.float32


@pytest.mark.parametrize(
    "name, shape",
    [
        ("JPEG-LL.dcm", (1024, 256)),  # JPEG lossless process 14
        ("JPGExtended.dcm", (1024, 256)),  # JPEG extended, 12-bit
        ("JPEG2000.dcm", (1024, 256)),  # JPEG 2000 (lossy syntax)
        ("JPEGLSNearLossless_16.dcm", (50, 10)),  # JPEG-LS near-lossless
        ("image_dfl.dcm", (512, 512)),  # deflated explicit VR
    ],
)
def test_other_transfer_syntaxes_decode_to_the_unit_range(name: str, shape: tuple[int, int]) -> None:
    image = read_dicom(pydicom_file(name))
    assert image.pixels.shape == shape == (image.height, image.width)
    assert image.pixels.min() == 0.0 and image.pixels.max() == 1.0  # no window in these: own min..max


def test_real_window_is_applied_by_hand_formula() -> None:
    # 8-bit JPEG lossless with WindowCenter 127, WindowWidth 254 (LINEAR): (x - 126.5) / 253 + 0.5, clipped.
    path = pydicom_file("JPGLosslessP14SV1_1s_1f_8b.dcm")
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    expected = np.clip((stored - 126.5) / 253 + 0.5, 0, 1)
    np.testing.assert_allclose(read_dicom(path).pixels, expected, atol=1e-6)


def test_jpeg_baseline_greyscale(tmp_path: Path) -> None:
    # The RSNA format: 8-bit MONOCHROME2 JPEG baseline. pydicom ships no greyscale one, so encode one with Pillow.
    stored = gradient()
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=95)
    ds = make_dataset(stored)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    image = read_dicom(save(ds, tmp_path / "baseline.dcm"))
    diff = np.abs(to_uint8(image.pixels).astype(int) - stored)
    assert diff.max() <= 3  # lossy, but close on a smooth gradient


@pytest.mark.parametrize(
    "name, reason",
    [
        ("MR_truncated.dcm", "truncated file: it ends at byte 9630, inside element (7FE0,0010)"),
        ("emri_small_jpeg_2k_lossless_too_short.dcm", "truncated file"),  # encapsulated pixel data cut short
        ("rtplan.dcm", "no pixel data (7FE0,0010): not an image (Modality RTPLAN)"),
        ("rtplan_truncated.dcm", "truncated file"),  # cut inside a sequence
        ("no_meta_group_length.dcm", "no pixel data"),
        ("meta_missing_tsyntax.dcm", "not an image"),
        ("no_meta.dcm", "no DICOM preamble"),
        ("ExplVR_BigEndNoMeta.dcm", "no DICOM preamble"),
        ("badVR.dcm", "malformed image header value"),  # NumberOfFrames '1A'
        ("JPEG-lossy.dcm", "libjpeg"),  # corrupt JPEG stream: the decoder's own reason is kept
        ("emri_small.dcm", "multi-frame image (10 frames)"),
        ("emri_small_RLE.dcm", "multi-frame image (10 frames)"),
        ("SC_rgb.dcm", "colour image (PhotometricInterpretation RGB"),
        ("SC_rgb_jpeg.dcm", "colour image"),
        ("OBXXXX1A.dcm", "PhotometricInterpretation PALETTE COLOR"),
    ],
)
def test_unusable_real_files_raise_dicom_error_naming_file_and_reason(name: str, reason: str) -> None:
    path = pydicom_file(name)
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert info.value.path == path
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "cut, reason",
    [
        (100, "no DICOM preamble"),  # inside the preamble
        (400, "4 stray bytes follow its last complete element"),  # inside an element's tag and length
        (404, "truncated file: it ends at byte 404, inside element (0008,0014)"),  # inside a header value
        (1500, "inside element (7FE0,0010)"),  # at the start of the pixel data (bytes 1500..9692)
        (6000, "inside element (7FE0,0010)"),
        (9691, "inside element (7FE0,0010)"),  # one byte short
    ],
)
def test_own_truncated_copies_raise(tmp_path: Path, cut: int, reason: str) -> None:
    path = tmp_path / "cut.dcm"
    path.write_bytes(pydicom_file("MR_small.dcm").read_bytes()[:cut])
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert info.value.path == path
    assert reason in info.value.reason


def test_non_dicom_missing_and_directory_paths_raise(tmp_path: Path) -> None:
    png = tmp_path / "image.dcm"
    Image.fromarray(gradient()).save(png, format="PNG")
    text = tmp_path / "notes.dcm"
    text.write_text("not a dicom\n")
    for path, reason in ((png, "not a DICOM file"), (text, "not a DICOM file"),
                         (tmp_path / "absent.dcm", "file not found"), (tmp_path, "not a regular file")):
        with pytest.raises(DicomError) as info:
            read_dicom(path)
        assert reason in info.value.reason, path
        with pytest.raises(DicomError):
            read_header(path)


def test_no_preamble_is_refused_unless_allowed(tmp_path: Path) -> None:
    stored = gradient()
    ds = make_dataset(stored)
    ds.preamble = None
    path = tmp_path / "nopreamble.dcm"
    ds.save_as(path, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    with pytest.raises(DicomError, match="no DICOM preamble"):
        read_dicom(path)
    assert np.array_equal(to_uint8(read_dicom(path, allow_no_preamble=True).pixels), stored)


def test_read_header_does_not_decode_pixels() -> None:
    # JPEG-lossy.dcm's pixel data cannot be decoded, but its header reads fine.
    header = read_header(pydicom_file("JPEG-lossy.dcm"))
    assert (header.width, header.height, header.bits_stored) == (256, 1024, 12)
    with pytest.raises(DicomError, match="multi-frame"):
        read_header(pydicom_file("emri_small.dcm"))
    with pytest.raises(DicomError, match="colour image"):
        read_header(pydicom_file("SC_rgb.dcm"))


def test_header_fields(tmp_path: Path) -> None:
    ds = make_dataset(gradient()[:, :48], PatientSex="M", PatientAge="058Y", ViewPosition="PA",
                      PixelSpacing=[0.14, 0.15], PatientID="p-7")
    path = save(ds, tmp_path / "abc-123.dcm")
    expected = DicomHeader(image_id="abc-123", width=48, height=64, bits_stored=8, photometric="MONOCHROME2",
                           pixel_spacing=(0.14, 0.15), sex="M", age=58, view="PA", patient="p-7")
    assert read_header(path) == expected
    image = read_dicom(path)
    assert DicomHeader(**{k: v for k, v in vars(image).items() if k != "pixels"}) == expected
    # RG1 stores PixelSpacing 0\0 and no age: both become None.
    rg1 = read_header(pydicom_file("RG1_UNCR.dcm"))
    assert (rg1.pixel_spacing, rg1.age) == (None, None)


# ---- the grayscale pipeline, by hand ----


def windowed_dataset(photometric: str) -> tuple[Dataset, np.ndarray]:
    """12-bit stored [300, 550, 800, 1000], rescale 2x - 100 -> [500, 1000, 1500, 1900], window C 1000.5 W 1001."""
    stored = np.array([[300, 550, 800, 1000]], dtype=np.uint16)
    ds = make_dataset(stored, photometric, bits_stored=12, RescaleSlope=2, RescaleIntercept=-100,
                      WindowCenter=1000.5, WindowWidth=1001)
    return ds, stored


def test_modality_lut_then_window_in_that_order() -> None:
    ds, stored = windowed_dataset("MONOCHROME2")
    # LINEAR window: (v - (C - 0.5)) / (W - 1) + 0.5 = v / 1000 - 0.5 on the rescaled v, clipped to [0, 1].
    # (Window first, then rescale, would give [0, 0.05, 0.3, 0.5].)
    np.testing.assert_allclose(display_pixels(ds, stored), [[0.0, 0.5, 1.0, 1.0]], atol=1e-6)


def test_monochrome1_is_inverted_after_the_window(tmp_path: Path) -> None:
    ds, _ = windowed_dataset("MONOCHROME1")
    image = read_dicom(save(ds, tmp_path / "m1.dcm"))
    np.testing.assert_allclose(image.pixels, [[1.0, 0.5, 0.0, 0.0]], atol=1e-6)


def test_voi_lut_sequence_is_scaled_by_its_own_range() -> None:
    # 4-entry 8-bit LUT starting at stored value 10: 9 -> first entry, 12 -> entry 2, 20 -> last entry.
    stored = np.array([[9, 10, 12, 20]], dtype=np.uint8)
    ds = make_dataset(stored)
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 10, 8])  # LUTDescriptor
    item.add_new(0x00283006, "US", [0, 50, 100, 200])  # LUTData
    ds.VOILUTSequence = [item]
    np.testing.assert_allclose(display_pixels(ds, stored), [[0.0, 0.0, 0.5, 1.0]], atol=1e-6)


def test_eight_bit_without_window_keeps_stored_values(tmp_path: Path) -> None:
    stored = np.random.default_rng(0).integers(30, 200, size=(16, 24), dtype=np.uint8)
    image = read_dicom(save(make_dataset(stored), tmp_path / "rsna_like.dcm"))
    assert np.array_equal(to_uint8(image.pixels), stored)  # not stretched to 0..255


def test_deep_image_without_window_uses_its_own_range() -> None:
    stored = np.array([[1000, 1500, 3000]], dtype=np.uint16)
    ds = make_dataset(stored, bits_stored=12)
    np.testing.assert_allclose(display_pixels(ds, stored), [[0.0, 0.25, 1.0]], atol=1e-6)


def test_to_uint8_rounds_and_clips() -> None:
    assert to_uint8(np.array([0.0, 0.25, 1.0, -0.2, 1.3])).tolist() == [0, 64, 255, 0, 255]


@pytest.mark.parametrize(
    "value, years",
    [("058Y", 58), ("58", 58), (" 7 ", 7), ("018M", 1), ("011M", 0), ("003W", 0), ("400D", 1), ("", None),
     (None, None), ("abc", None), ("58Q", None)],
)
def test_parse_age(value: str | None, years: int | None) -> None:
    assert parse_age(value) == years
