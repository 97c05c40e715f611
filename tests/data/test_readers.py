"""Several readers' boxes: fusion into one ground truth, dropping readers, one copy per reader, the config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrdet.data.readers import apply_readers, drop_readers, fuse_readers, reader_copies, resolve_readers
from cxrdet.errors import ConfigError

COLS = ["image_id", "x1", "y1", "x2", "y2", "label", "reader"]


def boxes(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COLS)


THREE = boxes(
    ("a", 100, 100, 200, 200, 0, "R1"),
    ("a", 104, 96, 204, 196, 0, "R2"),
    ("a", 96, 104, 196, 204, 0, "R3"),  # three readers, one finding
    ("a", 600, 600, 700, 700, 0, "R1"),  # one reader's extra box of the same class, far away
    ("a", 100, 100, 200, 200, 1, "R2"),  # another class on the same spot: never fused with class 0
    ("b", 10, 10, 50, 50, 2, "R3"),
)


def test_fusion_averages_the_readers_boxes_per_class_and_counts_them() -> None:
    fused = fuse_readers(THREE, iou_thr=0.4)
    a0 = fused[(fused["image_id"] == "a") & (fused["label"] == 0)].sort_values("n_readers", ascending=False)
    assert a0["n_readers"].tolist() == [3, 1]
    assert a0[["x1", "y1", "x2", "y2"]].iloc[0].tolist() == pytest.approx([100, 100, 200, 200])
    assert a0[["x1", "y1", "x2", "y2"]].iloc[1].tolist() == pytest.approx([600, 600, 700, 700])
    assert fused[fused["label"] == 1]["n_readers"].tolist() == [1]
    assert fused[fused["image_id"] == "b"][["x1", "y1", "x2", "y2"]].iloc[0].tolist() == pytest.approx([10, 10, 50, 50])


def test_min_readers_keeps_the_findings_several_readers_agree_on() -> None:
    fused = fuse_readers(THREE, iou_thr=0.4, min_readers=2)
    assert fused[["image_id", "label", "n_readers"]].values.tolist() == [["a", 0, 3]]


def test_the_image_size_used_to_normalise_does_not_change_the_result() -> None:
    by_corner = fuse_readers(THREE)
    by_size = fuse_readers(THREE, sizes={"a": (2000, 2500), "b": (1000, 800)})
    cols = ["x1", "y1", "x2", "y2"]
    assert np.allclose(by_corner[cols].to_numpy(), by_size[cols].to_numpy())


def test_dropped_readers_and_copies() -> None:
    assert set(drop_readers(THREE, ["R1", "R3"])["reader"]) == {"R2"}
    copies = reader_copies(THREE, {"a": ["R1", "R2", "R3"], "b": ["R3", "R4"]})
    assert sorted(copies["copy"].unique()) == ["a@R1", "a@R2", "a@R3", "b@R3", "b@R4"]
    empty = copies[copies["copy"] == "b@R4"]
    assert len(empty) == 1 and empty["label"].iloc[0] == -1 and np.isnan(empty["x1"].iloc[0])


def test_the_setting_is_checked_and_applied() -> None:
    assert resolve_readers(None) == {"mode": "fuse", "iou_thr": 0.4, "min_readers": 1, "drop": ()}
    assert len(apply_readers(THREE, {"mode": "all", "drop": ["R1"]})) == 4
    assert apply_readers(THREE, {"min_readers": 3})["n_readers"].tolist() == [3]
    for bad, message in (({"mode": "vote"}, "mode='vote'"), ({"iou": 0.4}, r"unknown key\(s\) \['iou'\]"),
                         ({"iou_thr": 1.5}, "iou_thr=1.5"), ({"min_readers": 0}, "min_readers=0"),
                         ({"drop": "R8"}, "drop='R8'")):
        with pytest.raises(ConfigError, match=message):
            resolve_readers(bad)
    with pytest.raises(ConfigError, match="use reader_copies"):
        apply_readers(THREE, {"mode": "each"})
