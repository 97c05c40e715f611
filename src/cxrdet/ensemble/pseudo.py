"""Pseudo-labels: a tuned ensemble's test boxes as a label table that the next training round adds to every fold.

SIIM-COVID's first place (and VinBigData's top teams) trained a second round on the test images labelled by the
first round's ensemble: boxes whose fused score is above one threshold, on images whose classifier probability is
above another. `cxrdet pseudo-label ENSEMBLE --out NAME` does that with the ensemble's tuned parameters
(`cxrdet.ensemble.submit.predict_test`, so exactly the boxes its submission would hold, before the CSV's clipping):

- a box is kept when its fused score is >= `box_thr`; an image is kept when it has a kept box and its gating
  classifier's probability (the ensemble's `classifier`, when it has one) is >= `image_thr`;
- with `negatives_below=p`, images with no box at all and a classifier probability below `p` are kept as negatives
  (an ensemble without a classifier has no such evidence: refused);
- scores are kept (`score`, the fused confidence; `image_prob`, the classifier's), so a later round can weight or
  re-threshold them; training reads the boxes as hard targets.

Output: `outputs/pseudo/NAME/labels.csv` (`image_id, x1, y1, x2, y2, label, score, image_prob`; xyxy pixels of the
original image; an image kept as a negative has one row with empty box columns) and `provenance.json` naming the
source ensemble (its config and `params.json` with their hashes, both CV scores), the thresholds, the counts, the
table's hash and the git revision. A training config adds the round with `data.pseudo='NAME'`
(`cxrdet.data.datamodule`): its images join every fold's training set and never a validation fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet import paths
from cxrdet.ensemble.spec import EnsembleSpec
from cxrdet.ensemble.submit import predict_test, tuned_test
from cxrdet.errors import ConfigError
from cxrdet.io import file_sha256, write_csv, write_json
from cxrdet.provenance import git_revision

LABEL_COLUMNS: tuple[str, ...] = ("image_id", "x1", "y1", "x2", "y2", "label", "score", "image_prob")


@dataclass(frozen=True)
class PseudoResult:
    """What a pseudo-label round wrote and kept."""

    labels: Path
    provenance: Path
    n_images: int
    n_boxes: int
    n_negatives: int


def pseudo_label(spec: EnsembleSpec, name: str, box_thr: float = 0.5, image_thr: float = 0.5,
                 negatives_below: float | None = None) -> PseudoResult:
    """Write the pseudo-label round `name` from the tuned ensemble `spec`'s test boxes (see the module docstring).

    Raises:
        ConfigError: A threshold outside [0, 1], `negatives_below` without a classifier, or the ensemble not tuned.
        TableError: Missing test prediction files (all listed).
    """
    for what, value in (("box_thr", box_thr), ("image_thr", image_thr), ("negatives_below", negatives_below)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"--{what.replace('_', '-')}={value}: expected a probability in [0, 1]")
    ensemble, record, params, sources, image_ids, test = tuned_test(spec)
    if negatives_below is not None and test.prob is None:
        raise ConfigError(f"--negatives-below={negatives_below}: {spec.path} gates with no classifier, so no image is "
                          "known to be negative; leave it out or use an ensemble with a classifier")
    boxes, ids = predict_test(spec, params, image_ids, test, record.get("calibration"))
    frame = boxes.to_frame(ids)
    prob = pd.Series(test.prob if test.prob is not None else np.nan, index=ids, name="image_prob")
    frame["image_prob"] = frame["image_id"].map(prob)
    kept = frame[frame["score"] >= box_thr]
    if test.prob is not None:
        kept = kept[kept["image_prob"] >= image_thr]
    positives = kept["image_id"].unique()
    negatives: list[str] = []
    if negatives_below is not None:
        with_boxes = set(frame["image_id"])
        negatives = [i for i in ids if i not in with_boxes and prob[i] < negatives_below]
    table = pd.concat([
        kept[list(LABEL_COLUMNS)],
        pd.DataFrame({"image_id": negatives, "image_prob": prob.reindex(negatives).to_numpy()}),
    ], ignore_index=True).reindex(columns=list(LABEL_COLUMNS))  # fmt: skip
    table["label"] = table["label"].astype("Int64")
    folder = paths.pseudo_dir(name)
    labels = write_csv(folder / "labels.csv", table, index=False)
    provenance = write_json(folder / "provenance.json", {
        "name": name, "labels": str(labels), "sha256": file_sha256(labels),
        "source_ensemble": {"name": spec.name, "config": str(spec.path), "config_sha256": file_sha256(spec.path),
                            "params_json": str(ensemble.params_path),
                            "params_sha256": file_sha256(ensemble.params_path), "scores": record["scores"]},
        "competition": sources.competition.name,
        "thresholds": {"box_thr": box_thr, "image_thr": image_thr if test.prob is not None else None,
                       "negatives_below": negatives_below},
        "counts": {"test_images": len(ids), "images": int(len(positives) + len(negatives)),
                   "positive_images": int(len(positives)), "negative_images": len(negatives),
                   "boxes": int(len(kept))},
        "git": git_revision(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
    })  # fmt: skip
    return PseudoResult(labels, provenance, int(len(positives) + len(negatives)), int(len(kept)), len(negatives))
