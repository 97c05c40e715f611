"""Weight averaging beside EMA: SWA over the last epochs and the average of a run's k best epochs.

The chest X-ray winners averaged weights (SWA, checkpoint averaging) on top of EMA. Two config switches, each
writing its own checkpoint next to `best.ckpt` and `last.ckpt`, which prediction can name
(`predict.checkpoint='swa'` / `'avg'`, `cxrdet predict --checkpoint swa`):

    train = dict(..., swa=dict(epochs=3, bn_batches=100), average_best=dict(k=3, bn_batches=100))

- `swa`: the trained weights at the end of each of the last `epochs` epochs, averaged uniformly (torch's
  `AveragedModel`, the SWA average) -> `swa.ckpt`.
- `average_best`: the validated weights (EMA when on) of the `k` epochs with the best validation score, averaged
  uniformly -> `avg.ckpt` (the "average the k best checkpoints" recipe, without keeping k files).
- `bn_batches`: the averaged weights change what BatchNorm sees, so its running statistics are recomputed on up to
  this many training batches (`torch.optim.swa_utils.update_bn`'s rule: statistics reset, a cumulative average,
  momentum restored), 0 to keep the averaged statistics, None for the whole training loader.

The averaged weights are validated on the held-out fold like every epoch (`trainer.validate`), so the checkpoint
carries its own `val_score` and `val_threshold`; the best checkpoint is left as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from cxrdet.errors import ConfigError

SWA = "swa"
AVG = "avg"
AVERAGING_KEYS: dict[str, tuple[str, ...]] = {"swa": ("epochs", "bn_batches"), "average_best": ("k", "bn_batches")}


@dataclass(frozen=True)
class AveragingSpec:
    """One averaging of a run: which (`swa` or `avg`, the checkpoint's name), how many epochs, BN batches."""

    kind: str
    count: int
    bn_batches: int | None = 100


def averaging_specs(train_cfg: Mapping[str, Any]) -> list[AveragingSpec]:
    """The averagings a config's `train` section asks for (`swa`, `average_best`; None or absent: off).

    Raises:
        ConfigError: An unknown key, a count under 2, or a bad `bn_batches`.
    """
    specs = []
    for key, kind, count_key in (("swa", SWA, "epochs"), ("average_best", AVG, "k")):
        section = train_cfg.get(key)
        if not section:
            continue
        if not isinstance(section, Mapping):
            raise ConfigError(f"train.{key}={section!r}: expected a dict with some of "
                              f"{', '.join(AVERAGING_KEYS[key])}, or None")
        unknown = sorted(set(section) - set(AVERAGING_KEYS[key]))
        if unknown:
            raise ConfigError(f"train.{key}: unknown key(s) {', '.join(unknown)}: expected some of "
                              f"{', '.join(AVERAGING_KEYS[key])}")
        count = section.get(count_key, 3)
        if not isinstance(count, int) or count < 2:
            raise ConfigError(f"train.{key}.{count_key}={count!r}: expected an integer >= 2 (one epoch is no average)")
        bn = section.get("bn_batches", 100)
        if bn is not None and (not isinstance(bn, int) or bn < 0):
            raise ConfigError(f"train.{key}.bn_batches={bn!r}: expected an integer >= 0 or None (all batches)")
        specs.append(AveragingSpec(kind, count, bn))
    return specs


class WeightAverager(pl.Callback):
    """Collects the weights of one `AveragingSpec` during training (see the module docstring).

    Args:
        spec: What to average.
        monitor: The validation metric that ranks epochs (`average_best`).
    """

    def __init__(self, spec: AveragingSpec, monitor: str) -> None:
        self.spec = spec
        self.monitor = monitor
        self.averaged: AveragedModel | None = None
        self.best: list[tuple[float, int, dict[str, torch.Tensor]]] = []  # (score, epoch, weights on the CPU)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.spec.kind != SWA or trainer.current_epoch < (trainer.max_epochs or 0) - self.spec.count:
            return
        if self.averaged is None:  # a copy to hold the average; its first update copies the weights in
            self.averaged = AveragedModel(pl_module.model, device=torch.device("cpu"), use_buffers=True)
        self.averaged.update_parameters(pl_module.model)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.spec.kind != AVG or trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        weights = {k: v.detach().cpu().clone() for k, v in pl_module.inference_model().state_dict().items()}
        self.best.append((score, trainer.current_epoch, weights))
        # Ties keep the earlier epoch, as the best checkpoint does.
        self.best = sorted(self.best, key=lambda item: (-item[0], item[1]))[: self.spec.count]

    def epochs(self) -> list[int]:
        """The epochs (0-based) whose weights the average holds."""
        if self.spec.kind == AVG:
            return sorted(epoch for _, epoch, _ in self.best)
        n = int(self.averaged.n_averaged) if self.averaged is not None else 0
        return list(range(-n, 0))  # the last n epochs, counted from the end

    def state(self) -> dict[str, torch.Tensor] | None:
        """The averaged weights (a state dict of the module's model), None if nothing was collected."""
        if self.spec.kind == SWA:
            return None if self.averaged is None else dict(self.averaged.module.state_dict())
        if not self.best:
            return None
        out = {}
        for key, first in self.best[0][2].items():
            if first.is_floating_point():
                out[key] = sum(w[key].double() for _, _, w in self.best).div(len(self.best)).to(first.dtype)
            else:  # integer buffers (BatchNorm's num_batches_tracked): the best epoch's
                out[key] = first
        return out


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[Any], forward: Any, limit: int | None) -> int:
    """Recompute the running statistics of every BatchNorm of `model` on training batches (torch's `update_bn`
    rule: reset, cumulative average with `momentum=None`, momenta restored), the model in training mode.

    Args:
        model: The network whose statistics to recompute.
        batches: Training batches.
        forward: `forward(batch)` runs the model on one batch in training mode (a detector needs its targets).
        limit: At most this many batches (None: all).

    Returns:
        The number of batches seen (0: the model has no BatchNorm, or no batch came).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    seen = 0
    try:
        for batch in batches:
            if limit is not None and seen >= limit:
                break
            forward(batch)
            seen += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        model.train(was_training)
    return seen
