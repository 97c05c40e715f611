"""The data module on a multi-reader table (synthetic VinBigData): training and validation boxes are the readers
made one ground truth by `data.readers`, 14 classes, and the settings that cannot apply are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cxrdet.competitions.vinbigdata import CLASSES, ground_truth, read_vinbigdata_labels
from cxrdet.config import load_config, to_dict
from cxrdet.data.datamodule import DetectionDataModule
from cxrdet.data.readers import apply_readers
from cxrdet.errors import ConfigError
from cxrdet.paths import CONFIGS_DIR
from tests.helpers.vinbigdata import write_vinbigdata_dataset

CONFIG = CONFIGS_DIR / "experiments" / "vinbigdata-fcos_mnv3s_128_tiny12e.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_vinbigdata_dataset(tmp_path_factory.mktemp("vbd_dm"))


def data_cfg(options: dict[str, str], **extra: Any) -> dict[str, Any]:
    cfg = to_dict(load_config(CONFIG, [f"{k}={v}" for k, v in {**options, **extra}.items()]))
    return cfg["data"]


def boxes_of(dm: DetectionDataModule, image_ids: list[str]) -> pd.DataFrame:
    rows = [(r.image_id, *box, int(label)) for r in dm._records(image_ids, "train")
            for box, label in zip(r.boxes, r.labels, strict=True)]
    return pd.DataFrame(rows, columns=["image_id", "x1", "y1", "x2", "y2", "label"])


def test_training_and_validation_boxes_are_the_fused_readers(data: dict[str, str]) -> None:
    dm = DetectionDataModule(data_cfg(data), fold=0)
    dm.setup()
    ann = read_vinbigdata_labels(Path(data["data.root"]) / "train.csv")
    fused = ground_truth(ann)
    fused = fused[fused["label"] < len(CLASSES)]  # without the metric's no-finding boxes
    val = fused[fused["image_id"].isin(dm.val_image_ids)].reset_index(drop=True)
    pd.testing.assert_frame_equal(dm.val_gt.reset_index(drop=True), val[list(dm.val_gt.columns)],
                                  check_dtype=False)
    train = boxes_of(dm, dm.train_image_ids)
    expected = fused[fused["image_id"].isin(dm.train_image_ids)]
    assert len(train) == len(expected) > 0 and len(train) < len(ann.boxes[ann.boxes["image_id"].isin(
        dm.train_image_ids)])  # three readers' boxes became fewer fused ones
    assert set(train["label"]) <= set(range(len(CLASSES)))


def test_all_keeps_every_readers_box_and_drop_removes_readers(data: dict[str, str]) -> None:
    ann = read_vinbigdata_labels(Path(data["data.root"]) / "train.csv")
    dropped = sorted(ann.boxes["reader"].value_counts().index[:3])
    dm = DetectionDataModule(data_cfg(data, **{"data.readers": f"{{'mode': 'all', 'drop': {dropped}}}"}), fold=0)
    train = boxes_of(dm, dm.train_image_ids)
    raw = ann.boxes[ann.boxes["image_id"].isin(dm.train_image_ids)]
    assert len(train) == int((~raw["reader"].isin(dropped)).sum())
    # Validation is scored against what training kept, fused: the dropped readers are out of it too.
    kept = apply_readers(ann.boxes, {"mode": "fuse", "drop": dropped})
    assert len(dm.val_gt) == int(kept["image_id"].isin(dm.val_image_ids).sum())


def test_each_trains_on_one_copy_per_reader(data: dict[str, str]) -> None:
    dm = DetectionDataModule(data_cfg(data, **{"data.readers": "{'mode': 'each', 'drop': ['R5']}"}), fold=0)
    records = dm.train_dataset().records
    ann = read_vinbigdata_labels(Path(data["data.root"]) / "train.csv")
    raw = ann.boxes[ann.boxes["image_id"].isin(dm.train_image_ids) & (ann.boxes["reader"] != "R5")]
    drew = raw.groupby("image_id")["reader"].nunique()
    # One record per reader who drew on an image, one for an image nobody drew on; the image id stays the image's.
    expected = sum(int(drew.get(i, 1)) for i in dm.train_image_ids)
    assert len(records) == expected > len(dm.train_image_ids)
    assert {r.image_id for r in records} == set(dm.train_image_ids)
    for image_id, part in raw.groupby("image_id"):
        copies = sorted(len(r.boxes) for r in records if r.image_id == image_id)
        assert copies == sorted(part.groupby("reader").size().tolist())  # each copy: one reader's boxes
    # Validation and prediction read each image once; validation scores against the kept readers fused.
    assert len(dm.eval_dataset("oof").records) == len(dm.val_image_ids)
    fused = apply_readers(ann.boxes, {"mode": "fuse", "drop": ["R5"]})
    assert len(dm.val_gt) == int(fused["image_id"].isin(dm.val_image_ids).sum())


def test_settings_that_cannot_apply_are_refused(data: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.readers.mode='vote': expected one of"):
        DetectionDataModule(data_cfg(data, **{"data.readers": "{'mode': 'vote'}"}), fold=0)
    with pytest.raises(ConfigError, match="data.readers='fuse': expected None or a dict"):
        DetectionDataModule(data_cfg(data, **{"data.readers": "'fuse'"}), fold=0)
    wrong = DetectionDataModule(data_cfg(data, **{"data.classes": "('opacity',)"}), fold=0)
    with pytest.raises(ConfigError, match="data.classes=\\('opacity',\\) but the labels"):
        wrong.setup()
