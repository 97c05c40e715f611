"""Weight averaging: SWA averages the last epochs' trained weights, average_best the k best epochs' validated
weights; BatchNorm statistics are recomputed on training batches; a run writes swa.ckpt / avg.ckpt with their own
validation score, and prediction can name them; bad settings are named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from torch import nn

from cxrdet import paths
from cxrdet.config import load_config
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.models.averaging import AveragingSpec, WeightAverager, averaging_specs, recompute_batchnorm
from cxrdet.runs import Run, load_checkpoint_file
from tests.helpers.squares import TINY, tiny_options, write_squares_dataset


class Module:
    """A stand-in LightningModule: a model and its validated weights (the same here)."""

    def __init__(self) -> None:
        self.model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))

    def inference_model(self) -> nn.Module:
        return self.model


class Trainer:
    def __init__(self, max_epochs: int) -> None:
        self.max_epochs = max_epochs
        self.current_epoch = 0
        self.sanity_checking = False
        self.callback_metrics: dict[str, torch.Tensor] = {}


def set_weight(module: Module, value: float) -> None:
    with torch.no_grad():
        for p in module.model.parameters():
            p.fill_(value)


def test_swa_averages_the_last_epochs_trained_weights() -> None:
    module, trainer = Module(), Trainer(max_epochs=5)
    averager = WeightAverager(AveragingSpec("swa", 3), "val/rsna")
    for epoch, value in enumerate([10.0, 20.0, 1.0, 2.0, 6.0]):
        trainer.current_epoch = epoch
        set_weight(module, value)
        averager.on_train_epoch_end(trainer, module)  # type: ignore[arg-type]
    state = averager.state()
    assert state is not None and torch.allclose(state["0.weight"], torch.full((2, 2), 3.0))  # (1 + 2 + 6) / 3
    assert averager.epochs() == [-3, -2, -1]


def test_average_best_keeps_the_k_best_epochs_validated_weights() -> None:
    module, trainer = Module(), Trainer(max_epochs=5)
    averager = WeightAverager(AveragingSpec("avg", 2), "val/rsna")
    for epoch, (value, score) in enumerate([(1.0, 0.1), (2.0, 0.5), (4.0, 0.3), (8.0, 0.5), (16.0, 0.2)]):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"val/rsna": torch.tensor(score)}
        set_weight(module, value)
        averager.on_validation_end(trainer, module)  # type: ignore[arg-type]
    state = averager.state()
    assert averager.epochs() == [1, 3]  # the two scores of 0.5
    assert state is not None and torch.allclose(state["0.bias"], torch.full((2,), 5.0))  # (2 + 8) / 2
    assert WeightAverager(AveragingSpec("avg", 2), "val/rsna").state() is None


def test_batchnorm_statistics_are_recomputed_on_training_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), nn.BatchNorm1d(3, momentum=0.5))
    batches = [(torch.randn(8, 3) * 2 + 5,) for _ in range(4)]
    model.eval()
    seen = recompute_batchnorm(model, batches, lambda batch: model(batch[0]), limit=3)
    data = torch.cat([b[0] for b in batches[:3]])
    bn = model[1]
    assert seen == 3 and bn.momentum == 0.5 and not model.training  # momentum and mode restored
    assert torch.allclose(bn.running_mean, data.mean(0), atol=1e-5)  # a cumulative average of the three batches
    assert recompute_batchnorm(nn.Linear(2, 2), batches, lambda b: None, None) == 0  # no BatchNorm, nothing run


@pytest.mark.parametrize(("train", "match"), [
    ({"swa": {"epochs": 1}}, r"train.swa.epochs=1: expected an integer >= 2"),
    ({"swa": {"epoch": 3}}, r"train.swa: unknown key\(s\) epoch"),
    ({"average_best": {"k": 3, "bn_batches": -1}}, r"train.average_best.bn_batches=-1"),
    ({"swa": 3}, r"train.swa=3: expected a dict"),
])
def test_bad_settings_are_named(train: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        averaging_specs(train)


def test_specs() -> None:
    assert averaging_specs({"swa": None, "average_best": None}) == []
    assert averaging_specs({"swa": {"epochs": 2}, "average_best": {"k": 4, "bn_batches": None}}) == [
        AveragingSpec("swa", 2, 100), AveragingSpec("avg", 4, None)]


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def test_a_run_writes_validated_averaged_checkpoints_that_predict_can_name(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from cxrdet.tasks import predict, train

    squares = write_squares_dataset(tmp_path)
    options = {"train.epochs": 3, "train.limit_train_batches": 3, "train.swa": {"epochs": 2, "bn_batches": 2},
               "train.average_best": {"k": 2, "bn_batches": 0}}
    cfg = load_config(TINY, tiny_options(squares, **options))
    result = train(cfg, fold=0)
    err = capsys.readouterr().err
    ckpts = result.run_dir / "checkpoints"
    done = json.loads((ckpts / "done.json").read_text())
    assert set(done["averaged"]) == {"swa", "avg"}
    assert done["averaged"]["swa"]["epochs"] == [-2, -1] and done["averaged"]["swa"]["bn_batches"] == 2
    assert len(done["averaged"]["avg"]["epochs"]) == 2 and done["averaged"]["avg"]["bn_batches"] == 0
    for kind in ("swa", "avg"):
        record = done["averaged"][kind]
        assert record["checkpoint"] == f"{kind}.ckpt" and 0.0 <= record["val_score"] <= 1.0
        ckpt = load_checkpoint_file(ckpts / f"{kind}.ckpt")
        # The checkpoint says how its own weights scored on the held-out fold.
        assert ckpt["cxrdet"]["val_score"] == pytest.approx(record["val_score"])
        assert f"retinanet_mnv3s_128_tiny12e {kind} of epochs" in err
        pred = pd.read_parquet(predict(cfg, 0, split="oof", checkpoint=kind))
        assert json.loads(paths.predictions_path(cfg.experiment, 0, "oof").with_suffix(".json").read_text())[
            "checkpoint"].endswith(f"{kind}.ckpt")
        assert len(pred) > 0
    # The averaged weights differ from the best epoch's, and the EMA copy holds them too (prediction reads it).
    best = load_checkpoint_file(ckpts / "best.ckpt")["state_dict"]
    swa = load_checkpoint_file(ckpts / "swa.ckpt")["state_dict"]
    key = next(k for k in swa if k.startswith("model.") and k.endswith("weight"))
    assert not torch.equal(best[key], swa[key])
    assert torch.equal(swa[key], swa["ema.module." + key.removeprefix("model.")])
    # Epoch lines are the fit's only: the averaged validations report themselves once each.
    assert err.count("epoch 3/3") == 1


def test_a_missing_averaged_checkpoint_says_how_to_get_one(tmp_path: Path) -> None:
    squares = write_squares_dataset(tmp_path)
    cfg = load_config(TINY, tiny_options(squares, **{"train.limit_train_batches": 1}))
    from cxrdet.tasks import train

    train(cfg, fold=0)
    with pytest.raises(CxrdetError, match=r"swa.ckpt not found: the run averaged no weights of that kind; train it "
                                          r"with train.swa=dict"):
        Run(cfg.experiment, 0).final_checkpoint("swa", cfg=cfg)
