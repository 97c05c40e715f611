"""Single-study inference speed: PyTorch against onnxruntime, on this machine's CPU, as a ratio.

For the tiny demo RetinaNet and FCOS (128 px) and RetinaNet ResNet-50 FPN (512 px), with their configs' weights
initialised at random (speed does not depend on the weights' values, and no checkpoint is needed; with random weights
many boxes pass the score floor, so NMS and the per-image cap do their full work): the model is exported to ONNX as
`cxrdet export` does, then both runtimes detect on the same pre-processed images, one image at a time (the bedside
case), with the same number of threads. Prints images per second of each and onnxruntime / PyTorch. DICOM reading
(once) and resizing to the model's input (`prep`, per model), shared by both runtimes, are printed apart.

The classifiers (the tiny MobileNet-V3-S at 128 px and CheXNet's DenseNet-121 at 512 px, random weights) run the
same way: their logits and sigmoid probabilities, one image per call.

Images: the DICOMs of the demo data set (`make demo`, or `cxrdet synth`), read with `cxrdet.data.dicom.read_dicom`.

Run: .venv/bin/python benchmarks/bench_infer.py [--images 30] [--threads 1] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cxrdet import paths
from cxrdet.config import load_config, to_dict
from cxrdet.deploy.export import OnnxClassifier, OnnxDetector, export_classifier_onnx, export_onnx, write_manifest
from cxrdet.deploy.infer import preprocess
from cxrdet.models.classifier import create_classifier
from cxrdet.models.factory import create_detector

CONFIGS = {
    "retinanet_mnv3s_128_tiny12e": 1.0,
    "fcos_mnv3s_128_tiny12e": 1.0,
    "retinanet_r50fpn_512_sgd12e": 0.34,  # fraction of --images: ~16x the pixels and a ResNet-50
    "cls_regnetx002_128_tiny12e": 1.0,
    "cls_densenet121_512_adamw12e": 0.34,
}


def read_pixels(data_root: Path, n: int) -> list[np.ndarray]:
    """Display pixels of the first `n` training DICOMs of a Kaggle-layout folder (name order)."""
    from cxrdet.data.dicom import read_dicom

    files = sorted(paths.KaggleLayout(data_root).train_images.glob("*.dcm"))[:n]
    if not files:
        raise FileNotFoundError(f"no DICOMs in {paths.KaggleLayout(data_root).train_images}: run `make demo` (or "
                                "`cxrdet synth`) first, or pass --data DIR")
    return [read_dicom(f).pixels for f in files]


def images_per_second(run: object, images: Sequence[np.ndarray], warmup: int = 3) -> float:
    """Images per second of `run(image)` over `images`, one at a time, after `warmup` untimed calls."""
    for image in images[:warmup]:
        run(image)
    start = time.perf_counter()
    for image in images:
        run(image)
    return len(images) / (time.perf_counter() - start)


def bench(name: str, pixels: Sequence[np.ndarray], threads: int, folder: Path) -> dict[str, float]:
    """PyTorch and onnxruntime images per second of one config's detector or classifier."""
    classify = name.startswith("cls_")
    off = "model.pretrained=False" if classify else "model.backbone.pretrained=False"
    cfg = load_config(paths.CONFIGS_DIR / "experiments" / f"{name}.py", [off])
    size = int(cfg["data"]["size"])
    torch.manual_seed(0)
    model = (create_classifier if classify else create_detector)(to_dict(cfg)).eval()
    export_graph = export_classifier_onnx if classify else export_onnx
    model_file = export_graph(model, size, folder / f"{name}.onnx")
    # The sidecar only needs what the runners read; `cxrdet export` writes the full one from a checkpoint.
    sidecar = {"input": {"shape": [1, 3, size, size]}}
    if classify:
        sidecar.update(task="classify", classes=list(cfg["data"]["classes"]))
    model_file.with_suffix(".json").write_text(json.dumps(sidecar))
    write_manifest(model_file.parent, [model_file, model_file.with_suffix(".json")])
    start = time.perf_counter()
    inputs = [preprocess(p, size) for p in pixels]
    prep = len(pixels) / (time.perf_counter() - start)
    runner = (OnnxClassifier if classify else OnnxDetector)(model_file, threads=threads)

    def torch_run(image: np.ndarray) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(image))

    return {"size": size, "prep": prep, "torch": images_per_second(torch_run, inputs),
            "onnx": images_per_second(runner, inputs)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30, help="Images per tiny model (default 30).")
    parser.add_argument("--threads", type=int, default=1, help="Threads for both runtimes (default 1).")
    parser.add_argument("--data", type=Path, default=None, help="Kaggle-layout data folder (default: the demo's).")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        start = time.perf_counter()
        pixels = read_pixels(args.data or paths.data_root(), args.images)
        read_rate = len(pixels) / (time.perf_counter() - start)
    except FileNotFoundError as err:
        print(f"bench_infer: {err}", file=sys.stderr)
        return 1
    print(f"torch {torch.__version__}, {args.threads} thread(s), {len(pixels)} demo DICOMs read at {read_rate:.1f} "
          "img/s, one image per call")
    print(f"{'model':<32}{'size':>6}{'prep img/s':>12}{'torch img/s':>13}{'onnx img/s':>12}{'onnx/torch':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, share in CONFIGS.items():
            n = max(4, int(len(pixels) * share))
            r = bench(name, pixels[:n], args.threads, Path(tmp))
            print(f"{name:<32}{r['size']:>6}{r['prep']:>12.1f}{r['torch']:>13.2f}{r['onnx']:>12.2f}"
                  f"{r['onnx'] / r['torch']:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
