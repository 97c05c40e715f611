"""A tiny synthetic VinBigData root, cached and folded: what the VinBigData data-module and pipeline tests train on.

`write_vinbigdata_dataset` renders it with `cxrdet.synth.vinbigdata` (small images), caches it with `cxrdet prepare`
and writes a multi-label stratified fold file; it returns the `--cfg-options` that point a VinBigData config at it.
"""

from __future__ import annotations

from pathlib import Path

from cxrdet.competitions.vinbigdata import VinBigDataLayout
from cxrdet.data.folds import images_for_folds, label_classes, make_folds, multilabel_classes, write_folds
from cxrdet.data.prepare import prepare_cache
from cxrdet.synth.vinbigdata import generate_vinbigdata_dataset

SIZE = 64


def write_vinbigdata_dataset(folder: Path, n_train: int = 30, n_test: int = 6, k: int = 2, seed: int = 7
                             ) -> dict[str, str]:
    root, cache = folder / "vinbigdata", folder / "cache"
    generate_vinbigdata_dataset(root, n_train, n_test, seed=seed, scale=0.06, workers=1, grid=128)
    prepare_cache(root, SIZE, out=cache, workers=1, progress=False)
    labels = VinBigDataLayout(root).labels_csv
    images = images_for_folds(labels)
    folds = make_folds(images, k=k, seed=seed, multilabel=multilabel_classes(images, label_classes(labels, "auto")))
    path = write_folds(folds, folder / f"vinbigdata_k{k}.csv")
    return {"data.root": str(root), "data.cache": str(cache), "data.folds": str(path), "data.size": str(SIZE)}
