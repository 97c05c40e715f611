"""Synthetic VinBigData-format data: layout, multi-reader table, DICOM depth and photometry, determinism, signs
drawn where their boxes say, calibration against the real table's counts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrdet.cli import app
from cxrdet.competitions import detect
from cxrdet.competitions.vinbigdata import CLASSES, NO_FINDING_ID, VinBigDataLayout, read_vinbigdata_labels
from cxrdet.data.dicom import read_dicom
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.synth import vinbigdata as synth

N_TRAIN, N_TEST, SEED, SCALE = 14, 4, 3, 0.08


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> VinBigDataLayout:
    root = tmp_path_factory.mktemp("synth_vbd") / "vbd"
    synth.generate_vinbigdata_dataset(root, N_TRAIN, N_TEST, seed=SEED, scale=SCALE, workers=1, grid=128)
    return VinBigDataLayout(root)


def test_the_layout_and_the_tables_are_the_competitions(dataset: VinBigDataLayout) -> None:
    assert detect(dataset.root).name == "vinbigdata"
    truth = pd.read_csv(dataset.root / "synth_truth.csv", keep_default_na=False)
    train, test = truth[truth["split"] == "train"], truth[truth["split"] == "test"]
    assert len(train) == N_TRAIN and len(test) == N_TEST
    assert sorted(p.stem for p in dataset.images_dir("train").glob("*.dicom")) == sorted(train["image_id"])
    sample = pd.read_csv(dataset.sample_submission)
    assert sample["image_id"].tolist() == test["image_id"].tolist()
    assert (sample["PredictionString"] == "14 1 0 0 1 1").all()
    # train.csv reads back through the competition's own reader, boxes inside each image's real size.
    sizes = {r.image_id: (r.width, r.height) for r in truth.itertuples()}
    ann = read_vinbigdata_labels(dataset.labels_csv, sizes=sizes)
    images = ann.images.set_index("image_id")
    assert set(images.index) == set(train["image_id"])  # every training image has its rows
    for row in train.itertuples():
        readers = row.readers.split()
        assert len(set(readers)) == 3 and all(1 <= int(r[1:]) <= 17 for r in readers)
        if images.loc[row.image_id, "n_boxes"]:  # readers who saw nothing wrote no row; the others drew findings
            assert images.loc[row.image_id, "no_finding_readers"] == 0
            assert set(ann.boxes.loc[ann.boxes["image_id"] == row.image_id, "reader"]) <= set(readers)
        else:  # a normal image (or a finding nobody saw): exactly three "No finding" rows
            assert images.loc[row.image_id, ["n_boxes", "no_finding_readers"]].tolist() == [0, 3]
    # The test labels: one consensus reader, the drawn boxes themselves.
    consensus = read_vinbigdata_labels(dataset.synth_test_labels, sizes=sizes)
    assert set(consensus.boxes["reader"]) <= {synth.CONSENSUS_READER}
    assert set(consensus.images["image_id"]) == set(test["image_id"])


def test_dicoms_have_the_drawn_size_depth_and_photometry(dataset: VinBigDataLayout) -> None:
    truth = pd.read_csv(dataset.root / "synth_truth.csv", keep_default_na=False)
    for row in truth.itertuples():
        image = read_dicom(dataset.dicom_path(row.split, row.image_id))
        assert (image.width, image.height, image.bits_stored, image.photometric) == (
            row.width, row.height, row.bits_stored, row.photometric)
        assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
        assert 2000 * SCALE - 1 <= row.width <= 3000 * SCALE + 1


def test_monochrome1_stores_the_inverse_and_displays_the_same_chest() -> None:
    image = synth.sample_vinbigdata_images(4, 0, seed=SEED, scale=SCALE)[0]
    one, _ = synth.render_vinbigdata_image(replace(image, photometric="MONOCHROME1"), grid=128)
    two, _ = synth.render_vinbigdata_image(replace(image, photometric="MONOCHROME2"), grid=128)
    assert (one.astype(np.int64) + two == 2**image.bits_stored - 1).all()


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_ones(tmp_path: Path,
                                                                         dataset: VinBigDataLayout) -> None:
    again = tmp_path / "again"
    synth.generate_vinbigdata_dataset(again, N_TRAIN, N_TEST, seed=SEED, scale=SCALE, workers=2, grid=128)
    assert (again / "train.csv").read_bytes() == dataset.labels_csv.read_bytes()
    first = sorted(dataset.images_dir("train").glob("*.dicom"))[0]
    assert (again / "train" / first.name).read_bytes() == first.read_bytes()
    other = synth.sample_vinbigdata_images(N_TRAIN, N_TEST, seed=SEED + 1, scale=SCALE)
    assert {i.image_id for i in other}.isdisjoint({p.stem for p in dataset.images_dir("train").glob("*.dicom")})


@pytest.mark.parametrize("name", ["Aortic enlargement", "Calcification", "Nodule/Mass", "Pleural effusion"])
def test_a_sign_is_drawn_inside_its_true_box(name: str) -> None:
    k = CLASSES.index(name)
    base = replace(synth.sample_vinbigdata_images(1, 0, seed=SEED, scale=0.3)[0], photometric="MONOCHROME2",
                   bits_stored=16)
    with_sign, truth = synth.render_vinbigdata_image(replace(base, findings=(k,)), grid=256)
    without, none = synth.render_vinbigdata_image(replace(base, findings=()), grid=256)
    assert none == [] and truth and all(b[0] == k for b in truth)
    change = np.abs(with_sign.astype(np.float64) - without)
    inside = np.zeros(change.shape, bool)
    for _, x1, y1, x2, y2 in truth:
        inside[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = True
    # Most of what the finding changed lies inside its boxes (the film's unsharp mask spreads a little outside).
    assert change[inside].sum() / change.sum() > 0.6


def test_readers_disagree_as_the_rules_say(monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrdet.boxes import paired_iou

    image = replace(synth.sample_vinbigdata_images(1, 0, seed=SEED)[0], readers=(0, 1, 2), width=1000, height=1000)
    truth = [(3, 100.0, 200.0, 400.0, 500.0), (8, 50.0, 60.0, 80.0, 90.0)]
    blind, sharp, shaky = synth.Reader("R1", 0.0, 0.05), synth.Reader("R2", 1.0, 0.0), synth.Reader("R3", 1.0, 0.05)
    monkeypatch.setattr(synth, "RELABEL", 0.0)
    monkeypatch.setattr(synth, "EXTRA_BOX", 0.0)
    rows = synth.reader_rows(image, truth, [blind, sharp, shaky])
    assert {r[3] for r in rows} == {"R2", "R3"}  # the blind reader writes nothing on an abnormal image
    assert [(r[2], *r[4:]) for r in rows if r[3] == "R2"] == truth  # no jitter: the drawn boxes
    shaken = [(r[2], *r[4:]) for r in rows if r[3] == "R3"]
    assert [b[0] for b in shaken] == [3, 8] and shaken != truth
    iou = paired_iou(np.array([b[1:] for b in shaken]), np.array([b[1:] for b in truth]))
    assert (iou > 0.6).all()  # a 5% jitter moves a box, it does not lose it
    monkeypatch.setattr(synth, "RELABEL", 1.0)  # every confusable class named as its neighbour
    relabelled = synth.reader_rows(image, truth, [sharp, sharp, sharp])
    assert {r[1] for r in relabelled} <= {*synth.CONFUSABLE["Nodule/Mass"], "Cardiomegaly"}
    # Nobody sees the finding: all three say "No finding", so that every image has its rows.
    missed = synth.reader_rows(image, truth, [blind, blind, blind])
    assert [(r[2], r[3]) for r in missed] == [(NO_FINDING_ID, "R1")] * 3
    normal = synth.reader_rows(replace(image, findings=()), [], [blind, sharp, shaky])
    assert [(r[2], r[3], r[4]) for r in normal] == [(NO_FINDING_ID, "R1", ""), (NO_FINDING_ID, "R2", ""),
                                                    (NO_FINDING_ID, "R3", "")]


def test_findings_are_drawn_at_the_calibrated_rates() -> None:
    images = synth.sample_vinbigdata_images(6000, 0, seed=1)
    normal = np.mean([not i.findings for i in images])
    assert normal == pytest.approx(synth.REAL_NO_FINDING_IMAGES / synth.REAL_TRAIN_IMAGES, abs=0.02)
    abnormal = [i for i in images if i.findings]
    rates = synth.finding_rates()
    for k, name in enumerate(CLASSES):
        seen = np.mean([k in i.findings for i in abnormal])
        # At least one finding is redrawn on an abnormal image, which lifts the rates of rare classes a little.
        assert rates[name] - 0.03 <= seen <= rates[name] * 1.25 + 0.03, name


def test_bad_arguments_and_a_foreign_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scale=2.0: expected a factor in"):
        synth.sample_vinbigdata_images(2, 0, scale=2.0)
    with pytest.raises(ConfigError, match="n_train=0"):
        synth.sample_vinbigdata_images(0, 1)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "train.csv").write_text("a real download\n")
    with pytest.raises(CxrdetError, match="not a synthetic data set"):
        synth.generate_vinbigdata_dataset(tmp_path / "real", 2, 0, workers=1)


def test_cli_writes_a_vinbigdata_root(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", "--competition", "vinbigdata", "--out", str(tmp_path / "v"),
                                      "--n-train", "3", "--n-test", "1", "--scale", "0.05", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "3 train + 1 test DICOMs" in result.output and (tmp_path / "v" / "train.csv").is_file()
    bad = CliRunner().invoke(app, ["synth", "--competition", "chexpert", "--out", str(tmp_path / "s")])
    assert bad.exit_code != 0 and "expected rsna, vinbigdata or siim" in bad.output
    scaled = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "r"), "--scale", "0.5"])
    assert scaled.exit_code != 0 and "only vinbigdata and siim images vary in size" in scaled.output


def test_cli_refuses_options_that_are_not_vinbigdatas(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", "--competition", "vinbigdata", "--out", str(tmp_path / "v"),
                                      "--labels-only"])
    assert result.exit_code != 0 and "--labels-only and --size are not for vinbigdata" in result.output
