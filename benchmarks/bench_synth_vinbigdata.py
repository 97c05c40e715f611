"""Synthetic VinBigData labels against the real table's published figures, side by side.

    python benchmarks/bench_synth_vinbigdata.py [--images 600] [--measure-signs]

Renders `--images` synthetic training images (their true boxes come from the drawn signs, so labels need pixels),
writes every reader's rows as `cxrdet synth --competition vinbigdata` does, and prints, scaled to the real 15,000
training images: the box rows of each class, the "No finding" images and rows, and rows per image, beside the real
`train.csv`'s counts (`cxrdet.synth.vinbigdata.REAL_BOX_ROWS`, sources in that module). `--measure-signs` prints
instead how many boxes each class's sign draws per finding (`BOXES_PER_FINDING`), over images that have it.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

from cxrdet.competitions.vinbigdata import CLASSES, NO_FINDING_ID
from cxrdet.synth.vinbigdata import (
    REAL_BOX_ROWS,
    REAL_NO_FINDING_IMAGES,
    REAL_TRAIN_IMAGES,
    VinImage,
    label_rows,
    render_vinbigdata_image,
    sample_vinbigdata_images,
)


def _truth(image: VinImage) -> list:
    return render_vinbigdata_image(image, grid=128)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--measure-signs", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    images = sample_vinbigdata_images(args.images, 0, args.seed, scale=0.1)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        truths = list(pool.map(_truth, images, chunksize=8))
    if args.measure_signs:
        print(f"{'class':<20} {'images':>7} {'boxes/finding':>14}")
        for k, name in enumerate(CLASSES):
            having = [t for i, t in zip(images, truths, strict=True) if k in i.findings]
            n = [sum(b[0] == k for b in t) for t in having]
            print(f"{name:<20} {len(having):>7} {np.mean(n) if n else float('nan'):>14.2f}")
        return
    rows = label_rows(images, truths, args.seed)
    factor = REAL_TRAIN_IMAGES / len(images)
    counts = rows["class_name"].value_counts()
    normal_images = sum(not t for t in truths)
    print(f"{len(images)} synthetic training images rendered in {time.perf_counter() - start:.1f} s; counts scaled "
          f"x{factor:.1f} to the real {REAL_TRAIN_IMAGES:,}")
    print(f"{'':<20} {'synthetic':>10} {'real':>8} {'ratio':>6}")
    table = [(name, counts.get(name, 0) * factor, REAL_BOX_ROWS[name]) for name in CLASSES]
    table.append(("No finding images", normal_images * factor, REAL_NO_FINDING_IMAGES))
    table.append(("No finding rows", counts.get("No finding", 0) * factor, 3 * REAL_NO_FINDING_IMAGES))
    table.append(("rows (all)", len(rows) * factor, sum(REAL_BOX_ROWS.values()) + 3 * REAL_NO_FINDING_IMAGES))
    for name, synth, real in table:
        print(f"{name:<20} {synth:>10.0f} {real:>8,} {synth / real:>6.2f}")
    abnormal = rows[rows["class_id"] != NO_FINDING_ID]
    per_image = abnormal.groupby("image_id")["rad_id"].nunique()
    print(f"readers drawing boxes per abnormal image: {pd.Series(per_image).value_counts().sort_index().to_dict()}")


if __name__ == "__main__":
    main()
