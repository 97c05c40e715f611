"""DetectionDataModule on a tiny cache: fold split, loaders, negative sampling, views and consistency errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrdet.data.datamodule import DataConfig, DetectionDataModule, MissingImagesError
from cxrdet.data.dataset import collate_detection
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.paths import KaggleLayout

SIZE = 32
TRAIN_IDS = [f"t{i:02d}" for i in range(10)]  # t00..t03 positive, t04..t09 negative; fold = index % 5
TEST_IDS = ["x00", "x01"]
BOXES_XYWH = {"t00": [(256, 256, 256, 256), (600, 100, 200, 300)], "t01": [(256, 256, 256, 256)],
              "t02": [(100, 500, 300, 200)], "t03": [(700, 600, 200, 300)]}  # fmt: skip


def write_tiny_dataset(tmp: Path, drop_from_cache: tuple[str, ...] = ()) -> dict[str, Any]:
    """A Kaggle-layout labels CSV, a prepare cache of 32-px PNGs with meta.parquet, and a 5-fold file.

    Returns:
        The `data` config section that reads them.
    """
    root = tmp / "root"
    root.mkdir()
    rows = []
    for image_id in TRAIN_IDS:
        for x, y, w, h in BOXES_XYWH.get(image_id, []):
            rows.append((image_id, x, y, w, h, 1))
        if image_id not in BOXES_XYWH:
            rows.append((image_id, "", "", "", "", 0))
    labels = pd.DataFrame(rows, columns=["patientId", "x", "y", "width", "height", "Target"])
    labels.to_csv(KaggleLayout(root).labels_csv, index=False)

    cache = tmp / "cache"
    meta = []
    for split, ids in (("train", TRAIN_IDS), ("test", TEST_IDS)):
        for image_id in ids:
            if image_id in drop_from_cache:
                continue
            pixels = np.full((SIZE, SIZE), 20, dtype=np.uint8)
            for x, y, w, h in BOXES_XYWH.get(image_id, []):
                pixels[y // 32 : (y + h) // 32, x // 32 : (x + w) // 32] = 220
            rel = Path("images") / split / f"{image_id}.png"
            (cache / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(cache / rel)
            meta.append({"image_id": image_id, "split": split, "orig_width": 1024, "orig_height": 1024,
                         "bits_stored": 8, "photometric": "MONOCHROME2", "pixel_spacing_row": 0.14,
                         "pixel_spacing_col": 0.14, "sex": "F", "age": 50, "view": "PA", "source": "synthetic",
                         "cache": rel.as_posix()})  # fmt: skip
    pd.DataFrame(meta).to_parquet(cache / "meta.parquet", index=False)

    folds = tmp / "tiny_k5.csv"
    pd.DataFrame({"image_id": TRAIN_IDS, "patient_id": TRAIN_IDS, "fold": [i % 5 for i in range(10)]}).to_csv(
        folds, index=False
    )
    return dict(root=str(root), size=SIZE, folds=str(folds), cache=str(cache), batch_size=4, num_workers=0)


@pytest.fixture
def data_cfg(tmp_path: Path) -> dict[str, Any]:
    return write_tiny_dataset(tmp_path)


def loader_ids(loader: torch.utils.data.DataLoader) -> list[str]:
    return [meta["image_id"] for _, _, metas in loader for meta in metas]


def test_config_defaults_and_path_resolution(data_cfg: dict[str, Any], tmp_path: Path) -> None:
    cfg = DataConfig.from_dict({"size": 64, "folds": "demo_k5"})
    assert cfg.view == "full" and cfg.batch_size == 8 and cfg.neg_ratio is None and not cfg.positives_only
    assert cfg.augment is not None and cfg.augment["hflip"] == 0.5 and cfg.augment["clahe"] is False
    assert cfg.cache.name == "64px" and cfg.folds.name == "demo_k5.csv"
    assert DataConfig.from_dict({**data_cfg, "augment": None}).augment is None
    resolved = DataConfig.from_dict(data_cfg)
    assert resolved.cache == tmp_path / "cache" and resolved.folds == tmp_path / "tiny_k5.csv"


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"batchsize": 4}, "unknown key.*batchsize"),
        ({"view": "tiles"}, "data.view='tiles'"),
        ({"neg_ratio": -1}, "data.neg_ratio=-1"),
        ({"crops": {"frac": 0.5}}, "data.crops="),
        ({"crops": {"size_frac": 1.5}}, "crops.size_frac=1.5"),
        ({"batch_size": 0}, "data.batch_size=0"),
        ({"pin_memory": "yes"}, "data.pin_memory='yes'"),
    ],
)
def test_config_errors(data_cfg: dict[str, Any], override: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DataConfig.from_dict({**data_cfg, **override})


@pytest.mark.parametrize("fold", range(5))
def test_fold_split_has_no_val_image_in_train(data_cfg: dict[str, Any], fold: int) -> None:
    dm = DetectionDataModule(data_cfg, fold=fold)
    dm.setup("fit")
    assert dm.val_image_ids == [TRAIN_IDS[fold], TRAIN_IDS[fold + 5]]
    assert sorted(dm.train_image_ids + dm.val_image_ids) == TRAIN_IDS
    train_seen = loader_ids(dm.train_dataloader())
    assert sorted(train_seen) == sorted(dm.train_image_ids), "every training image once per epoch"
    assert not set(train_seen) & set(dm.val_image_ids)
    assert loader_ids(dm.val_dataloader()) == dm.val_image_ids
    assert dm.test_image_ids == TEST_IDS


def test_batches_follow_the_contract(data_cfg: dict[str, Any]) -> None:
    dm = DetectionDataModule(data_cfg, fold=1)
    images, targets, metas = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert len(targets) == len(metas) == 4
    for target, meta in zip(targets, metas, strict=True):
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
        assert target["labels"].dtype == torch.int64 and len(target["labels"]) == len(target["boxes"])
        assert set(meta) == {"image_id", "orig_width", "orig_height", "hflip", "crop"}
        assert meta["crop"] is None and isinstance(meta["hflip"], bool)


def test_validation_boxes_are_the_original_boxes_scaled_to_the_input(data_cfg: dict[str, Any]) -> None:
    dm = DetectionDataModule(data_cfg, fold=0)  # val: t00 (two boxes) and t05 (negative)
    images, targets, metas = next(iter(dm.val_dataloader()))
    assert [m["image_id"] for m in metas] == ["t00", "t05"] and not any(m["hflip"] for m in metas)
    # (256, 256, 512, 512) and (600, 100, 800, 400) in 1024-px originals, divided by 32
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[8.0, 8.0, 16.0, 16.0], [18.75, 3.125, 25.0, 12.5]]))
    assert targets[1]["boxes"].shape == (0, 4)
    expected_gt = pd.DataFrame({"image_id": ["t00", "t00"], "x1": [256.0, 600.0], "y1": [256.0, 100.0],
                                "x2": [512.0, 800.0], "y2": [512.0, 400.0], "label": [0, 0]})  # fmt: skip
    pd.testing.assert_frame_equal(dm.val_gt, expected_gt)
    # no augmentation: the batch is the cached pixels / 255
    assert float(images[0, 0, 10, 10]) == pytest.approx(220 / 255)
    assert float(images[0, 0, 0, 0]) == pytest.approx(20 / 255)


def test_positives_only_drops_train_negatives_but_not_val(data_cfg: dict[str, Any]) -> None:
    dm = DetectionDataModule({**data_cfg, "positives_only": True}, fold=4)  # train: t00..t03 + t05..t08
    assert sorted(loader_ids(dm.train_dataloader())) == ["t00", "t01", "t02", "t03"]
    assert dm.val_image_ids == ["t04", "t09"] and loader_ids(dm.val_dataloader()) == ["t04", "t09"]


def test_neg_ratio_keeps_positives_and_samples_negatives(data_cfg: dict[str, Any]) -> None:
    dm = DetectionDataModule({**data_cfg, "neg_ratio": 0.5}, fold=4)  # 4 positives, 4 negatives in train
    loader = dm.train_dataloader()
    assert len(loader.sampler) == 4 + 2
    negatives = set()
    for epoch in range(6):
        loader.sampler.set_epoch(epoch)
        ids = loader_ids(loader)
        assert sorted(ids)[:4] == ["t00", "t01", "t02", "t03"] and len(ids) == 6
        negatives |= set(ids) - {"t00", "t01", "t02", "t03"}
    assert len(negatives) > 2, "negatives are redrawn across epochs"


def test_crops_view_for_training_and_full_images_for_validation(data_cfg: dict[str, Any]) -> None:
    cfg = {**data_cfg, "crops": {"size_frac": 0.5, "neg_per_image": 2}, "augment": None}
    dm = DetectionDataModule(cfg, fold=0, view="crops")
    train = dm.train_dataset()
    # train: t01 (1 box), t02 (1), t03 (1) -> 3 box crops; t04, t06..t09 negatives -> 5 x 2 crops
    assert len(train) == 3 + 10 and int(train.positive.sum()) == 3
    _, targets, metas = collate_detection([train[i] for i in range(len(train))])
    for target, meta in zip(targets, metas, strict=True):
        x1, y1, x2, y2 = meta["crop"]
        assert (x2 - x1, y2 - y1) == (512.0, 512.0)
        assert (len(target["boxes"]) > 0) == (meta["image_id"] in BOXES_XYWH)
    assert all(m["crop"] is None for m in next(iter(dm.val_dataloader()))[2])


def test_pinned_loaders_get_contiguous_batches(data_cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """'auto' pins when CUDA is present; a pinned loader's batches have three real channels (an expanded view cannot
    be pinned), with the same values as the unpinned view."""
    assert DataConfig.from_dict(data_cfg).pin_memory is torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert DataConfig.from_dict(data_cfg).pin_memory is True
    assert DataConfig.from_dict({**data_cfg, "pin_memory": False}).pin_memory is False
    plain = DetectionDataModule({**data_cfg, "pin_memory": False}, 0)
    plain.setup("fit")
    pinned = DetectionDataModule({**data_cfg, "pin_memory": True}, 0)
    pinned.setup("fit")
    view_loader, real_loader = plain.val_dataloader(), pinned.val_dataloader()
    assert real_loader.pin_memory and not view_loader.pin_memory
    # Pinning itself needs a CUDA device; what it is given is checked here: the collated batch, before pinning.
    items = [real_loader.dataset[i] for i in range(min(3, len(real_loader.dataset)))]
    assert len(items) >= 2
    view, real = view_loader.collate_fn(items)[0], real_loader.collate_fn(items)[0]
    assert view.stride(1) == 0 and real.is_contiguous() and real.stride(1) != 0
    assert torch.equal(view, real)


def test_predict_loaders_cover_oof_and_test_with_optional_flip(data_cfg: dict[str, Any]) -> None:
    dm = DetectionDataModule(data_cfg, fold=0)
    _, targets, metas = next(iter(dm.predict_dataloader_for("oof", hflip=True)))
    assert [m["image_id"] for m in metas] == dm.val_image_ids and all(m["hflip"] for m in metas)
    # x' = 32 - x: (8, 8, 16, 16) -> (16, 8, 24, 16)
    torch.testing.assert_close(targets[0]["boxes"][0], torch.tensor([16.0, 8.0, 24.0, 16.0]))
    test_ids = loader_ids(dm.predict_dataloader_for("test"))
    assert test_ids == TEST_IDS
    with pytest.raises(ValueError, match="split must be one of oof, test"):
        dm.predict_dataloader_for("val")


def test_missing_cache_ids_are_named_with_the_fix(tmp_path: Path) -> None:
    cfg = write_tiny_dataset(tmp_path, drop_from_cache=("t03", "t07"))
    dm = DetectionDataModule(cfg, fold=0)
    with pytest.raises(MissingImagesError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "tiny_k5.csv" in message and "2 image id(s)" in message
    assert "'t03'" in message and "'t07'" in message
    assert f"cxrdet prepare --data {cfg['root']} --size {SIZE} --out {cfg['cache']}" in message
    assert err.value.missing == ["t03", "t07"]


def test_fold_ids_missing_from_labels_are_named(data_cfg: dict[str, Any], tmp_path: Path) -> None:
    labels = KaggleLayout(Path(data_cfg["root"])).labels_csv
    table = pd.read_csv(labels, dtype=str, keep_default_na=False)
    table[table["patientId"] != "t09"].to_csv(labels, index=False)
    with pytest.raises(MissingImagesError, match=r"1 image id\(s\) .* labels table .*'t09'.*cxrdet folds"):
        DetectionDataModule(data_cfg, fold=0).setup("fit")


def test_fold_not_in_file_and_wrong_classes(data_cfg: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"fold 7 is not in .*tiny_k5.csv: expected one of \[0, 1, 2, 3, 4\]"):
        DetectionDataModule(data_cfg, fold=7).setup("fit")
    with pytest.raises(ConfigError, match="data.classes=.*'nodule'"):
        DetectionDataModule({**data_cfg, "classes": ("nodule",)}, fold=0).setup("fit")


def test_no_cache_at_all_says_what_to_run(data_cfg: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(CxrdetError, match=r"no prepare cache at .*nowhere.*cxrdet prepare"):
        DetectionDataModule({**data_cfg, "cache": str(tmp_path / "nowhere")}, fold=0).setup("fit")


def test_worker_seeding_makes_augmented_batches_reproducible(data_cfg: dict[str, Any]) -> None:
    cfg = {**data_cfg, "num_workers": 1, "augment": {"hflip": 0.5, "affine": {"degrees": 3, "translate": 0.1}}}

    def first_batch(seed: int) -> tuple[torch.Tensor, list[str]]:
        loader = DetectionDataModule(cfg, fold=0, seed=seed).train_dataloader()
        images, _, metas = next(iter(loader))
        return images.clone(), [m["image_id"] for m in metas]

    a, ids_a = first_batch(seed=3)
    b, ids_b = first_batch(seed=3)
    c, _ = first_batch(seed=4)
    assert ids_a == ids_b and torch.equal(a, b)
    assert not torch.equal(a, c)


def test_reads_a_cache_built_by_prepare_from_synthetic_dicoms(tmp_path: Path) -> None:
    from cxrdet.data.folds import images_for_folds, make_folds, write_folds
    from cxrdet.data.prepare import prepare_cache
    from cxrdet.synth.rsna import generate_dataset

    root = tmp_path / "data"
    generate_dataset(root, n_train=6, n_test=2, seed=0, workers=1, progress=False)
    prepare_cache(root, 64, workers=1, progress=False)  # the default cache: paths.cache_dir(root, 64)
    images = images_for_folds(KaggleLayout(root).labels_csv)
    write_folds(make_folds(images, k=2, seed=0, strata_columns=["positive"]), tmp_path / "synth_k2.csv")

    dm = DetectionDataModule(dict(root=str(root), size=64, folds=str(tmp_path / "synth_k2.csv"), num_workers=0), 0)
    images_batch, targets, metas = next(iter(dm.val_dataloader()))
    assert images_batch.shape == (len(dm.val_image_ids), 3, 64, 64)
    assert [m["image_id"] for m in metas] == dm.val_image_ids
    for target, meta in zip(targets, metas, strict=True):
        gt = dm.val_gt[dm.val_gt["image_id"] == meta["image_id"]][["x1", "y1", "x2", "y2"]].to_numpy()
        scale = np.array([64 / meta["orig_width"], 64 / meta["orig_height"]] * 2)
        np.testing.assert_allclose(target["boxes"].numpy(), gt * scale, rtol=1e-6)
    assert len(dm.test_image_ids) == 2
    assert len(loader_ids(dm.predict_dataloader_for("test"))) == 2


def test_reads_an_nih_root_built_by_synth_and_prepare(tmp_path: Path) -> None:
    from cxrdet.data.folds import images_for_folds, make_folds, write_folds
    from cxrdet.data.labels import NIH_FINDINGS
    from cxrdet.data.prepare import prepare_cache
    from cxrdet.synth.nih import generate_nih_dataset
    from cxrdet.paths import NihLayout

    root = tmp_path / "nih"
    generate_nih_dataset(root, 10, 3, seed=0, size=48, workers=1, progress=False)
    prepare_cache(root, 32, workers=1, progress=False)
    folds_csv = tmp_path / "nih_k2.csv"
    write_folds(make_folds(images_for_folds(NihLayout(root).labels_csv), k=2, seed=0), folds_csv)

    data = {"root": str(root), "size": 32, "folds": str(folds_csv), "classes": NIH_FINDINGS, "num_workers": 0}
    dm = DetectionDataModule(data, 0)
    annotations = dm._tables.annotations
    assert annotations.classes == NIH_FINDINGS and annotations.boxes.empty
    assert set(NIH_FINDINGS) <= set(annotations.images.columns)
    assert sorted(dm.train_image_ids + dm.val_image_ids) == sorted(pd.read_csv(folds_csv)["image_id"].astype(str))
    assert len(dm.test_image_ids) == 3

    # The fold file's ids are checked against the cache: an image that prepare did not cache is named.
    folds = pd.read_csv(folds_csv, dtype=str)
    folds.loc[0, "image_id"] = "00009999_000"
    folds.to_csv(folds_csv, index=False)
    with pytest.raises(MissingImagesError, match=r"'00009999_000'"):
        DetectionDataModule(data, 0).setup()


def test_readers_on_a_table_with_one_reader_per_image_are_refused(data_cfg: dict[str, Any]) -> None:
    dm = DetectionDataModule({**data_cfg, "readers": {"mode": "fuse"}}, fold=0)
    with pytest.raises(ConfigError, match=r"data.readers is set but the labels .*stage_2_train_labels.csv have no "
                                          "reader column: leave it unset"):
        dm.setup()
