"""Training runs on a tiny on-disk data set: run folder and provenance, resume, stages, learning, CLI, DDP, loops."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cxrdet import paths
from cxrdet.cli import app
from cxrdet.config import load_config
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.io import file_sha256
from cxrdet.models.lit_classifier import LitClassifier
from cxrdet.models.lit_detector import LitDetector
from cxrdet.runs import load_checkpoint_file
from cxrdet.runs import Run, resolve_stages
from cxrdet.tasks import train
from cxrdet.train import stage_config
from tests.helpers.squares import K, N_TEST, REPO, SIZE, TINY, tiny_options, write_squares_dataset
from tests.helpers.tasks import use_module

@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_squares_dataset(tmp_path_factory.mktemp("squares"))


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def test_run_folder_holds_config_provenance_checkpoints_and_logs(squares: dict[str, str],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(TINY, tiny_options(squares))
    result = train(cfg, fold=1)
    # Without a terminal, progress is one line per epoch.
    assert "retinanet_mnv3s_128_tiny12e fold 1 epoch 1/1: train/loss " in capsys.readouterr().err
    run = paths.run_dir("retinanet_mnv3s_128_tiny12e", 1)
    assert result.run_dir == run
    assert result.best_checkpoint == run / "checkpoints" / "best.ckpt" and (run / "checkpoints" / "last.ckpt").is_file()
    assert 0.0 <= result.best_score <= 1.0 and 0.05 <= result.best_threshold <= 0.95

    resolved = load_config(run / "config.py")
    assert resolved.experiment == "retinanet_mnv3s_128_tiny12e" and resolved.data.size == SIZE
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["fold"] == 1 and prov["folds_sha256"] == file_sha256(squares["data.folds"])
    assert set(prov["git"]) == {"commit", "dirty"} and not prov["resumed"]
    done = json.loads((run / "checkpoints" / "done.json").read_text())
    assert done["best_checkpoint"] == "best.ckpt" and done["best_score"] == pytest.approx(result.best_score)
    metrics = pd.read_csv(run / "csv" / "version_0" / "metrics.csv")
    assert {"train/loss_step", "train/loss_epoch", "val/rsna", "val/threshold"} <= set(metrics.columns)
    assert list((run / "tensorboard" / "version_0").glob("events.out.tfevents.*"))

    # The best checkpoint holds EMA weights next to the trained ones, and says which cut won.
    ckpt = load_checkpoint_file(result.best_checkpoint)
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])
    assert ckpt["cxrdet"]["val_threshold"] == pytest.approx(result.best_threshold)


def test_existing_run_needs_resume_or_overwrite(squares: dict[str, str]) -> None:
    cfg = load_config(TINY, tiny_options(squares, **{"train.limit_train_batches": 1}))
    train(cfg, fold=0)
    with pytest.raises(CxrdetError, match=r"--resume .* --overwrite"):
        train(cfg, fold=0)
    assert train(cfg, fold=0, overwrite=True).best_checkpoint.is_file()
    # A finished run resumes to nothing new: the marker says the stage is done.
    before = (paths.checkpoints_dir(cfg.experiment, 0) / "last.ckpt").stat().st_mtime_ns
    train(cfg, fold=0, resume=True)
    assert (paths.checkpoints_dir(cfg.experiment, 0) / "last.ckpt").stat().st_mtime_ns == before


class _Killed(RuntimeError):
    pass


class _DiesInSecondEpoch(LitDetector):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.current_epoch == 1 and batch_idx == 1:
            raise _Killed("simulated kill")
        return super().training_step(batch, batch_idx)


def test_resume_continues_from_last_checkpoint(squares: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(TINY, tiny_options(squares, **{"train.epochs": 2, "train.limit_train_batches": 2}))
    use_module(monkeypatch, "detect", _DiesInSecondEpoch)
    with pytest.raises(_Killed):
        train(cfg, fold=2)
    last = paths.checkpoints_dir(cfg.experiment, 2) / "last.ckpt"
    assert load_checkpoint_file(last)["global_step"] == 2  # saved after epoch 0 (2 batches); epoch 1 died

    use_module(monkeypatch, "detect", LitDetector)
    train(cfg, fold=2, resume=True)
    # Epoch 1 ran again from the checkpoint and epoch 0 was not repeated: 2 epochs x 2 batches = 4 steps.
    assert load_checkpoint_file(last)["global_step"] == 4
    run = paths.run_dir(cfg.experiment, 2)
    prov = json.loads((run / "provenance.json").read_text())
    assert not prov["resumed"] and prov["resumes"][0]["resumed"]
    # Each attempt logs into its own version folder, so the killed attempt's metrics survive.
    assert all((run / "csv" / v / "metrics.csv").is_file() for v in ("version_0", "version_1"))


def record_starting_checkpoints(module_cls: type, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The checkpoints `module_cls.init_from_checkpoint` is called with from now on, in order (the calls still load)."""
    started_from: list[Path] = []
    original = module_cls.init_from_checkpoint

    def spy(self: Any, path: Path) -> None:
        started_from.append(Path(path))
        original(self, path)

    monkeypatch.setattr(module_cls, "init_from_checkpoint", spy)
    return started_from


def test_stages_train_in_their_folders_from_the_previous_best(squares: dict[str, str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    stages = "[{'name':'crops','view':'crops','epochs':1,'lr':0.001},{'name':'full','view':'full','epochs':1}]"
    cfg = load_config(TINY, tiny_options(squares, **{"train.stages": stages, "train.limit_train_batches": 2}))
    started_from = record_starting_checkpoints(LitDetector, monkeypatch)
    result = train(cfg, fold=0)
    first = paths.checkpoints_dir(cfg.experiment, 0, "stage1_crops")
    second = paths.checkpoints_dir(cfg.experiment, 0, "stage2_full")
    assert started_from == [first / "best.ckpt"]
    assert result.best_checkpoint == second / "best.ckpt" == Run(cfg.experiment, 0).final_checkpoint(cfg=cfg)
    assert (first / "done.json").is_file() and (second / "done.json").is_file()
    # Each stage ran with its own view and learning rate.
    hparams = [load_checkpoint_file(d / "best.ckpt")["hyper_parameters"]["cfg"] for d in (first, second)]
    assert [h["data"]["view"] for h in hparams] == ["crops", "full"]
    assert [h["optim"]["lr"] for h in hparams] == [0.001, cfg.optim.lr]


def test_stage_resolution_and_errors() -> None:
    cfg = load_config(TINY, ["train.stages=[{'name':'a','epochs':2,'lr':0.5,'data':{'batch_size':2}},"
                             "{'name':'b','epochs':3}]"])
    a, b = resolve_stages(cfg)
    assert (a.name, a.epochs, a.lr, b.name, b.epochs, b.view) == ("stage1_a", 2, 0.5, "stage2_b", 3, None)
    sa = stage_config(cfg, a)
    assert sa["optim"]["lr"] == 0.5 and sa["data"]["batch_size"] == 2 and sa["train"]["epochs"] == 2
    assert stage_config(cfg, b)["data"]["batch_size"] == cfg.data.batch_size
    assert [s.name for s in resolve_stages(load_config(TINY))] == [None]
    with pytest.raises(ConfigError, match=r"train.stages\[0\]: expected `name` and `epochs`"):
        resolve_stages(load_config(TINY, ["train.stages=[{'name':'a'}]"]))
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_stages(load_config(TINY, ["train.stages=[{'name':'a','epochs':1,'lr_rate':1}]"]))
    with pytest.raises(ConfigError, match="a list of dicts"):
        resolve_stages(load_config(TINY, ["train.stages=crops"]))


# ---- classifiers (task='classify') ----

CLS_TINY = REPO / "configs" / "experiments" / "cls_regnetx002_128_tiny12e.py"


@pytest.fixture(scope="module")
def mixed_squares(squares: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The squares data with a fold file whose every fold holds both labels (image i is positive unless
    i % 3 == 2; the squares fold file puts each residue in its own fold, which leaves AUROC undefined)."""
    folds = pd.read_csv(squares["data.folds"])
    folds["fold"] = [(i // 3) % K for i in range(len(folds))]
    path = tmp_path_factory.mktemp("mixed") / "squares_mixed_k3.csv"
    folds.to_csv(path, index=False)
    return {**squares, "data.folds": str(path)}


def cls_options(data: dict[str, str], **extra: Any) -> list[str]:
    """`--cfg-options` for a quick CPU run of the tiny classifier on the squares data."""
    return tiny_options(data, **extra)


class _ClassifierDiesInSecondEpoch(LitClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.current_epoch == 1 and batch_idx == 1:
            raise _Killed("simulated kill")
        return super().training_step(batch, batch_idx)


def test_classifier_trains_logs_auroc_and_resumes(mixed_squares: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(CLS_TINY, cls_options(mixed_squares, **{"train.epochs": 2, "train.limit_train_batches": 2}))
    use_module(monkeypatch, "classify", _ClassifierDiesInSecondEpoch)
    with pytest.raises(_Killed):
        train(cfg, fold=0)
    assert "cls_regnetx002_128_tiny12e fold 0 epoch 1/2: train/loss " in capsys.readouterr().err
    last = paths.checkpoints_dir(cfg.experiment, 0) / "last.ckpt"
    assert load_checkpoint_file(last)["global_step"] == 2

    use_module(monkeypatch, "classify", LitClassifier)
    result = train(cfg, fold=0, resume=True)
    assert load_checkpoint_file(last)["global_step"] == 4
    assert result.monitor == "val/auroc" and 0.0 <= result.best_score <= 1.0
    assert re.search(r"epoch 2/2: train/loss [\d.]+, val/auroc [\d.]+ at cut", capsys.readouterr().err)
    run = paths.run_dir(cfg.experiment, 0)
    metrics = pd.read_csv(run / "csv" / "version_1" / "metrics.csv")
    assert {"val/auroc", "val/auroc/opacity", "val/f1", "val/threshold", "val/accuracy", "val/loss"} <= \
        set(metrics.columns)
    ckpt = load_checkpoint_file(result.best_checkpoint)
    assert ckpt["cxrdet"]["val_score"] == pytest.approx(result.best_score)
    assert ckpt["hyper_parameters"]["cfg"]["task"] == "classify"
    assert any(k.startswith("ema.module.net.") for k in ckpt["state_dict"])


class _GetsWorse(LitClassifier):
    """Validation scores 1.0, then 0.5: the second epoch does not improve."""

    def on_validation_epoch_end(self) -> None:
        self._val = []
        self.log(self.monitor, 1.0 - 0.5 * self.current_epoch)


def test_last_checkpoint_follows_every_epoch_even_without_improvement(mixed_squares: dict[str, str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(CLS_TINY, cls_options(mixed_squares, **{"train.epochs": 2, "train.limit_train_batches": 2}))
    use_module(monkeypatch, "classify", _GetsWorse)
    result = train(cfg, fold=2)
    assert result.best_score == 1.0 and load_checkpoint_file(result.best_checkpoint)["global_step"] == 2
    # Resume continues from the last epoch, not from the best one.
    assert load_checkpoint_file(paths.checkpoints_dir(cfg.experiment, 2) / "last.ckpt")["global_step"] == 4


def test_classifier_curriculum_starts_the_full_stage_from_the_crop_stage(mixed_squares: dict[str, str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    stages = "[{'name':'crops','view':'crops','epochs':1},{'name':'full','view':'full','epochs':1}]"
    cfg = load_config(CLS_TINY, cls_options(mixed_squares, **{"train.stages": stages,
                                                               "train.limit_train_batches": 2}))
    started_from = record_starting_checkpoints(LitClassifier, monkeypatch)
    result = train(cfg, fold=1)
    assert started_from == [paths.checkpoints_dir(cfg.experiment, 1, "stage1_crops") / "best.ckpt"]
    assert result.best_checkpoint == paths.checkpoints_dir(cfg.experiment, 1, "stage2_full") / "best.ckpt"


def test_unknown_task_is_a_config_error(squares: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"task='segment': expected one of \['detect', 'classify'\]"):
        train(load_config(TINY, tiny_options(squares, task="segment")), fold=0)


def test_final_checkpoint_says_to_train_first(squares: dict[str, str]) -> None:
    cfg = load_config(TINY, tiny_options(squares))
    with pytest.raises(CxrdetError, match="train first"):
        Run(cfg.experiment, 4).final_checkpoint(cfg=cfg)


@pytest.mark.slow
def test_tiny_detector_learns_squares_through_the_cli(squares: dict[str, str]) -> None:
    """Train and predict with the CLI; the OOF boxes match the squares (RSNA score well above 0)."""
    from cxrdet.data.datamodule import DetectionDataModule
    from cxrdet.metrics.rsna import RsnaEvaluator

    # The squares are 14-25 px: anchors from 16 px up (the default starts at 32, made for RSNA-sized boxes).
    options = tiny_options(squares, **{"train.epochs": 15, "data.augment": None,
                                       "model.anchor_sizes": (16, 32, 64, 128, 256)})
    args = [a for o in options for a in ("-o", o)]
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(TINY), "--fold", "0", *args])
    assert result.exit_code == 0, result.output
    assert "best val/rsna" in result.output
    # The per-epoch line reports that epoch's validation score, as the CSV log records it.
    printed = {int(e): float(v) for e, v in re.findall(r"epoch (\d+)/15: train/loss [\d.]+, val/rsna ([\d.]+)",
                                                         result.output)}
    assert sorted(printed) == list(range(1, 16)), result.output
    log = pd.concat(pd.read_csv(f) for f in paths.run_dir("retinanet_mnv3s_128_tiny12e", 0).glob("csv/*/metrics.csv"))
    logged = log.dropna(subset=["val/rsna"]).set_index("epoch")["val/rsna"]
    assert all(printed[e + 1] == pytest.approx(v, abs=5e-5) for e, v in logged.items())
    result = runner.invoke(app, ["predict", str(TINY), "--fold", "0", "--split", "oof", "--split", "test", "--tta",
                                 "hflip", *args])
    assert result.exit_code == 0, result.output
    pred = pd.read_parquet(paths.predictions_path("retinanet_mnv3s_128_tiny12e", 0, "oof"))
    cfg = load_config(TINY, options)
    dm = DetectionDataModule(cfg.data, 0)
    test = pd.read_parquet(paths.predictions_path("retinanet_mnv3s_128_tiny12e", 0, "test"))
    assert set(test["image_id"]) <= set(dm.test_image_ids) and len(dm.test_image_ids) == N_TEST
    evaluator = RsnaEvaluator(dm.val_gt, dm.val_image_ids)
    assert set(pred["image_id"]) <= set(dm.val_image_ids)
    curve = evaluator.score_vs_threshold(pred, np.arange(0.1, 0.95, 0.05))
    assert curve["score"].max() > 0.2, curve


def test_cli_errors_are_messages(squares: dict[str, str]) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(TINY), "--fold", "0", "-o", "model.type=yolo", "-o",
                                 f"data.folds={squares['data.folds']}"])
    assert result.exit_code == 1 and "model.type='yolo' is not a registered detector" in result.output
    result = runner.invoke(app, ["fold-ids", str(TINY), "-o", f"data.folds={squares['data.folds']}"])
    assert result.exit_code == 0 and result.output.strip() == "0 1 2"


def test_several_folds_train_and_predict_in_one_process_as_they_would_alone(squares: dict[str, str]) -> None:
    """`train --fold 0 --fold 1 --predict oof`: each fold's run and predictions are those of training it alone (a
    fresh config copy and its own seed per fold: nothing carries over from the fold before)."""
    options = tiny_options(squares, **{"train.limit_train_batches": 2, "data.batch_size": 2})
    args = [a for o in options for a in ("-o", o)]
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(TINY), "--fold", "0", "--fold", "1", "--overwrite", "--predict", "oof",
                                 *args])
    assert result.exit_code == 0, result.output
    assert "==> train" in result.output and result.output.count("best val/rsna") == 2
    together = {k: pd.read_parquet(paths.predictions_path("retinanet_mnv3s_128_tiny12e", k, "oof")) for k in (0, 1)}
    result = runner.invoke(app, ["train", str(TINY), "--fold", "1", "--overwrite", *args])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["predict", str(TINY), "--fold", "1", "--split", "oof", *args])
    assert result.exit_code == 0, result.output
    alone = pd.read_parquet(paths.predictions_path("retinanet_mnv3s_128_tiny12e", 1, "oof"))
    assert len(together[0]) and set(together[0]["image_id"]).isdisjoint(together[1]["image_id"])
    pd.testing.assert_frame_equal(together[1], alone)

    # A failing fold is named with the folds it left undone; --fold and --all-folds exclude each other.
    result = runner.invoke(app, ["predict", str(TINY), "--fold", "1", "--fold", "2", "--fold", "0", "--split", "oof",
                                 *args])
    assert result.exit_code == 1 and "predict fold 2:" in result.output and "folds [0] were not run" in result.output
    # So is a fold whose predictions after training fail (here: a split that does not exist).
    result = runner.invoke(app, ["train", str(TINY), "--fold", "1", "--fold", "0", "--overwrite", "--predict",
                                 "valid", *args])
    assert result.exit_code == 1 and "train fold 1:" in result.output and "folds [0] were not run" in result.output
    result = runner.invoke(app, ["predict", str(TINY), "--all-folds", "--fold", "1", *args])
    assert result.exit_code == 2 and "not both" in result.output
    result = runner.invoke(app, ["predict", str(TINY), *args])
    assert result.exit_code == 2 and "--all-folds" in result.output


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_two_steps(squares: dict[str, str], tmp_path: Path) -> None:
    """`strategy=ddp` on two CPU processes (gloo): Lightning relaunches the command, both ranks train 2 steps."""
    options = tiny_options(squares, **{"train.limit_train_batches": 2, "data.batch_size": 2})
    args = [a for o in options for a in ("-o", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CXRDET_OUTPUTS": str(tmp_path / "out")}
    cmd = [sys.executable, "-m", "cxrdet.cli", "train", str(TINY), "--fold", "1", "--accelerator", "cpu",
           "--devices", "2", "--strategy", "ddp", *args]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Lightning's rank-zero info ("Starting with 2 processes") is silenced (cxrdet.train); each rank's own
    # initialisation line is not.
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stdout + done.stderr
    ckpt = tmp_path / "out" / "retinanet_mnv3s_128_tiny12e" / "fold1" / "checkpoints" / "last.ckpt"
    assert load_checkpoint_file(ckpt)["global_step"] == 2


def _fake_cxrdet(tmp_path: Path, fail_fold: int | None) -> tuple[Path, Path]:
    """A stand-in `cxrdet` that records its arguments, knows folds 0 1 2, and fails on `fail_fold`."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "cxrdet"
    fail = "" if fail_fold is None else f'[ "$4" = "{fail_fold}" ] && exit 3\n'
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n'
                    f'if [ "$1" = fold-ids ]; then echo "0 1 2"; exit 0; fi\n{fail}exit 0\n')
    fake.chmod(0o755)
    return fake, log


@pytest.mark.parametrize("script", ["train_folds.sh", "predict_folds.sh"])
def test_fold_loops_default_to_every_fold_and_pass_arguments_through(tmp_path: Path, script: str) -> None:
    fake, log = _fake_cxrdet(tmp_path, fail_fold=None)
    command = script.split("_")[0]
    done = subprocess.run(["bash", str(REPO / "scripts" / script), "c.py", "--", "-o", "data.folds=f.csv", "--x"],
                          env={**os.environ, "CXRDET": str(fake)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        "fold-ids c.py -o data.folds=f.csv",
        *[f"{command} c.py --fold {k} -o data.folds=f.csv --x" for k in (0, 1, 2)],
    ]


@pytest.mark.parametrize("script", ["train_folds.sh", "predict_folds.sh"])
def test_fold_loops_stop_at_the_first_failure_naming_the_fold(tmp_path: Path, script: str) -> None:
    fake, log = _fake_cxrdet(tmp_path, fail_fold=1)
    done = subprocess.run(["bash", str(REPO / "scripts" / script), "c.py", "0", "1", "2"],
                          env={**os.environ, "CXRDET": str(fake)}, capture_output=True, text=True)
    assert done.returncode == 1
    assert "failed on fold 1" in done.stderr
    assert [line.split()[3] for line in log.read_text().splitlines()] == ["0", "1"]


def _fake_slow_cxrdet(tmp_path: Path, fail_fold: int | None = None) -> tuple[Path, Path]:
    """A stand-in `cxrdet COMMAND CONFIG --fold a --fold b ...` that takes 1 s per fold and logs
    `fold start end CUDA_VISIBLE_DEVICES OMP_NUM_THREADS CONFIG` for each, stopping at `fail_fold`."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "cxrdet"
    fake.write_text("#!/usr/bin/env bash\n"
                    'if [ "$1" = fold-ids ]; then echo "0 1 2"; exit 0; fi\n'
                    "config=$2; shift 2\n"
                    'while [ "${1:-}" = --fold ]; do\n'
                    "  t0=$(date +%s.%N); sleep 1\n"
                    '  echo "$2 $t0 $(date +%s.%N) ${CUDA_VISIBLE_DEVICES:--} ${OMP_NUM_THREADS:--} $config" '
                    f'>> {log}\n'
                    f'  [ "$2" = "{fail_fold}" ] && {{ echo "boom on $2"; exit 3; }}\n'
                    '  echo "trained $2"; shift 2\n'
                    "done\n")
    fake.chmod(0o755)
    return fake, log


def test_fold_loop_runs_one_fold_per_device_side_by_side(tmp_path: Path) -> None:
    fake, log = _fake_slow_cxrdet(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
    done = subprocess.run(["bash", str(REPO / "scripts" / "train_folds.sh"), "--devices", "0,1", "c.py"],
                          env={**env, "CXRDET": str(fake)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = {int(f): (float(t0), float(t1), dev) for f, t0, t1, dev, *_ in map(str.split, log.read_text().splitlines())}
    # Fold i on device i mod 2; folds 0 and 1 at once, fold 2 after fold 0 on device 0 (in the same process).
    assert {k: c[2] for k, c in calls.items()} == {0: "0", 1: "1", 2: "0"}
    assert calls[0][0] < calls[1][1] and calls[1][0] < calls[0][1]
    assert calls[2][0] >= calls[0][1]
    assert {"[folds 0,2] trained 0", "[fold 1] trained 1", "[folds 0,2] trained 2"} <= set(done.stdout.splitlines())


def test_fold_loop_side_by_side_names_the_failed_slot_and_splits_the_cores(tmp_path: Path) -> None:
    fake, log = _fake_slow_cxrdet(tmp_path, fail_fold=0)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "train_folds.sh"), "--jobs", "2", "c.py", "0", "1", "2"],
                          env={**env, "CXRDET": str(fake)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "failed in the slot(s) of fold(s): 0 2" in done.stderr, done.stderr
    assert "[folds 0,2] boom on 0" in done.stdout and "[fold 1] trained 1" in done.stdout
    # Fold 1 (the other slot) finished; fold 2 (after fold 0 in its slot) never started.
    threads = str(max((os.cpu_count() or 1) // 2, 1))
    rows = [line.split() for line in log.read_text().splitlines()]
    assert sorted(r[0] for r in rows) == ["0", "1"] and {r[4] for r in rows} == {threads}
    bad = subprocess.run(["bash", str(REPO / "scripts" / "train_folds.sh"), "--jobs", "2", "--devices", "0", "c.py"],
                         env={**env, "CXRDET": str(fake)}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not both" in bad.stderr


def test_train_many_deals_every_config_fold_to_the_slots_in_turn(tmp_path: Path) -> None:
    fake, log = _fake_slow_cxrdet(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "train_many.sh"), "--jobs", "2", "a.py", "b.py", "--",
                           "--predict", "oof"], env={**env, "CXRDET": str(fake)}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in log.read_text().splitlines()]
    trained = {(r[5], int(r[0])): (float(r[1]), float(r[2])) for r in rows}
    assert sorted(trained) == [(c, k) for c in ("a.py", "b.py") for k in (0, 1, 2)]
    # Pair i (a0 a1 a2 b0 b1 b2) to slot i mod 2: slot 0 a0 a2 b1, slot 1 a1 b0 b2, each slot's pairs in turn.
    slot_lines = {s: [line for line in done.stdout.splitlines() if line.startswith(f"[slot {s}] ==> train")]
                  for s in (0, 1)}
    assert [line.split("==> ")[1].split(" (")[0] for line in slot_lines[0]] == ["train a.py fold(s) 0 2",
                                                                                 "train b.py fold(s) 1"]
    assert [line.split("==> ")[1].split(" (")[0] for line in slot_lines[1]] == ["train a.py fold(s) 1",
                                                                                 "train b.py fold(s) 0 2"]
    assert trained[("a.py", 0)][0] < trained[("a.py", 1)][1] and trained[("a.py", 1)][0] < trained[("a.py", 0)][1]
    assert trained[("b.py", 1)][0] >= trained[("a.py", 2)][1]
    assert "[slot 0] trained 0" in done.stdout


def test_train_many_names_the_failed_slot_and_runs_nothing_more_in_it(tmp_path: Path) -> None:
    fake, log = _fake_slow_cxrdet(tmp_path, fail_fold=0)
    done = subprocess.run(["bash", str(REPO / "scripts" / "train_many.sh"), "--jobs", "2", "a.py", "b.py"],
                          env={**os.environ, "CXRDET": str(fake)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    # Slot 0 fails on a.py fold 0 (so neither a.py fold 2 nor b.py fold 1 runs there); slot 1 fails on b.py fold 0
    # after a.py fold 1 (so b.py fold 2 never runs).
    assert "  slot 0: a.py fold(s) 0 2\n" in done.stderr and "  slot 1: b.py fold(s) 0 2\n" in done.stderr
    trained = sorted((r.split()[5], r.split()[0]) for r in log.read_text().splitlines())
    assert trained == [("a.py", "0"), ("a.py", "1"), ("b.py", "0")]


@pytest.mark.slow
def test_two_folds_train_at_once_on_cpu_each_in_its_own_run_folder(squares: dict[str, str], tmp_path: Path) -> None:
    """`train_folds.sh --jobs 2`: two real CPU processes train folds 0 and 1 at the same time; each writes only
    its own run folder, and each run is complete."""
    options = tiny_options(squares, **{"train.limit_train_batches": 2, "data.batch_size": 2})
    args = [a for o in options for a in ("-o", o)]
    out = tmp_path / "out"
    env = {**os.environ, "CXRDET_OUTPUTS": str(out), "CXRDET": str(Path(sys.executable).parent / "cxrdet")}
    done = subprocess.run(["bash", str(REPO / "scripts" / "train_folds.sh"), "--jobs", "2", str(TINY), "0", "1",
                           "--", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    experiment = out / "retinanet_mnv3s_128_tiny12e"
    assert sorted(p.name for p in out.iterdir()) == ["retinanet_mnv3s_128_tiny12e"]
    assert sorted(p.name for p in experiment.iterdir()) == ["fold0", "fold1"]
    started, finished = {}, {}
    for k in (0, 1):
        run = experiment / f"fold{k}"
        assert json.loads((run / "provenance.json").read_text())["fold"] == k
        assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"] == 2
        assert json.loads((run / "checkpoints" / "done.json").read_text())["best_checkpoint"] == "best.ckpt"
        started[k] = (run / "provenance.json").stat().st_mtime
        finished[k] = (run / "checkpoints" / "done.json").stat().st_mtime
        assert f"[fold {k}] " in done.stdout
    assert started[0] < finished[1] and started[1] < finished[0]  # they overlapped


def test_slurm_scripts_train_the_task_fold_and_size_ddp_from_the_allocation(tmp_path: Path) -> None:
    fake, log = _fake_cxrdet(tmp_path, fail_fold=None)
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text(f'#!/usr/bin/env bash\necho "srun $*" >> {log}\n"$@"\n')
    srun.chmod(0o755)
    env = {**os.environ, "CXRDET": str(fake), "PATH": f"{srun.parent}:{os.environ['PATH']}"}
    array = REPO / "scripts" / "slurm" / "train_folds.sbatch"
    done = subprocess.run(["bash", str(array), "c.py", "--", "-o", "data.size=512"],
                          env={**env, "SLURM_ARRAY_TASK_ID": "3"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == ["train c.py --fold 3 --predict oof --predict test -o data.size=512"]
    no_array = subprocess.run(["bash", str(array), "c.py"], env={k: v for k, v in env.items()
                                                                  if k != "SLURM_ARRAY_TASK_ID"},
                              capture_output=True, text=True, timeout=60)
    assert no_array.returncode != 0 and "array job" in no_array.stderr
    log.unlink()
    multi = REPO / "scripts" / "slurm" / "train_fold_multinode.sbatch"
    done = subprocess.run(["bash", str(multi), "c.py", "2"], capture_output=True, text=True, timeout=60,
                          env={**env, "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "4(x2)"})
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        f"srun {fake} train c.py --fold 2 --accelerator gpu --devices 4 --strategy ddp -o train.num_nodes=2",
        "train c.py --fold 2 --accelerator gpu --devices 4 --strategy ddp -o train.num_nodes=2",
        "predict c.py --fold 2 --split oof --split test",
    ]
