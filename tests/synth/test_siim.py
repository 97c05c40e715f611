"""Synthetic SIIM-COVID data: the real layout and tables, studies of several images, category patterns, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from cxrdet.cli import app
from cxrdet.competitions import detect
from cxrdet.competitions.siim import STUDY_CLASSES, SiimLayout, read_siim_labels, read_submission, split_studies
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.io import file_sha256
from cxrdet.synth import siim as synth
from cxrdet.synth.render import IMAGE_SIZE


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("siim") / "data"
    synth.generate_siim_dataset(out, 12, 4, seed=3, scale=0.1, workers=1, grid=96)
    return out


def test_the_layout_and_tables_read_back_through_the_competition(root: Path) -> None:
    layout = SiimLayout(root)
    assert detect(root).name == "siim"
    ann = read_siim_labels(layout.labels_csv)
    files = sorted(layout.images_dir("train").glob("*/*/*.dcm"))
    assert sorted(p.stem for p in files) == sorted(ann.image_ids)
    studies = split_studies(root, "train").set_index("image_id")
    assert (studies.loc[ann.images["image_id"], "study_id"].to_numpy() == ann.images["study_id"].to_numpy()).all()
    test_ann = read_siim_labels(layout.synth_test_labels)  # the hidden labels, same formats
    sample = read_submission(layout.sample_submission, None)
    assert set(sample["image_id"]) == {f"{s}_study" for s in test_ann.images["study_id"]} | set(test_ann.image_ids)
    ds = pydicom.dcmread(files[0])
    assert ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2") and 10 <= ds.BitsStored <= 16
    assert 200 <= ds.Columns <= 400  # 2,000-4,000 px times 0.1


def test_the_same_seed_gives_the_same_bytes(root: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    synth.generate_siim_dataset(again, 12, 4, seed=3, scale=0.1, workers=2, grid=96)
    for name in ("train_image_level.csv", "train_study_level.csv", "sample_submission.csv", "synth_truth.csv"):
        assert file_sha256(again / name) == file_sha256(root / name)
    first = sorted((root / "train").glob("*/*/*.dcm"))[0]
    assert file_sha256(again / first.relative_to(root)) == file_sha256(first)


def test_categories_draw_their_own_patterns_over_many_studies() -> None:
    images = synth.sample_siim_studies(600, 0, seed=1)
    by = {c: [i for i in images if i.category == c] for c in STUDY_CLASSES}
    shares = np.array([len({i.study for i in by[c]}) for c in STUDY_CLASSES]) / 600
    real = np.array([synth.REAL_STUDY_COUNTS[c] for c in STUDY_CLASSES]) / synth.REAL_STUDIES
    assert np.abs(shares - real).max() < 0.06
    assert all(not i.boxes for i in by["negative"])

    def sides(image: synth.SiimImage) -> set[int]:
        return {int((x1 + x2) / 2 > IMAGE_SIZE / 2) for x1, _, x2, _ in image.boxes}

    typical = [i for i in by["typical"] if i.boxes]
    atypical = [i for i in by["atypical"] if i.boxes]
    assert np.mean([len(sides(i)) == 2 for i in typical]) > 0.95  # bilateral
    assert all(len(sides(i)) == 1 and len(i.boxes) == 1 for i in atypical)  # one lobar opacity

    def peripheral(box: tuple[float, float, float, float]) -> bool:
        centre = (box[0] + box[2]) / 2
        return abs(centre - IMAGE_SIZE / 2) > 200  # against the chest wall, not the mediastinum

    assert np.mean([peripheral(b) for i in typical for b in i.boxes]) > 0.9
    assert np.mean([peripheral(b) for i in atypical for b in i.boxes]) < 0.1
    n_images = len(images) / 600
    assert 1.01 < n_images < 1.12  # 6,334 images over 6,054 studies
    none_share = np.mean([not i.boxes for i in images])
    assert abs(none_share - synth.REAL_NONE_IMAGES / synth.REAL_IMAGES) < 0.06


def test_bad_arguments_and_foreign_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected n_train >= 1"):
        synth.sample_siim_studies(0, 1)
    with pytest.raises(ConfigError, match="scale=3.0"):
        synth.sample_siim_studies(1, 0, scale=3.0)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "train_image_level.csv").write_text("id\n")
    with pytest.raises(CxrdetError, match="not a synthetic data set"):
        synth.generate_siim_dataset(tmp_path / "real", 1, 0)


def test_cli_writes_a_siim_root(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", "--competition", "siim", "--out", str(tmp_path / "s"), "--n-train", "3",
                                      "--n-test", "1", "--scale", "0.05", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "3 train + 1 test studies" in result.output
    assert (tmp_path / "s" / "train_study_level.csv").is_file()
    bad = CliRunner().invoke(app, ["synth", "--competition", "siim", "--out", str(tmp_path / "t"), "--labels-only"])
    assert bad.exit_code != 0 and "not for siim" in bad.output
