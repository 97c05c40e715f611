"""No name from a config, an option or a label table can make cxrdet write outside its output folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrdet import paths
from cxrdet.cli import app
from cxrdet.errors import ConfigError
from cxrdet.runs import EnsembleRun, Experiment, Run
from tests.helpers.squares import TINY, tiny_options, write_squares_dataset

ESCAPES = ("../escape", "..", "a/b", "/tmp/abs", "a\\b", "", "C:evil")


@pytest.mark.parametrize("name", ESCAPES)
def test_every_output_location_refuses_a_name_that_leaves_its_folder(name: str) -> None:
    writers = {
        "run folder": lambda: Run(name, 0).folder,
        "experiment folder": lambda: Experiment(name).folder,
        "stage folder": lambda: Run("exp", 0).stage_dir(name),
        "ensemble folder": lambda: EnsembleRun(name).folder,
        "explain folder": lambda: Run(name, 0).explain_dir,
        "cached image": lambda: paths.CacheLayout(Path("cache")).image("train", name),
    }
    for what, writer in writers.items():
        with pytest.raises(ConfigError, match="expected a plain name"):
            writer()
            pytest.fail(f"{what} accepted {name!r}")


def test_plain_names_pass() -> None:
    assert Run("retinanet_r50fpn_512_sgd12e", 3).folder == paths.outputs_dir() / "retinanet_r50fpn_512_sgd12e" / "fold3"
    assert paths.CacheLayout(Path("c")).image("test", "0004cfab-14fd-4e49").name == "0004cfab-14fd-4e49.png"
    assert EnsembleRun("demo_wbf.v2").folder.name == "demo_wbf.v2"


def test_train_refuses_an_experiment_or_stage_name_that_escapes(tmp_path: Path) -> None:
    options = [a for o in tiny_options(write_squares_dataset(tmp_path / "data")) for a in ("-o", o)]
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(TINY), "--fold", "0", *options, "-o", "experiment=../../escaped"])
    assert result.exit_code == 1 and "experiment='../../escaped': expected a plain name" in result.output
    result = runner.invoke(app, ["train", str(TINY), "--fold", "0", *options, "-o",
                                 "train.stages=[{'name': '../up', 'epochs': 1}]"])
    assert result.exit_code == 1 and "train.stages name='stage1_../up': expected a plain name" in result.output
    assert not (paths.outputs_dir().parent / "escaped").exists()


def test_an_ensemble_named_outside_its_folder_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "ens.py"
    config.write_text("name = '../../outside'\nmembers = [dict(experiment='a', folds=[0])]\n")
    result = CliRunner().invoke(app, ["tune", str(config)])
    assert result.exit_code == 1 and "ensemble name='../../outside': expected a plain name" in result.output


def test_a_report_of_an_escaping_name_is_refused() -> None:
    result = CliRunner().invoke(app, ["report", "../../etc"])
    assert result.exit_code == 1 and "expected a plain name" in result.output
