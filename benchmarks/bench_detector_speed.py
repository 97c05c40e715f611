"""Training speed of every shipped detector config on this machine: images per second of training steps.

For each detector config in `configs/experiments/` (classifiers left out), built as shipped (from scratch, at its own
input size, EMA and gradient clipping as configured), a few training steps (forward, backward, clipping, optimiser,
EMA) over random batches with one box per image, after one warm-up step; model cost does not depend on pixel values.
Batch 2 for every config so the figures compare (the shipped batch sizes differ). The figure is the fastest of
`--rounds` passes, so load from another process biases it less.

Prints one markdown row per config (the README's model table): config, family, backend, licence of the backend, input
size, parameters (millions), train images/s; and writes them to `<outputs>/bench/detector_speed.json`.

Run: .venv/bin/python benchmarks/bench_detector_speed.py [--threads 2] [--steps 2] [--only rtmdet,yolox]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import fake_batches, interleaved_throughput  # noqa: E402

from cxrdet import paths  # noqa: E402
from cxrdet.config import load_config, to_dict  # noqa: E402
from cxrdet.models.lit_detector import LitDetector  # noqa: E402
from cxrdet.tasks import task_name  # noqa: E402

# The backend that builds a config's model, by its `model.type` (an mmdet class name when not one of these).
BACKENDS = {"retinanet": "torchvision", "fcos": "torchvision", "faster_rcnn": "torchvision",
            "ssd_vgg16": "torchvision", "ssdlite_mobilenet_v3": "torchvision", "efficientdet": "effdet"}
LICENCES = {"torchvision": "BSD-3-Clause", "mmdet": "Apache-2.0", "effdet": "Apache-2.0"}
FAMILIES = {"retinanet": "RetinaNet", "fcos": "FCOS", "faster_rcnn": "Faster R-CNN", "ssd_vgg16": "SSD",
            "ssdlite_mobilenet_v3": "SSDlite", "efficientdet": "EfficientDet",
            # mmdet's detector classes whose name is not the family's (mmdet's SSD is its SingleStageDetector).
            "SingleStageDetector": "SSD", "FasterRCNN": "Faster R-CNN", "CascadeRCNN": "Cascade R-CNN",
            "MaskRCNN": "Mask R-CNN", "YOLOV3": "YOLOv3"}


def detector_configs(only: list[str]) -> list[Path]:
    """The shipped detector configs (task `detect`), those whose name contains one of `only` when given."""
    out = []
    for path in sorted((paths.CONFIGS_DIR / "experiments").glob("*.py")):
        if only and not any(word in path.stem for word in only):
            continue
        if task_name(to_dict(load_config(path))) == "detect":
            out.append(path)
    return out


def describe(cfg: dict[str, Any]) -> tuple[str, str]:
    """(family, backend) of a resolved config."""
    kind = str(cfg["model"]["type"])
    backend = BACKENDS.get(kind, "mmdet")
    return FAMILIES.get(kind, kind), backend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per pass (batch 2)")
    parser.add_argument("--rounds", type=int, default=1, help="passes; the fastest counts")
    parser.add_argument("--only", default="", help="comma-separated parts of config names to keep")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}, torch threads: {torch.get_num_threads()}, "
          f"cores: {os.cpu_count()}, batch 2, {args.steps} steps per pass, best of {args.rounds}", flush=True)
    print("| config | family | backend | licence | input | parameters | train images/s |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for path in detector_configs([w for w in args.only.split(",") if w]):
        # A constant learning rate: there is no Trainer to size a schedule with.
        cfg = to_dict(load_config(path, ["data.batch_size=2", "lr_schedule={'type':'constant'}"]))
        family, backend = describe(cfg)
        size = int(cfg["data"]["size"])
        start = time.perf_counter()
        (rate,) = interleaved_throughput([cfg], fake_batches(size, 2, args.steps), args.rounds)
        params = sum(p.numel() for p in LitDetector(cfg).model.parameters()) / 1e6
        row = {"config": path.stem, "family": family, "backend": backend, "licence": LICENCES[backend],
               "size": size, "params_m": round(params, 1), "train_images_per_s": round(rate, 3),
               "wall_s": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(f"| `{path.stem}` | {family} | {backend} | {LICENCES[backend]} | {size} px | {params:.1f} M | "
              f"{rate:.2f} |", flush=True)
    bench = paths.outputs_dir() / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    (bench / "detector_speed.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {bench / 'detector_speed.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
