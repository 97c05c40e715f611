"""The only place box formats change.

Conventions used across cxrdet:

- `xyxy`: `(x1, y1, x2, y2)`, top-left and bottom-right corners, continuous pixel coordinates (no +1).
- `xywh`: `(x, y, w, h)`, top-left corner plus width and height: the RSNA labels and submission format.
- Unless a name says `norm`, coordinates are pixels of the image they are stated for (the original DICOM size
  in tables and files, the network input size inside models).
- Arrays are `float64` of shape `(N, 4)`; functions accept anything numpy can turn into that.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
Boxes = npt.NDArray[np.float64]


def _as_boxes(boxes: ArrayLike) -> Boxes:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


def xywh_to_xyxy(boxes: ArrayLike) -> Boxes:
    """Convert `(x, y, w, h)` boxes to `(x1, y1, x2, y2)`; units unchanged."""
    b = _as_boxes(boxes)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def xyxy_to_xywh(boxes: ArrayLike) -> Boxes:
    """Convert `(x1, y1, x2, y2)` boxes to `(x, y, w, h)`; units unchanged."""
    b = _as_boxes(boxes)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def clip_xyxy(boxes: ArrayLike, width: float, height: float) -> Boxes:
    """Clip xyxy pixel boxes to the image `[0, width] x [0, height]`."""
    b = _as_boxes(boxes).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0.0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0.0, height)
    return b


def _sides(width: ArrayLike, height: ArrayLike) -> npt.NDArray[np.float64]:
    """`[w, h, w, h]`, or one such row per box when the sizes are arrays."""
    w, h = np.asarray(width, dtype=np.float64), np.asarray(height, dtype=np.float64)
    return np.stack([w, h, w, h], axis=-1)


def normalize_xyxy(boxes: ArrayLike, width: ArrayLike, height: ArrayLike) -> Boxes:
    """Pixel xyxy boxes of a `width x height` image -> xyxy normalised to [0, 1] (`width` and `height` may be one
    value per box)."""
    return _as_boxes(boxes) / _sides(width, height)


def denormalize_xyxy(boxes: ArrayLike, width: ArrayLike, height: ArrayLike) -> Boxes:
    """Normalised xyxy boxes -> pixel xyxy boxes of a `width x height` image (`width` and `height` may be one value
    per box)."""
    return _as_boxes(boxes) * _sides(width, height)


def rescale_xyxy(boxes: ArrayLike, src_size: tuple[float, float], dst_size: tuple[float, float]) -> Boxes:
    """Map xyxy pixel boxes from an image of `src_size=(w, h)` to one of `dst_size=(w, h)` (a plain resize)."""
    sx = dst_size[0] / src_size[0]
    sy = dst_size[1] / src_size[1]
    return _as_boxes(boxes) * np.array([sx, sy, sx, sy], dtype=np.float64)


def hflip_xyxy(boxes: ArrayLike, width: float) -> Boxes:
    """Mirror xyxy pixel boxes left-right in an image of the given width."""
    b = _as_boxes(boxes)
    return np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)


def shrink_xyxy(boxes: ArrayLike, factor: float) -> Boxes:
    """Scale width and height of xyxy boxes by `factor` around each box centre (RSNA 1st place used 0.875)."""
    b = _as_boxes(boxes)
    c = (b[:, :2] + b[:, 2:]) / 2.0
    half = (b[:, 2:] - b[:, :2]) * (factor / 2.0)
    return np.concatenate([c - half, c + half], axis=1)


def area_xyxy(boxes: ArrayLike) -> npt.NDArray[np.float64]:
    """Areas of xyxy boxes (0 for degenerate boxes)."""
    b = _as_boxes(boxes)
    return (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)


def iou_matrix(a: ArrayLike, b: ArrayLike) -> npt.NDArray[np.float64]:
    """Pairwise IoU of xyxy boxes: an `(len(a), len(b))` matrix; continuous coordinates (no +1)."""
    a = _as_boxes(a)
    b = _as_boxes(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(axis=2)
    union = area_xyxy(a)[:, None] + area_xyxy(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def paired_iou(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """IoU of row i of `a` with row i of `b`; xyxy, continuous pixel coordinates; 0 when the union is empty."""
    iw = (np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])).clip(0.0)
    ih = (np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])).clip(0.0)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out
