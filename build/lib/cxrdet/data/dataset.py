"""Detection samples read from the prepare cache: whole images or crops, with boxes in input pixels.

A `DetectionDataset` turns image records (id, split, original size and boxes in original pixels) into network
inputs of `size x size` pixels. Two views:

- `full`: the whole cached image, resized to the input size when the cache holds another size.
- `crops`: the easy first stage of a curriculum: one crop around each labelled box (the crop contains the box
  when the box fits, else lies inside it) and `neg_per_image` random crops of every negative image, each resized
  to the input size. Crops are cut from the cached image, so a crop of half the image is upsampled two-fold.

Every item is `(image, target, meta)`:

- `image`: float32 `[3, S, S]` in [0, 1]: the greyscale channel expanded (a view, no copy) to three channels.
- `target`: `{'boxes': float32 [N, 4], 'labels': int64 [N]}`; boxes xyxy in pixels of the `S x S` input after
  cropping and augmentation, clipped to the input, boxes narrower or lower than `min_size` pixels dropped.
- `meta`: `{'image_id', 'orig_width', 'orig_height', 'hflip', 'crop'}`; `crop` is None for a whole image, else the
  region `(x1, y1, x2, y2)` that was cut, xyxy in pixels of the original image.

`collate_detection` stacks items into batches; `NegativeRatioSampler` draws a fresh, seeded sample of negatives
every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms.v2 import functional as F

from cxrdet.boxes import clip_xyxy, rescale_xyxy
from cxrdet.data.prepare import load_image
from cxrdet.data.transforms import Clahe, hflip_sample
from cxrdet.errors import ConfigError, CxrdetError

VIEWS: tuple[str, ...] = ("full", "crops")
DEFAULT_MIN_SIZE = 2.0

Target = dict[str, torch.Tensor]
Meta = dict[str, Any]
Item = tuple[torch.Tensor, Target, Meta]
# (image [1, S, S] in [0, 1], (N, 4) xyxy boxes in its pixels) -> (image, boxes, flipped): a DetectionAugment.
Augment = Callable[[torch.Tensor, npt.NDArray[np.float64]], tuple[torch.Tensor, npt.NDArray[np.float64], bool]]


@dataclass(frozen=True)
class ImageRecord:
    """One image of the cache and its annotation.

    Attributes:
        image_id: The image id.
        split: Cache split, `train` or `test`.
        orig_width: Width of the original image in pixels.
        orig_height: Height of the original image in pixels.
        boxes: `(N, 4)` float64 xyxy boxes in pixels of the original image (N = 0 for negatives and test images).
        labels: `(N,)` int64 class indices, 0-based.
    """

    image_id: str
    split: str
    orig_width: int
    orig_height: int
    boxes: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]

    @property
    def positive(self) -> bool:
        return len(self.boxes) > 0


@dataclass(frozen=True)
class CropSpec:
    """How the `crops` view cuts its crops.

    Attributes:
        size_frac: Crop side as a fraction of the image side (width and height alike), in (0, 1].
        neg_per_image: Random crops taken from each negative image.
    """

    size_frac: float = 0.5
    neg_per_image: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.size_frac <= 1.0:
            raise ConfigError(f"crops.size_frac={self.size_frac!r}: expected a fraction in (0, 1]")
        if self.neg_per_image < 0:
            raise ConfigError(f"crops.neg_per_image={self.neg_per_image!r}: expected an integer >= 0")


def build_records(meta: pd.DataFrame, image_ids: Sequence[str], boxes: pd.DataFrame | None = None) -> list[ImageRecord]:
    """Image records for `image_ids`, in that order.

    Args:
        meta: The cache's meta table: `image_id, split, orig_width, orig_height, ...`, one row per image.
        image_ids: The images to keep; every id must be in `meta`.
        boxes: Box table `image_id, x1, y1, x2, y2, label` (xyxy, pixels of the original image), or None for
            unlabelled images (test).

    Returns:
        One record per id with its boxes in table order.
    """
    rows = meta.set_index("image_id").loc[list(image_ids), ["split", "orig_width", "orig_height"]]
    grouped: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]] = {}
    if boxes is not None and len(boxes):
        wanted = boxes[boxes["image_id"].isin(set(image_ids))]
        xyxy = wanted[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
        labels = wanted["label"].to_numpy(dtype=np.int64)
        for image_id, idx in wanted.groupby("image_id", sort=False).indices.items():
            grouped[str(image_id)] = (xyxy[idx], labels[idx])
    empty = (np.zeros((0, 4), dtype=np.float64), np.zeros(0, dtype=np.int64))
    return [
        ImageRecord(str(image_id), str(split), int(w), int(h), *grouped.get(str(image_id), empty))
        for image_id, split, w, h in zip(
            rows.index, rows["split"], rows["orig_width"], rows["orig_height"], strict=True
        )
    ]


def _crop_start(low: float, high: float, side: int, limit: int) -> int:
    """A random integer start of a `side`-long window in `[0, limit]` that contains `[low, high]` when it fits,
    else lies inside it."""
    a, b = math.ceil(high) - side, math.floor(low)
    lo, hi = (min(a, b), max(a, b))
    lo, hi = min(max(lo, 0), limit - side), min(max(hi, 0), limit - side)
    return int(torch.randint(lo, hi + 1, ()))


class DetectionDataset(Dataset[Item]):
    """Network inputs and targets from the prepare cache (see the module docstring for the item layout).

    Args:
        cache_root: The prepare cache folder.
        records: The images to serve.
        size: Side `S` of the square network input in pixels.
        view: `full` (whole images) or `crops` (crops around boxes and random crops of negative images).
        crops: Crop settings of the `crops` view.
        augment: Random training augmentation (a `cxrdet.data.transforms.DetectionAugment`), or None.
        clahe: Contrast equalisation applied to every image before anything else, or None.
        hflip: Mirror every image left-right (test-time flip); exclusive with `augment`.
        min_size: Boxes narrower or lower than this many input pixels are dropped from targets.
    """

    def __init__(
        self,
        cache_root: str | Path,
        records: Sequence[ImageRecord],
        size: int,
        view: str = "full",
        crops: CropSpec | None = None,
        augment: Augment | None = None,
        clahe: Clahe | None = None,
        hflip: bool = False,
        min_size: float = DEFAULT_MIN_SIZE,
    ) -> None:
        if view not in VIEWS:
            raise ConfigError(f"view={view!r}: expected one of {', '.join(VIEWS)}")
        if hflip and augment is not None:
            raise ValueError("hflip (test-time flip) and augment are exclusive")
        self.cache_root = Path(cache_root)
        self.records = list(records)
        self.size = int(size)
        self.view = view
        self.crops = crops or CropSpec()
        self.augment = augment
        self.clahe = clahe
        self.hflip = hflip
        self.min_size = float(min_size)
        # One item per (record, anchor): anchor -1 is the whole image (full view) or a random crop of a negative
        # image; anchor >= 0 is a crop around that box of the record.
        items: list[tuple[int, int]] = []
        for r, record in enumerate(self.records):
            if view == "full":
                items.append((r, -1))
            elif record.positive:
                items.extend((r, b) for b in range(len(record.boxes)))
            else:
                items.extend((r, -1) for _ in range(self.crops.neg_per_image))
        self.items = items
        self.positive = np.array([self.records[r].positive for r, _ in items], dtype=bool)

    def __len__(self) -> int:
        return len(self.items)

    def _crop(self, record: ImageRecord, anchor: int, width: int, height: int) -> npt.NDArray[np.int64]:
        """A random crop `(x1, y1, x2, y2)` in integer pixels of the cached `width x height` image."""
        side_w = min(width, max(1, round(self.crops.size_frac * width)))
        side_h = min(height, max(1, round(self.crops.size_frac * height)))
        if anchor >= 0:
            box = rescale_xyxy(record.boxes[anchor : anchor + 1], (record.orig_width, record.orig_height),
                               (width, height))[0]  # fmt: skip
            x1 = _crop_start(box[0], box[2], side_w, width)
            y1 = _crop_start(box[1], box[3], side_h, height)
        else:
            x1 = int(torch.randint(0, width - side_w + 1, ()))
            y1 = int(torch.randint(0, height - side_h + 1, ()))
        return np.array([x1, y1, x1 + side_w, y1 + side_h], dtype=np.int64)

    def __getitem__(self, index: int) -> Item:
        r, anchor = self.items[index]
        record = self.records[r]
        pixels = load_image(self.cache_root, record.split, record.image_id)
        if pixels.ndim != 2:
            raise CxrdetError(
                f"{record.image_id} in the cache {self.cache_root} has shape {pixels.shape}: expected a greyscale "
                "(H, W) image; rebuild the cache with `cxrdet prepare`"
            )
        if self.clahe is not None:
            pixels = self.clahe(pixels)
        height, width = pixels.shape
        orig_size = (record.orig_width, record.orig_height)
        crop: tuple[float, float, float, float] | None = None
        region = np.array([0.0, 0.0, record.orig_width, record.orig_height])  # xyxy, original pixels
        if self.view == "crops":
            cx1, cy1, cx2, cy2 = self._crop(record, anchor, width, height)
            pixels = pixels[cy1:cy2, cx1:cx2]
            region = rescale_xyxy([[cx1, cy1, cx2, cy2]], (width, height), orig_size)[0]
            crop = (float(region[0]), float(region[1]), float(region[2]), float(region[3]))

        image = torch.from_numpy(pixels.astype(np.float32))[None].div_(255.0)  # astype: a writable, contiguous copy
        if image.shape[-2:] != (self.size, self.size):
            image = F.resize(image, [self.size, self.size], antialias=True).clamp_(0.0, 1.0)

        # Original pixels -> pixels of the cut region -> pixels of the S x S input.
        region_w, region_h = region[2] - region[0], region[3] - region[1]
        boxes = record.boxes - np.array([region[0], region[1], region[0], region[1]])
        boxes = rescale_xyxy(clip_xyxy(boxes, region_w, region_h), (region_w, region_h), (self.size, self.size))

        flipped = False
        if self.hflip:
            image, boxes = hflip_sample(image, boxes)
            flipped = True
        elif self.augment is not None:
            image, boxes, flipped = self.augment(image, boxes)

        boxes = clip_xyxy(boxes, self.size, self.size)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_size)
        target = {
            "boxes": torch.as_tensor(boxes[keep], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(record.labels[keep], dtype=torch.int64),
        }
        meta = {
            "image_id": record.image_id,
            "orig_width": record.orig_width,
            "orig_height": record.orig_height,
            "hflip": flipped,
            "crop": crop,
        }
        return image.expand(3, -1, -1), target, meta


def collate_detection(batch: Sequence[Item]) -> tuple[torch.Tensor, list[Target], list[Meta]]:
    """Stack dataset items into `(images, targets, metas)`.

    Images whose three channels are one expanded greyscale channel are stacked as one channel and expanded again,
    so a batch holds `B x S x S` values, not three times that; the result is then a read-only view (do not modify
    it in place, and do not pin it: pinning copies into an overlapping layout and fails).

    Returns:
        images: float32 `[B, 3, S, S]` in [0, 1]; targets: one `{'boxes', 'labels'}` dict per image (boxes xyxy,
        pixels of the input); metas: one dict per image.
    """
    images, targets, metas = zip(*batch, strict=True)
    if all(img.shape[0] == 3 and img.stride(0) == 0 for img in images):
        stacked = torch.stack([img[:1] for img in images]).expand(-1, 3, -1, -1)
    else:
        stacked = torch.stack(list(images))
    return stacked, list(targets), list(metas)


class NegativeRatioSampler(Sampler[int]):
    """Every epoch: all positive items and a fresh seeded sample of the negative ones, shuffled.

    Args:
        positive: One flag per dataset item.
        neg_ratio: Negatives per positive to draw each epoch (without replacement; all of them when there are
            fewer); None keeps every negative; 0 keeps none.
        seed: Seed of the draws; epoch `e` of seed `s` always gives the same order.
        shuffle: Shuffle the kept items (else positives then negatives, in dataset order).

    The epoch advances by one after each pass, and `set_epoch` (called by Lightning before every training epoch)
    sets it explicitly.
    """

    def __init__(
        self, positive: npt.ArrayLike, neg_ratio: float | None = None, seed: int = 0, shuffle: bool = True
    ) -> None:
        flags = np.asarray(positive, dtype=bool)
        if neg_ratio is not None and neg_ratio < 0:
            raise ConfigError(f"neg_ratio={neg_ratio!r}: expected a number >= 0 or None")
        self.positives = np.flatnonzero(flags)
        self.negatives = np.flatnonzero(~flags)
        self.neg_ratio = neg_ratio
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    @property
    def n_negatives(self) -> int:
        """Negatives drawn per epoch."""
        if self.neg_ratio is None:
            return len(self.negatives)
        return min(len(self.negatives), round(self.neg_ratio * len(self.positives)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.positives) + self.n_negatives

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        negatives = self.negatives
        if self.n_negatives < len(negatives):
            negatives = np.sort(rng.choice(negatives, size=self.n_negatives, replace=False))
        order = np.concatenate([self.positives, negatives])
        if self.shuffle:
            order = rng.permutation(order)
        return iter(order.tolist())
