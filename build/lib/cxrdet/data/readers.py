"""Labels read by several readers: dropping readers, fusing their boxes into one ground truth, one reader per copy.

VinBigData's training images were each read independently by 3 of 17 radiologists, whose boxes of the same finding
disagree; its test labels were a consensus of 5. The top solutions either fused the readers' boxes of each class
into one ground truth with weighted boxes fusion at IoU about 0.4 (each reader a member), or trained on one reader's
boxes per copy of the image, and dropped chosen readers (background.md, "What the top teams did").

Every function takes and returns box tables `image_id, x1, y1, x2, y2, label, reader` (xyxy, pixels of the original
image; `label` a class index; `reader` the reader's id, e.g. VinBigData's `rad_id`).

`data.readers` in a config selects the mode (`resolve_readers` checks it):

    data = dict(readers=dict(mode='fuse', iou_thr=0.4, min_readers=1, drop=['R8', 'R9', 'R10']))

- `fuse`: per image and class, weighted boxes fusion (ensemble-boxes) of the readers' boxes, every reader a member
  of weight 1 and every box of score 1; a fused box is kept when at least `min_readers` readers' boxes formed it.
- `each`: every reader's boxes as they are, the image repeated once per reader (`copy` column: `<image_id>@<reader>`).
- `all`: every reader's boxes as they are, on the one image (overlapping duplicates included).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxrdet.errors import ConfigError

MODES: tuple[str, ...] = ("fuse", "each", "all")
DEFAULTS: dict[str, Any] = {"mode": "fuse", "iou_thr": 0.4, "min_readers": 1, "drop": ()}
COLUMNS: tuple[str, ...] = ("image_id", "x1", "y1", "x2", "y2", "label", "reader")


def resolve_readers(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """`data.readers` with its defaults filled in.

    Raises:
        ConfigError: An unknown key or mode, an IoU outside (0, 1), `min_readers` below 1, `drop` not a list.
    """
    if cfg is not None and not isinstance(cfg, Mapping):
        raise ConfigError(f"data.readers={cfg!r}: expected None or a dict such as dict(mode='fuse', iou_thr=0.4, "
                          "drop=['R8'])")
    given = dict(cfg or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"data.readers: unknown key(s) {unknown}; expected some of {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **given}
    if out["mode"] not in MODES:
        raise ConfigError(f"data.readers.mode={out['mode']!r}: expected one of {list(MODES)}")
    if not 0.0 < float(out["iou_thr"]) < 1.0:
        raise ConfigError(f"data.readers.iou_thr={out['iou_thr']!r}: expected a number in (0, 1)")
    if int(out["min_readers"]) < 1:
        raise ConfigError(f"data.readers.min_readers={out['min_readers']!r}: expected an integer >= 1")
    if isinstance(out["drop"], str) or not isinstance(out["drop"], Sequence):
        raise ConfigError(f"data.readers.drop={out['drop']!r}: expected a list of reader ids, e.g. ['R8', 'R9']")
    out["drop"] = tuple(str(r) for r in out["drop"])
    return out


def scored_readers(cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a held-out fold is scored against under a training setting: the readers it keeps, fused into one ground
    truth (`all` and `each` train on single readers' boxes, the metric compares with one box set); None stays None
    (the competition's default)."""
    return None if cfg is None else {**dict(cfg), "mode": "fuse"}


def drop_readers(boxes: pd.DataFrame, readers: Sequence[str]) -> pd.DataFrame:
    """`boxes` without the boxes of `readers`."""
    return boxes[~boxes["reader"].isin(list(readers))].reset_index(drop=True)


def fuse_readers(boxes: pd.DataFrame, iou_thr: float = 0.4, min_readers: int = 1,
                 sizes: Mapping[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """One ground truth per image: each class's boxes of all readers fused by weighted boxes fusion.

    Args:
        boxes: `image_id, x1, y1, x2, y2, label, reader` (xyxy pixels).
        iou_thr: Boxes of one class overlapping above this are fused (ensemble-boxes' `iou_thr`).
        min_readers: Keep a fused box only when at least this many readers' boxes formed it.
        sizes: `(width, height)` of each image; ensemble-boxes works on [0, 1] coordinates. Default: each image's
            largest box corner (IoU does not change under a per-image scaling of x and y).

    Returns:
        `image_id, x1, y1, x2, y2, label, n_readers` (xyxy pixels; `n_readers` the distinct readers behind each
        box), in image order of first appearance, then class, then descending support.
    """
    from ensemble_boxes import weighted_boxes_fusion

    rows = []
    for image_id, part in boxes.groupby("image_id", sort=False):
        xyxy = part[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
        if sizes is not None and image_id in sizes:
            scale = np.asarray(sizes[image_id], dtype=np.float64)
        else:
            scale = np.maximum(xyxy[:, 2:].max(axis=0), 1.0)
        norm = np.clip(xyxy / np.tile(scale, 2), 0.0, 1.0)
        for label, of_class in part.groupby("label", sort=True):
            idx = part.index.get_indexer(of_class.index)
            readers = of_class["reader"].to_numpy()
            names = list(dict.fromkeys(readers))
            members = [norm[idx[readers == r]] for r in names]
            fused, score, _ = weighted_boxes_fusion(
                [m.tolist() for m in members], [[1.0] * len(m) for m in members], [[0] * len(m) for m in members],
                iou_thr=float(iou_thr), skip_box_thr=0.0, conf_type="avg")
            # With every score 1 and 'avg', a fused box's score is (boxes in its cluster, capped) / members.
            support = np.rint(np.asarray(score) * len(members)).astype(np.int64)
            for box, n in zip(np.asarray(fused).reshape(-1, 4), support, strict=True):
                if n >= min_readers:
                    x1, y1, x2, y2 = box * np.tile(scale, 2)
                    rows.append((image_id, x1, y1, x2, y2, int(label), int(n)))
    return pd.DataFrame(rows, columns=["image_id", "x1", "y1", "x2", "y2", "label", "n_readers"]).astype(
        {"label": np.int64, "n_readers": np.int64})


def reader_copies(boxes: pd.DataFrame, image_readers: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Every reader's boxes on its own copy of the image: a `copy` column `<image_id>@<reader>`.

    Args:
        boxes: As above.
        image_readers: The readers of each image, those who drew nothing included (their copy has no box).

    Returns:
        `copy, image_id, reader` for every (image, reader) pair, one row per box (a reader without boxes: one row
        with NaN coordinates and label -1).
    """
    drawn = boxes.assign(copy=boxes["image_id"] + "@" + boxes["reader"])
    pairs = pd.DataFrame([(f"{i}@{r}", i, r) for i, rs in image_readers.items() for r in rs],
                         columns=["copy", "image_id", "reader"])
    empty = pairs[~pairs["copy"].isin(drawn["copy"])].assign(x1=np.nan, y1=np.nan, x2=np.nan, y2=np.nan, label=-1)
    return pd.concat([drawn, empty], ignore_index=True)[["copy", *COLUMNS]]


def apply_readers(boxes: pd.DataFrame, readers_cfg: Mapping[str, Any] | None,
                  sizes: Mapping[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """The training ground truth a `data.readers` setting makes of multi-reader boxes (`fuse` and `all`; `each`
    needs the image copies of `reader_copies`).

    Returns:
        `image_id, x1, y1, x2, y2, label` (xyxy pixels), plus `n_readers` for `fuse`.

    Raises:
        ConfigError: A bad setting, or `mode='each'` (which changes the image set, not just the boxes).
    """
    cfg = resolve_readers(readers_cfg)
    kept = drop_readers(boxes, cfg["drop"])
    if cfg["mode"] == "fuse":
        return fuse_readers(kept, cfg["iou_thr"], cfg["min_readers"], sizes)
    if cfg["mode"] == "all":
        return kept[["image_id", "x1", "y1", "x2", "y2", "label"]].reset_index(drop=True)
    raise ConfigError("data.readers.mode='each' trains on one copy of each image per reader: use reader_copies")
