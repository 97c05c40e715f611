"""Synthetic RSNA-format data: Kaggle layout, DICOM fields, label format, determinism, and that opacities are real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage
from typer.testing import CliRunner

from cxrdet.cli import app
from cxrdet.synth import render
from cxrdet.synth import rsna as synth
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.paths import KaggleLayout

N_TRAIN, N_TEST, SEED = 6, 3, 11


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> KaggleLayout:
    """A tiny data set rendered in-process (workers=1)."""
    root = tmp_path_factory.mktemp("synth") / "data"
    synth.generate_dataset(root, N_TRAIN, N_TEST, seed=SEED, workers=1, progress=False)
    return KaggleLayout(root)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.dcm"))}


def test_layout_has_every_file(dataset: KaggleLayout) -> None:
    for path in (dataset.labels_csv, dataset.sample_submission, dataset.detailed_class_info,
                 dataset.synth_test_labels, dataset.synth_truth):  # fmt: skip
        assert path.is_file(), path
    assert len(list(dataset.train_images.glob("*.dcm"))) == N_TRAIN
    assert len(list(dataset.test_images.glob("*.dcm"))) == N_TEST
    # Only the final files: no temporary siblings left by the atomic writes.
    assert not [p for p in dataset.root.rglob("*") if p.name.startswith(".")]


def test_dicom_reads_back_with_plain_pydicom(dataset: KaggleLayout) -> None:
    truth = pd.read_csv(dataset.synth_truth, dtype={"distractors": str}, keep_default_na=False)
    row = truth.iloc[0]
    path = dataset.dicom_path(row["split"], row["image_id"])
    assert path.read_bytes()[128:132] == b"DICM"  # preamble + prefix: the DICOM file format
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert ds.SOPClassUID == SecondaryCaptureImageStorage == ds.file_meta.MediaStorageSOPClassUID
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation) == (1024, 1024, 1, "MONOCHROME2")
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
    assert (ds.Modality, ds.BodyPartExamined, ds.ConversionType) == ("CR", "CHEST", "WSD")
    assert ds.PatientID == row["image_id"] == path.stem
    assert ds.ViewPosition == row["view"] and ds.PatientSex == row["sex"]
    assert ds.PatientAge == f"{row['age']:03d}Y"
    assert ds.SeriesDescription == f"view: {row['view']}"
    assert len(ds.PixelSpacing) == 2 and 0.1 < float(ds.PixelSpacing[0]) < 0.2
    pixels = ds.pixel_array
    assert pixels.shape == (1024, 1024) and pixels.dtype == np.uint8
    # Lossy JPEG: close to, not equal to, what the renderer drew.
    labels = synth.sample_image_labels(SEED, 0)
    drawn = render.render_image(labels.boxes, labels.view, labels.sex, labels.age, labels.distractors,
                               np.random.SeedSequence([SEED, 0, 1]))  # fmt: skip
    assert np.abs(pixels.astype(int) - drawn).mean() < 2.0


def test_labels_csv_format(dataset: KaggleLayout) -> None:
    lines = dataset.labels_csv.read_text().splitlines()
    assert lines[0] == "patientId,x,y,width,height,Target"
    labels = pd.read_csv(dataset.labels_csv)
    truth = pd.read_csv(dataset.synth_truth, keep_default_na=False)
    train = truth[truth["split"] == "train"]
    assert set(labels["patientId"]) == set(train["image_id"]) == {p.stem for p in dataset.train_images.glob("*.dcm")}
    negatives = labels[labels["Target"] == 0]
    assert negatives[["x", "y", "width", "height"]].isna().all().all()
    assert all(line.endswith(",,,,,0") for line in lines[1:] if line.split(",")[0] in set(negatives["patientId"]))
    assert negatives["patientId"].is_unique  # a negative image is exactly one row
    boxes = labels[labels["Target"] == 1]
    assert (boxes[["x", "y"]] >= 0).all().all() and (boxes[["width", "height"]] > 0).all().all()
    assert ((boxes["x"] + boxes["width"]) <= 1024).all() and ((boxes["y"] + boxes["height"]) <= 1024).all()
    counts = labels.groupby("patientId")["x"].count()
    assert counts.reindex(train["image_id"]).tolist() == train["n_boxes"].tolist()


def test_sample_submission_and_test_labels(dataset: KaggleLayout) -> None:
    sub = pd.read_csv(dataset.sample_submission, keep_default_na=False)
    assert list(sub.columns) == ["patientId", "PredictionString"]
    assert (sub["PredictionString"] == "").all()
    test_ids = {p.stem for p in dataset.test_images.glob("*.dcm")}
    assert set(sub["patientId"]) == test_ids and len(sub) == N_TEST
    test_labels = pd.read_csv(dataset.synth_test_labels)
    assert list(test_labels.columns) == list(synth.LABEL_COLUMNS)
    assert set(test_labels["patientId"]) == test_ids
    assert not test_ids & set(pd.read_csv(dataset.labels_csv)["patientId"])


def test_class_info_follows_labels_and_findings(dataset: KaggleLayout) -> None:
    info = pd.read_csv(dataset.detailed_class_info)
    labels = pd.read_csv(dataset.labels_csv)
    truth = pd.read_csv(dataset.synth_truth, keep_default_na=False).set_index("image_id")
    assert info["patientId"].tolist() == labels["patientId"].tolist()
    for pid, cls in zip(info["patientId"], info["class"], strict=True):
        found = set(truth.loc[pid, "distractors"].split(";")) & set(synth.FINDINGS)
        negative = "No Lung Opacity / Not Normal" if found else "Normal"
        assert cls == ("Lung Opacity" if truth.loc[pid, "n_boxes"] else negative)


def test_same_seed_same_bytes_for_any_worker_count(dataset: KaggleLayout, tmp_path: Path) -> None:
    again = KaggleLayout(tmp_path / "again")
    synth.generate_dataset(again.root, N_TRAIN, N_TEST, seed=SEED, workers=2, progress=False)
    for name in ("labels_csv", "sample_submission", "detailed_class_info", "synth_test_labels", "synth_truth"):
        assert getattr(again, name).read_bytes() == getattr(dataset, name).read_bytes(), name
    assert _files(again.train_images) == _files(dataset.train_images)
    assert _files(again.test_images) == _files(dataset.test_images)


def test_different_seed_differs(dataset: KaggleLayout, tmp_path: Path) -> None:
    other = KaggleLayout(tmp_path / "other")
    synth.generate_dataset(other.root, 1, 0, seed=SEED + 1, workers=1, progress=False)
    assert other.labels_csv.read_bytes() != dataset.labels_csv.read_bytes()
    (ours,) = _files(other.train_images).values()
    assert ours not in set(_files(dataset.train_images).values())


def _positive_image(seed: int) -> synth.ImageLabels:
    return next(im for i in range(200) if (im := synth.sample_image_labels(seed, i)).boxes)


def test_opacity_brightens_the_box_and_its_margin_only() -> None:
    labels = _positive_image(3)
    args = (labels.boxes, labels.view, labels.sex, labels.age, (), np.random.SeedSequence([3, labels.index, 1]))
    diff = render.render_image(*args).astype(int) - render.render_image(*args, opacity_strength=0.0).astype(int)
    near = np.zeros(diff.shape, bool)
    for x, y, w, h in labels.boxes:
        x, y, w, h = int(x), int(y), int(w), int(h)
        inside = diff[y : y + h, x : x + w].mean()
        # The visible extent is 1 / 0.875 of the box: the strip just outside the box is brighter too, less so.
        pad_x, pad_y = int(w * (1 / render.BOX_TO_VISIBLE - 1) / 2), int(h * (1 / render.BOX_TO_VISIBLE - 1) / 2)
        ring = np.zeros(diff.shape, bool)
        ring[max(0, y - pad_y) : y + h + pad_y, max(0, x - pad_x) : x + w + pad_x] = True
        ring[y : y + h, x : x + w] = False
        assert inside > 10, (labels.boxes, inside)
        assert 0 < diff[ring].mean() < inside
        near[max(0, y - pad_y - 40) : y + h + pad_y + 40, max(0, x - pad_x - 40) : x + w + pad_x + 40] = True
    # Far from every box the two renderings are identical: the opacity is the only difference.
    assert np.array_equal(diff[~near], np.zeros((~near).sum(), int))


def test_opacities_are_brighter_on_average_over_images() -> None:
    gains = []
    for seed in range(4):
        labels = _positive_image(seed)
        args = (labels.boxes, labels.view, labels.sex, labels.age, labels.distractors,
                np.random.SeedSequence([seed, labels.index, 1]))  # fmt: skip
        with_opacity, without = render.render_image(*args), render.render_image(*args, opacity_strength=0.0)
        for x, y, w, h in labels.boxes:
            sl = np.s_[int(y) : int(y + h), int(x) : int(x + w)]
            gains.append(with_opacity[sl].astype(float).mean() - without[sl].astype(float).mean())
    assert np.mean(gains) > 15 and min(gains) > 0


def test_opacity_field_reaches_past_the_box_to_the_visible_extent() -> None:
    canvas = render.Canvas(512)  # 2 output pixels per grid pixel
    box = np.array([[300.0, 300.0, 500.0, 600.0]])  # xyxy pixels of 1024: grid rows 150..300, cols 150..250
    field = render._opacities(canvas, box, np.random.default_rng(0))
    peak = field.max()
    # Visible half-extents: 100 / 0.875 = 114.3 and 150 / 0.875 = 171.4 output pixels around the centre (400, 450).
    assert field[225, 150] > 0.2 * peak and field[225, 249] > 0.2 * peak  # left and right box edges, centre row
    assert field[150, 200] > 0.2 * peak and field[299, 200] > 0.2 * peak  # top and bottom edges, centre column
    assert field[225, 145] > 0  # 10 output pixels outside the box, inside the visible extent
    assert field[:, : int((400 - 114.3) / 2) - 1].max() == 0 and field[:, int((400 + 114.3) / 2) + 2 :].max() == 0
    assert field[: int((450 - 171.4) / 2) - 1].max() == 0 and field[int((450 + 171.4) / 2) + 2 :].max() == 0


@pytest.mark.parametrize("kind", render.DISTRACTORS)
def test_each_distractor_changes_the_image(kind: str) -> None:
    args = ((), "AP", "M", 50)
    base = render.render_image(*args, (), seed=5)
    with_kind = render.render_image(*args, (kind,), seed=5)
    assert (base != with_kind).mean() > 0.0005, kind


def test_sample_labels_statistics_follow_the_calibration() -> None:
    table = synth.sample_labels(3000, seed=0)
    images = table.groupby("index").agg(positive=("Target", "max"), n=("x", "count"), view=("view", "first"),
                                        sex=("sex", "first"), distractors=("distractors", "first"))  # fmt: skip
    assert len(images) == 3000 and table["patientId"].nunique() == 3000
    cal = synth.CALIBRATION
    positive_rate = cal["ap_share"] * cal["positive_rate"]["AP"] + (1 - cal["ap_share"]) * cal["positive_rate"]["PA"]
    assert abs(images["positive"].mean() - positive_rate) < 0.025
    assert abs((images["view"] == "AP").mean() - cal["ap_share"]) < 0.03
    by_view = images.groupby("view")["positive"].mean()
    assert by_view["AP"] > 3 * by_view["PA"]  # portable AP films are far more often positive, as in RSNA
    assert set(images.loc[images.positive == 1, "n"]) <= {1, 2, 3, 4}
    assert (images.loc[images.positive == 0, "n"] == 0).all()
    boxes = table.dropna(subset=["x"])
    assert (boxes[["x", "y"]] >= 0).all().all() and ((boxes["x"] + boxes["width"]) <= 1024).all()
    assert ((boxes["y"] + boxes["height"]) <= 1024).all() and (boxes[["width", "height"]] > 0).all().all()
    assert abs(boxes["width"].median() - 217) < 25 and abs(boxes["height"].median() - 298) < 60
    present = set(";".join(images["distractors"]).split(";")) - {""}
    assert present == set(render.DISTRACTORS)


def test_sample_labels_is_prefix_stable() -> None:
    small, large = synth.sample_labels(5, seed=7), synth.sample_labels(12, seed=7)
    pd.testing.assert_frame_equal(small, large[large["index"] < 5].reset_index(drop=True))


def test_rerun_in_same_folder_replaces_the_old_images(tmp_path: Path) -> None:
    layout = KaggleLayout(tmp_path / "d")
    synth.generate_dataset(layout.root, 2, 1, seed=1, workers=1, progress=False, labels_only=True)
    synth.generate_dataset(layout.root, 2, 1, seed=1, workers=1, progress=False)
    first = set(_files(layout.train_images))
    synth.generate_dataset(layout.root, 1, 1, seed=2, workers=1, progress=False)
    ids = set(pd.read_csv(layout.labels_csv)["patientId"])
    assert {Path(n).stem for n in _files(layout.train_images)} == ids and not first & set(_files(layout.train_images))


def test_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    layout = KaggleLayout(tmp_path / "real")
    layout.train_images.mkdir(parents=True)
    (layout.train_images / "a.dcm").write_bytes(b"x")
    with pytest.raises(CxrdetError, match="not written by `cxrdet synth`"):
        synth.generate_dataset(layout.root, 1, 1, seed=0, workers=1, progress=False)
    assert (layout.train_images / "a.dcm").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_train": 0, "n_test": 0}, "at least one image"), ({"seed": -1}, "non-negative"), ({"workers": 0}, "workers")],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    args = {"n_train": 1, "n_test": 1, "seed": 0, "workers": 1} | kwargs
    with pytest.raises(ConfigError, match=message):
        synth.generate_dataset(tmp_path / "x", progress=False, **args)


def test_render_rejects_unknown_inputs() -> None:
    with pytest.raises(ConfigError, match="view"):
        render.render_image((), "LL", "M")
    with pytest.raises(ConfigError, match="unknown distractors"):
        render.render_image((), "PA", "M", distractors=("pacemaker",))


def test_cli_writes_the_tables(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["synth", "--out", str(out), "--n-train", "4", "--n-test", "2", "--seed", "3",
                                      "--labels-only"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "4 train" in result.output and "0 DICOMs" in result.output
    assert pd.read_csv(KaggleLayout(out).sample_submission).shape == (2, 2)


@pytest.mark.real_data
def test_stored_calibration_matches_the_real_tables(real_rsna_labels: Path, real_rsna_headers: Path) -> None:
    fresh = synth.compute_calibration(pd.read_csv(real_rsna_labels), pd.read_csv(real_rsna_headers))
    assert fresh == synth.CALIBRATION


def test_a_crashed_run_can_be_redone_and_leaves_no_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = KaggleLayout(tmp_path / "d")
    calls = {"n": 0}
    real_render = synth.render_image

    def crash_on_second(*args: object, **kwargs: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real_render(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synth, "render_image", crash_on_second)
    with pytest.raises(RuntimeError, match="killed"):
        synth.generate_dataset(layout.root, 2, 1, seed=4, workers=1, progress=False)
    assert not layout.labels_csv.exists() and len(list(layout.train_images.glob("*.dcm"))) == 1
    monkeypatch.setattr(synth, "render_image", real_render)
    synth.generate_dataset(layout.root, 2, 1, seed=4, workers=1, progress=False)
    assert len(pd.read_csv(layout.labels_csv)["patientId"].unique()) == 2
