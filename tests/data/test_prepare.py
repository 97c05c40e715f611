"""The prepare cache: PNGs, meta table and error list from a tiny Kaggle-layout folder of DICOMs written here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from typer.testing import CliRunner

from cxrdet import paths
from cxrdet.cli import app
from cxrdet.data.prepare import (
    META_COLUMNS,
    CacheNotFoundError,
    PngError,
    load_image,
    load_meta,
    prepare_cache,
    resize_square,
)
from cxrdet.errors import CxrdetError, DicomError

SIZE = 32
RNG = np.random.default_rng(0)
SMALL_A = RNG.integers(0, 256, size=(32, 32), dtype=np.uint8)
SMALL_C = RNG.integers(0, 256, size=(32, 32), dtype=np.uint8)


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", **attrs: object) -> Path:
    """An uncompressed 8-bit single-frame greyscale DICOM file holding `stored`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.set_pixel_data(stored, photometric, 8)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """train: a (64x64, each 2x2 block constant), b (48 wide x 64 high, MONOCHROME1, all 200), a truncated copy
    of a, a text file named .dcm, a readme (ignored); test: c (32x32)."""
    layout = paths.KaggleLayout(tmp_path / "rsna")
    a = write_dicom(layout.dicom_path("train", "a"), np.kron(SMALL_A, np.ones((2, 2), np.uint8)), PatientSex="M",
                    PatientAge="045Y", ViewPosition="PA", PixelSpacing=[0.2, 0.25])
    write_dicom(layout.dicom_path("train", "b"), np.full((64, 48), 200, np.uint8), "MONOCHROME1")
    layout.dicom_path("train", "bad_truncated").write_bytes(a.read_bytes()[:2000])
    layout.dicom_path("train", "notdicom").write_text("patientId,x,y\n")
    (layout.train_images / "readme.txt").write_text("not an image\n")
    write_dicom(layout.dicom_path("test", "c"), SMALL_C, ViewPosition="AP")
    return layout.root


def png(cache_root: Path, split: str, image_id: str) -> Path:
    return paths.CacheLayout(cache_root).image(split, image_id)


def test_prepare_writes_pngs_meta_and_errors(data_root: Path) -> None:
    report = prepare_cache(data_root, SIZE, workers=1, progress=False)
    root = paths.cache_dir(data_root, SIZE)
    assert report.cache_root == root
    assert (report.n_written, report.n_skipped) == (3, 0)

    # 2x2-constant blocks shrink to exactly their value; 32x32 is kept; MONOCHROME1 200 becomes 255 - 200 = 55.
    assert np.array_equal(load_image(root, "train", "a"), SMALL_A)
    assert np.array_equal(load_image(root, "test", "c"), SMALL_C)
    b = load_image(root, "train", "b")
    assert b.shape == (SIZE, SIZE) and b.dtype == np.uint8 and (b == 55).all()
    with Image.open(png(root, "train", "a")) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (SIZE, SIZE))

    meta = load_meta(root)
    assert list(meta.columns) == list(META_COLUMNS)
    assert list(zip(meta["split"], meta["image_id"], strict=True)) == [("test", "c"), ("train", "a"), ("train", "b")]
    a = meta.set_index("image_id").loc["a"]
    assert (a["orig_width"], a["orig_height"], a["bits_stored"], a["photometric"]) == (64, 64, 8, "MONOCHROME2")
    assert (a["pixel_spacing_row"], a["pixel_spacing_col"], a["sex"], a["age"], a["view"]) == (0.2, 0.25, "M", 45, "PA")
    assert a["source"] == str((data_root / "stage_2_train_images" / "a.dcm").resolve())
    assert a["cache"] == "images/train/a.png"
    b_row = meta.set_index("image_id").loc["b"]
    assert (b_row["orig_width"], b_row["orig_height"], b_row["photometric"]) == (48, 64, "MONOCHROME1")
    assert pd.isna(b_row["sex"]) and pd.isna(b_row["age"]) and pd.isna(b_row["pixel_spacing_row"])

    failed = {Path(p).name: reason for p, reason in report.errors}
    assert sorted(failed) == ["bad_truncated.dcm", "notdicom.dcm"]
    assert "truncated" in failed["bad_truncated.dcm"]
    assert "not a DICOM file" in failed["notdicom.dcm"]
    errors = pd.read_csv(paths.CacheLayout(root).errors)
    assert list(errors.columns) == ["path", "reason"]
    assert list(zip(errors["path"], errors["reason"], strict=True)) == report.errors


def test_second_run_skips_up_to_date_files(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepare_cache(data_root, SIZE, out=out, workers=1, progress=False)
    before = png(out, "train", "a").stat().st_mtime_ns
    again = prepare_cache(data_root, SIZE, out=out, workers=1, progress=False)
    assert (again.n_written, again.n_skipped, len(again.errors)) == (0, 3, 2)  # bad files are retried and reported
    assert png(out, "train", "a").stat().st_mtime_ns == before
    assert len(load_meta(out)) == 3


def test_modified_source_is_rewritten(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepare_cache(data_root, SIZE, out=out, workers=1, progress=False)
    source = write_dicom(data_root / "stage_2_train_images" / "a.dcm", np.full((64, 64), 7, np.uint8))
    later = png(out, "train", "a").stat().st_mtime + 10
    os.utime(source, (later, later))
    report = prepare_cache(data_root, SIZE, out=out, workers=1, progress=False)
    assert (report.n_written, report.n_skipped) == (1, 2)
    assert (load_image(out, "train", "a") == 7).all()
    assert pd.isna(load_meta(out).set_index("image_id").loc["a", "view"])


def test_other_size_in_the_same_folder_rewrites_everything(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepare_cache(data_root, SIZE, out=out, workers=1, progress=False)
    report = prepare_cache(data_root, 16, out=out, workers=1, progress=False)
    assert (report.n_written, report.n_skipped) == (3, 0)
    assert load_image(out, "train", "a").shape == (16, 16)


def test_file_gone_bad_or_removed_leaves_the_cache(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepare_cache(data_root, SIZE, out=out, workers=1, progress=False)
    (data_root / "stage_2_train_images" / "a.dcm").write_text("overwritten\n")
    (data_root / "stage_2_train_images" / "b.dcm").unlink()
    report = prepare_cache(data_root, SIZE, out=out, workers=1, progress=False)
    assert "a.dcm" in {Path(p).name for p, _ in report.errors}
    assert load_meta(out)["image_id"].tolist() == ["c"]
    assert not png(out, "train", "a").exists()  # no stale image of the earlier, good file
    assert not png(out, "train", "b").exists()


def test_strict_stops_at_the_first_error_and_keeps_earlier_work(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    with pytest.raises(DicomError) as info:
        prepare_cache(data_root, SIZE, out=out, workers=1, strict=True, progress=False)
    assert info.value.path.name == "bad_truncated.dcm"  # files go in name order: a, b, bad_truncated, ...
    assert load_meta(out)["image_id"].tolist() == ["a", "b"]
    assert pd.read_csv(paths.CacheLayout(out).errors)["path"].map(lambda p: Path(p).name).tolist() == [
        "bad_truncated.dcm"
    ]


def test_parallel_run_gives_the_same_cache(data_root: Path, tmp_path: Path) -> None:
    serial = prepare_cache(data_root, SIZE, out=tmp_path / "serial", workers=1, progress=False)
    parallel = prepare_cache(data_root, SIZE, out=tmp_path / "parallel", workers=2, progress=False)
    assert parallel.errors == serial.errors  # reported in file order whatever the completion order
    pd.testing.assert_frame_equal(load_meta(tmp_path / "parallel"), load_meta(tmp_path / "serial"))
    for split, image_id in (("train", "a"), ("train", "b"), ("test", "c")):
        assert png(tmp_path / "parallel", split, image_id).read_bytes() == png(tmp_path / "serial", split,
                                                                               image_id).read_bytes()


def test_splits_argument_keeps_rows_of_other_splits(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepare_cache(data_root, SIZE, out=out, workers=1, progress=False)
    report = prepare_cache(data_root, SIZE, out=out, workers=1, splits=("test",), progress=False)
    assert (report.n_written, report.n_skipped, report.errors) == (0, 1, [])
    assert load_meta(out)["image_id"].tolist() == ["c", "a", "b"]


def test_missing_folders(data_root: Path, tmp_path: Path) -> None:
    for dicom in (data_root / "stage_2_test_images").iterdir():
        dicom.unlink()
    (data_root / "stage_2_test_images").rmdir()
    report = prepare_cache(data_root, SIZE, out=tmp_path / "cache", workers=1, progress=False)
    assert report.n_written == 2  # no test folder is fine
    with pytest.raises(CxrdetError, match="stage_2_train_images"):
        prepare_cache(tmp_path / "cache", SIZE, workers=1, progress=False)  # a folder without the Kaggle layout
    with pytest.raises(CxrdetError, match="data folder not found"):
        prepare_cache(tmp_path / "absent", SIZE, workers=1, progress=False)


def test_load_from_a_missing_cache_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(CacheNotFoundError, match="cxrdet prepare"):
        load_meta(tmp_path)
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError, for callers that catch that
        load_image(tmp_path, "train", "a")


def test_resize_square_shrinks_by_area_and_enlarges_smoothly() -> None:
    pixels = np.array([[0.0, 1.0, 0.5, 0.5], [1.0, 0.0, 0.5, 0.5]] * 2, np.float32)
    assert resize_square(pixels, 2).tolist() == [[128, 128], [128, 128]]  # each 2x2 block averages to 0.5
    assert (resize_square(np.full((8, 8), 0.2, np.float32), 32) == 51).all()  # constant stays constant


def test_cli_prepare(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    args = ["prepare", "--data", str(data_root), "--size", str(SIZE), "--out", str(out), "--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"cache: {out}" in result.output
    assert "written 3, skipped 0 (up to date), failed 2" in result.output
    assert "bad_truncated.dcm: truncated" in result.output and "notdicom.dcm: not a DICOM file" in result.output
    assert load_image(out, "train", "a").shape == (SIZE, SIZE)

    strict = CliRunner().invoke(app, [*args, "--strict"])
    assert strict.exit_code == 1
    assert "bad_truncated.dcm" in strict.output and "Traceback" not in strict.output


# ---- NIH layout: PNGs, lists and the label table ----

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")  # fmt: skip
NIH_ROWS = (
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2500,2048,0.168,0.168",
    "00000001_001.png,No Finding,1,1,58,M,AP,2992,2991,0.143,0.143",
    "00000002_000.png,Effusion|Mass,0,2,30,F,PA,2048,2500,0.171,0.171",
    "00000003_000.png,No Finding,0,3,40,F,PA,2500,2048,0.168,0.168",
    "00000004_000.png,Nodule,0,4,50,M,PA,2500,2048,0.168,0.168",
)
RAMP = (1000 + 40 * np.arange(32))[None, :].repeat(32, axis=0).astype(np.uint16)  # 16-bit, 1000..2240 by column


@pytest.fixture
def nih_root(tmp_path: Path) -> Path:
    """train: 1_000 (8-bit, 64 px, 2x2 blocks), 1_001 (16-bit ramp), 3_000 (truncated PNG), 5_000 (no table row);
    test: 2_000 (RGBA, grey in RGB); 4_000 is in the table but in neither list."""
    layout = paths.NihLayout(tmp_path / "nih")
    layout.images_dir.mkdir(parents=True)
    layout.labels_csv.write_text("\n".join((NIH_HEADER, *NIH_ROWS)) + "\n")
    Image.fromarray(np.kron(SMALL_A, np.ones((2, 2), np.uint8))).save(layout.image_path("00000001_000"))
    Image.fromarray(RAMP).save(layout.image_path("00000001_001"))
    alpha = RNG.integers(0, 256, size=(32, 32), dtype=np.uint8)
    Image.fromarray(np.dstack([SMALL_C, SMALL_C, SMALL_C, alpha]), mode="RGBA").save(layout.image_path("00000002_000"))
    layout.image_path("00000003_000").write_bytes(layout.image_path("00000001_000").read_bytes()[:200])
    for image_id in ("00000004_000", "00000005_000"):
        Image.fromarray(SMALL_C).save(layout.image_path(image_id))
    layout.train_val_list.write_text("00000001_000.png\n00000001_001.png\n00000003_000.png\n00000005_000.png\n")
    layout.test_list.write_text("00000002_000.png\n")
    return layout.root


def test_prepare_nih_root(nih_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    report = prepare_cache(nih_root, SIZE, out=out, workers=1, progress=False)
    assert (report.n_written, report.n_skipped) == (3, 0)
    assert np.array_equal(load_image(out, "train", "00000001_000"), SMALL_A)  # 2x2 blocks shrink to their value
    ramp = np.round(np.arange(32) * 255 / 31)[None, :].repeat(32, axis=0)  # 16-bit: scaled from its own min..max
    assert np.array_equal(load_image(out, "train", "00000001_001"), ramp)
    assert np.array_equal(load_image(out, "test", "00000002_000"), SMALL_C)  # RGBA: grey from RGB, alpha dropped

    meta = load_meta(out).set_index("image_id")
    assert list(meta.index) == ["00000002_000", "00000001_000", "00000001_001"]  # split, then id
    a, b, c = meta.loc["00000001_000"], meta.loc["00000001_001"], meta.loc["00000002_000"]
    assert (a["split"], a["orig_width"], a["orig_height"], a["bits_stored"], a["photometric"]) == (
        "train", 64, 64, 8, "MONOCHROME2")  # fmt: skip
    assert (a["sex"], a["age"], a["view"], b["view"], b["age"], c["sex"]) == ("M", 57, "PA", "AP", 58, "F")
    assert (b["bits_stored"], b["photometric"], c["bits_stored"], c["photometric"]) == (16, "MONOCHROME2", 8, "RGBA")
    # The film's spacing times the film's size over the PNG's: 0.168 mm x 2048 rows / 64 rows, 0.168 x 2500 / 64.
    assert (a["pixel_spacing_row"], a["pixel_spacing_col"]) == pytest.approx((5.376, 6.5625))
    assert a["source"] == str((nih_root / "images" / "00000001_000.png").resolve())
    assert a["cache"] == "images/train/00000001_000.png"

    failed = {Path(p).stem: reason for p, reason in report.errors}
    assert sorted(failed) == ["00000003_000", "00000004_000", "00000005_000"]
    assert failed["00000003_000"].startswith("cannot decode the PNG")
    assert failed["00000004_000"] == "listed in neither of train_val_list.txt, test_list.txt: expected in exactly one"
    assert failed["00000005_000"] == "no row in Data_Entry_2017_v2020.csv (Image Index 00000005_000.png)"
    assert pd.read_csv(paths.CacheLayout(out).errors)["path"].map(lambda p: Path(p).stem).tolist() == [
        "00000003_000", "00000004_000", "00000005_000"]  # fmt: skip


def test_prepare_nih_is_incremental_and_refreshes_table_fields(nih_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepare_cache(nih_root, SIZE, out=out, workers=1, progress=False)
    table = paths.NihLayout(nih_root).labels_csv
    table.write_text(table.read_text().replace(",57,M,PA,", ",59,M,PA,"))  # the table is fixed, not the image
    again = prepare_cache(nih_root, SIZE, out=out, workers=2, progress=False)
    assert (again.n_written, again.n_skipped, len(again.errors)) == (0, 3, 3)
    assert load_meta(out).set_index("image_id").loc["00000001_000", "age"] == 59


def test_prepare_nih_strict_and_missing_list(nih_root: Path, tmp_path: Path) -> None:
    with pytest.raises(PngError, match="00000004_000.png: listed in neither"):
        prepare_cache(nih_root, SIZE, out=tmp_path / "strict", workers=1, strict=True, progress=False)
    paths.NihLayout(nih_root).train_val_list.unlink()
    with pytest.raises(CxrdetError, match="train_val_list.txt: NIH training list not found"):
        prepare_cache(nih_root, SIZE, out=tmp_path / "cache", workers=1, progress=False)


def test_prepare_nih_finds_the_download_folders(nih_root: Path, tmp_path: Path) -> None:
    layout = paths.NihLayout(nih_root)
    nested = nih_root / "images_001" / "images"
    nested.mkdir(parents=True)
    layout.image_path("00000001_000").rename(nested / "00000001_000.png")
    prepare_cache(nih_root, SIZE, out=tmp_path / "cache", workers=1, progress=False)
    meta = load_meta(tmp_path / "cache").set_index("image_id")
    assert meta.loc["00000001_000", "source"] == str((nested / "00000001_000.png").resolve())


def test_cli_prepare_nih(nih_root: Path, tmp_path: Path) -> None:
    args = ["prepare", "--data", str(nih_root), "--size", str(SIZE), "--out", str(tmp_path / "c"), "--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "written 3, skipped 0 (up to date), failed 3" in result.output
