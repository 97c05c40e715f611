"""The competitions cxrdet serves, one module each, registered in `COMPETITIONS`.

Importing this package registers them all: `rsna` (RSNA Pneumonia 2018) and `vinbigdata` (VinBigData Chest X-ray
Abnormalities Detection 2020-21) and `siim` (SIIM-FISABIO-RSNA COVID-19 Detection 2021). Ask it:
`get_competition(name)`, `detect(data_root)`, `competition_of_labels(csv)`.
"""

from cxrdet.competitions import rsna, siim, vinbigdata  # noqa: F401 -- each registers its Competition
from cxrdet.competitions.base import (
    COMPETITIONS,
    Competition,
    Evaluator,
    competition_of_labels,
    competition_of_submission,
    data_layout,
    detect,
    get_competition,
    of_data,
    studies_of,
    with_labels,
)

__all__ = ["COMPETITIONS", "Competition", "Evaluator", "competition_of_labels", "competition_of_submission",
           "data_layout", "detect", "get_competition", "of_data", "studies_of",
           "with_labels"]
