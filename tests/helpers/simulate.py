"""Simulated member predictions built from real ground truth: ensembles and tuning at full scale without models.

Each simulated member finds most ground-truth boxes (centre jitter, boxes somewhat too big, as real detectors trained
on the RSNA readers' intersected boxes are), adds near-duplicates of lower confidence, false positives shared with
the other members (the hard negatives several models agree on) and false positives of its own. Used by the tuning
benchmark and tests; never by a submission.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrdet.boxes import clip_xyxy


def simulate_members(gt: pd.DataFrame, image_ids: pd.Index, n_members: int = 5, boxes_per_image: float = 10.0,
                     image_size: float = 1024.0, seed: int = 0) -> list[pd.DataFrame]:
    """Simulated predictions of `n_members` detectors.

    Args:
        gt: Ground-truth boxes `image_id, x1, y1, x2, y2` (xyxy, pixels of `image_size` square images).
        image_ids: All images (negatives included); every image gets false positives.
        n_members: Number of members.
        boxes_per_image: Mean number of boxes a member predicts per image.
        image_size: Side of the square images in pixels.
        seed: Random seed.

    Returns:
        Per member, `image_id, x1, y1, x2, y2, score, label` (xyxy pixels, label 0), sorted by image.
    """
    rng = np.random.default_rng(seed)
    ids = pd.Index(image_ids)
    n_images = len(ids)
    gt_image = ids.get_indexer(gt["image_id"])
    gt_boxes = gt[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
    # Hard negatives: per image, up to two regions every member tends to see.
    n_shared = rng.binomial(3, 0.4, n_images)
    shared_image = np.repeat(np.arange(n_images), n_shared)
    shared_boxes = _random_boxes(rng, len(shared_image), image_size)
    shared_strength = rng.beta(3.0, 3.0, len(shared_image))
    members = []
    for m in range(n_members):
        quality = 0.55 + 0.2 * m / max(n_members - 1, 1) * rng.uniform(0.5, 1.0)
        parts = []
        found = rng.random(len(gt_boxes)) < quality
        true_conf = rng.beta(2.0 + 2.0 * quality, 2.5, len(gt_boxes))
        n_copies = found * (1 + rng.poisson(1.5, len(gt_boxes)))
        src = np.repeat(np.arange(len(gt_boxes)), n_copies)
        first = np.r_[True, src[1:] != src[:-1]] if len(src) else np.zeros(0, bool)
        conf = true_conf[src] * np.where(first, 1.0, rng.uniform(0.2, 0.8, len(src)))
        parts.append((gt_image[src], _jitter(rng, gt_boxes[src], 1.15, 0.14), conf))
        take = rng.random(len(shared_image)) < 0.7
        parts.append((shared_image[take], _jitter(rng, shared_boxes[take], 1.0, 0.1),
                      shared_strength[take] * rng.uniform(0.5, 1.2, int(take.sum()))))
        used = sum(len(p[0]) for p in parts)
        n_fp = rng.poisson(max(boxes_per_image - used / max(n_images, 1), 0.0), n_images)
        fp_image = np.repeat(np.arange(n_images), n_fp)
        parts.append((fp_image, _random_boxes(rng, len(fp_image), image_size), rng.beta(1.5, 5.0, len(fp_image))))
        image = np.concatenate([p[0] for p in parts])
        boxes = clip_xyxy(np.concatenate([p[1] for p in parts]), image_size, image_size)
        score = np.concatenate([p[2] for p in parts]).clip(0.0, 1.0)
        order = np.argsort(image, kind="stable")
        frame = pd.DataFrame(boxes[order], columns=["x1", "y1", "x2", "y2"])
        frame.insert(0, "image_id", np.asarray(ids, dtype=object)[image[order]])
        frame["score"] = score[order]
        frame["label"] = np.zeros(len(frame), dtype=np.int64)
        members.append(frame)
    return members


def _jitter(rng: np.random.Generator, boxes: np.ndarray, scale: float, sd: float) -> np.ndarray:
    """Move each xyxy box's centre by `sd` of its size and scale its width and height by about `scale`."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    centre = centre + rng.normal(0.0, sd, size.shape) * size
    size = size * scale * rng.lognormal(0.0, sd, size.shape)
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def _random_boxes(rng: np.random.Generator, n: int, image_size: float) -> np.ndarray:
    """Boxes of opacity-like sizes placed over the lung fields."""
    size = rng.uniform(0.08, 0.35, (n, 2)) * image_size
    centre = rng.uniform(0.2, 0.8, (n, 2)) * image_size
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)
