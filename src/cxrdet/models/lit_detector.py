"""The one LightningModule for detection: loss steps, EMA weights, and the RSNA metric on the held-out fold.

Validation runs the EMA weights when EMA is on (so the best checkpoint is chosen by, and holds, the weights that
prediction will use), maps every box back to original-image pixels, and scores the fold with the competition metric
at every confidence cut of `evaluation.thresholds`; it logs the best score (`val/rsna`) and its cut
(`val/threshold`). Under DDP each rank scores the gathered predictions of all ranks, so all agree on the metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3

from cxrdet.boxes import hflip_xyxy, rescale_xyxy
from cxrdet.errors import ConfigError
from cxrdet.metrics.rsna import RsnaEvaluator
from cxrdet.models.factory import Detector, create_detector

PRED_COLUMNS: tuple[str, ...] = ("image_id", "x1", "y1", "x2", "y2", "score", "label")
MONITOR = "val/rsna"
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


def empty_predictions() -> pd.DataFrame:
    """A prediction table with no rows and the right columns and types."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(PRED_COLUMNS, (str, *["float64"] * 5, "int64"),
                                                                strict=True)})


def detections_to_frame(outputs: Sequence[Mapping[str, torch.Tensor]], metas: Sequence[Mapping[str, Any]],
                        size: int) -> pd.DataFrame:
    """Detections on `size x size` network inputs -> a table in original-image pixels.

    Args:
        outputs: Per image `boxes` (xyxy, pixels of the S x S input), `scores`, `labels` (class index from 0).
        metas: Per image `image_id`, `orig_width`, `orig_height` and `hflip` (the input was mirrored: undo it).
        size: The input side S.

    Returns:
        Columns `image_id, x1, y1, x2, y2, score, label`; boxes xyxy in pixels of the original image.
    """
    frames = []
    for out, meta in zip(outputs, metas, strict=True):
        boxes = out["boxes"].detach().float().cpu().numpy().astype(np.float64)
        if len(boxes) == 0:
            continue
        if meta.get("hflip", False):
            boxes = hflip_xyxy(boxes, size)
        boxes = rescale_xyxy(boxes, (size, size), (meta["orig_width"], meta["orig_height"]))
        frames.append(pd.DataFrame({
            "image_id": meta["image_id"],
            "x1": boxes[:, 0], "y1": boxes[:, 1], "x2": boxes[:, 2], "y2": boxes[:, 3],
            "score": out["scores"].detach().float().cpu().numpy().astype(np.float64),
            "label": out["labels"].detach().cpu().numpy().astype(np.int64),
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True) if frames else empty_predictions()


def threshold_grid(spec: Sequence[float] | Mapping[str, float]) -> np.ndarray:
    """Confidence cuts to sweep: an explicit list, or `dict(start, stop, step)` with `stop` included."""
    if isinstance(spec, Mapping):
        n = int(math.floor((spec["stop"] - spec["start"]) / spec["step"] + 1e-9)) + 1
        return np.round(spec["start"] + spec["step"] * np.arange(n), 6)
    return np.asarray(spec, dtype=np.float64)


def best_threshold(curve: pd.DataFrame) -> tuple[float, float]:
    """(best score, its threshold) of a score-vs-threshold table; the lowest cut wins ties; NaN scores count as 0."""
    scores = curve["score"].fillna(0.0).to_numpy()
    i = int(np.argmax(scores))  # first maximum = lowest threshold, since the table is in threshold order
    return float(scores[i]), float(curve["threshold"].iloc[i])


def cosine_warmup_factor(step: int, total: int, warmup: int, warmup_factor: float, min_ratio: float) -> float:
    """LR multiplier: linear from `warmup_factor` to 1 over `warmup` steps, then cosine down to `min_ratio`."""
    if step < warmup:
        return warmup_factor + (1.0 - warmup_factor) * step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def inference_state(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The `Detector` weights of a Lightning checkpoint that validation scored: the EMA copy if present, else the
    trained model.

    Raises:
        ConfigError: The checkpoint holds neither (not a `LitDetector` checkpoint).
    """
    state = checkpoint.get("state_dict", {})
    for prefix in ("ema.module.", "model."):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    raise ConfigError(f"{source}: no detector weights (keys 'ema.module.*' or 'model.*'); is it a cxrdet checkpoint?")


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint written by cxrdet (a trusted local file: it also holds the config)."""
    return torch.load(path, map_location="cpu", weights_only=False)


class LitDetector(pl.LightningModule):
    """Trains one detector on the training folds and scores it on the held-out fold.

    Args:
        cfg: The resolved config as a plain dict (sections `model`, `data`, `optim`, `lr_schedule`, `train`,
            `predict`, `evaluation`); saved in every checkpoint.
    """

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"cfg": dict(cfg)})
        self.cfg = cfg
        self.size = int(cfg["data"]["size"])
        self.model: Detector = create_detector(cfg)
        ema_cfg = dict(cfg["train"].get("ema") or {})
        self.ema: ModelEmaV3 | None = None
        if ema_cfg.get("enabled", bool(ema_cfg)):
            self.ema = ModelEmaV3(self.model, decay=float(ema_cfg.get("decay", 0.999)),
                                  use_warmup=bool(ema_cfg.get("warmup", True)))
            # The EMA copy is never trained: keep it out of DDP's gradient bucketing and the optimiser. Its mode
            # follows the module's like any submodule (validation and prediction switch it to eval).
            self.ema.requires_grad_(False)
            self.ema.train()
        self._ema_step = -1
        self.thresholds = threshold_grid(cfg["evaluation"]["thresholds"])
        self._val_frames: list[pd.DataFrame] = []
        self._evaluator: RsnaEvaluator | None = None

    def init_from_checkpoint(self, path: str | Path) -> None:
        """Start from a checkpoint's validated weights (EMA if it has them): the next curriculum stage, or
        prediction.

        Raises:
            ConfigError: The checkpoint's weights do not fit this config's model.
        """
        weights = inference_state(load_checkpoint_file(path), str(path))
        targets = [self.model] + ([self.ema.module] if self.ema is not None else [])
        for target in targets:
            try:
                target.load_state_dict(weights)
            except RuntimeError as err:
                raise ConfigError(f"{path}: its weights do not fit the config's model ({self.cfg['model']['type']}): "
                                  f"{str(err).splitlines()[0]}") from err

    def inference_model(self) -> Detector:
        """The weights validation and prediction use: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    # ---- training ----

    def training_step(self, batch: tuple[torch.Tensor, list[dict], list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets, _ = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        n = len(images)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=n)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # global_step counts optimiser steps, so with gradient accumulation the EMA follows real updates only.
        if self.ema is not None and self.global_step != self._ema_step:
            self._ema_step = self.global_step
            self.ema.update(self.model, step=self.global_step)

    # ---- validation ----

    def on_validation_epoch_start(self) -> None:
        self._val_frames = []

    def validation_step(self, batch: tuple[torch.Tensor, list[dict], list[dict]], batch_idx: int) -> None:
        images, _, metas = batch
        model = self.inference_model()
        model.eval()
        outputs = model(images)
        self._val_frames.append(detections_to_frame(outputs, metas, self.size))

    def evaluator(self) -> RsnaEvaluator:
        """The held-out fold's ground truth, from the trainer's data module (`val_gt`, `val_image_ids`)."""
        if self._evaluator is None:
            dm = self.trainer.datamodule
            if dm is None or not hasattr(dm, "val_gt"):
                raise ConfigError("validation needs a data module with `val_gt` and `val_image_ids`")
            self._evaluator = RsnaEvaluator(dm.val_gt, dm.val_image_ids)
        return self._evaluator

    def gathered_predictions(self) -> pd.DataFrame:
        """This epoch's validation predictions of all ranks, each image once (a distributed sampler pads with
        repeats)."""
        frames = [f for f in self._val_frames if len(f)]
        local = pd.concat(frames, ignore_index=True) if frames else empty_predictions()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[pd.DataFrame | None] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, local)
            seen: set[str] = set()
            kept = []
            for part in parts:
                ids = set(part["image_id"]) - seen
                kept.append(part[part["image_id"].isin(ids)])
                seen |= ids
            local = pd.concat(kept, ignore_index=True)
        return local

    def on_validation_epoch_end(self) -> None:
        pred = self.gathered_predictions()
        curve = self.evaluator().score_vs_threshold(pred, self.thresholds)
        score, threshold = best_threshold(curve)
        # Every rank scored the same gathered predictions: syncing averages equal values, and keeps Lightning's
        # checkpoint and early-stopping decisions identical on all ranks.
        self.log(MONITOR, score, prog_bar=True, sync_dist=True)
        self.log("val/threshold", threshold, sync_dist=True)
        self.log("val/boxes_per_image", len(pred) / max(1, len(self.evaluator().image_ids)), sync_dist=True)
        self._val_frames = []

    # ---- optimisation ----

    def configure_optimizers(self) -> dict[str, Any]:
        optim = dict(self.cfg["optim"])
        kind = optim.pop("type")
        if kind not in OPTIMIZERS:
            raise ConfigError(f"optim.type={kind!r}: expected one of {sorted(OPTIMIZERS)}")
        weight_decay = float(optim.pop("weight_decay", 0.0))
        # Norm and bias parameters get no weight decay (timm's rule: every 1-d tensor).
        groups = param_groups_weight_decay(self.model, weight_decay)
        optimizer = OPTIMIZERS[kind](groups, **optim)

        sched = dict(self.cfg["lr_schedule"])
        kind = sched.pop("type")
        if kind == "cosine":
            total = int(self.trainer.estimated_stepping_batches)
            per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
            warmup = int(round(float(sched.get("warmup_epochs", 0.0)) * per_epoch))
            factor = float(sched.get("warmup_factor", 0.001))
            min_ratio = float(sched.get("min_lr_ratio", 0.01))
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: cosine_warmup_factor(step, total, warmup, factor, min_ratio))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        if kind == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=float(sched.get("factor", 0.5)), patience=int(sched.get("patience", 2)),
                min_lr=float(sched.get("min_lr", 0.0)))
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": MONITOR}}
        if kind == "constant":
            return {"optimizer": optimizer}
        raise ConfigError(f"lr_schedule.type={kind!r}: expected one of ['constant', 'cosine', 'plateau']")
