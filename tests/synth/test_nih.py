"""Synthetic NIH-format data: layout, real header, ids, patient-disjoint lists, determinism, calibration, signs."""

from __future__ import annotations

import gzip
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrdet.cli import app
from cxrdet.synth import nih as synth_nih
from cxrdet.data.labels import NIH_FINDINGS, read_labels
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.paths import NihLayout

N_TRAIN, N_TEST, SEED, SIZE = 24, 8, 5, 64
# The header line of the real Data_Entry_2017_v2020.csv, written out by hand.
REAL_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
               "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")  # fmt: skip
# Published prevalence in the real table (112,120 images): share of images with each finding, and 'No Finding'.
REAL_PREVALENCE = {
    "Atelectasis": 0.1031, "Cardiomegaly": 0.0248, "Effusion": 0.1188, "Infiltration": 0.1774, "Mass": 0.0516,
    "Nodule": 0.0565, "Pneumonia": 0.0128, "Pneumothorax": 0.0473, "Consolidation": 0.0416, "Edema": 0.0205,
    "Emphysema": 0.0224, "Fibrosis": 0.0150, "Pleural_Thickening": 0.0302, "Hernia": 0.0020,
}  # fmt: skip
REAL_NO_FINDING = 0.5384


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> NihLayout:
    """A tiny data set rendered in-process (workers=1)."""
    root = tmp_path_factory.mktemp("synth_nih") / "nih"
    synth_nih.generate_nih_dataset(root, N_TRAIN, N_TEST, seed=SEED, size=SIZE, workers=1, progress=False)
    return NihLayout(root)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_layout_has_every_file(dataset: NihLayout) -> None:
    for path in (dataset.labels_csv, dataset.train_val_list, dataset.test_list, dataset.synth_truth,
                 dataset.synth_boxes):  # fmt: skip
        assert path.is_file(), path
    assert dataset.labels_csv.name == "Data_Entry_2017_v2020.csv"
    pngs = sorted(dataset.images_dir.glob("*.png"))
    assert len(pngs) == N_TRAIN + N_TEST == len(dataset.image_files())
    with Image.open(pngs[0]) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (SIZE, SIZE))
    assert not [p for p in dataset.root.rglob("*") if p.name.startswith(".")]  # no temporaries left


def test_header_and_ids_follow_nih(dataset: NihLayout) -> None:
    assert _lines(dataset.labels_csv)[0] == REAL_HEADER == synth_nih.NIH_HEADER
    table = pd.read_csv(dataset.labels_csv)
    assert list(table.columns) == list(synth_nih.NIH_TABLE_COLUMNS)
    assert all(re.fullmatch(r"\d{8}_\d{3}\.png", name) for name in table["Image Index"])
    assert (table["Image Index"].str.slice(0, 8).astype(int) == table["Patient ID"]).all()
    assert (table["Image Index"].str.slice(9, 12).astype(int) == table["Follow-up #"]).all()
    assert table["Image Index"].is_monotonic_increasing
    # A patient's follow-ups are 0..n-1; sex is the patient's; age never decreases.
    for _, rows in table.groupby("Patient ID"):
        assert rows["Follow-up #"].tolist() == list(range(len(rows)))
        assert rows["Patient Gender"].nunique() == 1 and rows["Patient Age"].is_monotonic_increasing
    assert set(table["View Position"]) <= {"AP", "PA"} and set(table["Patient Gender"]) <= {"M", "F"}
    assert (table["OriginalImagePixelSpacing[x"] == table["y]"]).all()
    labels = table["Finding Labels"].str.split("|")
    assert all(ls == ["No Finding"] or (ls == sorted(ls) and set(ls) <= set(NIH_FINDINGS)) for ls in labels)
    assert {p.name for p in dataset.images_dir.glob("*.png")} == set(table["Image Index"])


def test_labels_read_back_as_nih(dataset: NihLayout) -> None:
    annotations = read_labels(dataset.labels_csv)
    assert annotations.classes == NIH_FINDINGS and annotations.boxes.empty
    table = pd.read_csv(dataset.labels_csv)
    images = annotations.images.set_index("image_id")
    for name, labels in zip(table["Image Index"], table["Finding Labels"], strict=True):
        row = images.loc[name.removesuffix(".png")]
        assert [f for f in NIH_FINDINGS if row[f] == 1] == [f for f in NIH_FINDINGS if f in labels.split("|")]


def test_lists_are_patient_disjoint_and_exact(dataset: NihLayout) -> None:
    train, test = _lines(dataset.train_val_list), _lines(dataset.test_list)
    assert (len(train), len(test)) == (N_TRAIN, N_TEST)
    assert train == sorted(train) and test == sorted(test)
    assert set(train) | set(test) == set(pd.read_csv(dataset.labels_csv)["Image Index"])
    assert not {n[:8] for n in train} & {n[:8] for n in test}
    truth = pd.read_csv(dataset.synth_truth, dtype={"image_id": str}, keep_default_na=False)
    assert list(truth.columns) == list(synth_nih.TRUTH_COLUMNS)
    assert set(truth.loc[truth["split"] == "test", "image_id"] + ".png") == set(test)


def test_boxes_file_names_drawn_findings(dataset: NihLayout) -> None:
    boxes = pd.read_csv(dataset.synth_boxes, dtype={"image_id": str})
    assert list(boxes.columns) == list(synth_nih.BOX_COLUMNS)
    truth = pd.read_csv(dataset.synth_truth, dtype={"image_id": str}, keep_default_na=False).set_index("image_id")
    for image_id, rows in boxes.groupby("image_id"):
        assert set(rows["finding"]) == set(truth.loc[image_id, "findings"].split(";"))
    with_findings = truth.index[truth["findings"] != ""]
    assert set(boxes["image_id"]) == set(with_findings)
    assert (boxes[["width", "height"]] > 0).all().all()
    assert (boxes["x"] >= 0).all() and (boxes["x"] + boxes["width"] <= SIZE + 0.05).all()


def test_same_seed_same_bytes_for_any_worker_count(dataset: NihLayout, tmp_path: Path) -> None:
    again = tmp_path / "again"
    synth_nih.generate_nih_dataset(again, N_TRAIN, N_TEST, seed=SEED, size=SIZE, workers=2, progress=False)
    assert _files(again) == _files(dataset.root)


def test_different_seed_differs(dataset: NihLayout, tmp_path: Path) -> None:
    other = tmp_path / "other"
    synth_nih.generate_nih_dataset(other, N_TRAIN, N_TEST, seed=SEED + 1, size=SIZE, labels_only=True,
                                   progress=False)  # fmt: skip
    assert (other / dataset.labels_csv.name).read_bytes() != dataset.labels_csv.read_bytes()
    assert not (other / "images").exists()  # labels only


def test_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    root = tmp_path / "real"
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_text(REAL_HEADER + "\n")
    with pytest.raises(CxrdetError, match=r"Data_Entry_2017.csv but no synth_truth.csv"):
        synth_nih.generate_nih_dataset(root, 2, 0, labels_only=True, progress=False)


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one image"):
        synth_nih.sample_nih_images(0, 0)
    with pytest.raises(ConfigError, match="seed"):
        synth_nih.sample_nih_images(3, 0, seed=-1)
    with pytest.raises(ConfigError, match="size"):
        synth_nih.generate_nih_dataset(tmp_path / "x", 3, 0, size=16)
    with pytest.raises(ConfigError, match="unknown findings"):
        synth_nih.FindingSigns(["Cardiomegaly", "Cancer"], np.random.SeedSequence(0))


def test_patients_are_capped_and_splits_exact() -> None:
    images = synth_nih.sample_nih_images(300, 100, seed=1)
    per_patient = pd.Series([im.patient for im in images]).value_counts()
    assert per_patient.max() <= synth_nih.default_cap(400) == 8
    assert sum(im.split == "train" for im in images) == 300
    assert len({im.image_id for im in images}) == 400
    # The first patients' images do not depend on how many images come after them.
    more = synth_nih.sample_nih_images(600, 200, seed=1, max_per_patient=8)
    first = [im for im in images if im.patient <= 3]
    assert first == [im for im in more if im.patient <= 3]


def test_prevalence_matches_the_real_table() -> None:
    table = synth_nih.sample_nih_labels(3000, seed=0)
    labels = table["Finding Labels"].str.get_dummies(sep="|")
    assert abs(labels["No Finding"].mean() - REAL_NO_FINDING) < 0.05
    for finding, real in REAL_PREVALENCE.items():
        synthetic = labels[finding].mean() if finding in labels else 0.0
        assert abs(synthetic - real) <= 0.5 * real + 0.01, (finding, synthetic, real)
    assert 0.3 < (table["View Position"] == "AP").mean() < 0.5  # real: 0.40
    assert 2.0 < len(table) / table["Patient ID"].nunique() < 5.0  # real: 3.64 images per patient


def test_follow_ups_repeat_findings() -> None:
    """A patient's next image repeats its findings far more often than a random image has them (real: 49%)."""
    table = synth_nih.sample_nih_labels(3000, seed=0)
    present = table["Finding Labels"].str.get_dummies(sep="|").reindex(columns=list(NIH_FINDINGS), fill_value=0)
    same = table["Patient ID"].to_numpy()[1:] == table["Patient ID"].to_numpy()[:-1]
    before, after = present.to_numpy()[:-1][same] > 0, present.to_numpy()[1:][same] > 0
    repeated = (before & after).sum() / before.sum()
    assert repeated > 2 * present.to_numpy().mean(axis=0).max()


def test_upper_orthant_by_hand() -> None:
    # Independent: the product of the tails; at the medians: 1/4 + arcsin(r) / (2 pi).
    assert synth_nih._upper_orthant(0.5, -1.0, 0.0) == pytest.approx(0.3085375 * 0.8413447, abs=1e-6)
    assert synth_nih._upper_orthant(0.0, 0.0, 0.5) == pytest.approx(0.25 + 1 / 12, abs=1e-6)


def test_calibration_of_a_tiny_table() -> None:
    table = pd.DataFrame(
        [("00000001_000.png", "Effusion", 0, 1, 40, "M", "AP", 2500, 2048, 0.168, 0.168),
         ("00000001_001.png", "No Finding", 1, 1, 42, "M", "PA", 2500, 2048, 0.168, 0.168),
         ("00000002_000.png", "Nodule|Mass", 0, 2, 30, "F", "PA", 2992, 2991, 0.143, 0.143)],
        columns=list(synth_nih.NIH_TABLE_COLUMNS),
    )  # fmt: skip
    cal = synth_nih.compute_nih_calibration(table)
    assert cal["images_per_patient"]["pmf"][:3] == [0.5, 0.5, 0.0]
    # Patient 2 (a woman) has one image, patient 1 (a man) two; buckets without patients take the overall share.
    assert cal["male_share"] == {"1": 0.0, "2": 1.0, "3": 0.5, "5": 0.5, "9": 0.5, "17": 0.5}
    assert cal["age_years_per_followup"] == 2.0
    assert cal["size_spacing"] == [[2500, 2048, 0.168, 0.6667], [2992, 2991, 0.143, 0.3333]]
    variables = list(synth_nih.VARIABLES)
    one, two = cal["rates"]["1"], cal["rates"]["2"]  # patient 2 has one image, patient 1 two
    assert one[variables.index("Nodule")] == one[variables.index("Mass")] == 1.0 and one[0] == 0.0
    assert two[0] == two[variables.index("Effusion")] == 0.5 and two[variables.index("Nodule")] == 0.0


@pytest.mark.real_data
def test_header_and_calibration_match_the_real_table(real_nih_labels: Path) -> None:
    with gzip.open(real_nih_labels, "rt") as f:
        assert f.readline().rstrip("\n") == synth_nih.NIH_HEADER
    assert synth_nih.compute_nih_calibration(pd.read_csv(real_nih_labels)) == synth_nih.NIH_CALIBRATION


# ---- the signs are visible ----


@pytest.fixture(scope="module")
def patient() -> synth_nih.NihImage:
    """A PA image of a patient with at least two images, its findings cleared."""
    images = synth_nih.sample_nih_images(40, 0, seed=2)
    image = next(im for im in images if im.follow_up == 1)
    return replace(image, follow_up=0, view="PA", findings=(), devices=())


def _render(image: synth_nih.NihImage, findings: tuple[str, ...] = ()) -> tuple[np.ndarray, list]:
    pixels, boxes = synth_nih.render_nih_image(replace(image, findings=findings), SEED, 256)
    return pixels.astype(np.int64), boxes


@pytest.mark.parametrize("finding", NIH_FINDINGS)
def test_each_finding_changes_the_image_where_its_box_is(patient: synth_nih.NihImage, finding: str) -> None:
    twin, no_boxes = _render(patient)
    pixels, boxes = _render(patient, (finding,))
    assert no_boxes == [] and boxes and {b[0] for b in boxes} == {finding}
    inside = np.zeros(pixels.shape, bool)
    for _, x1, y1, x2, y2 in boxes:
        inside[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = True
    assert np.abs(pixels - twin)[inside].mean() > 8, finding


def test_cardiomegaly_widens_the_heart(patient: synth_nih.NihImage) -> None:
    twin, _ = _render(patient)
    pixels, ((_, x1, y1, x2, y2),) = _render(patient, ("Cardiomegaly",))
    # Across the lower heart, where it is widest, the columns that turned from lung to heart density.
    rows = slice(int(y1 + 0.5 * (y2 - y1)), int(y1 + 0.8 * (y2 - y1)))
    turned = pixels[rows] - twin[rows] > 15
    assert turned.sum(axis=1).mean() > 15  # pixels of 256: the heart is at least 6% of the image wider
    assert not turned[:, : int(x1)].any() and not turned[:, int(np.ceil(x2)) :].any()  # inside its box


def _in_box(box: tuple[str, float, float, float, float]) -> tuple[slice, slice]:
    _, x1, y1, x2, y2 = box
    return slice(int(y1), int(np.ceil(y2))), slice(int(x1), int(np.ceil(x2)))


def test_effusion_and_mass_whiten_pneumothorax_and_emphysema_darken(patient: synth_nih.NihImage) -> None:
    twin, _ = _render(patient)
    for finding in ("Effusion", "Mass"):
        pixels, boxes = _render(patient, (finding,))
        assert (pixels - twin)[_in_box(boxes[0])].mean() > 5, finding
    pixels, (box,) = _render(patient, ("Pneumothorax",))
    # The free-air rim: a tenth of its box at least 20 grey levels darker (the collapsed lung itself is denser).
    assert ((pixels - twin)[_in_box(box)] < -20).mean() > 0.08
    pixels, boxes = _render(patient, ("Emphysema",))
    assert all((pixels - twin)[_in_box(box)].mean() < -10 for box in boxes)  # both lungs hyperlucent


def test_nodule_is_small_and_mass_is_large(patient: synth_nih.NihImage) -> None:
    _, nodules = _render(patient, ("Nodule",))
    _, masses = _render(patient, ("Mass",))
    assert max(x2 - x1 for _, x1, _, x2, _ in nodules) < 0.05 * 256 < min(x2 - x1 for _, x1, _, x2, _ in masses)


def test_follow_ups_show_the_same_patient(patient: synth_nih.NihImage) -> None:
    first, _ = _render(patient)
    later, _ = _render(replace(patient, follow_up=1))
    stranger, _ = _render(replace(patient, patient=patient.patient + 1))
    assert np.corrcoef(first.ravel(), later.ravel())[0, 1] > np.corrcoef(first.ravel(), stranger.ravel())[0, 1]
    assert not np.array_equal(first, later)  # repositioned and new film noise


# ---- CLI ----


def test_cli_synth_nih(tmp_path: Path) -> None:
    out = tmp_path / "nih"
    result = CliRunner().invoke(app, ["synth", "--format", "nih", "--out", str(out), "--n-train", "4", "--n-test", "2",
                                      "--size", "48", "--workers", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "4 train" in result.output and "2 test" in result.output and "6 PNGs of 48 px" in result.output
    assert len(list((out / "images").glob("*.png"))) == 6


@pytest.mark.parametrize(("args", "message"), [(["--format", "dicom"], "expected rsna, nih, vinbigdata or siim"),
                                               (["--size", "512"], "1024 x 1024 only")])  # fmt: skip
def test_cli_synth_rejects_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--labels-only", *args])
    assert result.exit_code == 1 and message in result.output
