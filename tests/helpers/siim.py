"""A tiny synthetic SIIM-COVID root, cached and folded, read through `CXRDET_DATA` (as a bundle's notebook reads
Kaggle's data): what the SIIM pipeline and bundle tests train on.

`write_siim_dataset` renders it with `cxrdet.synth.siim` (small images), caches it at `SIZE` px in the default cache
folder of `CXRDET_OUTPUTS` and writes a study-grouped fold file into `outputs/folds/`; the configs then name the fold
file (`data.folds`) and leave `data.root` and `data.cache` unset, so that a run's config is bundle-ready.
"""

from __future__ import annotations

from pathlib import Path

from cxrdet import paths
from cxrdet.competitions.siim import SiimLayout
from cxrdet.data.folds import images_for_folds, make_folds, write_folds
from cxrdet.data.prepare import prepare_cache
from cxrdet.synth.siim import generate_siim_dataset

SIZE = 64
FOLDS = "siim_tiny_k2"


def write_siim_dataset(root: Path, n_train: int = 16, n_test: int = 4, k: int = 2, seed: int = 5) -> dict[str, str]:
    """The data set at `root` (which `CXRDET_DATA` must name) and its `--cfg-options`.

    Needs `CXRDET_OUTPUTS` set: the cache and the fold file go there.
    """
    generate_siim_dataset(root, n_train, n_test, seed=seed, scale=0.05, workers=1, grid=96)
    prepare_cache(root, SIZE, workers=1, progress=False)
    images = images_for_folds(SiimLayout(root).labels_csv)
    write_folds(make_folds(images, k=k, seed=seed), paths.generated_folds_dir() / f"{FOLDS}.csv")
    return {"data.folds": FOLDS, "data.size": str(SIZE)}
