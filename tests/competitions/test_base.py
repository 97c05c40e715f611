"""The competition registry's data-root helpers: which layout a root has, and which competition a config names."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrdet import paths
from cxrdet.competitions import data_layout, get_competition, of_data
from cxrdet.competitions.vinbigdata import VinBigDataLayout
from cxrdet.errors import ConfigError


def test_data_layout_tells_the_layouts_apart(tmp_path: Path) -> None:
    rsna, vin, nih, both, neither = (tmp_path / n for n in ("rsna", "vin", "nih", "both", "neither"))
    for folder in (rsna, vin, nih, both, neither):
        folder.mkdir()
    for folder in (rsna, both):
        (folder / "stage_2_train_labels.csv").write_text("x\n")
    (vin / "train.csv").write_text("x\n")
    for folder in (nih, both):
        (folder / "Data_Entry_2017_v2020.csv").write_text("x\n")
    assert data_layout(rsna) == paths.KaggleLayout(rsna)
    assert data_layout(vin) == VinBigDataLayout(vin)
    assert data_layout(nih) == paths.NihLayout(nih)
    with pytest.raises(ConfigError, match=r"several \(rsna, nih\) of the known label tables"):
        data_layout(both)
    with pytest.raises(ConfigError, match="none of the known label tables found: expected one of rsna: "
                                          "stage_2_train_labels.csv; siim: train_image_level.csv; vinbigdata: "
                                          "train.csv; nih: Data_Entry"):
        data_layout(neither)
    with pytest.raises(ConfigError, match="the folder does not exist"):
        data_layout(tmp_path / "missing")


def test_a_config_names_its_competition_or_its_root_tells_it(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("x\n")
    assert of_data({"root": str(tmp_path)}).name == "vinbigdata"
    assert of_data({"root": str(tmp_path), "competition": "rsna"}).name == "rsna"  # the config wins
    with pytest.raises(ConfigError, match=r"data.competition='chexpert' is not a registered competition; expected "
                                          r"one of \['rsna', 'siim', 'vinbigdata'\]"):
        of_data({"competition": "chexpert"})
    assert get_competition("vinbigdata").monitor == "val/map40" and get_competition("rsna").monitor == "val/rsna"
