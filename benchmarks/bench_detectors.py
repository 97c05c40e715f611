"""The new detectors and the winners' recipe pieces on the synthetic demo data, same CPU budget: honest OOF and test.

Every variant is a five-fold experiment on the demo's data (`scripts/demo.sh` run first, same outputs folder),
trained with the tiny 12-epoch schedule (`scripts/train_many.sh --jobs N`), its OOF and test boxes predicted, then
submitted alone through a one-member ensemble that inherits `configs/ensembles/demo_fcos_tiny.py` (tuned with its
honest nested-CV estimate, `cxrdet tune`), and scored on the synthetic test labels (`cxrdet score`).

Detectors (`--detectors`): tiny FCOS (the baseline), RTMDet-tiny, YOLOX-tiny, DINO (tiny) and EfficientDet-D0 (at
256 px: its 128 px level-7 map is 1 x 1), each from its shipped tiny config.

Recipe pieces (`--recipe`), each on the tiny FCOS:
- `mosaic`: mosaic (p=1, scale 0.5-1) and mixup (p=0.15), both off for the last 2 epochs;
- `tta`: the baseline's models predicting with multi-scale + flip TTA (112/128/144 px, mirrored), WBF-merged;
- `swa`: the baseline's SWA weights (last 3 epochs, BatchNorm recomputed; the baseline trains with `train.swa`);
- `pseudo`: one pseudo-label round: the baseline ensemble's test boxes with fused score >= 0.5 added to every
  fold's training set, then a fresh five-fold run.

Prints one row per variant: optimistic and honest OOF score, synthetic test score, training wall time; writes them to
`<outputs>/bench/detectors.json` after each variant (rows of earlier runs kept, a variant run again replaced).

Run, after the demo:
    CXRDET_OUTPUTS=outputs .venv/bin/python benchmarks/bench_detectors.py --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DETECTORS: dict[str, str] = {
    "fcos": "fcos_mnv3s_128_tiny12e",
    "rtmdet": "mmdet-rtmdet-tiny_cspnext_128_tiny12e",
    "yolox": "mmdet-yolox-tiny_cspdarknet_128_tiny12e",
    "dino": "mmdet-dino-4scale_mnv3s_128_tiny12e",
    "effdet": "efficientdet-d0_effb0_256_tiny12e",
}
RECIPE = ("mosaic", "tta", "swa", "pseudo")
MOSAIC = ("data = dict(augment=dict(mosaic=dict(prob=1.0, scale=(0.5, 1.0), off_last=2), "
          "mixup=dict(prob=0.15, beta=32.0, off_last=2)))")
TTA = "scales=112/128/144+hflip"
PSEUDO_ROUND = "bench-fcos-pseudo1"


def cxrdet() -> str:
    return os.environ.get("CXRDET", str(REPO / ".venv" / "bin" / "cxrdet"))


def run(cmd: list[str]) -> str:
    """Run a command, echo its last lines, return its stdout; raise with its output when it fails."""
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def experiment_config(folder: Path, name: str, base: str, extra: str = "") -> Path:
    """`<folder>/<name>.py`: the shipped config `base` plus `extra` (the run folders are named `name`)."""
    return write(folder / f"{name}.py", f"_base_ = {str(REPO / 'configs' / 'experiments' / f'{base}.py')!r}\n{extra}\n")


def ensemble_config(folder: Path, experiment: str) -> Path:
    """A one-member ensemble of `experiment`, tuned and merged as the demo's FCOS alone."""
    base = REPO / "configs" / "ensembles" / "demo_fcos_tiny.py"
    return write(folder / f"ens_{experiment.replace('-', '_')}.py",
                 f"_base_ = {str(base)!r}\nmembers = [dict(experiment={experiment!r}, folds=[0, 1, 2, 3, 4])]\n")


def train(config: Path, jobs: int) -> float:
    start = time.perf_counter()
    run(["bash", "scripts/train_many.sh", "--jobs", str(jobs), str(config), "--", "--overwrite", "--predict", "oof",
         "--predict", "test"])
    return time.perf_counter() - start


def predict(config: Path, *options: str) -> None:
    for fold in range(5):
        run([cxrdet(), "predict", str(config), "--fold", str(fold), "--split", "oof", "--split", "test", *options])


def evaluate(ensemble: Path, test_labels: Path, subs: Path) -> dict[str, float]:
    """Tune (fresh study), submit and score one ensemble: optimistic, honest and test scores."""
    from cxrdet import paths

    name = ensemble.stem
    shutil.rmtree(paths.ensemble_dir(name), ignore_errors=True)
    run([cxrdet(), "tune", str(ensemble)])
    csv = subs / f"{name}.csv"
    run([cxrdet(), "submit", str(ensemble), "--out", str(csv)])
    scored = json.loads(run([cxrdet(), "score", "--labels", str(test_labels), "--submission", str(csv),
                             "--json"]).strip().splitlines()[-1])
    scores = json.loads((paths.ensemble_dir(name) / "params.json").read_text())["scores"]
    return {"optimistic": float(scores["optimistic"]), "honest": float(scores["honest"]),
            "test": float(scored["score"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated, of " + ",".join(DETECTORS))
    parser.add_argument("--recipe", default=",".join(RECIPE), help="comma-separated, of " + ",".join(RECIPE))
    parser.add_argument("--jobs", type=int, default=2, help="folds trained side by side")
    parser.add_argument("--test-labels", type=Path, default=None,
                        help="synthetic test labels (default <outputs>/demo/data/synth_test_labels.csv)")
    args = parser.parse_args(argv)
    from cxrdet import paths

    out = paths.outputs_dir()
    labels = args.test_labels or out / "demo" / "data" / "synth_test_labels.csv"
    if not labels.is_file():
        print(f"{labels} not found: run `make demo` (or scripts/demo.sh) with CXRDET_OUTPUTS={out} first",
              file=sys.stderr)
        return 2
    folder, subs = out / "bench_configs" / "detectors", out / "bench" / "detector_submissions"
    detectors = [d for d in args.detectors.split(",") if d]
    recipe = [r for r in args.recipe.split(",") if r]
    if recipe and "fcos" not in detectors:
        detectors.insert(0, "fcos")  # the recipe pieces are measured against the baseline
    # Rows of earlier runs are kept (a variant measured again replaces its row), and the file is rewritten after every
    # variant, so a run that stops half way loses nothing it measured.
    table = out / "bench" / "detectors.json"
    rows: list[dict[str, Any]] = json.loads(table.read_text()) if table.is_file() else []

    def record(name: str, experiment: str, wall: float | None, **scores: float) -> None:
        rows[:] = [r for r in rows if r["variant"] != name]
        rows.append({"variant": name, "experiment": experiment, "train_s": wall, **scores})
        table.parent.mkdir(parents=True, exist_ok=True)
        tmp = table.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        tmp.replace(table)
        print(f"{name:14s} optimistic {scores['optimistic']:.4f}  honest {scores['honest']:.4f}  test "
              f"{scores['test']:.4f}  train {wall if wall is None else round(wall)} s", flush=True)

    prepared: set[int] = {128}  # the demo's cache
    for det in detectors:
        name = f"bench-{det}"
        size = 256 if det == "effdet" else 128  # EfficientDet's tiny config is 256 px: its own prepare cache
        if size not in prepared:
            run([cxrdet(), "prepare", "--data", str(labels.parent), "--size", str(size)])
            prepared.add(size)
        # The baseline also averages its last epochs, for the `swa` row (its best checkpoint is unchanged by it).
        extra = "train = dict(swa=dict(epochs=3, bn_batches=100))" if det == "fcos" and "swa" in recipe else ""
        config = experiment_config(folder, name, DETECTORS[det], extra)
        wall = train(config, args.jobs)
        ensemble = ensemble_config(folder, name)
        record(det, name, wall, **evaluate(ensemble, labels, subs))
        if det == "fcos" and "pseudo" in recipe:
            run([cxrdet(), "pseudo-label", str(ensemble), "--out", PSEUDO_ROUND, "--box-thr", "0.5"])
    base_config, base_ensemble = folder / "bench-fcos.py", ensemble_config(folder, "bench-fcos")
    for piece in recipe:
        if piece == "mosaic":
            config = experiment_config(folder, "bench-fcos-mosaic", DETECTORS["fcos"], MOSAIC)
            wall = train(config, args.jobs)
            record("fcos+mosaic", config.stem, wall, **evaluate(ensemble_config(folder, config.stem), labels, subs))
        elif piece == "pseudo":
            config = experiment_config(folder, "bench-fcos-pseudo", DETECTORS["fcos"],
                                       f"data = dict(pseudo={PSEUDO_ROUND!r})")
            wall = train(config, args.jobs)
            record("fcos+pseudo", config.stem, wall, **evaluate(ensemble_config(folder, config.stem), labels, subs))
        elif piece in ("tta", "swa"):
            options = ["--tta", TTA] if piece == "tta" else ["--checkpoint", "swa"]
            predict(base_config, *options)
            record(f"fcos+{piece}", base_config.stem, None, **evaluate(base_ensemble, labels, subs))
    if "tta" in recipe or "swa" in recipe:
        predict(base_config)  # leave the baseline's own predictions in place
    print(f"wrote {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
