"""A checkpoint whose pickle would run code is refused by every command that reads checkpoints, and the code never
runs: cxrdet reads checkpoints with `torch.load(weights_only=True)`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from cxrdet.cli import app
from cxrdet.config import load_config
from cxrdet.errors import CheckpointError
from cxrdet.runs import Run, load_checkpoint_file

REFUSED = "refused: it holds io.open, an object that only code could rebuild"


class _RunsCode:
    """Unpickling this calls `open(marker, 'w')`: the file appearing is the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


def plant(checkpoint: Path, marker: Path) -> None:
    """Rewrite a real cxrdet checkpoint with one more entry whose unpickling would run code."""
    content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    content["cxrdet"] = {**content.get("cxrdet", {}), "note": _RunsCode(marker)}
    torch.save(content, checkpoint)


@pytest.fixture
def evil_run(tiny_run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A copy of the tiny trained run whose best and last checkpoints carry code."""
    outputs = tmp_path / "outputs"
    shutil.copytree(tiny_run["outputs"], outputs)
    monkeypatch.setenv("CXRDET_OUTPUTS", str(outputs))
    marker = tmp_path / "code_ran"
    run = Run(tiny_run["experiment"], 0)
    for name in ("best", "last"):
        plant(run.final_checkpoint(name), marker)
    return {**tiny_run, "marker": marker, "run": run}


def test_the_loader_refuses_and_the_code_does_not_run(evil_run: dict[str, Any]) -> None:
    checkpoint = evil_run["run"].final_checkpoint()
    with pytest.raises(CheckpointError, match=REFUSED) as err:
        load_checkpoint_file(checkpoint)
    assert str(checkpoint) in str(err.value)
    assert not evil_run["marker"].exists()
    # The same content read the unsafe way would have run it: the test's premise holds.
    torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert evil_run["marker"].exists()


def test_every_command_that_reads_checkpoints_refuses_it(evil_run: dict[str, Any], tmp_path: Path) -> None:
    runner = CliRunner()
    config, options = str(evil_run["config"]), [a for o in evil_run["options"] for a in ("-o", o)]
    checkpoint = str(evil_run["run"].final_checkpoint())
    dicom = Path(__file__).parent / "data" / "nothing.dcm"  # never read: the model is refused first
    commands = {
        "predict": ["predict", config, "--fold", "0", "--split", "oof"],
        "export": ["export", config, "--fold", "0", "--out", str(tmp_path / "export")],
        "infer": ["infer", "--model", checkpoint, "--dicom", str(dicom), "--out", str(tmp_path / "infer")],
        "train --resume": ["train", config, "--fold", "0", "--resume", *options],
        "init_from": ["train", config, "--fold", "1", *options, "-o",
                      f"model.backbone.init_from={{'checkpoint': '{checkpoint}'}}"],
    }
    # Resume reads last.ckpt only while the stage is unfinished: make it so.
    (evil_run["run"].checkpoints_dir(None) / "done.json").unlink()
    for what, args in commands.items():
        result = runner.invoke(app, args)
        text = " ".join(result.output.split())
        assert result.exit_code == 1, (what, result.output)
        assert REFUSED in text and ".ckpt" in text, (what, text)
        assert not evil_run["marker"].exists(), what


def test_explain_refuses_a_classifier_checkpoint_that_runs_code(tiny_classifier_run: dict[str, Any], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = tmp_path / "outputs"
    shutil.copytree(tiny_classifier_run["outputs"], outputs)
    monkeypatch.setenv("CXRDET_OUTPUTS", str(outputs))
    marker = tmp_path / "code_ran"
    cfg = load_config(tiny_classifier_run["config"], tiny_classifier_run["options"])
    plant(Run(cfg.experiment, 0).final_checkpoint(), marker)
    result = CliRunner().invoke(app, ["explain", str(tiny_classifier_run["config"]), "--fold", "0", "--classes",
                                      "opacity", "--image-id", "img000", "--out", str(tmp_path / "cam")])
    assert result.exit_code == 1 and REFUSED in " ".join(result.output.split()), result.output
    assert not marker.exists()


def test_a_file_that_is_no_checkpoint_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt: cannot be read as a checkpoint"):
        load_checkpoint_file(junk)
    with pytest.raises(CheckpointError, match="missing.ckpt: checkpoint not found"):
        load_checkpoint_file(tmp_path / "missing.ckpt")
