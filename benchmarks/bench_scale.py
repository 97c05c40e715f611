"""A real-size data run: synthetic RSNA DICOMs through prepare, folds, the training loader and prediction.

What a competitor needs to plan a run on the real download (26,684 train + 3,000 test 1024 x 1024 JPEG-baseline
DICOMs, RSNA stage 2):

1. `cxrdet synth` writes `--fraction` of that count (default 0.1: 2,668 + 300; 1.0 is the real count) in the Kaggle
   layout, 1024 x 1024 JPEG-baseline DICOMs like the real ones (checked on the first file); seconds, bytes per file.
2. `cxrdet prepare --size 512` decodes them into the PNG cache, in its own process tree, sampled twice a second:
   images/s, and the resident memory of the whole tree (main process and decoding workers) when 25, 50, 75 and 100%
   of the images are done (flat: decoding streams, nothing accumulates per image) and its peak.
3. `cxrdet folds` (5 folds, grouped by patient, stratified) on the synthetic labels and, when `../shared/data`
   holds it, on the real stage-2 label table (26,684 images).
4. One pass of the training data loader of `retinanet_r50fpn_512_sgd12e` (512 px, augmentation on, batch 8) with
   0, 1 and 2 workers: images/s, against what the model consumes (training steps of RetinaNet R-50 FPN at 512 px on
   this machine) and against a GPU's 100-200 images/s (mixed precision; stated, not measured here): the worker
   count that keeps such a GPU fed, from the one-worker figure. The PNG decode alone is timed too.
5. Prediction: the test images through the eval loader and RetinaNet R-50 FPN (random weights: speed does not
   depend on their values), batch 8, no gradient: images/s, and the seconds the full test set would take.

Figures for the full count are the measured rates scaled (marked "scaled"). Every figure is printed by this run.

Run: .venv/bin/python benchmarks/bench_scale.py [--fraction 0.1] [--out DIR] [--loader-images 400]
     [--predict-images 48] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

REAL_TRAIN, REAL_TEST = 26_684, 3_000
GPU_RATE = (100, 200)  # images/s a GPU trains R-50 FPN at 512 px with mixed precision (issue 16's planning figure)
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def cxrdet() -> str:
    return str(Path(sys.executable).parent / "cxrdet")


def timed(cmd: list[str]) -> float:
    """Run a command (its output to a log line on failure); wall seconds."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bench_scale: {' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def count_files(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.name.endswith(".png"))
    except FileNotFoundError:
        return 0


def prepare_with_memory(data: Path, cache: Path, size: int, n_images: int) -> dict[str, Any]:
    """`cxrdet prepare` in a child process; samples (seconds, cached images, tree RSS) every 0.5 s."""
    cmd = [cxrdet(), "prepare", "--data", str(data), "--size", str(size), "--out", str(cache)]
    samples: list[tuple[float, int, int]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            n = count_files(cache / "images" / "train") + count_files(cache / "images" / "test")
            samples.append((time.perf_counter() - start, n, tree_rss(proc.pid)))
            stop.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    output = proc.communicate()[0]
    wall = time.perf_counter() - start
    stop.set()
    thread.join()
    if proc.returncode:
        sys.exit(f"bench_scale: prepare failed:\n{output[-3000:]}")
    first = next((t for t, n, _ in samples if n > 0), wall)
    at = {}
    for share in (0.25, 0.5, 0.75, 1.0):
        hit = [rss for _, n, rss in samples if n >= share * n_images and rss > 0]
        at[share] = hit[0] if hit else max((rss for *_, rss in samples), default=0)
    return {"wall": wall, "first_image": first, "peak": max(rss for *_, rss in samples), "at": at}


def loader_rate(cfg: dict[str, Any], workers: int, n_images: int) -> tuple[float, float]:
    """Images/s of one pass of the training loader over `n_images` after its first batch, and the seconds to
    that first batch (workers starting)."""
    from cxrdet.data.datamodule import DetectionDataModule

    dm = DetectionDataModule({**cfg["data"], "num_workers": workers}, fold=0)
    dm.setup("fit")
    start = time.perf_counter()
    it = iter(dm.train_dataloader())
    first = next(it)
    t_first = time.perf_counter() - start
    seen = 0
    start = time.perf_counter()
    for images, _, _ in it:
        seen += len(images)
        if seen >= n_images:
            break
    rate = seen / (time.perf_counter() - start)
    del first, it
    return rate, t_first


def decode_rate(cache: Path, n: int) -> float:
    """Images/s of reading cached PNGs alone (one process)."""
    from cxrdet.data.prepare import load_image

    ids = sorted(p.stem for p in (cache / "images" / "train").glob("*.png"))[:n]
    start = time.perf_counter()
    for image_id in ids:
        load_image(cache, "train", image_id)
    return len(ids) / (time.perf_counter() - start)


def predict_rate(cfg: dict[str, Any], n_images: int) -> float:
    """Images/s of test images through the eval loader (1 worker) and the model, batch 8, no gradient."""
    import torch

    from cxrdet.data.datamodule import DetectionDataModule
    from cxrdet.models.lit_detector import LitDetector

    dm = DetectionDataModule({**cfg["data"], "num_workers": 1, "batch_size": 8}, fold=0)
    dm.setup("predict")
    module = LitDetector(cfg).eval()
    it = iter(dm.predict_dataloader_for("test"))
    with torch.no_grad():
        images, _, _ = next(it)
        module.model(images)  # warm-up
        seen, start = 0, time.perf_counter()
        for images, _, _ in it:
            module.model(images)
            seen += len(images)
            if seen >= n_images:
                break
    return seen / (time.perf_counter() - start)


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fraction", type=float, default=0.1, help="share of the real RSNA image count to generate")
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: outputs/bench_scale)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--loader-images", type=int, default=400, help="images per loader measurement")
    parser.add_argument("--predict-images", type=int, default=48)
    parser.add_argument("--model-steps", type=int, default=3, help="R-50 FPN training steps (batch 2)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and cache")
    args = parser.parse_args()

    import pydicom
    import torch

    from cxrdet import paths
    from cxrdet.config import load_config, to_dict

    out = args.out or paths.outputs_dir() / "bench_scale"
    data, cache, folds = out / "rsna_scale", out / "cache", out / "folds_k5.csv"
    n_train = max(20, round(REAL_TRAIN * args.fraction))
    n_test = max(8, round(REAL_TEST * args.fraction))
    n = n_train + n_test
    print(f"machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"{'cuda' if torch.cuda.is_available() else 'no GPU'}; {n_train} train + {n_test} test images "
          f"({args.fraction:g} of the real {REAL_TRAIN} + {REAL_TEST}); working folder {out}")
    shutil.rmtree(out, ignore_errors=True)

    # 1. synth
    t_synth = timed([cxrdet(), "synth", "--out", str(data), "--n-train", str(n_train), "--n-test", str(n_test),
                     "--seed", "0"])
    dicoms = sorted((data / "stage_2_train_images").glob("*.dcm"))
    ds = pydicom.dcmread(dicoms[0])
    syntax = str(ds.file_meta.TransferSyntaxUID)
    size_bytes = sum(p.stat().st_size for p in dicoms[:200]) / min(200, len(dicoms))
    print(f"\n1. synth: {t_synth:.0f} s, {n / t_synth:.1f} images/s; {ds.Columns} x {ds.Rows}, transfer syntax "
          f"{syntax} ({'JPEG baseline' if syntax == JPEG_BASELINE else 'NOT JPEG baseline'}), "
          f"{size_bytes / 1024:.0f} KiB per DICOM -> {size_bytes * (REAL_TRAIN + REAL_TEST) / 2**30:.1f} GiB at full "
          "count (scaled)")

    # 2. prepare
    prep = prepare_with_memory(data, cache, args.size, n)
    rate = n / (prep["wall"] - prep["first_image"])
    print(f"2. prepare {args.size} px ({os.cpu_count()} decoding processes): {prep['wall']:.0f} s, "
          f"{rate:.1f} images/s after the first image ({prep['first_image']:.1f} s start-up); full count "
          f"{(REAL_TRAIN + REAL_TEST) / rate / 60:.0f} min (scaled)")
    print("   resident memory of the prepare process tree: " + ", ".join(
        f"{int(share * 100)}% done {mib(rss)}" for share, rss in prep["at"].items()) + f"; peak {mib(prep['peak'])}")
    cache_bytes = sum(p.stat().st_size for p in list((cache / "images" / "train").glob("*.png"))[:200]) / 200
    print(f"   cache: {cache_bytes / 1024:.0f} KiB per {args.size} px PNG -> "
          f"{cache_bytes * (REAL_TRAIN + REAL_TEST) / 2**30:.1f} GiB at full count (scaled)")

    # 3. folds
    t_folds = timed([cxrdet(), "folds", "--labels", str(data / "stage_2_train_labels.csv"), "--headers",
                     str(cache / "meta.parquet"), "--k", "5", "--seed", "0", "--out", str(folds)])
    line = f"3. folds (k=5, grouped by patient, stratified): {t_folds:.1f} s on the {n_train} synthetic images"
    real = paths.real_rsna_labels()
    if real.exists():
        t_real = timed([cxrdet(), "folds", "--labels", str(real), "--k", "5", "--seed", "0", "--out",
                        str(out / "real_folds_k5.csv")])
        line += f"; {t_real:.1f} s on the real stage-2 table ({REAL_TRAIN} images)"
    else:
        line += f"; the real label table is not at {real} (not timed)"
    print(line + " (each a whole `cxrdet folds` process, start-up included)")

    # 4. loader against the model
    r50 = paths.CONFIGS_DIR / "experiments" / "retinanet_r50fpn_512_sgd12e.py"
    cfg = to_dict(load_config(r50, [f"data.root={data}", f"data.cache={cache}", f"data.folds={folds}",
                                    f"data.size={args.size}", "data.batch_size=8",
                                    "lr_schedule={'type':'constant'}"]))
    augment = "on" if cfg["data"].get("augment") else "off"
    print(f"4. training loader ({r50.stem}: {args.size} px, batch 8, augmentation {augment}):")
    rates = {}
    for workers in (0, 1, 2):
        rates[workers], t_first = loader_rate(cfg, workers, args.loader_images)
        print(f"   {workers} worker(s): {rates[workers]:6.1f} images/s (first batch after {t_first:.1f} s)")
    print(f"   PNG decode alone: {decode_rate(cache, 300):.0f} images/s in one process")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_train import fake_batches, interleaved_throughput

    model_cfg = to_dict(load_config(r50, ["data.batch_size=2",
                                          "lr_schedule={'type':'constant'}", f"data.size={args.size}"]))
    (model_rate,) = interleaved_throughput([model_cfg], fake_batches(args.size, 2, args.model_steps), 1)
    per_worker = rates[1]
    need = [math.ceil(g / per_worker) for g in GPU_RATE]
    print(f"   RetinaNet R-50 FPN training on this CPU: {model_rate:.2f} images/s -> the loader is "
          f"{rates[0] / model_rate:.0f}x what it consumes with 0 workers")
    print(f"   a GPU at {GPU_RATE[0]}-{GPU_RATE[1]} images/s needs {need[0]}-{need[1]} loader workers at "
          f"{per_worker:.1f} images/s each (this machine's core speed; {'within' if need[1] <= 8 else 'ABOVE'} 8)")

    # 5. predict
    p_rate = predict_rate(cfg, args.predict_images)
    print(f"5. predict (RetinaNet R-50 FPN, {args.size} px, batch 8, eval loader 1 worker, this CPU): "
          f"{p_rate:.2f} images/s -> {REAL_TEST / p_rate / 60:.0f} min for the {REAL_TEST} test images (scaled)")

    summary = {"n_train": n_train, "n_test": n_test, "synth_s": t_synth, "prepare": prep, "folds_s": t_folds,
               "loader_images_per_s": rates, "r50_train_images_per_s": model_rate, "predict_images_per_s": p_rate}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
