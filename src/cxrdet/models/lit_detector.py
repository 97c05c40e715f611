"""The one LightningModule for detection: loss steps, EMA weights, and the competition metric on the held-out fold.

Validation runs the EMA weights when EMA is on (so the best checkpoint is chosen by, and holds, the weights that
prediction will use), maps every box back to original-image pixels, and scores the fold with the competition metric
(`cxrdet.competitions`: the config's `data.competition`, else told by its data root) at every confidence cut of
`evaluation.thresholds`; it logs the best score under the competition's name (`val/rsna`, VinBigData's
`val/map40`) and its cut (`val/threshold`). Under DDP each rank scores the gathered predictions of all ranks, so
all agree on the metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrdet.boxes import hflip_xyxy, rescale_xyxy
from cxrdet.competitions import Evaluator, of_data
from cxrdet.errors import ConfigError
from cxrdet.models.detector import Detector, resize_images
from cxrdet.models.factory import create_detector
from cxrdet.models.lit_base import LitBase, from_all_ranks

PRED_COLUMNS: tuple[str, ...] = ("image_id", "x1", "y1", "x2", "y2", "score", "label")
MONITOR = "val/rsna"  # the reference competition's; `LitDetector.monitor_for(cfg)` gives a config's


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


def multiscale_sides(value: Any) -> tuple[int, ...]:
    """`train.multiscale`: None (off) or a list of input sides in pixels, one drawn per training batch.

    Raises:
        ConfigError: Any other form, or a side under 8 pixels.
    """
    if value is None:
        return ()
    if isinstance(value, (str, int)) or not isinstance(value, Sequence) or not value:
        raise ConfigError(f"train.multiscale={value!r}: expected None or a non-empty list of input sides in pixels")
    try:
        sides = tuple(dict.fromkeys(int(v) for v in value))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"train.multiscale={value!r}: expected a list of input sides in pixels") from err
    if min(sides) < 8:
        raise ConfigError(f"train.multiscale={value!r}: expected input sides of at least 8 pixels")
    return sides


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


class LitDetector(LitBase):
    """Trains one detector on the training folds and scores it on the held-out fold.

    Args:
        cfg: The resolved config as a plain dict (sections `model`, `data`, `optim`, `lr_schedule`, `train`,
            `predict`, `evaluation`); saved in every checkpoint.
    """

    monitor = MONITOR
    what = "detector"
    model: Detector

    @classmethod
    def monitor_for(cls, cfg: Mapping[str, Any]) -> str:
        """The config's competition's metric name; the reference competition's when neither `data.competition` nor
        the data root tells one (a module built without data: validation, which needs the data, says what is
        missing)."""
        try:
            return of_data(cfg.get("data")).monitor
        except ConfigError:
            return cls.monitor

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg, create_detector(cfg))
        self.size = int(cfg["data"]["size"])
        self.multiscale = multiscale_sides(cfg["train"].get("multiscale"))
        self.seed = int(cfg["train"].get("seed", 42))
        self.thresholds = threshold_grid(cfg["evaluation"]["thresholds"])
        self._val_frames: list[pd.DataFrame] = []
        self._evaluator: Evaluator | None = None
        self._monitor: str | None = None

    def inference_model(self) -> Detector:
        """The weights validation and prediction use: the EMA copy when EMA is on."""
        return super().inference_model()

    # ---- training ----

    def final_stage_epoch(self) -> int | None:
        """The first epoch with mosaic and mixup both off (`augment.*.off_last`), when the detector enters its final
        stage (`Detector.enter_final_stage`); None when neither step is on or neither switches off."""
        augment = (self.cfg.get("data") or {}).get("augment") or {}
        epochs = self.trainer.max_epochs if self._trainer is not None else None
        steps = [augment.get(k) for k in ("mosaic", "mixup")]
        steps = [s for s in steps if isinstance(s, Mapping) and float(s.get("prob", 1.0)) > 0]
        if not steps or epochs is None or any(not s.get("off_last") for s in steps):
            return None
        return epochs - min(int(s["off_last"]) for s in steps)

    def on_train_epoch_start(self) -> None:
        start = self.final_stage_epoch()
        if start is not None and self.current_epoch >= start:
            self.model.enter_final_stage()
            if self.ema is not None:
                self.ema.module.enter_final_stage()

    def bn_forward(self, batch: tuple[torch.Tensor, list[dict], list[dict]]) -> None:
        """A training-mode pass (a detector in training mode needs its targets); the losses are thrown away."""
        images, targets, _ = batch
        self.model(images.to(self.device), [{k: v.to(self.device) for k, v in t.items()} for t in targets])

    def batch_side(self) -> int:
        """This step's input side: `data.size`, or one of `train.multiscale` drawn by (seed, step), so every rank of
        a distributed run draws the same side (as mmdet's `BatchSyncRandomResize` keeps them in step)."""
        if not self.multiscale:
            return self.size
        rng = np.random.default_rng([self.seed, int(self.global_step)])
        return int(self.multiscale[int(rng.integers(len(self.multiscale)))])

    def training_step(self, batch: tuple[torch.Tensor, list[dict], list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets, _ = batch
        side = self.batch_side()
        if side != self.size:
            # The batch and its boxes rescaled together: boxes are xyxy pixels of the input.
            images = resize_images(images, side)
            targets = [{**t, "boxes": t["boxes"] * (side / self.size)} for t in targets]
        with self.model.at_size(side):
            losses = self.model(images, targets)
        loss = sum(losses.values())
        n = len(images)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=n)
        return loss

    # ---- validation ----

    def on_validation_epoch_start(self) -> None:
        self._val_frames = []

    def validation_step(self, batch: tuple[torch.Tensor, list[dict], list[dict]], batch_idx: int) -> None:
        images, _, metas = batch
        model = self.inference_model()
        model.eval()
        outputs = model(images)
        self._val_frames.append(detections_to_frame(outputs, metas, self.size))

    def evaluator(self) -> Evaluator:
        """The competition metric on the held-out fold's ground truth, from the trainer's data module (`val_gt`,
        `val_image_ids`)."""
        if self._evaluator is None:
            dm = self.trainer.datamodule
            if dm is None or not hasattr(dm, "val_gt"):
                raise ConfigError("validation needs a data module with `val_gt` and `val_image_ids`")
            self._evaluator = of_data(self.cfg["data"]).evaluator(dm.val_gt, dm.val_image_ids)
        return self._evaluator

    @property
    def monitor_name(self) -> str:
        """The logged name of the validation metric (`monitor_for` this module's config)."""
        if self._monitor is None:
            self._monitor = self.monitor_for(self.cfg)
        return self._monitor

    def gathered_predictions(self) -> pd.DataFrame:
        """This epoch's validation predictions of all ranks, each image once (a distributed sampler pads with
        repeats)."""
        frames = [f for f in self._val_frames if len(f)]
        parts = from_all_ranks(pd.concat(frames, ignore_index=True) if frames else empty_predictions())
        seen: set[str] = set()
        kept = []
        for part in parts:
            ids = set(part["image_id"]) - seen
            kept.append(part[part["image_id"].isin(ids)])
            seen |= ids
        return pd.concat(kept, ignore_index=True)

    def on_validation_epoch_end(self) -> None:
        pred = self.gathered_predictions()
        curve = self.evaluator().score_vs_threshold(pred, self.thresholds)
        score, threshold = best_threshold(curve)
        # Every rank scored the same gathered predictions: syncing averages equal values, and keeps Lightning's
        # checkpoint and early-stopping decisions identical on all ranks.
        self.log(self.monitor_name, score, prog_bar=True, sync_dist=True)
        self.log("val/threshold", threshold, sync_dist=True)
        self.log("val/boxes_per_image", len(pred) / max(1, len(self.evaluator().image_ids)), sync_dist=True)
        self._val_frames = []
