"""Classification data module: image labels from boxes (RSNA) and finding columns (NIH), crops labelled by the boxes
they hold, sampler positives, class checks, and the NIH multi-label path end to end on patient-grouped folds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrdet import paths
from cxrdet.config import load_config
from cxrdet.data.classify import ClassificationDataModule, ClassificationDataset, collate_classification
from cxrdet.data.folds import images_for_folds, make_folds
from cxrdet.errors import ConfigError
from cxrdet.tasks import predict, train

SIZE = 32
ORIG = 256
TINY = paths.CONFIGS_DIR / "experiments" / "cls_regnetx002_128_tiny12e.py"


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def write_cache(cache: Path, images: dict[str, tuple[str, np.ndarray]]) -> None:
    """A prepare cache: one PNG per image and `meta.parquet` (`images`: id -> (split, pixels))."""
    meta = []
    for image_id, (split, pixels) in images.items():
        png = paths.CacheLayout(cache).image(split, image_id)
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8), mode="L").save(png)
        meta.append({"image_id": image_id, "split": split, "orig_width": ORIG, "orig_height": ORIG, "bits_stored": 8,
                     "photometric": "MONOCHROME2", "pixel_spacing_row": 0.14, "pixel_spacing_col": 0.14, "sex": "F",
                     "age": 50, "view": "PA", "source": f"{image_id}.png",
                     "cache": png.relative_to(cache).as_posix()})
    pd.DataFrame(meta).to_parquet(paths.CacheLayout(cache).meta, index=False)


@pytest.fixture(scope="module")
def rsna(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """RSNA-format labels: 12 train images (even ids positive: one box of 64 x 64 original pixels at (32, 64); the
    box 8 x 8 input pixels at (4, 8)), 2 test images, folds 0/1 alternating in pairs so both folds mix labels."""
    folder = tmp_path_factory.mktemp("rsna")
    root, cache = folder / "root", folder / "cache"
    root.mkdir()
    rows, images = [], {}
    for i in range(14):
        image_id, split = f"r{i:02d}", "train" if i < 12 else "test"
        images[image_id] = (split, np.full((SIZE, SIZE), 30))
        if split == "train":
            rows.append([image_id, 32.0, 64.0, 64.0, 64.0, 1] if i % 2 == 0 else [image_id, None, None, None, None, 0])
    pd.DataFrame(rows, columns=["patientId", "x", "y", "width", "height", "Target"]).to_csv(
        paths.KaggleLayout(root).labels_csv, index=False)
    write_cache(cache, images)
    folds = folder / "folds.csv"
    ids = [f"r{i:02d}" for i in range(12)]
    pd.DataFrame({"image_id": ids, "patient_id": ids, "fold": [(i // 2) % 2 for i in range(12)]}).to_csv(folds,
                                                                                                       index=False)
    return {"root": str(root), "cache": str(cache), "folds": str(folds), "size": SIZE, "batch_size": 4,
            "num_workers": 0, "augment": None}


FINDINGS = ["Effusion", "Cardiomegaly|Effusion", "No Finding", "Atelectasis", "No Finding", "Effusion|Nodule"]


@pytest.fixture(scope="module")
def nih(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """NIH-format labels (`Data_Entry_2017_v2020.csv`): 24 images of 8 patients (3 each), findings cycling through
    `FINDINGS`; an Effusion image has a bright lower half, so a classifier can learn it. Patient-grouped 2 folds."""
    folder = tmp_path_factory.mktemp("nih")
    root, cache = folder / "root", folder / "cache"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows, images = [], {}
    for i in range(24):
        patient = i // 3 + 1
        image_id = f"{patient:08d}_{i % 3:03d}"
        labels = FINDINGS[i % len(FINDINGS)]
        pixels = rng.normal(40, 5, (SIZE, SIZE))
        if "Effusion" in labels:
            pixels[SIZE // 2 :] += 150
        images[image_id] = ("train", pixels.clip(0, 255))
        rows.append({"Image Index": f"{image_id}.png", "Finding Labels": labels, "Follow-up #": i % 3,
                     "Patient ID": patient, "Patient Age": 40 + patient, "Patient Gender": "M",
                     "View Position": "PA", "OriginalImage[Width": ORIG, "Height]": ORIG,
                     "OriginalImagePixelSpacing[x": 0.14, "y]": 0.14})
    table = paths.NihLayout(root).labels_csv
    pd.DataFrame(rows).to_csv(table, index=False)
    write_cache(cache, images)
    folds = make_folds(images_for_folds(table), k=2, seed=0)
    path = folder / "nih_k2.csv"
    folds.to_csv(path, index=False)
    return {"root": str(root), "cache": str(cache), "folds": str(path), "size": SIZE, "batch_size": 4,
            "num_workers": 0, "augment": None}


def test_binary_labels_come_from_the_boxes(rsna: dict[str, Any]) -> None:
    dm = ClassificationDataModule({**rsna, "classes": ("opacity",)}, fold=0)
    images, targets, metas = next(iter(dm.val_dataloader()))
    # Fold 0 holds r00, r01, r04, r05, r08, r09; even ids have a box.
    assert [m["image_id"] for m in metas] == ["r00", "r01", "r04", "r05"]
    assert images.shape == (4, 3, SIZE, SIZE) and targets.dtype == torch.float32
    assert targets[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert dm.train_targets()[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]  # r02, r03, r06, r07, r10, r11
    assert dm.val_targets()["opacity"].tolist() == [1, 0, 1, 0, 1, 0]
    test = dm.eval_dataset("test")
    assert [test[i][1].tolist() for i in range(len(test))] == [[0.0], [0.0]]


def test_crops_are_positive_around_boxes_and_negative_on_negative_images(rsna: dict[str, Any]) -> None:
    crops = {"size_frac": 0.5, "neg_per_image": 2}
    dm = ClassificationDataModule({**rsna, "classes": ("opacity",), "crops": crops}, fold=0, view="crops")
    dataset = dm.train_dataset()
    # 3 positive images with one box each (one crop around it) + 3 negatives x 2 random crops.
    assert len(dataset) == 9 and dataset.positive.tolist() == [True, False, False, True, False, False, True, False,
                                                                False]
    for i in range(len(dataset)):
        image, label, meta = dataset[i]
        assert image.shape == (3, SIZE, SIZE) and meta["crop"] is not None
        assert label.tolist() == [1.0 if dataset.positive[i] else 0.0]
    sampler = dm.train_sampler(dataset)
    assert len(sampler) == 9


def test_collate_stacks_targets_and_keeps_one_grey_channel() -> None:
    grey = torch.rand(1, 4, 4)
    batch = [(grey.expand(3, -1, -1), torch.tensor([1.0, 0.0]), {"image_id": "a"}),
             (grey.expand(3, -1, -1), torch.tensor([0.0, 1.0]), {"image_id": "b"})]
    images, targets, metas = collate_classification(batch)
    assert images.shape == (2, 3, 4, 4) and images.stride(1) == 0
    assert targets.tolist() == [[1.0, 0.0], [0.0, 1.0]] and [m["image_id"] for m in metas] == ["a", "b"]


def test_nih_classes_are_finding_columns_in_the_config_order(nih: dict[str, Any]) -> None:
    dm = ClassificationDataModule({**nih, "classes": ("Effusion", "Atelectasis")}, fold=0)
    truth = dm.truth
    assert list(truth.columns) == ["Effusion", "Atelectasis"]
    # Image i has FINDINGS[i % 6]: 00000001_000 'Effusion', _001 'Cardiomegaly|Effusion', _002 'No Finding';
    # 00000002_000 'Atelectasis'.
    assert truth.loc["00000001_000"].tolist() == [1, 0] and truth.loc["00000001_001"].tolist() == [1, 0]
    assert truth.loc["00000001_002"].tolist() == [0, 0] and truth.loc["00000002_000"].tolist() == [0, 1]
    dataset = dm.eval_dataset("oof")
    for i in range(len(dataset)):
        _, label, meta = dataset[i]
        assert label.tolist() == truth.loc[meta["image_id"]].astype(float).tolist()
    # Sampler positives: any finding.
    train = dm.train_dataset()
    assert train.positive.tolist() == dm.train_targets().any(axis=1).tolist()


def test_nih_folds_keep_each_patient_in_one_fold(nih: dict[str, Any]) -> None:
    folds = pd.read_csv(nih["folds"], dtype={"image_id": str, "patient_id": str})
    assert len(folds) == 24 and folds.groupby("patient_id")["fold"].nunique().max() == 1
    dm = ClassificationDataModule({**nih, "classes": ("Effusion",)}, fold=1)
    train_patients = {i.split("_")[0] for i in dm.train_image_ids}
    val_patients = {i.split("_")[0] for i in dm.val_image_ids}
    assert not train_patients & val_patients and len(train_patients | val_patients) == 8


def test_class_errors(rsna: dict[str, Any], nih: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"data.classes names \['Hernia'\], which the labels .* lack.*'opacity'"):
        ClassificationDataModule({**rsna, "classes": ("Hernia",)}, fold=0).setup()
    with pytest.raises(ConfigError, match="crops view labels a crop by the boxes it holds"):
        ClassificationDataModule({**nih, "classes": ("Effusion",)}, fold=0, view="crops").train_dataset()
    with pytest.raises(ConfigError, match="data.classes is empty"):
        ClassificationDataModule({**nih, "classes": ()}, fold=0).setup()


def test_dataset_checks_label_shape(rsna: dict[str, Any]) -> None:
    dm = ClassificationDataModule({**rsna, "classes": ("opacity",)}, fold=0)
    base = super(ClassificationDataModule, dm).eval_dataset("oof")
    with pytest.raises(ValueError, match=r"labels of shape \(2, 1\): expected .* \(6, 1\)"):
        ClassificationDataset(base, np.zeros((2, 1)), [0])


@pytest.mark.slow
def test_multi_label_classifier_trains_and_predicts_on_the_nih_table(nih: dict[str, Any], tmp_path: Path) -> None:
    classes = ("Effusion", "Cardiomegaly", "Atelectasis", "Nodule")
    options = {"data.root": nih["root"], "data.cache": nih["cache"], "data.folds": nih["folds"],
               "data.size": SIZE, "data.batch_size": 4, "data.classes": classes, "data.neg_ratio": None,
               "train.epochs": 2, "train.progress_bar": False, "train.accelerator": "cpu",
               "loss.pos_weight": "auto"}
    cfg = load_config(TINY, [f"{k}={v}" for k, v in options.items()])
    result = train(cfg, fold=0)
    assert result.monitor == "val/auroc" and 0.0 <= result.best_score <= 1.0
    metrics = pd.read_csv(next((result.run_dir / "csv").glob("version_*/metrics.csv")))
    per_class = [f"val/auroc/{c}" for c in classes]
    assert set(per_class) <= set(metrics.columns)
    out = predict(cfg, 0, split="oof")
    probs = pd.read_parquet(out)
    dm = ClassificationDataModule({k.removeprefix("data."): v for k, v in options.items() if k.startswith("data.")},
                                  fold=0)
    assert list(probs.columns) == ["image_id", *classes] and probs["image_id"].tolist() == dm.val_image_ids
    assert ((probs[list(classes)] >= 0) & (probs[list(classes)] <= 1)).all().all()
