"""Images whose headers claim too much are refused from the header, before any large allocation."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest

from cxrdet.data.dicom import DEFAULT_MAX_IMAGE_BYTES, read_dicom, read_header
from cxrdet.data.prepare import PngError, read_png
from cxrdet.errors import ConfigError, DicomError


def claiming_dicom(path: Path, rows: int, columns: int, frames: int = 1, bits: int = 16) -> Path:
    """A small, valid DICOM file whose header declares `rows x columns x frames` pixels (16 bytes of pixel data)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = b"\0" * 16
    ds.save_as(path, enforce_file_format=True)
    return path


def claiming_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares `width x height` 8-bit grey pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_a_dicom_declaring_a_huge_image_is_refused_before_decoding(tmp_path: Path) -> None:
    path = claiming_dicom(tmp_path / "bomb.dcm", 60000, 60000)
    tracemalloc.start()
    with pytest.raises(DicomError) as err:
        read_dicom(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    text = str(err.value)
    assert str(path) in text and "60000 x 60000 pixels" in text and "7,200,000,000 bytes" in text
    assert f"over the limit of {DEFAULT_MAX_IMAGE_BYTES:,} bytes" in text and "refused before decoding" in text
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB while refusing"  # the 7.2 GB were never allocated
    with pytest.raises(DicomError, match="60000 x 60000 pixels"):
        read_header(path)  # the header alone says so


def test_frames_count_towards_the_limit_and_the_largest_radiographs_pass(tmp_path: Path) -> None:
    with pytest.raises(DicomError, match=r"2000 x 2000 pixels x 10 frame\(s\)"):
        read_header(claiming_dicom(tmp_path / "frames.dcm", 2000, 2000, frames=10))
    # 4,300 x 4,300 at 16 bits is within the limit: it fails later, for its 16 bytes of pixel data, not for its size.
    with pytest.raises(DicomError) as err:
        read_dicom(claiming_dicom(tmp_path / "big.dcm", 4300, 4300))
    assert "over the limit" not in str(err.value)
    assert read_header(tmp_path / "big.dcm").width == 4300


def test_the_limit_moves_with_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = claiming_dicom(tmp_path / "wide.dcm", 5000, 5000)
    with pytest.raises(DicomError, match="over the limit"):
        read_header(path)
    monkeypatch.setenv("CXRDET_MAX_IMAGE_BYTES", str(5000 * 5000 * 2))
    assert read_header(path).height == 5000
    monkeypatch.setenv("CXRDET_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(ConfigError, match="CXRDET_MAX_IMAGE_BYTES='lots': expected a positive integer"):
        read_header(path)


def test_a_png_declaring_too_much_is_refused_from_its_header(tmp_path: Path) -> None:
    path = claiming_png(tmp_path / "wide.png", 7000, 7000)  # 49 MB of 8-bit grey: over cxrdet's limit
    tracemalloc.start()
    with pytest.raises(PngError) as err:
        read_png(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "7000 x 7000 pixels" in str(err.value) and "refused before decoding" in str(err.value)
    assert peak < 20 * 2**20
    # Far larger still: Pillow's own decompression-bomb check (left on) refuses it while opening.
    with pytest.raises(PngError, match="cannot decode the PNG: Image size"):
        read_png(claiming_png(tmp_path / "huge.png", 20000, 20000))
