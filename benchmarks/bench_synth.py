"""Synthetic data generator: label statistics against the real RSNA tables, and rendering speed.

Samples a label table with `cxrdet.synth.rsna.sample_labels` (no pixels) and prints each statistic next to the
real stage-2 table's value, with their ratio: positive rate (overall and per view), boxes per positive image, box
width / height / centre quantiles, share of boxes in the image-left lung, AP share, male share, age quantiles.
Checks that the calibration constants in synth.py still match the real tables, then times the rendering of a
small data set (DICOMs written) with the given worker count and projects the demo's 400 + 100 images.

The NIH part (`cxrdet.synth.nih`) does the same against the real NIH ChestX-ray14 table: per-finding
prevalence synthetic vs real (overall and per view), 'No Finding' share, findings per positive image, images per
patient, the share of a patient's next image repeating a finding, AP and male shares; then times rendering PNGs.

Run: .venv/bin/python benchmarks/bench_synth.py [--n 2000] [--render 40] [--workers 2] [--print-calibration]
         [--only rsna|nih] [--nih-n 20000] [--nih-render 40] [--nih-size 256] [--print-nih-calibration]
`--print-calibration` (`--print-nih-calibration`) prints the `CALIBRATION` (`NIH_CALIBRATION`) literal to paste into
src/cxrdet/synth/rsna.py (synth/nih.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrdet import paths
from cxrdet.synth import nih as synth_nih
from cxrdet.synth import rsna as synth
from cxrdet.data.labels import NIH_FINDINGS

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def format_calibration(obj: Any, indent: int = 4, level: int = 1, prefix: int = 0) -> str:
    """A Python literal of the calibration dict, one leaf list per line (wrapped when longer), within 120 columns.

    `prefix` is the width of what precedes the literal on its first line.
    """
    pad = " " * (indent * level)
    close = " " * (indent * (level - 1))
    if isinstance(obj, dict):
        if all(not isinstance(v, dict | list) for v in obj.values()):
            return "{" + ", ".join(f"{json.dumps(k)}: {v!r}" for k, v in obj.items()) + "}"
        inner = ",\n".join(f"{pad}{json.dumps(k)}: {format_calibration(v, indent, level + 1, len(pad + k) + 4)}"
                           for k, v in obj.items())  # fmt: skip
        return "{\n" + inner + ",\n" + close + "}"
    if isinstance(obj, list) and obj and isinstance(obj[0], list):
        inner = ",\n".join(f"{pad}{format_calibration(v, indent, level + 1, len(pad))}" for v in obj)
        return "[\n" + inner + ",\n" + close + "]"
    if isinstance(obj, list) and prefix + len(repr(obj)) + 1 > 120:
        lines = textwrap.wrap(", ".join(map(repr, obj)), width=120 - len(pad))
        return "[\n" + "\n".join(pad + line for line in lines) + ",\n" + close + "]"
    return repr(obj)


def statistics(labels: pd.DataFrame, per_image: pd.DataFrame) -> dict[str, float]:
    """The compared figures of one label table (RSNA format, xywh pixels of 1024) and its per-image fields.

    Args:
        labels: `patientId,x,y,width,height,Target`, one row per box, negatives one row with empty box fields.
        per_image: One row per image with `patientId, view, sex, age`.
    """
    img = labels.groupby("patientId").agg(positive=("Target", "max"), n=("x", "count")).reset_index()
    img = img.merge(per_image, on="patientId", how="inner", validate="one_to_one")
    out: dict[str, float] = {"images": float(len(img)), "positive rate": img["positive"].mean()}
    for view in ("AP", "PA"):
        out[f"positive rate | {view}"] = img.loc[img["view"] == view, "positive"].mean()
    positives = img[img["positive"] == 1]
    for k in (1, 2, 3, 4):
        out[f"positives with {k} box(es)"] = (positives["n"].clip(upper=4) == k).mean()
    boxes = labels.dropna(subset=["x"])
    cx, cy = boxes["x"] + boxes["width"] / 2, boxes["y"] + boxes["height"] / 2
    for name, values in (("width", boxes["width"]), ("height", boxes["height"]), ("centre x", cx),
                         ("centre y", cy)):  # fmt: skip
        for q, v in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True):
            out[f"box {name} q{int(q * 100)}"] = v
    out["boxes in image-left lung"] = (cx < 512).mean()
    out["AP share"] = (img["view"] == "AP").mean()
    out["male share"] = (img["sex"] == "M").mean()
    ages = img.loc[img["age"] <= 100, "age"]
    for q, v in zip(QUANTILES, np.quantile(ages, QUANTILES), strict=True):
        out[f"age q{int(q * 100)}"] = v
    return out


def nih_statistics(table: pd.DataFrame) -> dict[str, float]:
    """The compared figures of one NIH table (`synth_nih.NIH_TABLE_COLUMNS`, as `pandas.read_csv` reads the file)."""
    findings = table["Finding Labels"].str.get_dummies(sep="|").reindex(columns=list(NIH_FINDINGS), fill_value=0)
    present = findings.to_numpy() > 0
    n_findings = present.sum(axis=1)
    ap = (table["View Position"] == "AP").to_numpy()
    out: dict[str, float] = {"images": float(len(table)), "No Finding": float((n_findings == 0).mean())}
    for k, name in enumerate(NIH_FINDINGS):
        out[name] = float(present[:, k].mean())
    for view, rows in (("AP", ap), ("PA", ~ap)):
        out[f"any finding | {view}"] = float((n_findings[rows] > 0).mean())
    out["findings per positive image"] = float(n_findings[n_findings > 0].mean())
    out["positives with 2+ findings"] = float((n_findings[n_findings > 0] >= 2).mean())
    per_patient = table.groupby("Patient ID").size()
    out["images per patient"] = float(per_patient.mean())
    out["patients with 1 image"] = float((per_patient == 1).mean())
    order = table.assign(fu=table["Image Index"].str.slice(9, 12).astype(int)).sort_values(["Patient ID", "fu"])
    same = order["Patient ID"].to_numpy()[1:] == order["Patient ID"].to_numpy()[:-1]
    ordered = present[order.index.to_numpy()]
    before, after = ordered[:-1][same], ordered[1:][same]
    # Of the findings an image has, the share that the patient's next image has too.
    out["finding repeated on next image"] = float((before & after).sum() / max(1, before.sum()))
    out["AP share"] = float(ap.mean())
    out["male share"] = float((table["Patient Gender"] == "M").mean())
    return out


def nih_main(args: argparse.Namespace) -> None:
    """The NIH part: calibration check, statistics synthetic vs real, PNG rendering speed."""
    path = paths.real_nih_labels()
    if not path.exists():
        sys.exit(f"real NIH table not found: {path} (set CXRDET_SHARED_DATA or place ../shared/data)")
    real = pd.read_csv(path)
    fresh = synth_nih.compute_nih_calibration(real)
    if args.print_nih_calibration:
        print("NIH_CALIBRATION: Final[dict[str, Any]] = " + format_calibration(fresh))
        return
    state = ("match the real table" if fresh == synth_nih.NIH_CALIBRATION
             else "DIFFER from the real table: paste the output of --print-nih-calibration")  # fmt: skip
    print(f"calibration constants in synth_nih.py {state}")

    t0 = time.perf_counter()
    table = synth_nih.sample_nih_labels(args.nih_n, seed=args.seed)
    sample_s = time.perf_counter() - t0
    r, s = nih_statistics(real), nih_statistics(table)
    print(f"\nNIH statistics: real Data_Entry_2017_v2020 vs synthetic (sample_nih_labels({args.nih_n}, "
          f"seed={args.seed}), {sample_s:.2f} s)")
    print(f"{'statistic':32s} {'real':>10s} {'synthetic':>10s} {'syn/real':>9s}")
    for key, real_value in r.items():
        ratio = s[key] / real_value if real_value else float("nan")
        print(f"{key:32s} {real_value:10.4f} {s[key]:10.4f} {ratio:9.3f}")

    if args.nih_render > 0:
        with tempfile.TemporaryDirectory() as tmp:
            summary = synth_nih.generate_nih_dataset(Path(tmp) / "nih", args.nih_render, 0, seed=args.seed,
                                                     size=args.nih_size, workers=args.workers, progress=False)
        rate = args.nih_render / summary.seconds
        print(f"\nNIH rendering: {args.nih_render} PNGs of {args.nih_size} px with {args.workers} worker(s): "
              f"{summary.seconds:.1f} s, {rate:.2f} images/s, {1000 / rate:.0f} ms/image wall")
        print(f"projected NIH demo data set (400 images): {400 / rate:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="synthetic images whose labels are sampled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", type=int, default=40, help="images rendered for the timing (0: skip)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--print-calibration", action="store_true")
    parser.add_argument("--only", choices=("rsna", "nih"), default=None, help="run one part only")
    parser.add_argument("--nih-n", type=int, default=20000, help="synthetic NIH images whose labels are sampled")
    parser.add_argument("--nih-render", type=int, default=40, help="NIH PNGs rendered for the timing (0: skip)")
    parser.add_argument("--nih-size", type=int, default=256, help="side of the timed NIH PNGs")
    parser.add_argument("--print-nih-calibration", action="store_true")
    args = parser.parse_args()
    if args.only != "nih" and not args.print_nih_calibration:
        rsna_main(args)
    if args.only != "rsna" and not args.print_calibration:
        nih_main(args)


def rsna_main(args: argparse.Namespace) -> None:
    """The RSNA part: calibration check, label statistics synthetic vs real, DICOM rendering speed."""
    labels_path, headers_path = paths.real_rsna_labels(), paths.real_rsna_headers()
    missing = [str(p) for p in (labels_path, headers_path) if not p.exists()]
    if missing:
        sys.exit(f"real RSNA tables not found: {', '.join(missing)} (set CXRDET_SHARED_DATA or place ../shared/data)")
    real_labels = pd.read_csv(labels_path)
    real_headers = pd.read_csv(headers_path)

    fresh = synth.compute_calibration(real_labels, real_headers)
    if args.print_calibration:
        print("CALIBRATION: Final[dict[str, Any]] = " + format_calibration(fresh))
        return
    state = "match the real tables" if fresh == synth.CALIBRATION else "DIFFER from the real tables: paste the output"
    print(f"calibration constants in synth.py {state}" + ("" if fresh == synth.CALIBRATION else
                                                             " of --print-calibration"))  # fmt: skip

    real_images = real_headers.rename(columns={"PatientID": "patientId", "ViewPosition": "view", "PatientSex": "sex",
                                               "PatientAge": "age"})[["patientId", "view", "sex", "age"]]  # fmt: skip
    t0 = time.perf_counter()
    table = synth.sample_labels(args.n, seed=args.seed)
    sample_s = time.perf_counter() - t0
    syn_images = table.drop_duplicates("patientId")[["patientId", "view", "sex", "age"]]
    real = statistics(real_labels, real_images)
    syn = statistics(table[list(synth.LABEL_COLUMNS)], syn_images)

    print(f"\nlabel statistics: real RSNA stage 2 vs synthetic (sample_labels({args.n}, seed={args.seed}), "
          f"{sample_s:.2f} s)")
    print(f"{'statistic':32s} {'real':>10s} {'synthetic':>10s} {'syn/real':>9s}")
    for key, r in real.items():
        s = syn[key]
        ratio = s / r if r else float("nan")
        print(f"{key:32s} {r:10.3f} {s:10.3f} {ratio:9.3f}")

    if args.render > 0:
        with tempfile.TemporaryDirectory() as tmp:
            summary = synth.generate_dataset(Path(tmp) / "data", args.render, 0, seed=args.seed,
                                             workers=args.workers, progress=False)  # fmt: skip
        rate = args.render / summary.seconds
        print(f"\nrendering: {args.render} images (render + JPEG + DICOM write) with {args.workers} worker(s): "
              f"{summary.seconds:.1f} s, {rate:.2f} images/s, {1000 / rate:.0f} ms/image wall")
        print(f"projected demo data set (400 + 100 images): {500 / rate:.0f} s")


if __name__ == "__main__":
    main()
