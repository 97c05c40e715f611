"""The Lightning data module of one fold: train on the other folds, validate and predict out-of-fold on this one.

It reads three things, all named by the config's `data` section: the prepare cache (`meta.parquet` and the cached
images), the labels table of the data root, and the fold file. Before any loader is built it checks that every
image of the fold file is in the cache and in the labels, and names the missing ids and the command to run.

The `data` section (a plain dict or an mmengine ConfigDict); every key may be left out:

    data = dict(root=None, competition=None, size=256, folds='demo_k5', cache=None, classes=('opacity',),
                batch_size=8, num_workers=2, pin_memory='auto', view='full', neg_ratio=None, positives_only=False,
                readers=None,
                augment=dict(hflip=0.5, affine=dict(degrees=3, translate=0.03, scale=(0.95, 1.05)),
                             brightness=0.1, contrast=0.1, gamma=(0.9, 1.1), clahe=False),
                crops=dict(size_frac=0.5, neg_per_image=1))

`root` None is `cxrdet.paths.data_root(competition)`; `competition` None is told by the root's layout
(`cxrdet.competitions.of_data`); `folds` is resolved by `cxrdet.paths.folds_file`; `cache` None is
`cxrdet.paths.cache_dir(root, size)`. `pin_memory` 'auto' pins batches when CUDA is present. `readers` makes one
ground truth of a multi-reader table (VinBigData; see `cxrdet.data.readers`: `fuse`, `all`, `each`, with `drop`):
training and validation boxes both come from it (validation fuses what `all` or `each` keeps, so that the held-out
fold is scored against the competition's kind of ground truth; `each` trains on one copy of an image per reader who
drew on it).
A curriculum stage passes its own `view` (for example `crops` first, then `full`). Batches are
`(images, targets, metas)` as described in `cxrdet.data.dataset`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from cxrdet import paths
from cxrdet.competitions import data_layout, of_data
from cxrdet.data.dataset import (
    VIEWS,
    CropSpec,
    DetectionDataset,
    ImageRecord,
    NegativeRatioSampler,
    build_records,
    collate_detection,
)
from cxrdet.data.folds import read_folds
from cxrdet.data.labels import Annotations, read_labels
from cxrdet.data.mosaic import EpochSampler, MosaicDataset, build_mixup, build_mosaic
from cxrdet.data.prepare import load_meta
from cxrdet.data.readers import drop_readers, reader_copies, resolve_readers, scored_readers
from cxrdet.data.transforms import build_augment, build_clahe
from cxrdet.errors import ConfigError, CxrdetError

DATA_DEFAULTS: dict[str, Any] = {
    "root": None,
    "competition": None,
    "size": 256,
    "folds": "demo_k5",
    "cache": None,
    "classes": ("opacity",),
    "batch_size": 8,
    "num_workers": 2,
    "pin_memory": "auto",
    "view": "full",
    "neg_ratio": None,
    "positives_only": False,
    "augment": {
        "hflip": 0.5,
        "affine": {"degrees": 3, "translate": 0.03, "scale": (0.95, 1.05)},
        "brightness": 0.1,
        "contrast": 0.1,
        "gamma": (0.9, 1.1),
        "clahe": False,
    },
    "crops": {"size_frac": 0.5, "neg_per_image": 1},
    "readers": None,
    "pseudo": None,
}
GT_COLUMNS: tuple[str, ...] = ("image_id", "x1", "y1", "x2", "y2", "label")
SPLITS: tuple[str, ...] = ("oof", "test")


class MissingImagesError(CxrdetError):
    """Images named by the fold file are absent from the prepare cache or the labels table.

    Args:
        source: The fold file.
        where: What lacks them (the cache's meta table or the labels table).
        missing: The missing image ids.
        fix: The command or step that fixes it.
    """

    def __init__(self, source: str | Path, where: str, missing: Sequence[str], fix: str, max_shown: int = 10) -> None:
        self.source = Path(source)
        self.missing = list(missing)
        shown = ", ".join(map(repr, self.missing[:max_shown]))
        more = f" and {len(self.missing) - max_shown} more" if len(self.missing) > max_shown else ""
        super().__init__(
            f"{self.source}: {len(self.missing)} image id(s) of the fold file are not in {where}: {shown}{more}. {fix}"
        )


class ContiguousCollate:
    """A collate function whose images come out contiguous (three real channels), so that the loader can pin them."""

    def __init__(self, collate: Callable[[Sequence[Any]], tuple[Any, ...]]) -> None:
        self.collate = collate

    def __call__(self, batch: Sequence[Any]) -> tuple[Any, ...]:
        images, *rest = self.collate(batch)
        return (images.contiguous(), *rest)


@dataclass(frozen=True)
class DataConfig:
    """The resolved `data` section of a config (see the module docstring for the keys)."""

    root: Path
    competition: str | None
    size: int
    folds: Path
    cache: Path
    classes: tuple[str, ...]
    batch_size: int
    num_workers: int
    pin_memory: bool
    view: str
    neg_ratio: float | None
    positives_only: bool
    augment: dict[str, Any] | None
    crops: CropSpec
    readers: dict[str, Any] | None
    pseudo: str | None = None

    @classmethod
    def from_dict(cls, data_cfg: Mapping[str, Any]) -> DataConfig:
        """Resolve a config's `data` section: fill defaults, resolve paths, check values.

        Raises:
            ConfigError: On an unknown key or a value of the wrong form.
        """
        unknown = sorted(set(data_cfg) - set(DATA_DEFAULTS))
        if unknown:
            raise ConfigError(f"data: unknown key(s) {', '.join(unknown)}: expected some of {', '.join(DATA_DEFAULTS)}")
        cfg = {**DATA_DEFAULTS, **dict(data_cfg)}
        root = Path(cfg["root"]) if cfg["root"] is not None else paths.data_root(cfg["competition"])
        size = int(cfg["size"])
        if size < 8:
            raise ConfigError(f"data.size={cfg['size']!r}: expected an input side of at least 8 pixels")
        if cfg["view"] not in VIEWS:
            raise ConfigError(f"data.view={cfg['view']!r}: expected one of {', '.join(VIEWS)}")
        if int(cfg["batch_size"]) < 1:
            raise ConfigError(f"data.batch_size={cfg['batch_size']!r}: expected an integer >= 1")
        if int(cfg["num_workers"]) < 0:
            raise ConfigError(f"data.num_workers={cfg['num_workers']!r}: expected an integer >= 0")
        pin = cfg["pin_memory"]
        if pin not in ("auto", True, False):
            raise ConfigError(f"data.pin_memory={pin!r}: expected 'auto' (when CUDA is present), True or False")
        neg_ratio = cfg["neg_ratio"]
        if neg_ratio is not None and float(neg_ratio) < 0:
            raise ConfigError(f"data.neg_ratio={neg_ratio!r}: expected a number >= 0 or None")
        crops = cfg["crops"] or {}
        if not isinstance(crops, Mapping) or set(crops) - {"size_frac", "neg_per_image"}:
            raise ConfigError(f"data.crops={crops!r}: expected a dict with size_frac and/or neg_per_image")
        augment = cfg["augment"]
        readers = resolve_readers(_plain(cfg["readers"])) if cfg["readers"] is not None else None
        return cls(
            root=root,
            competition=str(cfg["competition"]) if cfg["competition"] else None,
            size=size,
            folds=paths.folds_file(cfg["folds"]),
            cache=Path(cfg["cache"]) if cfg["cache"] is not None else paths.cache_dir(root, size),
            classes=tuple(cfg["classes"]),
            batch_size=int(cfg["batch_size"]),
            num_workers=int(cfg["num_workers"]),
            pin_memory=torch.cuda.is_available() if pin == "auto" else bool(pin),
            view=str(cfg["view"]),
            neg_ratio=float(neg_ratio) if neg_ratio is not None else None,
            positives_only=bool(cfg["positives_only"]),
            augment=_plain(augment) if augment else None,
            crops=CropSpec(
                size_frac=float(crops.get("size_frac", 0.5)), neg_per_image=int(crops.get("neg_per_image", 1))
            ),
            readers=readers,
            pseudo=_pseudo_name(cfg["pseudo"]),
        )


def _pseudo_name(value: Any) -> str | None:
    """`data.pseudo`: None, or the name of a `cxrdet pseudo-label` round (`outputs/pseudo/NAME`)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"data.pseudo={value!r}: expected None or the name of a pseudo-label round "
                          "(`cxrdet pseudo-label ENSEMBLE --out NAME`)")
    paths.component(value, "data.pseudo")
    return value


def read_pseudo_labels(name: str, classes: Sequence[str]) -> tuple[list[str], pd.DataFrame]:
    """A pseudo-label round's images (in table order) and boxes (`image_id, x1, y1, x2, y2, label`; rows without a
    box, the negatives, left out).

    Raises:
        CxrdetError: The round's table is missing or malformed (named with the row and value).
    """
    path = paths.pseudo_dir(name) / "labels.csv"
    if not path.is_file():
        raise CxrdetError(f"data.pseudo={name!r}: {path} not found; write it with `cxrdet pseudo-label ENSEMBLE "
                          f"--out {name}`")
    table = pd.read_csv(path, dtype={"image_id": str})
    missing = sorted({"image_id", *GT_COLUMNS} - set(table.columns))
    if missing:
        raise CxrdetError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(GT_COLUMNS)}, score, "
                          "image_prob")
    boxes = table.dropna(subset=["x1", "y1", "x2", "y2"])
    bad = boxes[~boxes["label"].isin(range(len(classes))) | (boxes["x2"] <= boxes["x1"]) | (boxes["y2"] <= boxes["y1"])]
    if len(bad):
        row = bad.iloc[0]
        raise CxrdetError(f"{path} row {int(bad.index[0]) + 2}: image {row['image_id']} has label {row['label']} and "
                          f"box {row[['x1', 'y1', 'x2', 'y2']].tolist()}; expected a label in 0..{len(classes) - 1} "
                          "and x1 < x2, y1 < y2")
    images = list(dict.fromkeys(table["image_id"].astype(str)))
    return images, boxes[list(GT_COLUMNS)].astype({"label": np.int64}).reset_index(drop=True)


def _plain(value: Any) -> Any:
    """A nested Mapping (e.g. an mmengine ConfigDict) as plain dicts."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def seed_worker(worker_id: int) -> None:
    """Seed numpy and `random` in a loader worker from its torch seed (itself drawn from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass(frozen=True)
class _Tables:
    meta: pd.DataFrame
    annotations: Annotations
    folds: pd.DataFrame
    train_boxes: pd.DataFrame
    eval_boxes: pd.DataFrame


class DetectionDataModule(pl.LightningDataModule):
    """Loaders of one cross-validation fold.

    Args:
        data_cfg: The config's `data` section.
        fold: The held-out fold: training reads the other folds, validation and out-of-fold prediction this one.
        view: Overrides `data_cfg['view']` for training (a curriculum stage's view); validation and prediction
            always read whole images.
        seed: Seed of the negative sampling, the shuffling and the loader workers.

    Attributes (read on first use; they load and check the tables):
        val_gt: Boxes of the validation images: `image_id, x1, y1, x2, y2, label`, xyxy in pixels of the original
            image.
        val_image_ids: The validation (out-of-fold) images, negatives included, in fold-file order.
        test_image_ids: Every test-split image of the cache, in meta order.
    """

    # Stacks dataset items into batches; a subclass serving other targets names its own.
    collate = staticmethod(collate_detection)

    def __init__(self, data_cfg: Mapping[str, Any], fold: int, view: str | None = None, seed: int = 0) -> None:
        super().__init__()
        self.cfg = DataConfig.from_dict(data_cfg)
        if view is not None and view not in VIEWS:
            raise ConfigError(f"view={view!r}: expected one of {', '.join(VIEWS)}")
        self.fold = int(fold)
        self.view = view or self.cfg.view
        self.seed = int(seed)
        self.augment = build_augment(self.cfg.augment)
        self.clahe = build_clahe(self.cfg.augment)
        self.mosaic = build_mosaic(self.cfg.augment)
        self.mixup = build_mixup(self.cfg.augment)

    # ---- tables ----

    def _prepare_hint(self) -> str:
        """The command that (re)builds this config's cache."""
        out = "" if self.cfg.cache == paths.cache_dir(self.cfg.root, self.cfg.size) else f" --out {self.cfg.cache}"
        return f"Run `cxrdet prepare --data {self.cfg.root} --size {self.cfg.size}{out}` to (re)build the cache."

    @cached_property
    def _tables(self) -> _Tables:
        """Read the fold file, the cache's meta table and the labels; check that they agree."""
        folds = read_folds(self.cfg.folds)
        if self.fold not in set(folds["fold"]):
            raise ConfigError(
                f"fold {self.fold} is not in {self.cfg.folds}: expected one of {sorted(set(folds['fold']))}"
            )
        if not self.cfg.cache.is_dir():
            raise CxrdetError(f"no prepare cache at {self.cfg.cache}. {self._prepare_hint()}")
        try:
            meta = load_meta(self.cfg.cache)
        except FileNotFoundError as err:
            hint = self._prepare_hint()
            raise CxrdetError(f"the prepare cache {self.cfg.cache} is incomplete ({err}). {hint}") from err
        labels_csv = data_layout(self.cfg.root).labels_csv
        annotations = read_labels(labels_csv)
        missing = folds.loc[~folds["image_id"].isin(set(annotations.images["image_id"])), "image_id"].tolist()
        if missing:
            raise MissingImagesError(
                self.cfg.folds, f"the labels table {labels_csv}", missing,
                "Was the fold file built from these labels? Rebuild it with `cxrdet folds` from this data root.",
            )  # fmt: skip
        self._check_classes(annotations, labels_csv)
        train_boxes, eval_boxes = self._ground_truth(annotations, labels_csv)
        return _Tables(meta=meta, annotations=annotations, folds=folds, train_boxes=train_boxes,
                       eval_boxes=eval_boxes)

    def _ground_truth(self, annotations: Annotations, labels_csv: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The training and the validation boxes: the competition's ground truth under `data.readers` (a table
        with one reader per image, RSNA's or NIH's, as it is)."""
        if "reader" not in annotations.boxes.columns:
            if self.cfg.readers is not None:
                raise ConfigError(f"data.readers is set but the labels {labels_csv} have no reader column: leave it "
                                  "unset")
            boxes = annotations.boxes[list(GT_COLUMNS)].reset_index(drop=True)
            return boxes, boxes
        competition = of_data({"root": self.cfg.root, "competition": self.cfg.competition})
        if self.cfg.readers is not None and self.cfg.readers["mode"] == "each":
            # One copy of the image per reader who drew on it (`copy` column), with that reader's boxes only.
            kept = drop_readers(annotations.boxes, self.cfg.readers["drop"])
            drew = {str(k): list(v) for k, v in kept.groupby("image_id", sort=False)["reader"].unique().items()}
            train = reader_copies(kept, drew)[["copy", *GT_COLUMNS]]
        else:
            train = competition.ground_truth(annotations, self.cfg.readers)
        return train, competition.ground_truth(annotations, scored_readers(self.cfg.readers))

    def _check_classes(self, annotations: Annotations, labels_csv: Path) -> None:
        """A detector predicts every box class of the labels: `data.classes` must name them all, in order."""
        if tuple(annotations.classes) != self.cfg.classes:
            raise ConfigError(
                f"data.classes={self.cfg.classes!r} but the labels {labels_csv} have classes "
                f"{tuple(annotations.classes)!r}: expected the same names in the same order"
            )

    @cached_property
    def train_image_ids(self) -> list[str]:
        """The training images (every fold but this one), in fold-file order."""
        folds = self._tables.folds
        return folds.loc[folds["fold"] != self.fold, "image_id"].tolist()

    @cached_property
    def val_image_ids(self) -> list[str]:
        """The validation (out-of-fold) images, negatives included, in fold-file order."""
        folds = self._tables.folds
        return folds.loc[folds["fold"] == self.fold, "image_id"].tolist()

    @cached_property
    def test_image_ids(self) -> list[str]:
        """Every test-split image of the cache, in meta order."""
        meta = self._tables.meta
        return meta.loc[meta["split"] == "test", "image_id"].tolist()

    @cached_property
    def val_gt(self) -> pd.DataFrame:
        """Boxes of the validation images: `image_id, x1, y1, x2, y2, label`; xyxy, pixels of the original image."""
        boxes = self._tables.eval_boxes
        gt = boxes.loc[boxes["image_id"].isin(set(self.val_image_ids)), list(GT_COLUMNS)]
        return gt.reset_index(drop=True)

    @cached_property
    def _train_cached(self) -> bool:
        """Check that the cache's train split holds every image of the fold file (training, validation and OOF
        prediction read them; test prediction alone does not, as an offline bundle caches the test images only)."""
        meta, folds = self._tables.meta, self._tables.folds
        train_ids = set(meta.loc[meta["split"] == "train", "image_id"])
        missing = folds.loc[~folds["image_id"].isin(train_ids), "image_id"].tolist()
        if missing:
            raise MissingImagesError(
                self.cfg.folds, f"the train split of the prepare cache {self.cfg.cache}", missing, self._prepare_hint()
            )
        return True

    def _records(self, image_ids: Sequence[str], split: str, copies: bool = False) -> list[ImageRecord]:
        """Records of cache split `split` (`train`: labelled, `test`: no boxes); `copies`: with
        `data.readers.mode='each'`, one record per reader who drew on an image (an image nobody drew on: one)."""
        if split == "train":
            self._train_cached  # noqa: B018 -- reading the property checks the cache
        meta = self._tables.meta
        meta = meta[meta["split"] == split]
        boxes = self._tables.train_boxes if split == "train" else None
        if boxes is None or "copy" not in boxes.columns:
            return build_records(meta, image_ids, boxes)
        if not copies:  # validation and prediction read each image once; their boxes are not used
            return build_records(meta, image_ids, None)
        wanted = boxes[boxes["image_id"].isin(set(image_ids))]
        copies_of = wanted.drop_duplicates("copy").groupby("image_id", sort=False)["copy"].apply(list).to_dict()
        pairs = [(c, i) for i in image_ids for c in copies_of.get(i, [i])]
        rows = meta.set_index("image_id").loc[[i for _, i in pairs]].reset_index()
        rows["image_id"] = [c for c, _ in pairs]
        records = build_records(rows, [c for c, _ in pairs], wanted.assign(image_id=wanted["copy"]))
        return [replace(r, image_id=i) for r, (_, i) in zip(records, pairs, strict=True)]

    def setup(self, stage: str | None = None) -> None:
        """Read and check the tables (idempotent; the loaders call it too); every stage but `predict` also checks
        that the cache holds the fold file's images (prediction checks what its split reads)."""
        self._tables  # noqa: B018 -- reading the property loads and checks the tables
        if stage != "predict":
            self._train_cached  # noqa: B018

    # ---- datasets ----

    @cached_property
    def pseudo_records(self) -> list[ImageRecord]:
        """The images of the `data.pseudo` round with its boxes (none without one): test-split images of the cache,
        never an image of the fold file, so no validation fold ever holds one.

        Raises:
            CxrdetError: An image of the round is labelled (in the fold file) or not in the cache's test split.
        """
        if self.cfg.pseudo is None:
            return []
        image_ids, boxes = read_pseudo_labels(self.cfg.pseudo, self.cfg.classes)
        labelled = sorted(set(image_ids) & set(self._tables.folds["image_id"]))
        where = paths.pseudo_dir(self.cfg.pseudo) / "labels.csv"
        if labelled:
            raise CxrdetError(f"{where}: {len(labelled)} image(s) are in the fold file {self.cfg.folds} (e.g. "
                              f"{labelled[:3]}): pseudo-labels are for unlabelled (test) images only, or a validation "
                              "fold would be scored on them")
        meta = self._tables.meta
        test_ids = set(meta.loc[meta["split"] == "test", "image_id"])
        missing = [i for i in image_ids if i not in test_ids]
        if missing:
            raise MissingImagesError(where, f"the test split of the prepare cache {self.cfg.cache}", missing,
                                     "Pseudo-label the test images of this data root's cache.")
        return build_records(meta, image_ids, boxes)

    def train_dataset(self) -> DetectionDataset | MosaicDataset:
        """Training items: folds other than `fold` plus the `data.pseudo` round's images, in the training view,
        augmented (composed by mosaic / mixup when the `augment` section asks, switched off for the trainer's last
        epochs as it says)."""
        records = self._records(self.train_image_ids, "train", copies=True) + self.pseudo_records
        dataset = DetectionDataset(
            self.cfg.cache,
            records,
            self.cfg.size,
            view=self.view,
            crops=self.cfg.crops,
            augment=self.augment,
            clahe=self.clahe,
        )
        if self.mosaic is None and self.mixup is None:
            return dataset
        trainer = self.trainer  # attached by Lightning; None when the data module is used alone
        epochs = trainer.max_epochs if trainer is not None else None
        return MosaicDataset(dataset, self.mosaic, self.mixup, epochs=epochs)

    def eval_dataset(self, split: str, hflip: bool = False) -> DetectionDataset:
        """Whole, unaugmented images of `oof` (this fold) or `test` (the cache's test split), optionally flipped."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if split == "oof":
            records = self._records(self.val_image_ids, "train")
        else:
            records = self._records(self.test_image_ids, "test")
        return DetectionDataset(self.cfg.cache, records, self.cfg.size, view="full", clahe=self.clahe, hflip=hflip)

    def train_sampler(self, dataset: DetectionDataset | MosaicDataset) -> NegativeRatioSampler:
        """All positives and, each epoch, the negatives that `positives_only` / `neg_ratio` keep, shuffled."""
        neg_ratio = 0.0 if self.cfg.positives_only else self.cfg.neg_ratio
        sampler = NegativeRatioSampler(dataset.positive, neg_ratio=neg_ratio, seed=self.seed, shuffle=True)
        if len(sampler) == 0:
            raise ConfigError(
                f"fold {self.fold} of {self.cfg.folds} leaves no training item (view={self.view!r}, "
                f"positives_only={self.cfg.positives_only}, neg_ratio={self.cfg.neg_ratio}): expected at least one"
            )
        return sampler

    # ---- loaders ----

    def _loader(self, dataset: DetectionDataset, sampler: Sampler[int] | None = None) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            # Batches are one greyscale channel expanded to three (a view), which cannot be pinned: pinned loaders
            # (CUDA, `data.pin_memory`) get the three channels made real first, so the copy to the GPU can overlap.
            collate_fn=ContiguousCollate(self.collate) if self.cfg.pin_memory else self.collate,
            pin_memory=self.cfg.pin_memory,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        sampler: Sampler = self.train_sampler(dataset)
        if isinstance(dataset, MosaicDataset):
            sampler = EpochSampler(sampler)  # the dataset reads the epoch from its keys (workers see no attribute)
        return self._loader(dataset, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("oof"))

    def predict_dataloader_for(self, split: str, hflip: bool = False) -> DataLoader:
        """Loader of whole unaugmented images of `oof` or `test`, in `val_image_ids` / `test_image_ids` order;
        `hflip=True` mirrors every image (test-time augmentation; metas say `hflip=True`)."""
        return self._loader(self.eval_dataset(split, hflip=hflip))
