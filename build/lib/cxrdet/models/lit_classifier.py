"""The LightningModule for image-level classifiers: multi-label (sigmoid) or multi-class (softmax) losses, EMA
weights, AUROC on the held-out fold.

Batches are `(images [B, 3, S, S], targets [B, K] float 0/1, metas)` (`cxrdet.data.classify`). The loss is chosen by
the config's top-level `loss` section:

    loss = dict(type='bce',      # 'bce' (binary cross-entropy on logits), 'focal' (sigmoid focal loss), or 'ce'
                                 # (softmax cross-entropy: one class per image, e.g. SIIM's four study categories)
                pos_weight=None, # None, 'auto' or one weight per class. bce/focal: positive terms are multiplied by
                                 # it ('auto': negatives / positives per class of the training images); ce: the
                                 # class weights of the cross-entropy ('auto': N / (K * count), balanced)
                gamma=2.0,       # focal only: down-weights easy examples
                alpha=None,      # focal only: torchvision's positive/negative balance in [0, 1]; None = off
                label_smoothing=0.0)  # ce only: torch's label smoothing in [0, 1)

With `ce` the classes exclude each other: each training image's targets must hold exactly one 1 (an error names the
first image that does not), probabilities are a softmax over the classes, and predictions sum to 1 per image.

Validation runs the EMA weights when EMA is on, gathers the probabilities of the whole fold (all ranks), and logs
`val/auroc` (the mean one-vs-rest AUROC over the classes that have both positive and negative images in the fold: the
checkpoint monitor), `val/auroc/<class>` per class, `val/loss`, for a binary task `val/f1` at its best threshold
(`val/threshold`) and `val/accuracy` at 0.5, and for a multi-class task `val/accuracy` (the arg-max) and, when the
labels group images into studies (SIIM's `study_id`), `val/study_map`: the study-level mAP of the competition (each
class's VOC AP over the studies ranked by their images' mean probability; the monitor then).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torchvision.ops import sigmoid_focal_loss

from cxrdet.errors import ConfigError
from cxrdet.metrics.classification import auroc, best_f1, group_map
from cxrdet.models.classifier import Classifier, create_classifier
from cxrdet.models.lit_base import LitBase, from_all_ranks

MONITOR = "val/auroc"
STUDY_MONITOR = "val/study_map"
LOSSES: tuple[str, ...] = ("bce", "focal", "ce")
LOSS_DEFAULTS: dict[str, Any] = {"type": "bce", "pos_weight": None, "gamma": 2.0, "alpha": None,
                                 "label_smoothing": 0.0}


def resolve_loss(cfg: Mapping[str, Any] | None, n_classes: int) -> dict[str, Any]:
    """The config's `loss` section with defaults filled and values checked (`pos_weight` may stay 'auto').

    Raises:
        ConfigError: Unknown key or type, or a `pos_weight` list of the wrong length.
    """
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(LOSS_DEFAULTS))
    if unknown:
        raise ConfigError(f"loss: unknown key(s) {unknown}; expected some of {list(LOSS_DEFAULTS)}")
    out = {**LOSS_DEFAULTS, **cfg}
    if out["type"] not in LOSSES:
        raise ConfigError(f"loss.type={out['type']!r}: expected one of {list(LOSSES)}")
    weight = out["pos_weight"]
    if weight is not None and weight != "auto":
        if isinstance(weight, (int, float)):
            weight = [float(weight)] * n_classes
        if isinstance(weight, str) or len(weight) != n_classes or any(float(w) <= 0 for w in weight):
            raise ConfigError(f"loss.pos_weight={out['pos_weight']!r}: expected None, 'auto', a number or "
                              f"{n_classes} positive numbers (one per class)")
        out["pos_weight"] = [float(w) for w in weight]
    if out["alpha"] is not None and not 0.0 <= float(out["alpha"]) <= 1.0:
        raise ConfigError(f"loss.alpha={out['alpha']!r}: expected None or a number in [0, 1]")
    if not 0.0 <= float(out["label_smoothing"]) < 1.0:
        raise ConfigError(f"loss.label_smoothing={out['label_smoothing']!r}: expected a number in [0, 1)")
    if out["label_smoothing"] and out["type"] != "ce":
        raise ConfigError(f"loss.label_smoothing={out['label_smoothing']!r}: only for type='ce' (softmax)")
    if out["type"] == "ce" and n_classes < 2:
        raise ConfigError("loss.type='ce' (softmax over classes that exclude each other) needs at least 2 classes in "
                          f"data.classes; got {n_classes}: use 'bce' for one class")
    return out


def is_multiclass(cfg: Mapping[str, Any]) -> bool:
    """Whether a config's classifier is multi-class (softmax, `loss.type='ce'`)."""
    return str((cfg.get("loss") or {}).get("type", "bce")) == "ce"


def class_weights(targets: np.ndarray, source: str = "the training images") -> list[float]:
    """Balanced cross-entropy weights `N / (K * count)` of a `[N, K]` one-hot matrix (an absent class: 1.0, with a
    warning)."""
    y = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    count = y.sum(axis=0)
    absent = np.flatnonzero(count == 0)
    if len(absent):
        rank_zero_warn(f"loss.pos_weight='auto': class(es) at {absent.tolist()} have no image in {source}; their "
                       "weight is 1.0")
    return np.where(count > 0, len(y) / (y.shape[1] * np.maximum(count, 1.0)), 1.0).tolist()


def auto_pos_weight(targets: np.ndarray, source: str = "the training images") -> list[float]:
    """Negatives / positives per class of a `[N, K]` 0/1 label matrix (BCE's usual balancing weight).

    A class with no positive gets 1.0: the weight multiplies positive terms only, so with none it changes nothing
    (small data sets can miss a rare finding, e.g. NIH's Hernia at 0.2%); a warning names the classes.
    """
    y = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    pos = y.sum(axis=0)
    absent = np.flatnonzero(pos == 0)
    if len(absent):
        rank_zero_warn(f"loss.pos_weight='auto': class(es) at {absent.tolist()} have no positive in {source}; their "
                       "weight is 1.0 (no positive term to weight)")
    return np.where(pos > 0, (len(y) - pos) / np.maximum(pos, 1.0), 1.0).tolist()


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, loss_cfg: Mapping[str, Any],
                        pos_weight: torch.Tensor | None) -> torch.Tensor:
    """Mean loss over images and classes.

    Args:
        logits: `[B, K]` raw outputs.
        targets: `[B, K]` 0/1 floats.
        loss_cfg: A `resolve_loss` result (`type`, `gamma`, `alpha`).
        pos_weight: `[K]` multipliers of the positive terms, or None.
    """
    targets = targets.to(logits.dtype)
    if loss_cfg["type"] == "ce":
        ones = targets.sum(dim=1)
        if not bool(((ones == 1) & ((targets == 0) | (targets == 1)).all(dim=1)).all()):
            bad = int(torch.nonzero(ones != 1)[0, 0]) if bool((ones != 1).any()) else 0
            raise ConfigError(f"loss.type='ce': image {bad} of the batch has targets {targets[bad].tolist()}: expected "
                              "exactly one class per image (one-hot); use 'bce' for multi-label classes")
        weight = None if pos_weight is None else pos_weight.to(logits)
        return F.cross_entropy(logits, targets.argmax(dim=1), weight=weight,
                               label_smoothing=float(loss_cfg["label_smoothing"]))
    if loss_cfg["type"] == "bce":
        weight = None if pos_weight is None else pos_weight.to(logits)
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)
    alpha = -1.0 if loss_cfg["alpha"] is None else float(loss_cfg["alpha"])
    loss = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=float(loss_cfg["gamma"]), reduction="none")
    if pos_weight is not None:
        loss = loss * (1.0 + (pos_weight.to(loss) - 1.0) * targets)
    return loss.mean()


def probabilities(logits: torch.Tensor, multiclass: bool = False) -> torch.Tensor:
    """Class probabilities of logits `[B, K]`: a softmax over the classes when they exclude each other, else each
    class's sigmoid."""
    return torch.softmax(logits.float(), dim=1) if multiclass else torch.sigmoid(logits.float())


def probabilities_frame(logits: torch.Tensor, metas: Sequence[Mapping[str, Any]], classes: Sequence[str],
                        multiclass: bool = False) -> pd.DataFrame:
    """One batch of logits `[B, K]` as a table: `image_id` plus one float64 probability column per class
    (`probabilities`)."""
    probs = probabilities(logits, multiclass).cpu().numpy().astype(np.float64).reshape(len(metas), len(classes))
    return pd.concat([pd.DataFrame({"image_id": pd.Series([str(m["image_id"]) for m in metas], dtype=str)}),
                      pd.DataFrame(probs, columns=list(classes))], axis=1)


class LitClassifier(LitBase):
    """Trains one image-level classifier on the training folds and scores it (AUROC) on the held-out fold.

    Args:
        cfg: The resolved config as a plain dict (sections `model`, `data`, `loss`, `optim`, `lr_schedule`,
            `train`); saved in every checkpoint.
    """

    monitor = MONITOR
    what = "classifier"
    model: Classifier

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg, create_classifier(cfg))
        self.classes: tuple[str, ...] = tuple(cfg["data"]["classes"])
        self.loss_cfg = resolve_loss(cfg.get("loss"), len(self.classes))
        self.multiclass = self.loss_cfg["type"] == "ce"
        weight = self.loss_cfg["pos_weight"]
        # 'auto' is filled in from the data module when fitting starts; a buffer follows the module's device.
        self.register_buffer("pos_weight", torch.tensor(weight, dtype=torch.float32)
                             if isinstance(weight, list) else None, persistent=False)
        self._val: list[tuple[list[str], np.ndarray, np.ndarray]] = []

    def inference_model(self) -> Classifier:
        """The weights validation and prediction use: the EMA copy when EMA is on."""
        return super().inference_model()

    def setup(self, stage: str) -> None:
        if stage != "fit" or self.loss_cfg["pos_weight"] != "auto":
            return
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is None or not hasattr(dm, "train_targets"):
            raise ConfigError("loss.pos_weight='auto' needs a data module with `train_targets`")
        weights = class_weights if self.multiclass else auto_pos_weight
        self.pos_weight = torch.tensor(weights(dm.train_targets()), dtype=torch.float32)

    # ---- training ----

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets, _ = batch
        loss = classification_loss(self.model(images), targets, self.loss_cfg, self.pos_weight)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(images))
        return loss

    # ---- validation ----

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor, list[dict]], batch_idx: int) -> None:
        images, targets, metas = batch
        model = self.inference_model()
        model.eval()
        logits = model(images)
        loss = classification_loss(logits, targets, self.loss_cfg, self.pos_weight)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(images), sync_dist=True)
        probs = probabilities(logits, self.multiclass).cpu().numpy().astype(np.float64)
        self._val.append(([m["image_id"] for m in metas], probs, targets.float().cpu().numpy()))

    @classmethod
    def monitor_for(cls, cfg: Mapping[str, Any]) -> str:
        """`val/study_map` for a multi-class classifier whose competition groups images into studies (SIIM), else
        `val/auroc`."""
        if not is_multiclass(cfg):
            return MONITOR
        from cxrdet.competitions import of_data

        try:
            return STUDY_MONITOR if of_data(cfg.get("data")).study_classes else MONITOR
        except ConfigError:
            return MONITOR

    def _studies(self, ids: pd.Index) -> pd.Series | None:
        """The study of each validation image, when the labels have studies (`study_id`), else None."""
        dm = self.trainer.datamodule if self.trainer is not None else None
        tables = getattr(dm, "_tables", None)
        images = getattr(getattr(tables, "annotations", None), "images", None)
        if images is None or "study_id" not in images.columns:
            return None
        return images.drop_duplicates("image_id").set_index("image_id")["study_id"].reindex(ids)

    def gathered_outputs(self) -> tuple[np.ndarray, np.ndarray]:
        """This epoch's validation `(probabilities [N, K], targets [N, K])` of all ranks, each image once."""
        probs, truth, _ = self.gathered_with_ids()
        return probs, truth

    def gathered_with_ids(self) -> tuple[np.ndarray, np.ndarray, pd.Index]:
        """`gathered_outputs` and the image id of each row."""
        k = len(self.classes)
        local = ([i for part in self._val for i in part[0]],
                 np.concatenate([p[1] for p in self._val]) if self._val else np.zeros((0, k)),
                 np.concatenate([p[2] for p in self._val]) if self._val else np.zeros((0, k)))
        parts = from_all_ranks(local)
        ids = pd.Index([i for part in parts for i in part[0]])
        # A distributed sampler pads the last batches with repeated images: keep each image's first copy.
        first = ~ids.duplicated(keep="first")
        probs = np.concatenate([part[1] for part in parts]).reshape(-1, k)[first]
        truth = np.concatenate([part[2] for part in parts]).reshape(-1, k)[first]
        return probs, truth, ids[first]

    def on_validation_epoch_end(self) -> None:
        probs, truth, ids = self.gathered_with_ids()
        per_class = np.atleast_1d(auroc(truth, probs)) if len(probs) else np.full(len(self.classes), np.nan)
        scored = per_class[~np.isnan(per_class)]
        # NaN when no class has both labels in the fold: the checkpoint callback then keeps the first epoch.
        mean = float(scored.mean()) if len(scored) else float("nan")
        # Every rank scored the same gathered outputs; syncing keeps Lightning's decisions identical on all ranks.
        self.log(MONITOR, mean, prog_bar=True, sync_dist=True)
        for name, value in zip(self.classes, per_class, strict=True):
            self.log(f"{MONITOR}/{name}", float(value), sync_dist=True)
        if len(self.classes) == 1 and len(probs):
            point = best_f1(truth[:, 0], probs[:, 0])
            self.log("val/f1", point.f1, sync_dist=True)
            self.log("val/threshold", point.threshold, sync_dist=True)
            self.log("val/accuracy", float(((probs[:, 0] >= 0.5) == (truth[:, 0] > 0.5)).mean()), sync_dist=True)
        if self.multiclass and len(probs):
            self.log("val/accuracy", float((probs.argmax(axis=1) == truth.argmax(axis=1)).mean()), sync_dist=True)
            studies = self._studies(ids)
            if studies is not None and not studies.isna().any():
                value = group_map(truth, probs, studies.to_numpy())
                self.log(STUDY_MONITOR, value, prog_bar=True, sync_dist=True)
        self._val = []
