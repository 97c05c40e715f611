"""Image-level labels for classifiers, on the detectors' data pipeline: same cache, folds, views, sampler, augment.

`ClassificationDataModule` is a `DetectionDataModule` whose batches are `(images, targets, metas)` with

- `images`: float32 `[B, 3, S, S]` in [0, 1] (three views of one grey channel, as for the detectors);
- `targets`: float32 `[B, K]` 0/1, one column per class of `data.classes`;
- `metas`: one dict per item (`image_id`, `orig_width`, `orig_height`, `hflip`, `crop`).

`data.classes` names some of the labels' classes, in any order. A class that is also a per-image column of the
labels (the NIH findings: `Annotations.images[class]`) is read from it; any other (RSNA's `opacity`) means "the image
has >= 1 box of that class": the rule of `truth_table`.

In the `crops` view (a curriculum's first stage) an item's label is read from the boxes in the crop: a crop around a
box is positive for that box's class (and for any other box it holds), a random crop of a negative image is
negative. That needs box classes: per-image findings say nothing about a crop, so the crops view refuses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrdet.data.datamodule import DetectionDataModule
from cxrdet.data.dataset import DetectionDataset, Meta, collate_detection
from cxrdet.data.labels import Annotations
from cxrdet.errors import ConfigError, CxrdetError

ClassItem = tuple[torch.Tensor, torch.Tensor, Meta]


def truth_table(images: pd.DataFrame, boxes: pd.DataFrame, label_classes: Sequence[str], classes: Sequence[str]
                ) -> pd.DataFrame:
    """Per-image 0/1 truth of `classes` from a label table (`cxrdet.data.labels.Annotations`).

    Args:
        images: `Annotations.images` (one row per image, negatives included).
        boxes: `Annotations.boxes` (`image_id, label`, label indexing `label_classes`).
        label_classes: `Annotations.classes`.
        classes: The classifier's classes.

    Returns:
        `image_id`-indexed int64 table with one column per class: the images table's column of that name when it
        has one (multi-label tables such as NIH), else 1 when the image has >= 1 box of that class.

    Raises:
        CxrdetError: A class is neither an image column nor a box class of the table.
    """
    ids = pd.Index(images["image_id"].astype(str), name="image_id")
    out = pd.DataFrame(index=ids)
    box_ids = boxes["image_id"].astype(str).to_numpy()
    for name in classes:
        if name in images.columns:
            out[name] = images[name].fillna(0).to_numpy(dtype=np.int64)
        elif name in label_classes:
            with_box = set(box_ids[boxes["label"].to_numpy() == list(label_classes).index(name)])
            out[name] = ids.isin(list(with_box)).astype(np.int64)
        else:
            raise CxrdetError(f"class {name!r}: the label table has no column of that name and no box class of that "
                              f"name (box classes {', '.join(label_classes) or '-'}); expected a class of the table")
    return out


class ClassificationDataset(Dataset[ClassItem]):
    """A `DetectionDataset` whose targets are `[K]` 0/1 float vectors (see the module docstring).

    Args:
        base: The detection items (whole images or crops) to label.
        labels: `[len(base.records), K]` 0/1 image-level labels, in record order (zeros for unlabelled images).
        box_label: Per class, its box label index in the labels table (for crops), or -1 for a per-image column.
    """

    def __init__(self, base: DetectionDataset, labels: npt.ArrayLike, box_label: Sequence[int]) -> None:
        self.base = base
        self.labels = np.asarray(labels, dtype=np.float32)
        if self.labels.shape != (len(base.records), len(box_label)):
            raise ValueError(f"labels of shape {self.labels.shape}: expected one row per record and one column per "
                             f"class, {(len(base.records), len(box_label))}")
        self.box_label = np.asarray(box_label, dtype=np.int64)
        if base.view == "crops" and (self.box_label < 0).any():
            raise ConfigError("the crops view labels a crop by the boxes it holds; class(es) at "
                              f"{np.flatnonzero(self.box_label < 0).tolist()} are per-image findings without boxes: "
                              "train them on whole images (view='full')")
        records = np.array([r for r, _ in base.items], dtype=np.int64)
        # The sampler's positives: a crop around a box, or an image with any positive class.
        self.positive = base.positive.copy() if base.view == "crops" else self.labels[records].any(axis=1)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> ClassItem:
        image, target, meta = self.base[index]
        if self.base.view == "crops":
            present = target["labels"].numpy()
            label = np.isin(self.box_label, present).astype(np.float32)
        else:
            label = self.labels[self.base.items[index][0]]
        return image, torch.from_numpy(np.array(label, dtype=np.float32)), meta


def collate_classification(batch: Sequence[ClassItem]) -> tuple[torch.Tensor, torch.Tensor, list[Meta]]:
    """Stack classification items into `(images [B, 3, S, S], targets [B, K], metas)` (images as
    `collate_detection` stacks them: one grey channel in memory)."""
    images, _, metas = collate_detection([(img, {}, meta) for img, _, meta in batch])  # type: ignore[misc]
    return images, torch.stack([t for _, t, _ in batch]), metas


class ClassificationDataModule(DetectionDataModule):
    """Loaders of one cross-validation fold for an image-level classifier (see the module docstring).

    Same arguments as `DetectionDataModule`; `data.classes` names the classifier's classes.
    """

    collate = staticmethod(collate_classification)

    def _check_classes(self, annotations: Annotations, labels_csv: Path) -> None:
        """Every class must be a class of the labels (a subset, in any order)."""
        if not self.cfg.classes:
            raise ConfigError("data.classes is empty: a classifier needs at least one class")
        image_columns = [c for c in annotations.images.columns if c not in ("image_id", "patient_id")]
        unknown = [c for c in self.cfg.classes if c not in annotations.classes and c not in image_columns]
        if unknown:
            raise ConfigError(f"data.classes names {unknown}, which the labels {labels_csv} lack: expected some of "
                              f"their box classes {list(annotations.classes)} or per-image columns {image_columns}")

    @cached_property
    def truth(self) -> pd.DataFrame:
        """`image_id`-indexed 0/1 labels of every labelled image, one int64 column per class."""
        ann = self._tables.annotations
        try:
            return truth_table(ann.images, ann.boxes, ann.classes, self.cfg.classes)
        except CxrdetError as err:
            raise ConfigError(str(err)) from err

    @cached_property
    def box_label(self) -> list[int]:
        """Per class, its box label index in the labels (-1 for a per-image column)."""
        ann = self._tables.annotations
        return [-1 if c in ann.images.columns else ann.classes.index(c) for c in self.cfg.classes]

    def labels_for(self, image_ids: Sequence[str]) -> npt.NDArray[np.float32]:
        """`[N, K]` 0/1 labels of `image_ids` (zeros for images without labels, e.g. the test split)."""
        return self.truth.reindex(list(image_ids), fill_value=0).to_numpy(dtype=np.float32)

    def train_targets(self) -> npt.NDArray[np.float32]:
        """`[N, K]` labels of the training images (every fold but this one): the counts behind `pos_weight='auto'`."""
        return self.labels_for(self.train_image_ids)

    def val_targets(self) -> pd.DataFrame:
        """`image_id`-indexed 0/1 labels of the validation (out-of-fold) images, in fold-file order."""
        return self.truth.reindex(self.val_image_ids, fill_value=0)

    def _wrap(self, base: DetectionDataset) -> ClassificationDataset:
        labelled = [r.image_id for r in base.records]
        return ClassificationDataset(base, self.labels_for(labelled), self.box_label)

    def train_dataset(self) -> ClassificationDataset:  # type: ignore[override]
        """Training items (whole images or crops of the other folds), augmented, with their labels."""
        return self._wrap(super().train_dataset())

    def eval_dataset(self, split: str, hflip: bool = False) -> ClassificationDataset:  # type: ignore[override]
        """Whole unaugmented images of `oof` or `test`, with their labels (zeros for `test`)."""
        return self._wrap(super().eval_dataset(split, hflip=hflip))

