"""Training throughput: tiny config and RetinaNet ResNet-50 FPN; data loader against model; Lightning against a
bare PyTorch loop.

Prints, on this machine's CPU (or GPU when present):

1. images per second of training steps (forward, backward, clipping, optimiser, EMA) for the tiny demo config at
   its size and for RetinaNet ResNet-50 FPN at 512 px (a few steps, batch 2), built by torchvision and, when the
   mmdetection backend is installed (`make mmdet`), by mmdet from its own config file: both figures and their ratio,
   on the same batches in the same run;
2. images per second of the tiny config's training data loader, and its ratio to what the model consumes
   (> 1: the loader keeps up);
3. Lightning's overhead: the same pre-loaded batches through `Trainer.fit` (no validation, logging or checkpoints)
   against a bare PyTorch loop doing the same steps, as a ratio of wall times from one run.

Data: the prepare cache of the demo data set (`make demo`, or `cxrdet synth` + `cxrdet prepare` + `cxrdet folds`),
found through the tiny config's `data` section (override with --cfg-options data.root=... data.folds=...).

Run: .venv/bin/python benchmarks/bench_train.py [--steps 20] [--threads 2] [-o data.folds=...]
     .venv/bin/python benchmarks/bench_train.py --r50-only   (the RetinaNet R-50 figures alone; no data needed)
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from cxrdet import paths
from cxrdet.config import load_config, to_dict
from cxrdet.errors import CxrdetError
from cxrdet.models.lit_detector import LitDetector

TINY = paths.CONFIGS_DIR / "experiments" / "retinanet_mnv3s_128_tiny12e.py"
R50 = paths.CONFIGS_DIR / "experiments" / "retinanet_r50fpn_512_sgd12e.py"
MMDET_R50 = paths.CONFIGS_DIR / "experiments" / "mmdet-retinanet_r50fpn_512_sgd12e.py"


def bare_steps(module: LitDetector, batches: Sequence[Any], grad_clip: float | None) -> float:
    """Seconds for one pass of training steps over `batches` in a plain loop (same work as Lightning's step)."""
    optimizer = module.configure_optimizers()["optimizer"]
    module.train()
    start = time.perf_counter()
    for step, (images, targets, _) in enumerate(batches):
        loss = sum(module.model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(module.model.parameters(), grad_clip)
        optimizer.step()
        if module.ema is not None:
            module.ema.update(module.model, step=step + 1)
    return time.perf_counter() - start


def lightning_steps(cfg: dict[str, Any], batches: Sequence[Any]) -> float:
    """Seconds of `Trainer.fit` over the same batches: one epoch, no validation, logger, checkpoint or progress bar."""
    import pytorch_lightning as pl

    module = LitDetector(cfg)
    trainer = pl.Trainer(max_epochs=1, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         gradient_clip_val=cfg["train"].get("grad_clip"), num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)  # already-collated batches
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return time.perf_counter() - start


def model_throughput(cfg: dict[str, Any], batches: Sequence[Any]) -> float:
    """Images per second of bare training steps (after one warm-up step)."""
    module = LitDetector(cfg)
    bare_steps(module, batches[:1], cfg["train"].get("grad_clip"))
    seconds = bare_steps(module, batches, cfg["train"].get("grad_clip"))
    return sum(len(b[0]) for b in batches) / seconds


def fake_batches(size: int, batch: int, n: int) -> list[Any]:
    """Random images with one box each (xyxy, pixels of the size x size input): model cost does not depend on
    pixel values."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        images = torch.rand(batch, 3, size, size, generator=g)
        targets = [{"boxes": torch.tensor([[0.2, 0.3, 0.5, 0.7]]) * size, "labels": torch.zeros(1, dtype=torch.long)}
                   for _ in range(batch)]
        out.append((images, targets, [{"image_id": str(i)} for i in range(batch)]))
    return out


def interleaved_throughput(cfgs: Sequence[dict[str, Any]], batches: Sequence[Any], rounds: int) -> list[float]:
    """Images per second of bare training steps of several configs, measured in turns (A, B, A, B, ...) after one
    warm-up step each; each config's fastest round counts, so load from other processes biases none of them."""
    modules = [LitDetector(cfg) for cfg in cfgs]
    clips = [cfg["train"].get("grad_clip") for cfg in cfgs]
    for module, clip in zip(modules, clips, strict=True):
        bare_steps(module, batches[:1], clip)
    best = [math.inf] * len(cfgs)
    for _ in range(rounds):
        for i, (module, clip) in enumerate(zip(modules, clips, strict=True)):
            best[i] = min(best[i], bare_steps(module, batches, clip))
    n = sum(len(b[0]) for b in batches)
    return [n / seconds for seconds in best]


def retinanet_r50_figures(steps: int, rounds: int = 2) -> None:
    """Print training images/s of RetinaNet ResNet-50 FPN built by torchvision and by mmdet (same input size, batch
    and batches, from scratch, EMA on as the configs have it), and their ratio."""
    options = ["data.batch_size=2", "lr_schedule={'type':'constant'}"]
    r50 = to_dict(load_config(R50, options))
    size = r50["data"]["size"]
    batches = fake_batches(size, 2, steps)
    what = f"{size} px, batch 2, best of {rounds} rounds of {steps} steps"
    if importlib.util.find_spec("mmdet") is None:
        (r50_rate,) = interleaved_throughput([r50], batches, rounds)
        print(f"RetinaNet ResNet-50 FPN, torchvision ({R50.stem}, {what}): {r50_rate:.2f} train images/s")
        print("RetinaNet ResNet-50 FPN, mmdet: not measured (mmdet is not installed: `make mmdet`)")
        return
    mmdet_cfg = to_dict(load_config(MMDET_R50, [*options, f"data.size={size}"]))
    r50_rate, mmdet_rate = interleaved_throughput([r50, mmdet_cfg], batches, rounds)
    print(f"RetinaNet ResNet-50 FPN, torchvision ({R50.stem}, {what}): {r50_rate:.2f} train images/s")
    print(f"RetinaNet ResNet-50 FPN, mmdet ({MMDET_R50.stem}, {what}): {mmdet_rate:.2f} train images/s = "
          f"{mmdet_rate / r50_rate:.2f} x torchvision")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("-o", "--cfg-options", action="append", default=[], help="override of the tiny config")
    parser.add_argument("--r50-only", action="store_true",
                        help="only RetinaNet ResNet-50 FPN, torchvision against mmdet (fake batches, no data needed)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r50_steps = max(2, args.steps // 5)
    if args.r50_only:
        print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}, torch threads: {torch.get_num_threads()}, "
              f"cores: {os.cpu_count()}")
        retinanet_r50_figures(r50_steps)
        return 0
    from cxrdet.data.datamodule import DetectionDataModule

    # A constant learning rate: the bare loop has no Trainer to size a cosine schedule with.
    cfg = to_dict(load_config(TINY, [*args.cfg_options, "train.progress_bar=False", "lr_schedule={'type':'constant'}"]))
    dm = DetectionDataModule(cfg["data"], fold=0)
    try:
        dm.setup("fit")
    except (CxrdetError, FileNotFoundError) as err:
        print(f"bench_train: no demo data to read ({err}).\nRun `make demo` first (or cxrdet synth, prepare and "
              "folds), or point the tiny config at a data set with -o data.root=... -o data.folds=...", file=sys.stderr)
        return 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, cores: {os.cpu_count()}, "
          f"steps per figure: {args.steps}")

    # 2. Data loader alone (one pass of `steps` batches after the workers start).
    loader = dm.train_dataloader()
    it = iter(loader)
    batches = [next(it)]
    start = time.perf_counter()
    for _ in range(args.steps):
        try:
            batches.append(next(it))
        except StopIteration:
            it = iter(loader)
            batches.append(next(it))
    load_rate = sum(len(b[0]) for b in batches[1:]) / (time.perf_counter() - start)
    batches = batches[1:]

    # 1. Model training steps.
    tiny_rate = model_throughput(cfg, batches)
    size, batch = cfg["data"]["size"], cfg["data"]["batch_size"]
    print(f"tiny ({TINY.stem}, {size} px, batch {batch}): {tiny_rate:.1f} train images/s")
    retinanet_r50_figures(r50_steps)
    print(f"data loader ({cfg['data']['num_workers']} workers, augmentation on): {load_rate:.1f} images/s = "
          f"{load_rate / tiny_rate:.1f} x what the tiny model consumes")

    # 3. Lightning against a bare loop, same batches, same steps.
    bare = bare_steps(LitDetector(cfg), batches, cfg["train"].get("grad_clip"))
    lightning = lightning_steps(cfg, batches)
    print(f"Lightning overhead: Trainer.fit {lightning:.2f} s vs bare loop {bare:.2f} s over {len(batches)} steps = "
          f"{lightning / bare:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
