"""Predict boxes with one fold's model: out-of-fold (`oof`, the images of fold k) or the test split (`test`).

The fold-k model never saw fold k, so its OOF boxes are honest validation predictions for tuning and ensembling.
Output: `cxrdet.paths.predictions_path(experiment, fold, split)`, a parquet table `image_id, x1, y1, x2, y2, score,
label` (xyxy, pixels of the original image; label = class index from 0), plus a JSON sidecar naming the checkpoint
and settings. Low-confidence boxes are kept down to `predict.score_floor`, at most `predict.max_per_image` per image,
so that threshold tuning has room. Horizontal-flip TTA runs the model on mirrored images too and merges both passes
per image with weighted box fusion (ensemble-boxes, on coordinates normalised to [0, 1]).

A classifier (`task='classify'`) writes per-image probabilities to the same path instead: `image_id` plus one float
column per class of `data.classes` (sigmoid outputs in [0, 1]), one row per image; hflip TTA averages the two
passes' probabilities. The ensemble's gating step reads these files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mmengine.config import Config

from cxrdet import paths
from cxrdet.config import task_of, to_dict
from cxrdet.ensemble.fuse import FusionParams, fuse_predictions
from cxrdet.errors import ConfigError
from cxrdet.io import write_json, write_parquet
from cxrdet.models.classifier import Classifier
from cxrdet.models.factory import Detector
from cxrdet.models.lit_detector import PRED_COLUMNS, detections_to_frame, empty_predictions
from cxrdet.progress import progress
from cxrdet.provenance import git_revision
from cxrdet.train import checkpoint_record, final_checkpoint, task_datamodule, task_module

SPLITS: tuple[str, ...] = ("oof", "test")
TTAS: tuple[str, ...] = ("none", "hflip")
ImageSizes = Mapping[str, tuple[int, int]]


def cap_predictions(pred: pd.DataFrame, score_floor: float, max_per_image: int) -> pd.DataFrame:
    """Keep boxes with `score >= score_floor`, at most `max_per_image` per image (the highest scores).

    Args:
        pred: Columns `image_id, x1, y1, x2, y2, score, label` (any box units).

    Returns:
        The kept rows, sorted by image id then descending score.
    """
    kept = pred[pred["score"] >= score_floor]
    kept = kept.sort_values(["image_id", "score"], ascending=[True, False], kind="stable")
    kept = kept[kept.groupby("image_id", sort=False).cumcount() < max_per_image]
    return kept.reset_index(drop=True)


def fuse_passes(passes: Sequence[pd.DataFrame], sizes: ImageSizes, iou_thr: float = 0.55,
                skip_box_thr: float = 0.0, conf_type: str = "avg") -> pd.DataFrame:
    """Merge the boxes of several TTA passes per image with weighted box fusion.

    A box that only one of n passes found keeps 1/n of its confidence (ensemble-boxes' `avg` rule), so boxes the
    passes agree on rank first.

    Args:
        passes: One table per pass, columns `image_id, x1, y1, x2, y2, score, label`; xyxy pixels of the original
            image (flips already undone).
        sizes: `(width, height)` of every original image, by image id.
        iou_thr: IoU above which boxes of the same label are fused.
        skip_box_thr: Boxes below this confidence are ignored.
        conf_type: ensemble-boxes confidence rule.

    Returns:
        The fused table, same columns and units.
    """
    image_ids = sorted(set().union(*(set(p["image_id"]) for p in passes)))
    if not image_ids:
        return empty_predictions()
    params = FusionParams(method="wbf", iou_thr=iou_thr, skip_box_thr=skip_box_thr, conf_type=conf_type)
    # The library engine: ensemble-boxes itself, image by image (no compile cost for a few TTA passes).
    fused = fuse_predictions(list(passes), image_ids, [sizes[i][0] for i in image_ids],
                             [sizes[i][1] for i in image_ids], params, engine="library")
    return fused[list(PRED_COLUMNS)].astype({"label": np.int64}).reset_index(drop=True)


@torch.inference_mode()
def run_pass(model: Detector, loader: Any, size: int, device: torch.device, desc: str = "predict"
             ) -> tuple[pd.DataFrame, dict[str, tuple[int, int]]]:
    """Detections of `model` on every batch of `loader`, in original-image pixels (flips undone).

    Returns:
        The predictions (`image_id, x1, y1, x2, y2, score, label`) and each image's original `(width, height)`.
    """
    frames, sizes = [], {}
    autocast = device.type == "cuda"
    for images, _, metas in progress(loader, desc=desc, leave=False, unit="batch"):
        with torch.autocast(device.type, enabled=autocast):
            outputs = model(images.to(device))
        frames.append(detections_to_frame(outputs, metas, size))
        sizes.update({m["image_id"]: (int(m["orig_width"]), int(m["orig_height"])) for m in metas})
    frames = [f for f in frames if len(f)]
    return (pd.concat(frames, ignore_index=True) if frames else empty_predictions()), sizes


@torch.inference_mode()
def run_classifier_pass(model: Classifier, loader: Any, device: torch.device, desc: str = "predict"
                        ) -> pd.DataFrame:
    """Sigmoid probabilities of `model` on every batch of `loader`: `image_id` plus one float64 column per class
    (`model.classes`), in loader order."""
    ids, probs = [], []
    autocast = device.type == "cuda"
    for images, _, metas in progress(loader, desc=desc, leave=False, unit="batch"):
        with torch.autocast(device.type, enabled=autocast):
            logits = model(images.to(device))
        probs.append(torch.sigmoid(logits.float()).cpu().numpy().astype(np.float64))
        ids.extend(str(m["image_id"]) for m in metas)
    values = np.concatenate(probs) if probs else np.zeros((0, len(model.classes)))
    return pd.concat([pd.DataFrame({"image_id": pd.Series(ids, dtype=str)}),
                      pd.DataFrame(values, columns=list(model.classes))], axis=1)


def mean_passes(passes: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Average per-image probabilities over TTA passes (same images; the first pass's row order is kept)."""
    first = passes[0]
    stacked = pd.concat(passes, ignore_index=True).groupby("image_id", sort=False).mean()
    return stacked.reindex(first["image_id"]).reset_index()


def predict(cfg: Config | Mapping[str, Any], fold: int, split: str = "oof", tta: str | None = None,
            checkpoint: str | None = None, device: str | None = None, datamodule_cls: type | None = None) -> Path:
    """Predict `split` with the fold-`fold` model of `cfg` and write the predictions table (boxes, or per-image
    class probabilities for a classifier).

    Args:
        cfg: The resolved config; `predict` gives the defaults of `tta`, `checkpoint`, the score floor, the per-image
            cap and the fusion IoU.
        fold: The fold whose model predicts (`oof` = the images of this fold).
        split: `oof` or `test`.
        tta: `none` or `hflip`; default `predict.tta`.
        checkpoint: `best`, `last` or a .ckpt path; default `predict.checkpoint` (`best`).
        device: Torch device; default CUDA when available, else CPU.
        datamodule_cls: As in `cxrdet.train.train`.

    Returns:
        The written parquet file.

    Raises:
        ConfigError: Unknown split or TTA. CxrdetError: no checkpoint (train first).
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: expected one of {list(SPLITS)}")
    pred_cfg = cfg["predict"]
    tta = str(tta or pred_cfg.get("tta") or "none")
    if tta not in TTAS:
        raise ConfigError(f"tta={tta!r}: expected one of {list(TTAS)}")
    module_cls = task_module(cfg)
    if datamodule_cls is None:
        datamodule_cls = task_datamodule(cfg)

    ckpt = final_checkpoint(cfg, fold, checkpoint or pred_cfg.get("checkpoint", "best"))
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = module_cls.load_for_inference(cfg, ckpt).to(torch_device)
    plain = to_dict(cfg)

    data_cfg = dict(plain["data"])
    if pred_cfg.get("batch_size"):
        data_cfg["batch_size"] = int(pred_cfg["batch_size"])
    dm = datamodule_cls(data_cfg, fold, view="full", seed=int(plain["train"].get("seed", 42)))
    dm.setup("predict")
    hflips = [False, True] if tta == "hflip" else [False]
    out = paths.predictions_path(cfg["experiment"], fold, split)
    if task_of(cfg) == "classify":
        passes = [run_classifier_pass(model, dm.predict_dataloader_for(split, hflip=hflip), torch_device,
                                      desc=f"{split}{' hflip' if hflip else ''}") for hflip in hflips]
        probs = mean_passes(passes)
        write_parquet(out, probs)
        write_json(out.with_suffix(".json"), {
            "experiment": cfg["experiment"], "fold": fold, "split": split, "task": "classify",
            "checkpoint": str(ckpt), **checkpoint_record(ckpt), "tta": tta, "classes": list(model.classes),
            "n_images": len(probs), "git": git_revision(),
        })  # fmt: skip
        return out

    size = int(plain["data"]["size"])
    passes, sizes = [], {}
    for hflip in hflips:
        loader = dm.predict_dataloader_for(split, hflip=hflip)
        frame, pass_sizes = run_pass(model, loader, size, torch_device, desc=f"{split}{' hflip' if hflip else ''}")
        passes.append(frame)
        sizes.update(pass_sizes)
    if len(passes) > 1:
        pred = fuse_passes(passes, sizes, iou_thr=float(pred_cfg.get("wbf_iou", 0.55)),
                           skip_box_thr=float(pred_cfg.get("wbf_skip", 0.0)))
    else:
        pred = passes[0]
    pred = cap_predictions(pred, float(pred_cfg["score_floor"]), int(pred_cfg["max_per_image"]))

    write_parquet(out, pred)
    write_json(out.with_suffix(".json"), {
        "experiment": cfg["experiment"], "fold": fold, "split": split, "checkpoint": str(ckpt),
        **checkpoint_record(ckpt), "tta": tta, "score_floor": float(pred_cfg["score_floor"]),
        "max_per_image": int(pred_cfg["max_per_image"]), "n_images": len(sizes), "n_boxes": len(pred),
        "git": git_revision(),
    })  # fmt: skip
    return out
