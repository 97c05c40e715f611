"""Mosaic and mixup: training samples composed of several images, with their boxes moved exactly.

The one-stage detectors that won the recent chest X-ray competitions (YOLOv5 in VinBigData and SIIM-COVID, YOLOX,
RTMDet) train on mosaics of four images and on mixups of two, and switch both off for their last epochs so that the
model ends on images like the test set's (mmdet's `YOLOXModeSwitchHook`, `PipelineSwitchHook`). Both are steps of a
config's `augment` section:

    augment = dict(..., mosaic=dict(prob=1.0, scale=(0.5, 1.0), off_last=2),
                   mixup=dict(prob=0.15, beta=32.0, off_last=2))

- **Mosaic** (probability `prob`): four training items (each already augmented by `DetectionAugment`, `S x S`) are
  tiled on a `2S x 2S` black canvas around a centre drawn uniformly in `[S/2, 3S/2]` along each axis (item 1 to the
  top left of the centre, 2 top right, 3 bottom left, 4 bottom right, each cut where it leaves the canvas); the output
  is the square of side `S / s` centred on the canvas, with `s` drawn uniformly from `scale`, resized to `S x S`.
  `s = 1` keeps the pixels' scale (a crop of the middle), `s = 0.5` shows the whole canvas at half scale. Every step
  is an integer shift or one resize, so a box moves exactly with its pixels: shifted with its tile, clipped to its
  tile's visible part, shifted and scaled with the crop, and dropped when thinner than the dataset's `min_size`.
- **Mixup** (probability `prob`, after mosaic): the sample is blended with a second one built the same way, `lambda x
  a + (1 - lambda) x b` with `lambda ~ Beta(beta, beta)` (YOLOv5's Beta(32, 32), near one half), and both samples'
  boxes are kept (labels stay hard).
- `off_last=N` switches the step off for the last `N` epochs of the run (0: never).

The current epoch reaches the dataset through its indices, not an attribute, so that loader workers (persistent or
not) see it: `EpochSampler` wraps the training sampler and yields `(index, epoch)` pairs, which `MosaicDataset`
reads. Randomness comes from torch's global generator, which the loaders seed per worker.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms.v2 import functional as F

from cxrdet.boxes import clip_xyxy
from cxrdet.data.dataset import DetectionDataset, Item
from cxrdet.errors import ConfigError

MOSAIC_KEYS: tuple[str, ...] = ("prob", "scale", "off_last")
MIXUP_KEYS: tuple[str, ...] = ("prob", "beta", "off_last")


@dataclass(frozen=True)
class MosaicSpec:
    """Mosaic settings (see the module docstring): probability, `(low, high)` range of the output scale `s` in
    (0, 1], and the number of last epochs without mosaic."""

    prob: float = 1.0
    scale: tuple[float, float] = (0.5, 1.0)
    off_last: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ConfigError(f"augment.mosaic.prob={self.prob!r}: expected a probability in [0, 1]")
        low, high = self.scale
        if not 0.0 < low <= high <= 1.0:
            raise ConfigError(f"augment.mosaic.scale={self.scale!r}: expected (low, high) with 0 < low <= high <= 1")
        if self.off_last < 0:
            raise ConfigError(f"augment.mosaic.off_last={self.off_last!r}: expected a number of epochs >= 0")


@dataclass(frozen=True)
class MixupSpec:
    """Mixup settings (see the module docstring): probability, the Beta distribution's parameter, and the number of
    last epochs without mixup."""

    prob: float = 0.15
    beta: float = 32.0
    off_last: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ConfigError(f"augment.mixup.prob={self.prob!r}: expected a probability in [0, 1]")
        if not self.beta > 0:
            raise ConfigError(f"augment.mixup.beta={self.beta!r}: expected a Beta parameter > 0")
        if self.off_last < 0:
            raise ConfigError(f"augment.mixup.off_last={self.off_last!r}: expected a number of epochs >= 0")


def _section(augment: Mapping[str, Any] | None, key: str, allowed: tuple[str, ...]) -> dict[str, Any] | None:
    value = (augment or {}).get(key)
    if not value:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"augment.{key}={value!r}: expected a dict with some of {', '.join(allowed)}, or None")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigError(f"augment.{key}: unknown key(s) {', '.join(unknown)}: expected some of {', '.join(allowed)}")
    return dict(value)


def build_mosaic(augment: Mapping[str, Any] | None) -> MosaicSpec | None:
    """The mosaic step of a config's `augment` section (None: off).

    Raises:
        ConfigError: An unknown key or a value of the wrong form.
    """
    section = _section(augment, "mosaic", MOSAIC_KEYS)
    if section is None:
        return None
    scale = section.get("scale", MosaicSpec.scale)
    if not isinstance(scale, (list, tuple)) or len(scale) != 2:
        raise ConfigError(f"augment.mosaic.scale={scale!r}: expected a (low, high) pair")
    spec = MosaicSpec(prob=float(section.get("prob", 1.0)), scale=(float(scale[0]), float(scale[1])),
                      off_last=int(section.get("off_last", 0)))
    return spec if spec.prob > 0 else None


def build_mixup(augment: Mapping[str, Any] | None) -> MixupSpec | None:
    """The mixup step of a config's `augment` section (None: off).

    Raises:
        ConfigError: An unknown key or a value of the wrong form.
    """
    section = _section(augment, "mixup", MIXUP_KEYS)
    if section is None:
        return None
    spec = MixupSpec(prob=float(section.get("prob", 0.15)), beta=float(section.get("beta", 32.0)),
                     off_last=int(section.get("off_last", 0)))
    return spec if spec.prob > 0 else None


def mosaic_layout(size: int, centre: tuple[int, int]) -> list[tuple[int, int, int, int, int, int]]:
    """Where the four tiles of a mosaic go: per tile `(dx, dy, x1, y1, x2, y2)`: the tile's top-left corner on the
    `2S x 2S` canvas and the part of the tile (xyxy, its own pixels) that lies on the canvas."""
    xc, yc = centre
    s = size
    out = []
    for ox, oy in ((xc - s, yc - s), (xc, yc - s), (xc - s, yc), (xc, yc)):
        x1, y1 = max(0, -ox), max(0, -oy)
        x2, y2 = min(s, 2 * s - ox), min(s, 2 * s - oy)
        out.append((ox, oy, x1, y1, x2, y2))
    return out


def compose_mosaic(
    tiles: list[tuple[torch.Tensor, npt.NDArray[np.float64], npt.NDArray[np.int64]]],
    centre: tuple[int, int],
    scale: float,
    min_size: float,
) -> tuple[torch.Tensor, npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Four `(image [1, S, S], boxes (N, 4) xyxy in its pixels, labels (N,))` tiles -> one mosaic sample of the same
    side (see the module docstring).

    Args:
        tiles: The four tiles, in the order top left, top right, bottom left, bottom right of the centre.
        centre: The canvas point where the tiles meet, integer pixels in `[S/2, 3S/2]`.
        scale: Output scale `s` in (0, 1]: the output shows a `S/s` square of the canvas.
        min_size: Boxes narrower or lower than this many output pixels are dropped.

    Returns:
        The image `[1, S, S]`, its boxes (xyxy, output pixels) and labels.
    """
    size = tiles[0][0].shape[-1]
    canvas = torch.zeros(1, 2 * size, 2 * size, dtype=tiles[0][0].dtype)
    boxes_out, labels_out = [], []
    for (image, boxes, labels), (ox, oy, x1, y1, x2, y2) in zip(tiles, mosaic_layout(size, centre), strict=True):
        if x2 <= x1 or y2 <= y1:
            continue
        canvas[:, oy + y1: oy + y2, ox + x1: ox + x2] = image[:, y1:y2, x1:x2]
        # The tile's boxes, clipped to its visible part, on the canvas.
        part = np.clip(boxes, [x1, y1, x1, y1], [x2, y2, x2, y2]) + np.array([ox, oy, ox, oy], dtype=np.float64)
        boxes_out.append(part)
        labels_out.append(labels)
    side = min(2 * size, max(1, round(size / scale)))
    start = size - side // 2  # the crop is centred on the canvas
    crop = canvas[:, start: start + side, start: start + side]
    image = crop if side == size else F.resize(crop, [size, size], antialias=True).clamp_(0.0, 1.0)
    boxes = np.concatenate(boxes_out) if boxes_out else np.zeros((0, 4))
    labels = np.concatenate(labels_out) if labels_out else np.zeros(0, dtype=np.int64)
    boxes = clip_xyxy(boxes - start, side, side) * (size / side)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return image, boxes[keep], labels[keep].astype(np.int64)


class MosaicDataset(Dataset[Item]):
    """Training items of a `DetectionDataset` composed by mosaic and / or mixup (see the module docstring).

    Keys are `(index, epoch)` pairs from `EpochSampler` (a bare index counts as epoch 0): an epoch within the last
    `off_last` of `epochs` gets that step switched off. Partners are drawn uniformly from the whole dataset.

    Args:
        base: The training dataset (augmented items of `S x S`).
        mosaic: Mosaic settings, or None.
        mixup: Mixup settings, or None.
        epochs: The run's number of epochs (None: never switch off).
    """

    def __init__(self, base: DetectionDataset, mosaic: MosaicSpec | None, mixup: MixupSpec | None,
                 epochs: int | None = None) -> None:
        self.base = base
        self.mosaic = mosaic
        self.mixup = mixup
        self.epochs = epochs
        self.positive = base.positive

    def __len__(self) -> int:
        return len(self.base)

    def _on(self, spec: MosaicSpec | MixupSpec | None, epoch: int) -> bool:
        if spec is None:
            return False
        if self.epochs is not None and spec.off_last and epoch >= self.epochs - spec.off_last:
            return False
        return bool(torch.rand(()) < spec.prob)

    def _partner(self) -> int:
        return int(torch.randint(0, len(self.base), ()))

    def _tile(self, index: int) -> tuple[torch.Tensor, npt.NDArray[np.float64], npt.NDArray[np.int64], dict]:
        image, target, meta = self.base[index]
        return image[:1], target["boxes"].numpy().astype(np.float64), target["labels"].numpy(), meta

    def _sample(self, index: int, epoch: int) -> tuple[torch.Tensor, npt.NDArray[np.float64],
                                                         npt.NDArray[np.int64], dict, list[str]]:
        image, boxes, labels, meta = self._tile(index)
        if not self._on(self.mosaic, epoch):
            return image, boxes, labels, meta, [meta["image_id"]]
        assert self.mosaic is not None
        tiles = [(image, boxes, labels)]
        ids = [meta["image_id"]]
        for _ in range(3):
            t_image, t_boxes, t_labels, t_meta = self._tile(self._partner())
            tiles.append((t_image, t_boxes, t_labels))
            ids.append(t_meta["image_id"])
        size = self.base.size
        low_c, high_c = size // 2, 3 * size // 2 + 1
        centre = (int(torch.randint(low_c, high_c, ())), int(torch.randint(low_c, high_c, ())))
        low, high = self.mosaic.scale
        scale = float(torch.empty(()).uniform_(low, high)) if high > low else low
        image, boxes, labels = compose_mosaic(tiles, centre, scale, self.base.min_size)
        return image, boxes, labels, meta, ids

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        index, epoch = (key, 0) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))
        image, boxes, labels, meta, ids = self._sample(int(index), epoch)
        if self._on(self.mixup, epoch):
            assert self.mixup is not None
            other, o_boxes, o_labels, _, o_ids = self._sample(self._partner(), epoch)
            lam = min(1.0, max(0.0, float(torch.distributions.Beta(self.mixup.beta, self.mixup.beta).sample())))
            image = image * lam + other * (1.0 - lam)
            boxes = np.concatenate([boxes, o_boxes])
            labels = np.concatenate([labels, o_labels])
            ids = ids + o_ids
        if len(ids) > 1:  # a composed sample is no one image's flip or crop
            meta = {**meta, "hflip": False, "crop": None, "composed_of": tuple(ids)}
        target = {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.as_tensor(labels, dtype=torch.int64)}
        return image.expand(3, -1, -1), target, meta


class EpochSampler(Sampler[tuple[int, int]]):
    """Wraps a sampler to yield `(index, epoch)` pairs, so that the dataset (in any loader worker) knows the epoch.

    The epoch advances by one after each pass, as `NegativeRatioSampler`'s does, and `set_epoch` (called by
    Lightning before every training epoch) sets it explicitly, on the wrapped sampler too.
    """

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        for index in self.sampler:
            yield int(index), epoch
