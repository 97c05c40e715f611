"""LitClassifier pieces: losses and class weights, the AUROC / F1 validation metrics, checkpoints, shipped configs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrdet.config import load_config, to_dict
from cxrdet.errors import ConfigError
from cxrdet.models.lit_base import LitBase, inference_state
from cxrdet.models.lit_classifier import (
    LitClassifier,
    auto_pos_weight,
    classification_loss,
    resolve_loss,
)
from cxrdet.models.lit_detector import LitDetector
from cxrdet.paths import CONFIGS_DIR

TINY = CONFIGS_DIR / "experiments" / "cls_regnetx002_128_tiny12e.py"
CLASSIFIERS = sorted((CONFIGS_DIR / "experiments").glob("cls_*.py"))


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def tiny_cfg(*options: str) -> dict[str, Any]:
    return to_dict(load_config(TINY, ["data.size=32", *options]))


class Logged(dict):
    """Stands in for `LightningModule.log` outside a trainer."""

    def __call__(self, name: str, value: Any, **_: Any) -> None:
        self[name] = float(value)


def validate(module: LitClassifier, ids: list[str], probs: list[list[float]], truth: list[list[float]]) -> Logged:
    """Run the epoch-end metrics on given probabilities (as if `validation_step` had collected them)."""
    logged = Logged()
    module.log = logged  # type: ignore[method-assign]
    module._val = [(ids, np.asarray(probs, dtype=np.float64), np.asarray(truth, dtype=np.float32))]
    module.on_validation_epoch_end()
    return logged


def test_both_modules_share_the_base_and_name_their_monitor() -> None:
    assert issubclass(LitClassifier, LitBase) and issubclass(LitDetector, LitBase)
    assert LitClassifier.monitor == "val/auroc" and LitDetector.monitor == "val/rsna"


def test_resolve_loss_defaults_and_errors() -> None:
    assert resolve_loss(None, 2) == {"type": "bce", "pos_weight": None, "gamma": 2.0, "alpha": None,
                                     "label_smoothing": 0.0}
    with pytest.raises(ConfigError, match=r"label_smoothing=0.1: only for type='ce'"):
        resolve_loss({"label_smoothing": 0.1}, 2)
    assert resolve_loss({"pos_weight": 3}, 2)["pos_weight"] == [3.0, 3.0]
    assert resolve_loss({"pos_weight": "auto", "type": "focal"}, 2)["pos_weight"] == "auto"
    with pytest.raises(ConfigError, match=r"loss: unknown key\(s\) \['weight'\]"):
        resolve_loss({"weight": 1}, 1)
    with pytest.raises(ConfigError, match="loss.type='ce'"):
        resolve_loss({"type": "ce"}, 1)
    with pytest.raises(ConfigError, match=r"loss.pos_weight=\[1.0\]: expected .* 2 positive numbers"):
        resolve_loss({"pos_weight": [1.0]}, 2)
    with pytest.raises(ConfigError, match="loss.alpha=2"):
        resolve_loss({"type": "focal", "alpha": 2}, 1)


def test_auto_pos_weight_is_negatives_over_positives_per_class() -> None:
    y = np.array([[1, 0], [0, 1], [0, 1], [0, 0]])
    assert auto_pos_weight(y) == pytest.approx([3.0, 1.0])  # class 0: 3 negatives / 1 positive; class 1: 2 / 2
    with pytest.warns(UserWarning, match=r"class\(es\) at \[1\] have no positive.*weight is 1.0"):
        assert auto_pos_weight(np.array([[1, 0], [0, 0]])) == pytest.approx([1.0, 1.0])


def test_bce_weights_the_positive_terms() -> None:
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cfg = resolve_loss(None, 2)
    # -log(sigmoid(x)) for positives, -log(1 - sigmoid(x)) for negatives, by hand.
    terms = [math.log(2.0), math.log(1 + math.e ** 2), math.log(1 + math.e), math.log(1 + math.e)]
    assert float(classification_loss(logits, targets, cfg, None)) == pytest.approx(sum(terms) / 4, rel=1e-6)
    weighted = [2.0 * terms[0], terms[1], terms[2], 3.0 * terms[3]]
    got = classification_loss(logits, targets, cfg, torch.tensor([2.0, 3.0]))
    assert float(got) == pytest.approx(sum(weighted) / 4, rel=1e-6)


def test_focal_loss_down_weights_easy_examples() -> None:
    logits = torch.tensor([[3.0], [0.0]])
    targets = torch.tensor([[1.0], [1.0]])
    cfg = resolve_loss({"type": "focal", "gamma": 2.0}, 1)
    p = torch.sigmoid(logits)
    # FL = (1 - p)^gamma * BCE for positives (alpha off).
    expected = ((1 - p) ** 2 * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")).mean()
    assert float(classification_loss(logits, targets, cfg, None)) == pytest.approx(float(expected), rel=1e-6)
    # gamma 0 and alpha off is plain BCE; alpha 0.25 scales positives by 0.25.
    plain = F.binary_cross_entropy_with_logits(logits, targets)
    assert float(classification_loss(logits, targets, {**cfg, "gamma": 0.0}, None)) == pytest.approx(float(plain))
    assert float(classification_loss(logits, targets, {**cfg, "gamma": 0.0, "alpha": 0.25}, None)) == \
        pytest.approx(0.25 * float(plain))


def test_validation_logs_auroc_f1_and_accuracy_of_a_binary_task() -> None:
    module = LitClassifier(tiny_cfg())
    # Positives score 0.9 and 0.4, negatives 0.2 and 0.6: 3 of the 4 positive-negative pairs are ordered, AUROC 0.75.
    # F1 by cut: 0.9 -> 2/3, 0.6 -> 1/2, 0.4 -> 4/5, 0.2 -> 2/3: best 0.8 at 0.4. Accuracy at 0.5: 2 of 4.
    logged = validate(module, ["a", "b", "c", "d"], [[0.9], [0.2], [0.4], [0.6]], [[1], [0], [1], [0]])
    assert logged["val/auroc"] == pytest.approx(0.75) and logged["val/auroc/opacity"] == pytest.approx(0.75)
    assert logged["val/f1"] == pytest.approx(0.8) and logged["val/threshold"] == pytest.approx(0.4)
    assert logged["val/accuracy"] == pytest.approx(0.5)


def test_validation_mean_auroc_skips_classes_without_both_labels_and_counts_each_image_once() -> None:
    module = LitClassifier(tiny_cfg("data.classes=('a','b','c')"))
    probs = [[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.3, 0.7, 0.5], [0.9, 0.1, 0.5]]
    truth = [[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0]]  # the last row repeats image 'a' (a DDP sampler's padding)
    logged = validate(module, ["a", "b", "c", "a"], probs, truth)
    # a: positive 0.9 above both negatives: 1.0. b: positive 0.8 above 0.1 and 0.7: 1.0. c: no positive: NaN.
    assert logged["val/auroc/a"] == 1.0 and logged["val/auroc/b"] == 1.0 and math.isnan(logged["val/auroc/c"])
    assert logged["val/auroc"] == 1.0 and "val/f1" not in logged
    # A repeated image keeps its first row only.
    module._val = [(["a", "b", "a"], np.array([[0.9, 0, 0], [0.2, 0, 0], [0.1, 0, 0]]), np.zeros((3, 3)))]
    kept, _ = module.gathered_outputs()
    assert kept[:, 0].tolist() == [0.9, 0.2]


def test_validation_with_no_scorable_class_logs_nan() -> None:
    module = LitClassifier(tiny_cfg())
    logged = validate(module, ["a", "b"], [[0.9], [0.2]], [[1], [1]])
    assert math.isnan(logged["val/auroc"])


def test_checkpoint_round_trip_prefers_ema_and_names_the_classifier(tmp_path: Path) -> None:
    source = LitClassifier(tiny_cfg())
    with torch.no_grad():
        for p in source.ema.module.parameters():
            p.fill_(0.5)
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    target = LitClassifier(tiny_cfg())
    target.init_from_checkpoint(path)
    assert all(bool((p == 0.5).all()) for p in target.model.parameters())
    assert all(bool((p == 0.5).all()) for p in target.inference_model().parameters())
    with pytest.raises(ConfigError, match="x.ckpt: no classifier weights"):
        inference_state({"state_dict": {"w": torch.ones(1)}}, "x.ckpt", "classifier")
    other = LitClassifier(tiny_cfg("data.classes=('a','b')"))
    with pytest.raises(ConfigError, match="do not fit the config's model"):
        other.init_from_checkpoint(path)


def test_auto_pos_weight_is_read_from_the_data_module_when_fitting() -> None:
    module = LitClassifier(tiny_cfg("loss.pos_weight='auto'"))
    assert module.pos_weight is None

    class _DataModule:
        def train_targets(self) -> np.ndarray:
            return np.array([[1.0], [0.0], [0.0], [0.0]])

    class _Trainer:
        datamodule = _DataModule()

    module.trainer = _Trainer()  # type: ignore[assignment]
    module.setup("fit")
    assert module.pos_weight.tolist() == [3.0]


def test_plateau_schedule_follows_the_classifier_monitor() -> None:
    module = LitClassifier(tiny_cfg("lr_schedule.type=plateau"))
    assert module.configure_optimizers()["lr_scheduler"]["monitor"] == "val/auroc"


@pytest.mark.parametrize("path", CLASSIFIERS, ids=lambda p: p.stem)
def test_classifier_config_builds_and_takes_a_training_step(path: Path) -> None:
    torch.manual_seed(0)
    cfg = to_dict(load_config(path, ["data.size=64", "model.pretrained=False"]))
    assert cfg["task"] == "classify"
    module = LitClassifier(cfg)
    k = len(cfg["data"]["classes"])
    images = torch.rand(2, 3, 64, 64)
    targets = torch.zeros(2, k)
    targets[0] = 1.0
    module.train()
    loss = classification_loss(module.model(images), targets, module.loss_cfg, torch.ones(k))
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.parameters())
    module.eval()
    with torch.no_grad():
        assert module.inference_model()(images).shape == (2, k)


def test_the_multi_class_loss_is_softmax_cross_entropy_and_wants_one_class_per_image() -> None:
    from cxrdet.models.lit_classifier import class_weights, probabilities

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    cfg = resolve_loss({"type": "ce"}, 3)
    by_hand = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 2]) / 2
    torch.testing.assert_close(classification_loss(logits, targets, cfg, None), by_hand)
    weighted = classification_loss(logits, targets, cfg, torch.tensor([1.0, 1.0, 3.0]))
    lsm = torch.log_softmax(logits, 1)
    torch.testing.assert_close(weighted, -(lsm[0, 0] + 3 * lsm[1, 2]) / 4)  # torch's weighted mean
    with pytest.raises(ConfigError, match=r"image 1 of the batch has targets \[1.0, 1.0, 0.0\]: expected exactly one"):
        classification_loss(logits, torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]), cfg, None)
    torch.testing.assert_close(probabilities(logits, multiclass=True).sum(1), torch.ones(2))
    assert class_weights(np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])) == pytest.approx([4 / 6, 4 / 3, 4 / 3])


def test_the_study_level_map_pools_a_study_s_images() -> None:
    from cxrdet.metrics.classification import group_map

    truth = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    groups = np.array(["a", "a", "b", "c"])
    # mean per study: a (0.55, 0.45), b (0.6, 0.4), c (0.3, 0.7). Class 0: b (FP), a (TP): AP 1/2. Class 1: c (TP),
    # a (FP), b (TP): AP (1 + 2/3) / 2.
    assert group_map(truth, probs, groups) == pytest.approx((0.5 + (1 + 2 / 3) / 2) / 2)
    # max per study: a (0.9, 0.8) ranks first on both classes. Class 0: AP 1. Class 1: a (FP), c (TP), b (TP): the
    # envelope lifts the precision 1/2 at recall 1/2 to 2/3, so AP 2/3.
    assert group_map(truth, probs, groups, pool="max") == pytest.approx((1.0 + 2 / 3) / 2)
