"""The squares data set: a tiny on-disk Kaggle-layout data set (labels, prepare cache, fold file) that a tiny
detector or classifier learns in a few CPU epochs. Shared by the training, prediction, report, export and inference
tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from cxrdet import paths

REPO = paths.REPO_ROOT
TINY = REPO / "configs" / "experiments" / "retinanet_mnv3s_128_tiny12e.py"
SIZE = 64
ORIG = 1024
N_TRAIN, N_TEST, K = 45, 4, 3


def write_squares_dataset(folder: Path, seed: int = 0) -> dict[str, str]:
    """A Kaggle-layout labels CSV, a prepare cache of 64-px PNGs and a 3-fold file: dark noisy images, two thirds
    with one bright rectangle (the box), so a tiny detector learns it in a few epochs.

    Returns:
        `--cfg-options` values that point a config at it.
    """
    rng = np.random.default_rng(seed)
    root, cache = folder / "root", folder / "cache"
    root.mkdir(parents=True)
    rows, meta = [], []
    ids = [f"img{i:03d}" for i in range(N_TRAIN + N_TEST)]
    for i, image_id in enumerate(ids):
        split = "train" if i < N_TRAIN else "test"
        pixels = rng.normal(40, 8, (SIZE, SIZE)).clip(0, 255)
        if i % 3 != 2:
            w, h = rng.integers(14, 26, 2)
            x, y = rng.integers(2, SIZE - 28, 2)
            pixels[y : y + h, x : x + w] = 210
            box = [x * ORIG / SIZE, y * ORIG / SIZE, w * ORIG / SIZE, h * ORIG / SIZE]
            if split == "train":
                rows.append([image_id, *box, 1])
        elif split == "train":
            rows.append([image_id, None, None, None, None, 0])
        png = paths.CacheLayout(cache).image(split, image_id)
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8), mode="L").save(png)
        meta.append({"image_id": image_id, "split": split, "orig_width": ORIG, "orig_height": ORIG, "bits_stored": 8,
                     "photometric": "MONOCHROME2", "pixel_spacing_row": 0.14, "pixel_spacing_col": 0.14, "sex": "F",
                     "age": 50, "view": "PA", "source": f"{image_id}.dcm", "cache": png.relative_to(cache).as_posix()})
    pd.DataFrame(rows, columns=["patientId", "x", "y", "width", "height", "Target"]).to_csv(
        paths.KaggleLayout(root).labels_csv, index=False)
    pd.DataFrame(meta).to_parquet(paths.CacheLayout(cache).meta, index=False)
    folds = folder / "squares_k3.csv"
    train_ids = ids[:N_TRAIN]
    pd.DataFrame({"image_id": train_ids, "patient_id": train_ids, "fold": [i % K for i in range(N_TRAIN)]}).to_csv(
        folds, index=False)
    return {"data.root": str(root), "data.cache": str(cache), "data.folds": str(folds)}


def tiny_options(data: dict[str, str], **extra: Any) -> list[str]:
    """`--cfg-options` for a quick CPU run of the tiny config on the squares data."""
    options = {**data, "data.size": SIZE, "data.batch_size": 4, "train.epochs": 1, "train.progress_bar": False,
               "train.accelerator": "cpu", "train.log_every_n_steps": 1, **extra}
    return [f"{k}={v}" for k, v in options.items()]
