"""LitDetector pieces: box mapping to original pixels, threshold sweep, LR factor, EMA weights, optimisers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from cxrdet.config import load_config, to_dict
from cxrdet.errors import ConfigError
from cxrdet.models.lit_base import cosine_warmup_factor, inference_state
from cxrdet.models.lit_detector import LitDetector, best_threshold, detections_to_frame, threshold_grid
from cxrdet.paths import CONFIGS_DIR

TINY = CONFIGS_DIR / "experiments" / "retinanet_mnv3s_128_tiny12e.py"


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def tiny_cfg(*options: str) -> dict[str, Any]:
    return to_dict(load_config(TINY, ["data.size=64", *options]))


def test_detections_map_back_to_original_pixels_and_undo_the_flip() -> None:
    outputs = [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]), "scores": torch.tensor([0.9]),
                "labels": torch.tensor([0])},
               {"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]), "scores": torch.tensor([0.5]),
                "labels": torch.tensor([0])},
               {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    metas = [{"image_id": "a", "orig_width": 1024, "orig_height": 512, "hflip": False},
             {"image_id": "b", "orig_width": 1024, "orig_height": 512, "hflip": True},
             {"image_id": "c", "orig_width": 1024, "orig_height": 512, "hflip": False}]
    df = detections_to_frame(outputs, metas, size=64)
    assert list(df.columns) == ["image_id", "x1", "y1", "x2", "y2", "score", "label"]
    # x scales by 1024/64 = 16, y by 512/64 = 8; the flipped one is mirrored first: x in [64-30, 64-10] = [34, 54].
    assert df.loc[0, ["x1", "y1", "x2", "y2"]].tolist() == [160.0, 160.0, 480.0, 320.0]
    assert df.loc[1, ["x1", "y1", "x2", "y2"]].tolist() == [544.0, 160.0, 864.0, 320.0]
    assert df["image_id"].tolist() == ["a", "b"] and df["score"].tolist() == pytest.approx([0.9, 0.5])


def test_threshold_grid_and_best_threshold() -> None:
    assert threshold_grid({"start": 0.1, "stop": 0.3, "step": 0.1}).tolist() == [0.1, 0.2, 0.3]
    assert threshold_grid([0.5, 0.7]).tolist() == [0.5, 0.7]
    curve = pd.DataFrame({"threshold": [0.1, 0.2, 0.3, 0.4], "score": [0.1, 0.3, 0.3, np.nan]})
    assert best_threshold(curve) == (0.3, 0.2)  # a tie goes to the lower cut
    assert best_threshold(pd.DataFrame({"threshold": [0.1], "score": [np.nan]})) == (0.0, 0.1)


def test_cosine_warmup_factor() -> None:
    f = [cosine_warmup_factor(s, total=10, warmup=2, warmup_factor=0.1, min_ratio=0.0) for s in range(11)]
    assert f[0] == pytest.approx(0.1) and f[1] == pytest.approx(0.55) and f[2] == pytest.approx(1.0)
    # Half-way through the cosine part (step 6 of 2..10): 0.5.
    assert f[6] == pytest.approx(0.5) and f[10] == pytest.approx(0.0)
    assert cosine_warmup_factor(10, 10, 0, 0.1, 0.2) == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(f[2:], f[3:], strict=False))


def test_inference_state_prefers_ema_weights() -> None:
    a, b = torch.ones(1), torch.zeros(1)
    assert inference_state({"state_dict": {"model.w": a, "ema.module.w": b}})["w"] is b
    assert inference_state({"state_dict": {"model.w": a}})["w"] is a
    with pytest.raises(ConfigError, match="x.ckpt: no detector weights"):
        inference_state({"state_dict": {"w": a}}, "x.ckpt")


def test_ema_is_off_when_disabled_and_never_trained() -> None:
    assert LitDetector(tiny_cfg("train.ema={'enabled':False}")).ema is None
    assert LitDetector(tiny_cfg("train.ema=None")).ema is None
    module = LitDetector(tiny_cfg())
    assert module.ema is not None and module.inference_model() is module.ema.module
    assert not any(p.requires_grad for p in module.ema.parameters())


def test_init_from_checkpoint_loads_the_validated_weights(tmp_path: Path) -> None:
    source = LitDetector(tiny_cfg())
    with torch.no_grad():
        for p in source.ema.module.parameters():
            p.fill_(0.5)
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    target = LitDetector(tiny_cfg())
    target.init_from_checkpoint(path)
    assert all(torch.all(p == 0.5) for p in target.model.parameters())
    assert all(torch.all(p == 0.5) for p in target.ema.module.parameters())
    other = LitDetector(tiny_cfg("model.type=fcos"))
    with pytest.raises(ConfigError, match="best.ckpt: its weights do not fit the config's model \\(fcos\\)"):
        other.init_from_checkpoint(path)


class _FakeTrainer:
    estimated_stepping_batches = 100
    max_epochs = 10


@pytest.mark.parametrize(("options", "optimizer", "scheduler"), [
    (("optim={'type':'sgd','lr':0.1,'momentum':0.9,'weight_decay':1e-4}",), torch.optim.SGD,
     torch.optim.lr_scheduler.LambdaLR),
    (("lr_schedule={'type':'plateau','factor':0.5,'patience':1}",), torch.optim.AdamW,
     torch.optim.lr_scheduler.ReduceLROnPlateau),
])
def test_optimisers_and_schedules(options: tuple[str, ...], optimizer: type, scheduler: type,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    module = LitDetector(tiny_cfg(*options))
    monkeypatch.setattr(LitDetector, "trainer", _FakeTrainer(), raising=False)
    out = module.configure_optimizers()
    assert isinstance(out["optimizer"], optimizer) and isinstance(out["lr_scheduler"]["scheduler"], scheduler)
    # Weight decay applies to weights, not to norms and biases.
    decays = sorted(g["weight_decay"] for g in out["optimizer"].param_groups)
    assert decays[0] == 0.0 and decays[-1] > 0.0


def test_cosine_warm_up_spans_the_configured_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    module = LitDetector(tiny_cfg("lr_schedule={'type':'cosine','warmup_epochs':2,'warmup_factor':0.0,"
                                  "'min_lr_ratio':0.0}"))
    monkeypatch.setattr(LitDetector, "trainer", _FakeTrainer(), raising=False)
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    factors = [sched.lr_lambdas[0](s) for s in (0, 10, 20, 60, 100)]
    # 10 steps per epoch: warm-up over 20 steps, then cosine over 80.
    assert factors == pytest.approx([0.0, 0.5, 1.0, 0.5 * (1 + math.cos(math.pi * 0.5)), 0.0])


def test_unknown_optimiser_and_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LitDetector, "trainer", _FakeTrainer(), raising=False)
    with pytest.raises(ConfigError, match="optim.type='lamb'"):
        LitDetector(tiny_cfg("optim.type=lamb")).configure_optimizers()
    with pytest.raises(ConfigError, match="lr_schedule.type='step'"):
        LitDetector(tiny_cfg("lr_schedule.type=step")).configure_optimizers()


class RecordingDetector(torch.nn.Module):
    """Records the side it was told (`at_size`), the batch it got and its boxes; returns a loss of them."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.side: int | None = None
        self.calls: list[tuple[int | None, tuple[int, ...], torch.Tensor]] = []

    def at_size(self, side: int) -> Any:
        import contextlib

        self.side = side
        return contextlib.nullcontext()

    def forward(self, images: torch.Tensor, targets: Any) -> dict[str, torch.Tensor]:
        self.calls.append((self.side, tuple(images.shape), targets[0]["boxes"].clone()))
        return {"loss": self.weight * images.mean()}


def test_multiscale_training_draws_a_side_per_batch_and_rescales_images_and_boxes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = to_dict(load_config(TINY, ["data.size=64", "train.multiscale=[48, 64, 96]", "train.ema.enabled=False"]))
    module = LitDetector(cfg)
    module.model = RecordingDetector()
    monkeypatch.setattr(LitDetector, "log", lambda self, *a, **k: None)
    step = {"n": 0}
    monkeypatch.setattr(LitDetector, "global_step", property(lambda self: step["n"]))
    image = torch.zeros(1, 3, 64, 64)
    image[:, :, 16:32, 8:40] = 1.0
    box = torch.tensor([[8.0, 16.0, 40.0, 32.0]])
    for n in range(30):
        step["n"] = n
        module.training_step((image, [{"boxes": box, "labels": torch.tensor([0])}], [{}]), n)
    sides = [side for side, _, _ in module.model.calls]
    assert set(sides) == {48, 64, 96}  # each side drawn, by (seed, step): the same every run and on every rank
    redrawn = []
    for n in range(30):
        step["n"] = n
        redrawn.append(module.batch_side())
    assert sides == redrawn
    for side, shape, boxes in module.model.calls:
        assert shape == (1, 3, side, side)
        assert torch.allclose(boxes, box * side / 64)
    step["n"] = 0
    assert LitDetector(to_dict(load_config(TINY, ["data.size=64"]))).batch_side() == 64  # off by default


@pytest.mark.parametrize(("value", "match"), [
    ("512", r"train.multiscale=512: expected None or a non-empty list"),
    ("[]", r"train.multiscale=\[\]: expected None or a non-empty list"),
    ("[4, 64]", r"train.multiscale=\[4, 64\]: expected input sides of at least 8 pixels"),
    ("['a']", r"train.multiscale=\['a'\]: expected a list of input sides"),
])
def test_multiscale_errors(value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LitDetector(to_dict(load_config(TINY, [f"train.multiscale={value}"])))
