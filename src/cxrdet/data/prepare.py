"""Decode every DICOM once into a cache of square 8-bit PNGs plus a metadata table (`cxrdet prepare`).

The cache layout is a contract with the training code (`cxrdet.paths.CacheLayout`):

- `images/train/<image_id>.png`, `images/test/<image_id>.png`: 8-bit greyscale, the display pixels of
  `cxrdet.data.dicom.read_dicom` resized to `size x size` (plain resize, no letterbox; area-averaging when shrinking).
- `meta.parquet`: one row per cached image, columns `META_COLUMNS`, sorted by split then image_id.
- `errors.csv`: `path,reason` of the files the last run could not use (header only when none).

Runs are incremental: a file is skipped when its PNG is newer than the DICOM, has the requested size, and its meta
row names the same source. Images whose DICOM is gone or no longer readable leave the cache (row and PNG). Files are
decoded in parallel processes; a bad file is recorded and never stops the others (unless `strict`). Every file is
written atomically.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from cxrdet import io, paths
from cxrdet.data.dicom import read_dicom, to_uint8
from cxrdet.errors import ConfigError, CxrdetError, DicomError
from cxrdet.progress import progress as progress_bar

SPLITS = ("train", "test")
META_COLUMNS = (
    "image_id", "split", "orig_width", "orig_height", "bits_stored", "photometric", "pixel_spacing_row",
    "pixel_spacing_col", "sex", "age", "view", "source", "cache",
)
_META_DTYPES = {
    **{c: "str" for c in ("image_id", "split", "photometric", "sex", "view", "source", "cache")},  # missing: NaN
    "orig_width": "int64", "orig_height": "int64", "bits_stored": "int64", "pixel_spacing_row": "float64",
    "pixel_spacing_col": "float64", "age": "Int64",
}


class CacheNotFoundError(CxrdetError, FileNotFoundError):
    """The prepare cache (or one of its files) is missing: run `cxrdet prepare` first."""


@dataclass
class PrepareReport:
    """What one prepare run did.

    Attributes:
        cache_root: The cache folder written.
        n_written: Images decoded and written this run.
        n_skipped: Images already up to date.
        errors: `(path, reason)` of each file that could not be used, in file order.
    """

    cache_root: Path
    n_written: int = 0
    n_skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Task:
    """One DICOM to cache (plain strings: it crosses the process boundary)."""

    split: str
    source: str
    png: str
    cache: str


@dataclass(frozen=True)
class _Failed:
    """Why one file could not be cached (a plain value: exceptions with extra init arguments do not unpickle)."""

    reason: str


def prepare_cache(
    data_root: str | Path,
    size: int,
    out: str | Path | None = None,
    workers: int | None = None,
    strict: bool = False,
    splits: Sequence[str] = SPLITS,
    progress: bool = True,
) -> PrepareReport:
    """Decode the DICOMs of a Kaggle-layout data root into the prepare cache (see the module docstring).

    Args:
        data_root: Folder holding `stage_2_train_images/` (required) and `stage_2_test_images/` (optional).
        size: Side of the square cached PNGs, in pixels.
        out: Cache folder; default `cxrdet.paths.cache_dir(data_root, size)`.
        workers: Decoding processes; default `os.cpu_count()`. 1 decodes in this process.
        strict: Stop at the first unusable file and raise its `DicomError` (the files done so far are kept).
        splits: Which splits to (re)build; rows of other splits already in the cache are kept.
        progress: Show a progress bar on stderr.

    Returns:
        Counts of written and skipped images and the per-file errors (also written to `errors.csv`).

    Raises:
        CxrdetError: The data root or its training image folder is missing.
        ConfigError: A split other than `train`/`test`, or a size below 1.
        DicomError: With `strict`, the first unusable file.
    """
    data_root = Path(data_root)
    if size < 1:
        raise ConfigError(f"size must be a positive number of pixels, got {size}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ConfigError(f"unknown split(s) {unknown}: expected some of {list(SPLITS)}")
    cache = paths.CacheLayout(Path(out) if out is not None else paths.cache_dir(data_root, size))
    report = PrepareReport(cache_root=cache.root)

    sources = _list_sources(data_root, splits)
    old_rows = _read_old_rows(cache)
    keep = {key: row for key, row in old_rows.items() if key[0] not in splits}  # splits not rebuilt this run
    tasks: list[_Task] = []
    for split, source in sources:
        image_id = source.stem
        png = cache.image(split, image_id)
        old = old_rows.get((split, image_id))
        if old is not None and _up_to_date(old, source, png, size):
            keep[(split, image_id)] = old
            report.n_skipped += 1
        else:
            tasks.append(_Task(split, str(source.resolve()), str(png), png.relative_to(cache.root).as_posix()))
    listed = {(split, source.stem) for split, source in sources}
    for (split, image_id), row in old_rows.items():
        if split in splits and (split, image_id) not in listed:
            (cache.root / row["cache"]).unlink(missing_ok=True)  # its DICOM is gone from the data root

    new_rows: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        # closing(): on a strict stop the pool is shut down (queued work cancelled) before the meta is written.
        with contextlib.closing(_run(tasks, size, workers, progress)) as outcomes:
            for task, outcome in outcomes:
                if isinstance(outcome, _Failed):
                    report.errors.append((task.source, outcome.reason))
                    Path(task.png).unlink(missing_ok=True)  # a stale PNG of an earlier, good version of the file
                    if strict:
                        raise DicomError(task.source, outcome.reason)
                else:
                    new_rows[(task.split, Path(task.source).stem)] = outcome
                    report.n_written += 1
    finally:
        # Whatever happened, record the work done: the next run then skips it.
        _write_meta(cache, {**keep, **new_rows})
        order = {t.source: i for i, t in enumerate(tasks)}
        report.errors.sort(key=lambda e: order.get(e[0], len(order)))
        io.write_csv(cache.errors, pd.DataFrame(report.errors, columns=["path", "reason"]))
    return report


def load_meta(cache_root: str | Path) -> pd.DataFrame:
    """Read a prepare cache's `meta.parquet` (columns `META_COLUMNS`, sorted by split then image_id).

    Raises:
        CacheNotFoundError: The table is missing (also a `FileNotFoundError`).
        CxrdetError: The table lacks some of the contract's columns.
    """
    path = paths.CacheLayout(Path(cache_root)).meta
    if not path.is_file():
        raise CacheNotFoundError(f"{path}: prepare cache meta table not found; run `cxrdet prepare --data DIR` first")
    meta = pd.read_parquet(path)
    missing = [c for c in META_COLUMNS if c not in meta.columns]
    if missing:
        raise CxrdetError(f"{path}: columns {missing} missing (expected {list(META_COLUMNS)}); rerun `cxrdet prepare`")
    return meta


def load_image(cache_root: str | Path, split: str, image_id: str) -> np.ndarray:
    """Read one cached image: uint8 array of shape (size, size), bright = dense.

    Raises:
        CacheNotFoundError: The PNG is missing (also a `FileNotFoundError`).
    """
    path = paths.CacheLayout(Path(cache_root)).image(split, image_id)
    if not path.is_file():
        raise CacheNotFoundError(f"{path}: cached image not found; run `cxrdet prepare --data DIR` first")
    with Image.open(path) as image:
        return np.array(image.convert("L") if image.mode != "L" else image)


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize display pixels (float in [0, 1]) to `size x size` uint8, without letterbox.

    Shrinking uses box (area-average) filtering, which anti-aliases exactly; enlarging uses Lanczos. Filtering happens
    on the float values, so the image is quantised to 8 bits once.
    """
    height, width = pixels.shape
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
    shrink = width >= size and height >= size
    resized = image.resize((size, size), Image.Resampling.BOX if shrink else Image.Resampling.LANCZOS)
    return to_uint8(np.asarray(resized))


def _list_sources(data_root: Path, splits: Sequence[str]) -> list[tuple[str, Path]]:
    """`(split, dicom path)` of every `*.dcm` file of the requested splits, sorted by split order then name."""
    if not data_root.is_dir():
        raise CxrdetError(f"{data_root}: data folder not found (expected the Kaggle layout: stage_2_train_images/...)")
    layout = paths.KaggleLayout(data_root)
    found: list[tuple[str, Path]] = []
    for split in splits:
        folder = layout.images_dir(split)
        if not folder.is_dir():
            if split == "train":
                raise CxrdetError(f"{folder}: training image folder not found (expected <data>/{folder.name}/*.dcm)")
            continue  # the test images are optional
        found += [(split, p) for p in sorted(folder.iterdir()) if p.suffix.lower() == ".dcm"]
    return found


def _read_old_rows(cache: paths.CacheLayout) -> dict[tuple[str, str], dict[str, Any]]:
    """Rows of an existing meta table keyed by (split, image_id); empty when there is none yet."""
    if not cache.meta.is_file():
        return {}
    meta = load_meta(cache.root)
    return {(row["split"], row["image_id"]): row for row in meta.to_dict("records")}


def _up_to_date(row: dict[str, Any], source: Path, png: Path, size: int) -> bool:
    """Whether a cached image can be kept: same source, PNG strictly newer than it, PNG of the requested size."""
    if row["source"] != str(source.resolve()) or not png.is_file():
        return False
    if png.stat().st_mtime_ns <= source.stat().st_mtime_ns:
        return False
    try:
        with Image.open(png) as image:  # reads the header only
            return image.size == (size, size)
    except OSError:
        return False


def _run(
    tasks: Sequence[_Task], size: int, workers: int | None, progress: bool
) -> Generator[tuple[_Task, dict[str, Any] | _Failed], None, None]:
    """Yield `(task, meta row or error)` as tasks finish, in this process or in a process pool."""
    n_workers = min(workers if workers is not None else os.cpu_count() or 1, len(tasks))
    with progress_bar(total=len(tasks), desc=f"prepare {size}px", unit="img", enabled=progress) as bar:
        if n_workers <= 1:
            for task in tasks:
                outcome = _cache_one(task, size)
                bar.update()
                yield task, outcome
            return
        with ProcessPoolExecutor(n_workers) as pool:
            pending: dict[Future[dict[str, Any] | _Failed], _Task] = {
                pool.submit(_cache_one, task, size): task for task in tasks
            }
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        task = pending.pop(future)
                        bar.update()
                        yield task, future.result()
            finally:
                # Reached early on a strict stop or an unexpected error: drop the queued work.
                for future in pending:
                    future.cancel()


def _cache_one(task: _Task, size: int) -> dict[str, Any] | _Failed:
    """Decode one DICOM, write its PNG atomically and return its meta row, or the reason it cannot be used."""
    try:
        image = read_dicom(task.source)
    except DicomError as err:
        return _Failed(err.reason)
    pixels = resize_square(image.pixels, size)
    try:
        with io.atomic_path(task.png) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
    except OSError as err:
        return _Failed(f"cannot write the cached PNG {task.png}: {err}")
    spacing = image.pixel_spacing or (None, None)
    return {
        "image_id": image.image_id, "split": task.split, "orig_width": image.width, "orig_height": image.height,
        "bits_stored": image.bits_stored, "photometric": image.photometric, "pixel_spacing_row": spacing[0],
        "pixel_spacing_col": spacing[1], "sex": image.sex, "age": image.age, "view": image.view,
        "source": task.source, "cache": task.cache,
    }


def _write_meta(cache: paths.CacheLayout, rows: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Write the meta table atomically: contract columns and dtypes, sorted by split then image_id."""
    meta = pd.DataFrame([rows[key] for key in sorted(rows)], columns=list(META_COLUMNS))
    meta = meta.astype(_META_DTYPES)
    io.write_parquet(cache.meta, meta)
