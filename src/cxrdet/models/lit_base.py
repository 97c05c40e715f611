"""What every cxrdet LightningModule shares: EMA weights, checkpoint loading, the optimiser and the LR schedule.

`LitDetector` and `LitClassifier` subclass `LitBase`; each names its validation metric in the class attribute
`monitor`, which the plateau schedule here and the checkpoint and early-stopping callbacks of `cxrdet.train` follow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch import nn

from cxrdet.config import to_dict
from cxrdet.errors import ConfigError
from cxrdet.runs import load_checkpoint_file

T = TypeVar("T")

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


def cosine_warmup_factor(step: int, total: int, warmup: int, warmup_factor: float, min_ratio: float) -> float:
    """LR multiplier: linear from `warmup_factor` to 1 over `warmup` steps, then cosine down to `min_ratio`."""
    if step < warmup:
        return warmup_factor + (1.0 - warmup_factor) * step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# Starting-weight settings a model section (or its backbone) may hold, and their "off" value: ImageNet or COCO
# weights, a local weights file, a classifier to transfer from.
STARTING_WEIGHTS: dict[str, Any] = {"pretrained": False, "checkpoint": None, "init_from": None}


def inference_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`cfg` as a plain dict with every starting weight switched off, to build a model that a checkpoint then fills.

    The checkpoint holds every weight, so building the model must neither download ImageNet weights nor read the
    files training started from (a local weights file, the classifier of `init_from`, an mmdet `Pretrained`
    init_cfg): none of them need exist where the model predicts or is deployed.
    """
    plain = to_dict(cfg)
    model = plain.get("model")
    for section in (model, model.get("backbone") if isinstance(model, dict) else None):
        if not isinstance(section, dict):
            continue
        for key, off in STARTING_WEIGHTS.items():
            if key in section:
                section[key] = off
        init = section.get("init_cfg")
        inits = init if isinstance(init, list) else [init]
        if any(isinstance(c, Mapping) and c.get("type") == "Pretrained" for c in inits):
            section["init_cfg"] = None
    return plain


def inference_state(checkpoint: Mapping[str, Any], source: str = "checkpoint", what: str = "detector"
                    ) -> dict[str, torch.Tensor]:
    """The model weights of a Lightning checkpoint that validation scored: the EMA copy if present, else the
    trained model.

    Args:
        checkpoint: A loaded cxrdet Lightning checkpoint.
        source: Where it came from, named in errors.
        what: The kind of model expected, named in errors.

    Raises:
        ConfigError: The checkpoint holds neither (not a cxrdet checkpoint).
    """
    state = checkpoint.get("state_dict", {})
    for prefix in ("ema.module.", "model."):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    raise ConfigError(f"{source}: no {what} weights (keys 'ema.module.*' or 'model.*'); is it a cxrdet checkpoint?")


def from_all_ranks(local: T) -> list[T]:
    """`local` of every rank, in rank order, under DDP (`all_gather_object`); `[local]` in a single process.

    Validation gathers its per-image outputs with this so that every rank scores the whole fold.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        return parts
    return [local]


class LitBase(pl.LightningModule):
    """A model trained with optional EMA weights, timm's weight-decay groups and a config-chosen LR schedule.

    Args:
        cfg: The resolved config as a plain dict (sections `model`, `data`, `optim`, `lr_schedule`, `train`, ...);
            saved in every checkpoint.
        model: The network built from `cfg`.

    Attributes:
        monitor: The logged validation metric that picks the best checkpoint (higher is better).
        what: The kind of model, named in errors.
    """

    monitor: ClassVar[str] = ""
    what: ClassVar[str] = "model"

    @classmethod
    def monitor_for(cls, cfg: Mapping[str, Any]) -> str:
        """The monitored metric's name for a config (a detector's depends on its competition)."""
        return cls.monitor

    def __init__(self, cfg: Mapping[str, Any], model: nn.Module) -> None:
        super().__init__()
        self.save_hyperparameters({"cfg": dict(cfg)})
        self.cfg = cfg
        self.model = model
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

    def init_from_checkpoint(self, path: str | Path) -> None:
        """Start from a checkpoint's validated weights (EMA if it has them): the next curriculum stage, or
        prediction.

        Raises:
            ConfigError: The checkpoint's weights do not fit this config's model.
        """
        weights = inference_state(load_checkpoint_file(path), str(path), self.what)
        targets = [self.model] + ([self.ema.module] if self.ema is not None else [])
        for target in targets:
            try:
                target.load_state_dict(weights)
            except RuntimeError as err:
                raise ConfigError(f"{path}: its weights do not fit the config's model ({self.cfg['model']['type']}): "
                                  f"{str(err).splitlines()[0]}") from err

    def inference_model(self) -> nn.Module:
        """The weights validation and prediction use: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    @classmethod
    def load_for_inference(cls, cfg: Mapping[str, Any], checkpoint: str | Path) -> nn.Module:
        """The validated (EMA when present) weights of a checkpoint of this module, on the CPU in eval mode.

        The model is built from `inference_config(cfg)`: the checkpoint holds every weight, so no starting weights
        are fetched or read.
        """
        module = cls(inference_config(cfg))
        module.init_from_checkpoint(checkpoint)
        return module.inference_model().cpu().eval()

    def bn_forward(self, batch: Any) -> None:
        """Run the model on one training batch in training mode, for nothing but its BatchNorm statistics
        (`cxrdet.models.averaging.recompute_batchnorm`); a task whose model needs more than the images overrides it."""
        self.model(batch[0].to(self.device))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # global_step counts optimiser steps, so with gradient accumulation the EMA follows real updates only.
        if self.ema is not None and self.global_step != self._ema_step:
            self._ema_step = self.global_step
            self.ema.update(self.model, step=self.global_step)

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
            warmup = round(float(sched.get("warmup_epochs", 0.0)) * per_epoch)
            factor = float(sched.get("warmup_factor", 0.001))
            min_ratio = float(sched.get("min_lr_ratio", 0.01))
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: cosine_warmup_factor(step, total, warmup, factor, min_ratio))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        if kind == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=float(sched.get("factor", 0.5)), patience=int(sched.get("patience", 2)),
                min_lr=float(sched.get("min_lr", 0.0)))
            monitor = self.monitor_for(self.cfg)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": monitor}}
        if kind == "constant":
            return {"optimizer": optimizer}
        raise ConfigError(f"lr_schedule.type={kind!r}: expected one of ['constant', 'cosine', 'plateau']")
