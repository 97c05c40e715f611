"""Pseudo-labels: the tuned ensemble's test boxes above the score threshold become a label table with its
provenance; a training round adds its images to every fold's training set and never to a validation fold, and the
run's provenance names the source ensemble; bad rounds are refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cxrdet import paths
from cxrdet.cli import app
from cxrdet.config import load_config
from cxrdet.data.datamodule import DetectionDataModule
from cxrdet.ensemble.pseudo import pseudo_label
from cxrdet.ensemble.spec import load_ensemble, resolve
from cxrdet.ensemble.submit import predict_test
from cxrdet.ensemble.tune import tune
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.io import file_sha256, write_csv, write_json
from tests.data.test_datamodule import TEST_IDS, TRAIN_IDS, write_tiny_dataset
from tests.helpers.ensemble_world import write_config
from tests.helpers.squares import N_TEST, N_TRAIN, TINY, tiny_options, write_squares_dataset

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_a_round_keeps_the_ensembles_confident_test_boxes_and_names_its_source(world: Any, tmp_path: Path) -> None:
    spec = load_ensemble(write_config(tmp_path / "ens.py", world, n_trials=4))
    tuned = tune(spec, honest=False)
    result = CliRunner().invoke(app, ["pseudo-label", str(spec.path), "--out", "round1", "--box-thr", "0.3"])
    assert result.exit_code == 0, result.output
    assert "train on it with -o data.pseudo=round1" in result.output
    folder = paths.pseudo_dir("round1")
    table = pd.read_csv(folder / "labels.csv")
    # Exactly the ensemble's test boxes (its submission's) with a fused score >= 0.3; no classifier, no image cut.
    record = json.loads((paths.ensemble_dir(spec.name) / "params.json").read_text())
    boxes, ids = predict_test(spec, resolve(spec, record["params"]), world["test_ids"])
    expected = boxes.to_frame(ids)
    expected = expected[expected["score"] >= 0.3]
    assert len(table) == len(expected) > 0 and (table["score"] >= 0.3).all()
    assert set(table["image_id"]) <= set(world["test_ids"])
    np.testing.assert_allclose(np.sort(table["score"]), np.sort(expected["score"]))
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["source_ensemble"]["name"] == spec.name
    assert prov["source_ensemble"]["params_sha256"] == file_sha256(paths.ensemble_dir(spec.name) / "params.json")
    assert prov["source_ensemble"]["scores"]["optimistic"] == pytest.approx(tuned.optimistic)
    assert prov["sha256"] == file_sha256(folder / "labels.csv")
    assert prov["counts"]["boxes"] == len(table) and prov["thresholds"]["image_thr"] is None
    # A higher cut keeps fewer; negatives need a classifier's evidence.
    assert pseudo_label(spec, "round2", box_thr=0.6).n_boxes <= len(table)
    with pytest.raises(ConfigError, match=r"--negatives-below=0.1: .* gates with no classifier"):
        pseudo_label(spec, "round3", negatives_below=0.1)
    with pytest.raises(ConfigError, match=r"--box-thr=1.5: expected a probability in \[0, 1\]"):
        pseudo_label(spec, "round3", box_thr=1.5)


def write_round(name: str, rows: list[tuple[Any, ...]], source: str = "ens_v1") -> Path:
    folder = paths.pseudo_dir(name)
    table = pd.DataFrame(rows, columns=["image_id", "x1", "y1", "x2", "y2", "label", "score", "image_prob"])
    write_csv(folder / "labels.csv", table)
    write_json(folder / "provenance.json", {"name": name, "source_ensemble": {"name": source},
                                            "thresholds": {"box_thr": 0.5}})
    return folder


def test_pseudo_images_join_every_training_fold_and_no_validation_fold(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path)
    write_round("r1", [(TEST_IDS[0], 100, 200, 400, 500, 0, 0.8, 0.9), (TEST_IDS[0], 500, 500, 700, 900, 0, 0.6, 0.9),
                       (TEST_IDS[1], None, None, None, None, None, None, 0.05)])  # the second: a negative
    for fold in range(5):
        dm = DetectionDataModule({**data, "pseudo": "r1", "augment": None}, fold=fold)
        train = dm.train_dataset()
        ids = [r.image_id for r in train.records]
        assert set(TEST_IDS) <= set(ids)  # every fold trains on them
        assert not set(TEST_IDS) & set(dm.val_image_ids)  # no fold validates on them
        assert {m["image_id"] for _, _, metas in dm.val_dataloader() for m in metas} == set(dm.val_image_ids)
        item = next(train[i] for i, r in enumerate(train.records) if r.image_id == TEST_IDS[0])
        # Boxes in original pixels (1024) become input pixels (32).
        assert item[1]["boxes"].tolist() == [[3.125, 6.25, 12.5, 15.625], [15.625, 15.625, 21.875, 28.125]]
        negative = next(r for r in train.records if r.image_id == TEST_IDS[1])
        assert len(negative.boxes) == 0
    assert len(DetectionDataModule(data, fold=0).train_dataset().records) == len(TRAIN_IDS) - 2


@pytest.mark.parametrize(("rows", "match"), [
    ([(TRAIN_IDS[0], 1, 1, 50, 50, 0, 0.9, 0.9)], r"1 image\(s\) are in the fold file .* pseudo-labels are for "
                                                   r"unlabelled \(test\) images only"),
    ([("nowhere", 1, 1, 50, 50, 0, 0.9, 0.9)], r"the test split of the prepare cache .* 'nowhere'"),
    ([(TEST_IDS[0], 1, 1, 50, 50, 3, 0.9, 0.9)],
     r"labels.csv row 2: image x00 has label 3 .* expected a label in 0..0"),
    ([(TEST_IDS[0], 60, 1, 50, 50, 0, 0.9, 0.9)], r"row 2: .* expected a label in 0..0 and x1 < x2"),
])
def test_bad_rounds_are_refused_with_the_reason(tmp_path: Path, rows: list[tuple[Any, ...]], match: str) -> None:
    data = write_tiny_dataset(tmp_path)
    write_round("bad", rows)
    with pytest.raises(CxrdetError, match=match):
        DetectionDataModule({**data, "pseudo": "bad"}, fold=0).train_dataset()


def test_a_missing_round_says_how_to_write_it(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path)
    with pytest.raises(CxrdetError, match=r"data.pseudo='r9': .*labels.csv not found; write it with `cxrdet "
                                          r"pseudo-label ENSEMBLE --out r9`"):
        DetectionDataModule({**data, "pseudo": "r9"}, fold=0).train_dataset()
    with pytest.raises(ConfigError, match=r"data.pseudo=3: expected None or the name"):
        DetectionDataModule({**data, "pseudo": 3}, fold=0)


def test_a_training_round_records_its_pseudo_labels_source(tmp_path: Path) -> None:
    from cxrdet.tasks import train

    torch.set_num_threads(1)
    squares = write_squares_dataset(tmp_path)
    test_ids = [f"img{i:03d}" for i in range(N_TRAIN, N_TRAIN + N_TEST)]
    folder = write_round("sq1", [(test_ids[0], 100, 100, 400, 400, 0, 0.9, 0.9)], source="squares_ens")
    cfg = load_config(TINY, tiny_options(squares, **{"train.limit_train_batches": 1, "data.pseudo": "sq1"}))
    result = train(cfg, fold=0)
    prov = json.loads((result.run_dir / "provenance.json").read_text())
    assert prov["pseudo_labels"]["name"] == "sq1"
    assert prov["pseudo_labels"]["source_ensemble"] == {"name": "squares_ens"}
    assert prov["pseudo_labels"]["sha256"] == file_sha256(folder / "labels.csv")
