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

An NIH ChestX-ray14 root (`cxrdet.paths.NihLayout`: `Data_Entry_2017*.csv`, `images/*.png`, `train_val_list.txt`,
`test_list.txt`) gives the same cache from its PNGs: 8-bit greyscale as stored, 16-bit greyscale scaled from its own
min..max, colour (RGB, RGBA, palette) converted to grey. The train split is `train_val_list.txt`, the test split
`test_list.txt`; sex, age and view come from the table, and the pixel spacing is the table's original spacing scaled
to the PNG (NIH shrank every film to 1024 x 1024). A PNG in neither list or without a table row is recorded as an
error. The cache's image ids are the file names without `.png`, as the label reader's.
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
from cxrdet.data.dicom import check_declared_size, read_dicom, to_uint8
from cxrdet.errors import ConfigError, CxrdetError, DicomError
from cxrdet.progress import progress as progress_bar

SPLITS = ("train", "test")
META_COLUMNS = (
    "image_id", "split", "orig_width", "orig_height", "bits_stored", "photometric", "pixel_spacing_row",
    "pixel_spacing_col", "sex", "age", "view", "patient", "source", "cache",
)
# Columns added after the first caches were written: an older meta table without them reads as all missing.
OPTIONAL_META_COLUMNS = ("patient",)
_META_DTYPES = {
    **{c: "str" for c in ("image_id", "split", "photometric", "sex", "view", "patient", "source", "cache")},  # NaN
    "orig_width": "int64", "orig_height": "int64", "bits_stored": "int64", "pixel_spacing_row": "float64",
    "pixel_spacing_col": "float64", "age": "Int64",
}


class CacheNotFoundError(CxrdetError, FileNotFoundError):
    """The prepare cache (or one of its files) is missing: run `cxrdet prepare` first."""


class PngError(CxrdetError):
    """A PNG file of an NIH-layout root cannot be used: unreadable, truncated, not an image."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


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
    """One DICOM (or NIH PNG, `kind="png"`) to cache (plain strings: it crosses the process boundary)."""

    split: str
    source: str
    png: str
    cache: str
    kind: str = "dicom"


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
    """Decode the DICOMs of a Kaggle-layout data root (or the PNGs of an NIH root) into the prepare cache (see the
    module docstring).

    Args:
        data_root: Folder holding `stage_2_train_images/` (required) and `stage_2_test_images/` (optional); or an
            NIH root: `Data_Entry_2017*.csv`, `images/*.png`, `train_val_list.txt` (required), `test_list.txt`.
        size: Side of the square cached PNGs, in pixels.
        out: Cache folder; default `cxrdet.paths.cache_dir(data_root, size)`.
        workers: Decoding processes; default `os.cpu_count()`. 1 decodes in this process.
        strict: Stop at the first unusable file and raise its `DicomError` (`PngError` for an NIH root; the files
            done so far are kept).
        splits: Which splits to (re)build; rows of other splits already in the cache are kept.
        progress: Show a progress bar on stderr.

    Returns:
        Counts of written and skipped images and the per-file errors (also written to `errors.csv`).

    Raises:
        CxrdetError: The data root or its training image folder (NIH: its `train_val_list.txt`) is missing.
        ConfigError: A split other than `train`/`test`, or a size below 1.
        DicomError: With `strict`, the first unusable file (`PngError` for an NIH root).
        TableError: An NIH root's label table is invalid.
    """
    data_root = Path(data_root)
    if size < 1:
        raise ConfigError(f"size must be a positive number of pixels, got {size}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ConfigError(f"unknown split(s) {unknown}: expected some of {list(SPLITS)}")
    cache = paths.CacheLayout(Path(out) if out is not None else paths.cache_dir(data_root, size))
    report = PrepareReport(cache_root=cache.root)

    nih = paths.NihLayout(data_root) if data_root.is_dir() and any(data_root.glob(paths.NIH_LABELS_GLOB)) else None
    table: dict[str, dict[str, Any]] = {}
    if nih is None:
        sources = _list_sources(data_root, splits)
    else:
        table = _nih_table(nih)
        sources, unusable = _list_nih_sources(nih, splits, table)
        report.errors += unusable
        if strict and unusable:
            raise PngError(*unusable[0])
    kind = "dicom" if nih is None else "png"
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
            tasks.append(_Task(split, str(source.resolve()), str(png), png.relative_to(cache.root).as_posix(), kind))
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
                        raise (PngError if task.kind == "png" else DicomError)(task.source, outcome.reason)
                else:
                    new_rows[(task.split, Path(task.source).stem)] = outcome
                    report.n_written += 1
    finally:
        # Whatever happened, record the work done: the next run then skips it.
        rows = {**keep, **new_rows}
        if nih is not None:  # the table's fields, refreshed for skipped images too (the table may have been fixed)
            rows = {key: _with_table_fields(row, table.get(key[1])) for key, row in rows.items()}
        _write_meta(cache, rows)
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
    for col in OPTIONAL_META_COLUMNS:
        if col not in meta.columns:
            meta[col] = pd.Series(pd.NA, index=meta.index, dtype="string")
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
    """`(split, dicom path)` of every image file of the requested splits (the competition's files: RSNA `*.dcm`,
    VinBigData `*.dicom`, SIIM `<study>/<series>/*.dcm`), sorted by split order then path."""
    from cxrdet.competitions import COMPETITIONS, with_labels

    if not data_root.is_dir():
        raise CxrdetError(f"{data_root}: data folder not found (expected the Kaggle layout: stage_2_train_images/...)")
    known = [c for _, c in COMPETITIONS.items()]
    # The competition whose label table is there, else the one whose training image folder is (images first).
    found = (with_labels(data_root)
             or [c for c in known if Path(c.layout(data_root).images_dir("train")).is_dir()] or known[:1])
    if len(found) > 1:
        raise CxrdetError(f"{data_root}: holds the files of several competitions ({', '.join(c.name for c in found)}): "
                          "expected one data set per folder")
    competition = found[0]
    layout = competition.layout(data_root)
    suffix = competition.image_suffix
    found: list[tuple[str, Path]] = []
    for split in splits:
        folder = Path(layout.images_dir(split))
        if not folder.is_dir():
            if split == "train":
                raise CxrdetError(f"{folder}: training image folder not found (expected <data>/{folder.name}/"
                                  f"*{suffix})")
            continue  # the test images are optional
        found += [(split, p) for p in competition.image_files(folder)]
    return found


def _nih_table(layout: paths.NihLayout) -> dict[str, dict[str, Any]]:
    """Per image id of an NIH root's table: `sex, age, view` and the original film's size and pixel spacing."""
    from cxrdet.data.labels import read_nih_labels

    images = read_nih_labels(layout.labels_csv).images
    fields = [c for c in ("sex", "age", "view", "width", "height", "spacing_x", "spacing_y") if c in images.columns]
    return {row["image_id"]: row for row in images[["image_id", *fields]].to_dict("records")}


def _list_nih_sources(layout: paths.NihLayout, splits: Sequence[str], table: dict[str, dict[str, Any]]
                      ) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:  # fmt: skip
    """`(split, png path)` of the usable PNGs of the requested splits (sorted by split order then path), and
    `(path, reason)` of the PNGs that cannot be used: in neither list, in both, or without a table row."""
    if not layout.train_val_list.is_file():
        raise CxrdetError(f"{layout.train_val_list}: NIH training list not found (expected one PNG file name per line, "
                          f"as in the NIH download; {layout.test_list.name} is optional)")  # fmt: skip
    listed: dict[str, set[str]] = {}
    for split, path in (("train", layout.train_val_list), ("test", layout.test_list)):
        if path.is_file():
            names = path.read_text(encoding="utf-8").split()
            listed[split] = {Path(name).stem for name in names}
    found: dict[str, list[Path]] = {split: [] for split in SPLITS}
    unusable: list[tuple[str, str]] = []
    lists = f"{layout.train_val_list.name}, {layout.test_list.name}"
    for path in layout.image_files():
        image_id = path.stem
        in_splits = [split for split in SPLITS if image_id in listed.get(split, set())]
        if len(in_splits) != 1:
            where = "neither" if not in_splits else "both"
            unusable.append((str(path.resolve()), f"listed in {where} of {lists}: expected in exactly one"))
        elif image_id not in table:
            unusable.append((str(path.resolve()), f"no row in {layout.labels_csv.name} (Image Index {path.name})"))
        elif in_splits[0] in splits:
            found[in_splits[0]].append(path)
    return [(split, path) for split in splits for path in found[split]], unusable


def _with_table_fields(row: dict[str, Any], fields: dict[str, Any] | None) -> dict[str, Any]:
    """A meta row with an NIH image's sex, age, view and pixel spacing taken from its table row.

    The table's spacing is the original film's; the PNG's pixels are larger by the ratio of the film's size to the
    PNG's (NIH shrank each film to 1024 x 1024 without keeping its aspect).
    """
    if fields is None:
        return row
    out = {**row, "sex": fields.get("sex"), "age": fields.get("age"), "view": fields.get("view")}
    for col, spacing, film, png in (("pixel_spacing_row", "spacing_y", "height", "orig_height"),
                                    ("pixel_spacing_col", "spacing_x", "width", "orig_width")):  # fmt: skip
        value = fields.get(spacing), fields.get(film)
        known = all(v is not None and not pd.isna(v) for v in value)
        out[col] = float(value[0]) * float(value[1]) / float(row[png]) if known else None
    for col in ("sex", "view"):
        if out[col] is not None and pd.isna(out[col]):
            out[col] = None
    return out


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
    if task.kind == "png":
        return _cache_png(task, size)
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
        "patient": image.patient, "source": task.source, "cache": task.cache,
    }


def _write_meta(cache: paths.CacheLayout, rows: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Write the meta table atomically: contract columns and dtypes, sorted by split then image_id."""
    meta = pd.DataFrame([rows[key] for key in sorted(rows)], columns=list(META_COLUMNS))
    meta = meta.astype(_META_DTYPES)
    io.write_parquet(cache.meta, meta)


# PIL modes of greyscale PNGs deeper than 8 bits.
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I")


def read_png(path: str | Path) -> tuple[np.ndarray, int, str]:
    """Read one PNG as display pixels.

    Returns:
        float32 pixels in [0, 1] (bright = dense), the bits per sample (8 or 16) and the PIL mode it was stored in.
        8-bit grey keeps its values (`to_uint8` gives the stored bytes back); 16-bit grey is scaled from the image's
        own min..max; colour and palette images (some NIH PNGs are RGBA) are converted to grey.

    Raises:
        PngError: The file is missing, not an image, or truncated.
    """
    try:
        with Image.open(path) as image:  # reads the header only; Pillow's own bomb check stays on
            bits = 16 if image.mode in _DEEP_MODES else 8
            try:
                check_declared_size(Path(path), image.width, image.height, 1, len(image.getbands()), bits)
            except DicomError as err:
                raise PngError(path, err.reason) from err
            image.load()
            mode = image.mode
            if mode in _DEEP_MODES:
                values = np.asarray(image, dtype=np.float32)
                lo, hi = float(values.min()), float(values.max())
                pixels = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
                return pixels.astype(np.float32), 16, mode
            grey = image if mode == "L" else image.convert("L")
            return np.asarray(grey, dtype=np.float32) / np.float32(255.0), 8, mode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise PngError(path, f"cannot decode the PNG: {err}") from err


def _cache_png(task: _Task, size: int) -> dict[str, Any] | _Failed:
    """Decode one NIH PNG, write its cached PNG and return its meta row (header fields come from the table later)."""
    try:
        pixels, bits, mode = read_png(task.source)
    except PngError as err:
        return _Failed(err.reason)
    resized = resize_square(pixels, size)
    try:
        with io.atomic_path(task.png) as tmp:
            Image.fromarray(resized).save(tmp, format="PNG")
    except OSError as err:
        return _Failed(f"cannot write the cached PNG {task.png}: {err}")
    height, width = pixels.shape
    return {
        "image_id": Path(task.source).stem, "split": task.split, "orig_width": width, "orig_height": height,
        "bits_stored": bits, "photometric": "MONOCHROME2" if mode == "L" or mode in _DEEP_MODES else mode,
        "pixel_spacing_row": None, "pixel_spacing_col": None, "sex": None, "age": None, "view": None,
        "patient": None, "source": task.source, "cache": task.cache,
    }
