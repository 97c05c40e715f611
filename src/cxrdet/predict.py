"""Predict with one fold's model: out-of-fold (`oof`, the images of fold k) or the test split (`test`).

The fold-k model never saw fold k, so its OOF outputs are honest validation predictions for tuning and ensembling.
`predict` knows no task: the caller (`cxrdet.tasks.predict`) passes the task (`Predictor`), which turns a batch of
model outputs into table rows, merges TTA passes and names its own sidecar fields. Output:
`cxrdet.runs.Run(experiment, fold).predictions_path(split)`, a parquet table, plus a JSON sidecar naming the
checkpoint, the settings and the fold file the run was trained with.

- A detector writes `image_id, x1, y1, x2, y2, score, label` (xyxy, pixels of the original image; label = class index
  from 0). Low-confidence boxes are kept down to `predict.score_floor`, at most `predict.max_per_image` per image, so
  that threshold tuning has room. Test-time augmentation runs the model on mirrored and / or rescaled images too
  and merges the passes per image with weighted box fusion (ensemble-boxes, on coordinates normalised to [0, 1]);
  see `TtaSpec`.
- A classifier writes per-image probabilities: `image_id` plus one float column per class of `data.classes` (sigmoid
  outputs in [0, 1]), one row per image; hflip TTA averages the two passes' probabilities. The ensemble's gating step
  reads these files.

The config is the run's own (`cxrdet.runs.Run.config`): what training wrote, not the experiment file read again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from mmengine.config import Config

from cxrdet import paths
from cxrdet.config import to_dict
from cxrdet.ensemble.fuse import FusionParams, fuse_predictions
from cxrdet.errors import ConfigError
from cxrdet.io import file_sha256
from cxrdet.models.detector import resize_images
from cxrdet.models.lit_base import LitBase
from cxrdet.models.lit_detector import PRED_COLUMNS, empty_predictions
from cxrdet.progress import progress
from cxrdet.provenance import git_revision
from cxrdet.runs import SPLITS, Run, checkpoint_record

TTAS: tuple[str, ...] = ("none", "hflip")
ImageSizes = Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class TtaSpec:
    """Test-time augmentation: one pass per input side of `scales` (None: `data.size` only), each also mirrored
    when `hflip`; the passes are merged by the task (boxes: weighted box fusion).

    A config gives `predict.tta` as `'none'`, `'hflip'` or `dict(scales=[448, 512, 576], hflip=True)`; the command
    line's `--tta` and the prediction sidecar use the `name` form: `none`, `hflip`, `scales=448/512/576` or
    `scales=448/512/576+hflip`. A rescaled pass resizes the `S x S` batch to `s x s` (bilinear, antialiased), runs the
    model at that side (`Detector.at_size`) and reads its boxes in pixels of `s`, flips undone about the same centre,
    so every pass's boxes land in the original image's pixels.
    """

    scales: tuple[int, ...] | None = None
    hflip: bool = False

    @property
    def name(self) -> str:
        if self.scales is None:
            return "hflip" if self.hflip else "none"
        return "scales=" + "/".join(map(str, self.scales)) + ("+hflip" if self.hflip else "")

    def passes(self, size: int) -> list[tuple[int, bool]]:
        """`(input side, mirrored)` of every pass, the plain pass at `size` first when it is one of them."""
        scales = list(self.scales or (size,))
        scales.sort(key=lambda s: (s != size, s))
        return [(s, flip) for s in scales for flip in ((False, True) if self.hflip else (False,))]


def parse_tta(value: Any) -> TtaSpec:
    """`predict.tta` or `--tta` as a `TtaSpec` (forms in its docstring).

    Raises:
        ConfigError: Any other form, or a side that is not a positive integer.
    """
    expected = ("expected 'none', 'hflip', dict(scales=[...], hflip=True|False) or the command-line form "
                "'scales=448/512/576[+hflip]'")
    if value is None or value in TTAS:
        return TtaSpec(hflip=value == "hflip")
    if isinstance(value, str) and value.startswith("scales="):
        body, _, flag = value.removeprefix("scales=").partition("+")
        if flag not in ("", "hflip"):
            raise ConfigError(f"tta={value!r}: {expected}")
        return parse_tta({"scales": body.split("/"), "hflip": flag == "hflip"})
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"scales", "hflip"})
        if unknown:
            raise ConfigError(f"predict.tta: unknown key(s) {', '.join(unknown)}; {expected}")
        raw = value.get("scales")
        if raw is not None and (isinstance(raw, (str, int)) or not len(raw)):
            raise ConfigError(f"predict.tta.scales={raw!r}: expected a non-empty list of input sides in pixels")
        try:
            scales = None if raw is None else tuple(dict.fromkeys(int(s) for s in raw))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"predict.tta.scales={raw!r}: expected a list of input sides in pixels") from err
        if scales is not None and min(scales) < 8:
            raise ConfigError(f"predict.tta.scales={raw!r}: expected input sides of at least 8 pixels")
        return TtaSpec(scales=scales, hflip=bool(value.get("hflip", False)))
    raise ConfigError(f"tta={value!r}: {expected}")


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


class Predictor(Protocol):
    """What `predict` needs of a task (`cxrdet.tasks.Task` is one)."""

    module: type[LitBase]
    datamodule: type

    def batch_frame(self, model: torch.nn.Module, outputs: Any, metas: Sequence[Mapping[str, Any]], size: int
                    ) -> pd.DataFrame:
        """One batch's model outputs as table rows."""

    def merge(self, passes: Sequence[pd.DataFrame], sizes: ImageSizes, pred_cfg: Mapping[str, Any]) -> pd.DataFrame:
        """The TTA passes' tables as the one table written (with the task's caps applied)."""

    def sidecar(self, table: pd.DataFrame, sizes: ImageSizes, pred_cfg: Mapping[str, Any], model: torch.nn.Module
                ) -> dict[str, Any]:
        """The task's own fields of the prediction sidecar."""


@torch.inference_mode()
def run_pass(model: torch.nn.Module, loader: Any, size: int, device: torch.device, task: Predictor,
             desc: str = "predict", scale: int | None = None) -> tuple[pd.DataFrame, dict[str, tuple[int, int]]]:
    """`model`'s outputs on every batch of `loader` as one table (`task.batch_frame`), in loader order.

    Args:
        size: The loader's input side S.
        scale: Run the model at this side instead (the batch resized, the model told by `at_size`); the outputs are
            read in its pixels.

    Returns:
        The table and each image's original `(width, height)`.
    """
    frames, sizes = [], {}
    autocast = device.type == "cuda"
    side = scale or size
    at_size = getattr(model, "at_size", None)
    with at_size(side) if at_size is not None else contextlib.nullcontext():
        for images, _, metas in progress(loader, desc=desc, leave=False, unit="batch"):
            with torch.autocast(device.type, enabled=autocast):
                outputs = model(resize_images(images.to(device), side))
            frames.append(task.batch_frame(model, outputs, metas, side))
            sizes.update({str(m["image_id"]): (int(m["orig_width"]), int(m["orig_height"])) for m in metas})
    kept = [f for f in frames if len(f)]
    table = pd.concat(kept, ignore_index=True) if kept else frames[0] if frames else empty_predictions()
    return table, sizes


def mean_passes(passes: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Average per-image probabilities over TTA passes (same images; the first pass's row order is kept)."""
    first = passes[0]
    stacked = pd.concat(passes, ignore_index=True).groupby("image_id", sort=False).mean()
    return stacked.reindex(first["image_id"]).reset_index()


def merge_box_passes(passes: Sequence[pd.DataFrame], sizes: ImageSizes, pred_cfg: Mapping[str, Any]) -> pd.DataFrame:
    """A detector's TTA merge: WBF of the passes (`fuse_passes`, IoU `predict.wbf_iou`), then the score floor and
    per-image cap of `predict`."""
    pred = passes[0] if len(passes) == 1 else fuse_passes(passes, sizes, iou_thr=float(pred_cfg.get("wbf_iou", 0.55)),
                                                          skip_box_thr=float(pred_cfg.get("wbf_skip", 0.0)))
    return cap_predictions(pred, float(pred_cfg["score_floor"]), int(pred_cfg["max_per_image"]))


def predict(cfg: Config | Mapping[str, Any], fold: int, task: Predictor, split: str = "oof", tta: str | None = None,
            checkpoint: str | None = None, device: str | None = None, datamodule_cls: type | None = None) -> Path:
    """Predict `split` with the fold-`fold` model of `cfg` and write the predictions table and its sidecar.

    Args:
        cfg: The run's resolved config; `predict` gives the defaults of `tta`, `checkpoint`, the score floor, the
            per-image cap and the fusion IoU.
        fold: The fold whose model predicts (`oof` = the images of this fold).
        task: The task's prediction pieces (`Predictor`).
        split: `oof` or `test`.
        tta: A `TtaSpec` form (`none`, `hflip`, `scales=448/512/576+hflip`, a dict); default `predict.tta`.
        checkpoint: `best`, `last` or a .ckpt path; default `predict.checkpoint` (`best`).
        device: Torch device; default CUDA when available, else CPU.
        datamodule_cls: Data module class taking `(data_cfg, fold, view=..., seed=...)`; default the task's.

    Returns:
        The written parquet file.

    Raises:
        ConfigError: Unknown split or TTA. CxrdetError: no checkpoint (train first).
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: expected one of {list(SPLITS)}")
    pred_cfg = cfg["predict"]
    spec = parse_tta(tta if tta is not None else pred_cfg.get("tta"))
    run = Run(cfg["experiment"], fold)
    ckpt = run.final_checkpoint(checkpoint or pred_cfg.get("checkpoint", "best"), cfg=cfg)
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = task.module.load_for_inference(cfg, ckpt).to(torch_device)
    plain = to_dict(cfg)

    data_cfg = dict(plain["data"])
    if pred_cfg.get("batch_size"):
        data_cfg["batch_size"] = int(pred_cfg["batch_size"])
    dm = (datamodule_cls or task.datamodule)(data_cfg, fold, view="full", seed=int(plain["train"].get("seed", 42)))
    dm.setup("predict")
    size = int(plain["data"]["size"])
    passes, sizes = [], {}
    for side, hflip in spec.passes(size):
        frame, pass_sizes = run_pass(model, dm.predict_dataloader_for(split, hflip=hflip), size, torch_device, task,
                                     desc=f"{split}{f' {side}px' if side != size else ''}{' hflip' if hflip else ''}",
                                     scale=side)
        passes.append(frame)
        sizes.update(pass_sizes)
    table = task.merge(passes, sizes, pred_cfg)
    folds = paths.folds_file(plain["data"]["folds"])
    root = plain["data"].get("root") or paths.data_root(plain["data"].get("competition"))
    return run.write_predictions(split, table, {
        "experiment": cfg["experiment"], "fold": fold, "split": split, "checkpoint": str(ckpt),
        **checkpoint_record(ckpt), "tta": spec.name, **task.sidecar(table, sizes, pred_cfg, model),
        # The float arithmetic depends on it: the same weights give slightly different scores with another count.
        "torch_threads": torch.get_num_threads(),
        "folds_file": str(folds), "folds_sha256": file_sha256(folds) if folds.is_file() else None,
        "data_root": str(root), "git": git_revision(),
    })  # fmt: skip
