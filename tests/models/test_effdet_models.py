"""EfficientDet through effdet: the adapter keeps the `Detector` contract (xyxy input pixels in and out, labels from
0, the score floor and cap), a box is learnt where it is, the whole run trains and predicts in the common format, and
its settings are checked with errors that say what to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.ops import box_iou

from cxrdet.config import load_config, to_dict
from cxrdet.errors import ConfigError
from cxrdet.models.factory import create_detector
from cxrdet.paths import CONFIGS_DIR
from tests.helpers import squares as squares_data
from tests.helpers.overfit import overfit_and_predict

TINY = CONFIGS_DIR / "experiments" / "efficientdet-d0_effb0_256_tiny12e.py"
SIZE = 128  # tests run it at 128 px with batches of two (a batch of one cannot train at 128: level 7 is 1 x 1)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def tiny_cfg(size: int = SIZE, **extra: Any) -> dict[str, Any]:
    options = {"data.size": size, "data.batch_size": 2, "data.num_workers": 0, "train.epochs": 1,
               "train.progress_bar": False, "train.accelerator": "cpu", "train.log_every_n_steps": 1, **extra}
    return to_dict(load_config(TINY, [f"{k}={v}" for k, v in options.items()]))


def test_a_box_is_learnt_in_input_pixels_with_its_label() -> None:
    """Boxes go in as xyxy (effdet wants yxyx) with 0-based labels (effdet's are 1-based): after overfitting one
    image, the top detection is the box, in input pixels, with its label."""
    torch.manual_seed(0)
    det = create_detector(tiny_cfg(**{"data.classes": ("a", "b", "c")}))
    image = torch.full((2, 3, SIZE, SIZE), 0.1)
    box = torch.tensor([[16.0, 40.0, 64.0, 120.0]])  # tall: a swapped x / y would miss it
    image[:, :, 40:120, 16:64] = 0.9
    target = [{"boxes": box, "labels": torch.tensor([2])}] * 2
    out = overfit_and_predict(det, image, target, steps=80, lr=3e-3)
    top = int(out["scores"].argmax())
    assert int(out["labels"][top]) == 2
    assert float(box_iou(out["boxes"][top: top + 1], box)) > 0.5


def test_postprocess_floor_and_cap_and_the_fixed_nms() -> None:
    det = create_detector(tiny_cfg(**{"predict.score_floor": 0.2, "predict.max_per_image": 7}))
    det.eval()
    with torch.no_grad():
        out = det(torch.rand(3, 3, SIZE, SIZE))
    assert all(len(o["boxes"]) <= 7 and (o["scores"] >= 0.2).all() for o in out)
    assert all(((o["boxes"] >= 0) & (o["boxes"] <= SIZE)).all() for o in out)
    with pytest.raises(ConfigError, match=r"predict.nms_iou=0.6: effdet's EfficientDet post-processing runs NMS at "
                                          r"IoU 0.5 .* expected 0.5"):
        create_detector(tiny_cfg(**{"predict.nms_iou": 0.6}))


def test_images_without_boxes_train() -> None:
    det = create_detector(tiny_cfg())
    det.train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = det(torch.rand(2, 3, SIZE, SIZE), [empty, empty])
    assert set(losses) == {"loss_cls", "loss_box"} and all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize(("options", "match"), [
    ({"data.size": 96}, r"data.size=96: tf_efficientdet_d0 halves the input 7 times; expected a multiple of 128"),
    ({"model.name": "efficientdet_d99"}, r"model.name='efficientdet_d99': not an effdet model config; expected one "
                                          r"of .*tf_efficientdet_d0"),
    ({"model.config": {"fpn_chanels": 32}}, r"model.config.fpn_chanels: effdet's tf_efficientdet_d0 config has no "
                                             r"such field"),
    ({"model.backbone": {"name": "x"}}, r"model: unknown key\(s\) backbone for efficientdet"),
])
def test_config_errors_say_what_to_fix(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_detector(tiny_cfg(**options))


def test_config_overrides_reach_effdet() -> None:
    det = create_detector(tiny_cfg(**{"model.config": {"fpn_channels": 32, "box_class_repeats": 2}}))
    assert det.net.model.config.fpn_channels == 32 and det.net.model.config.box_class_repeats == 2


def test_trains_and_predicts_in_the_common_format(tmp_path: Path) -> None:
    from cxrdet.models.lit_detector import PRED_COLUMNS
    from cxrdet.tasks import predict, train

    squares = squares_data.write_squares_dataset(tmp_path)
    cfg = tiny_cfg(**squares, **{"train.limit_train_batches": 2, "train.ema.enabled": False})
    result = train(cfg, fold=0)
    metrics = pd.read_csv(result.run_dir / "csv" / "version_0" / "metrics.csv")
    assert np.isfinite(metrics["train/loss_step"].dropna()).all()
    pred = pd.read_parquet(predict(cfg, 0, split="oof"))
    assert list(pred.columns) == list(PRED_COLUMNS)
    boxes = pred[["x1", "y1", "x2", "y2"]].to_numpy()
    assert ((boxes >= 0) & (boxes <= squares_data.ORIG)).all()


def test_other_sides_are_refused_with_the_reason() -> None:
    det = create_detector(tiny_cfg())
    with det.at_size(SIZE):  # the built side runs
        pass
    with pytest.raises(ConfigError, match=r"EfficientDet built for 128 px cannot run at 256 px: effdet fixes its "
                                          r"BiFPN's feature-map sizes at build time"):
        with det.at_size(256):
            pass
