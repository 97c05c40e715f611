"""Does classifier gating help? The demo's ensemble with and without its image-level classifier, side by side.

Reads what `make demo` left: each ensemble's `params.json` (optimistic and honest OOF scores), its submission
(`outputs/demo/submissions/<name>.csv`), the synthetic test labels, and the synthetic truth table, which lists the
unlabelled distractors (tubes, wires, electrodes, dense spots, haze) drawn into each image. For each submission it
prints the scores and where its boxes fall on the test images: on positive images, and on negative images with and
without distractors (false positives the classifier gate is meant to remove).

Run after the demo: .venv/bin/python benchmarks/bench_gating.py [ENSEMBLE ...]
"""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd

from cxrdet import paths
from cxrdet.submission import read_submission

DEFAULT = ("demo_wbf", "demo_wbf_cls")


def box_counts(boxes: pd.DataFrame, image_ids: list[str]) -> pd.Series:
    """Boxes per image (0 for an image without any) of a validated submission's boxes (`image_id, x1, ...`)."""
    return boxes["image_id"].astype(str).value_counts().reindex(image_ids, fill_value=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ensembles", nargs="*", default=list(DEFAULT))
    args = parser.parse_args(argv)

    layout = paths.KaggleLayout(paths.demo_data_dir())
    subs_dir = paths.outputs_dir() / "demo" / "submissions"
    needed = [layout.synth_test_labels, layout.synth_truth] + [subs_dir / f"{e}.csv" for e in args.ensembles] + [
        paths.ensemble_dir(e) / "params.json" for e in args.ensembles]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        print(f"not found: {', '.join(missing)}; run `make demo` first", file=sys.stderr)
        return 1

    labels = pd.read_csv(layout.synth_test_labels)
    positive = set(labels.loc[labels["Target"] == 1, "patientId"].astype(str))
    truth = pd.read_csv(layout.synth_truth, dtype={"image_id": str}).set_index("image_id")
    test_ids = sorted(set(labels["patientId"].astype(str)))
    distractor = truth.loc[test_ids, "distractors"].fillna("").astype(str).ne("")
    groups = {
        "positive": [i for i in test_ids if i in positive],
        "negative, distractors": [i for i in test_ids if i not in positive and distractor[i]],
        "negative, none": [i for i in test_ids if i not in positive and not distractor[i]],
    }
    rows = []
    for name in args.ensembles:
        scores = json.loads((paths.ensemble_dir(name) / "params.json").read_text(encoding="utf-8"))["scores"]
        boxes = box_counts(read_submission(subs_dir / f"{name}.csv"), test_ids)
        row = {"ensemble": name, "OOF optimistic": round(scores["optimistic"], 4),
               "OOF honest": round(scores["honest"], 4)}
        for group, ids in groups.items():
            row[f"{group}: images with boxes"] = f"{int((boxes[ids] > 0).sum())}/{len(ids)}"
            row[f"{group}: boxes"] = int(boxes[ids].sum())
        rows.append(row)
    print(pd.DataFrame(rows).set_index("ensemble").T.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
