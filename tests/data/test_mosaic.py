"""Mosaic and mixup: a box drawn into a tile lands where the composed box says; mixup blends and keeps both samples'
boxes; both switch off for the last epochs, also in loader workers; bad settings are named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrdet.data.datamodule import DetectionDataModule
from cxrdet.data.mosaic import (
    EpochSampler,
    MixupSpec,
    MosaicDataset,
    MosaicSpec,
    build_mixup,
    build_mosaic,
    compose_mosaic,
    mosaic_layout,
)
from cxrdet.errors import ConfigError
from tests.data.test_datamodule import write_tiny_dataset
from tests.data.test_transforms import bright_extent, rect_image

S = 64


def tile(box: tuple[int, int, int, int] | None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    if box is None:
        return torch.zeros(1, S, S), np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    return rect_image(box, S), np.array([box], dtype=np.float64), np.array([3])


def test_layout_tiles_meet_at_the_centre_and_stay_on_the_canvas() -> None:
    layout = mosaic_layout(S, (40, 90))
    # Top left ends at the centre, bottom right starts there.
    ox, oy, x1, y1, x2, y2 = layout[0]
    assert (ox + x2, oy + y2) == (40, 90) and (ox + x1, oy + y1) == (0, 90 - S)
    ox, oy, x1, y1, x2, y2 = layout[3]
    assert (ox + x1, oy + y1) == (40, 90) and (ox + x2, oy + y2) == (40 + S, 2 * S)
    for ox, oy, x1, y1, x2, y2 in layout:
        assert 0 <= ox + x1 <= ox + x2 <= 2 * S and 0 <= oy + y1 <= oy + y2 <= 2 * S


@st.composite
def boxes_in_tile(draw: st.DrawFn) -> tuple[int, int, int, int]:
    x1 = draw(st.integers(0, S - 8))
    y1 = draw(st.integers(0, S - 8))
    return x1, y1, draw(st.integers(x1 + 6, S)), draw(st.integers(y1 + 6, S))


@settings(max_examples=60, deadline=None)
@given(which=st.integers(0, 3), box=boxes_in_tile(), xc=st.integers(S // 2, 3 * S // 2),
       yc=st.integers(S // 2, 3 * S // 2), scale=st.sampled_from([0.5, 0.64, 0.8, 1.0]))
def test_a_box_drawn_into_a_tile_lands_where_the_mosaic_box_says(which: int, box: tuple[int, int, int, int], xc: int,
                                                                yc: int, scale: float) -> None:
    tiles = [tile(box if i == which else None) for i in range(4)]
    image, boxes, labels = compose_mosaic(tiles, (xc, yc), scale, min_size=2.0)
    assert image.shape == (1, S, S)
    bright = image[0] > 0.5
    if len(boxes) == 0:
        # Dropped only when what is visible is (nearly) nothing: under 2 px, give or take the resize's blur.
        if bright.any():
            extent = bright_extent(image)
            assert min(extent[2] - extent[0], extent[3] - extent[1]) <= 3.0
        return
    assert labels.tolist() == [3]
    # Integer shifts are exact; one resize of the crop blurs edges by under a pixel of the output.
    np.testing.assert_allclose(boxes[0], bright_extent(image), atol=1.0)


def test_boxes_of_all_four_tiles_are_kept_and_at_scale_one_the_pixels_do_not_move() -> None:
    boxes_in = [(40, 40, 60, 60), (5, 40, 25, 60), (40, 5, 60, 25), (5, 5, 25, 25)]  # near the centre of each tile
    tiles = [tile(b) for b in boxes_in]
    image, boxes, _ = compose_mosaic(tiles, (S, S), 1.0, min_size=2.0)
    # Centre at (S, S), scale 1: the output is the canvas square [S/2, 3S/2): tile offsets minus S/2.
    shifts = [(-S // 2, -S // 2), (S // 2, -S // 2), (-S // 2, S // 2), (S // 2, S // 2)]
    expected = [(x1 + dx, y1 + dy, x2 + dx, y2 + dy) for (x1, y1, x2, y2), (dx, dy) in zip(boxes_in, shifts)]
    np.testing.assert_array_equal(boxes, np.array(expected, dtype=np.float64))
    for b in expected:
        x1, y1, x2, y2 = b
        assert torch.all(image[0, y1:y2, x1:x2] == 1.0)


class ListDataset:
    """A stand-in `DetectionDataset`: fixed items, one box each."""

    def __init__(self, n: int = 6) -> None:
        self.size = S
        self.min_size = 2.0
        self.positive = np.ones(n, dtype=bool)
        self.items = [(rect_image((4 + i, 8, 30 + i, 40), S) * 0.5,
                       {"boxes": torch.tensor([[4.0 + i, 8.0, 30.0 + i, 40.0]]), "labels": torch.tensor([i % 2])},
                       {"image_id": f"i{i}", "hflip": i % 2 == 1, "crop": None}) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        image, target, meta = self.items[index]
        return image.expand(3, -1, -1), target, meta


def test_mixup_blends_two_samples_and_keeps_both_boxes() -> None:
    base = ListDataset()
    data = MosaicDataset(base, None, MixupSpec(prob=1.0, beta=32.0), epochs=None)  # type: ignore[arg-type]
    torch.manual_seed(0)
    image, target, meta = data[(0, 0)]
    assert len(meta["composed_of"]) == 2 and meta["composed_of"][0] == "i0"
    other = int(meta["composed_of"][1][1:])
    assert target["boxes"].tolist() == [[4.0, 8.0, 30.0, 40.0], [4.0 + other, 8.0, 30.0 + other, 40.0]]
    a, b = base[0][0][:1], base[other][0][:1]
    if other == 0:
        assert torch.allclose(image[:1], a)
        return
    lam = 2 * float(image[0, 20, 4])  # a pixel of the first rectangle only: lam x 0.5
    assert 0.3 < lam < 0.7  # Beta(32, 32) stays near one half
    assert torch.allclose(image[:1], lam * a + (1 - lam) * b, atol=1e-6)


def test_mosaic_and_mixup_switch_off_for_the_last_epochs() -> None:
    base = ListDataset()
    data = MosaicDataset(base, MosaicSpec(prob=1.0, off_last=2), MixupSpec(prob=1.0, off_last=1),  # type: ignore
                         epochs=5)
    torch.manual_seed(1)
    _, _, meta = data[(1, 2)]
    assert len(meta["composed_of"]) == 8  # a mosaic mixed with a mosaic
    _, _, meta = data[(1, 3)]
    assert len(meta["composed_of"]) == 2  # mosaic off, mixup still on
    image, target, meta = data[(1, 4)]
    assert "composed_of" not in meta and meta["hflip"] is True  # the item as the base dataset gave it
    assert torch.equal(image, base[1][0]) and torch.equal(target["boxes"], base[1][1]["boxes"])


def test_epoch_sampler_tags_indices_and_follows_set_epoch() -> None:
    sampler = EpochSampler(range(3))  # type: ignore[arg-type]
    assert list(sampler) == [(0, 0), (1, 0), (2, 0)]
    assert list(sampler)[0] == (0, 1)  # advances by itself after a pass
    sampler.set_epoch(7)
    assert {e for _, e in sampler} == {7}
    assert len(sampler) == 3


@pytest.fixture
def data_cfg(tmp_path: Path) -> dict[str, Any]:
    return write_tiny_dataset(tmp_path)


def test_data_module_composes_in_workers_until_the_last_epochs(data_cfg: dict[str, Any]) -> None:
    cfg = {**data_cfg, "num_workers": 2,
           "augment": {"hflip": 0.5, "mosaic": {"prob": 1.0, "scale": (0.5, 1.0), "off_last": 1}}}
    dm = DetectionDataModule(cfg, fold=0, seed=0)

    class Trainer:
        max_epochs = 3

    dm.trainer = Trainer()  # type: ignore[assignment]
    loader = dm.train_dataloader()
    composed = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        composed.append({len(m.get("composed_of", ())) for _, _, metas in loader for m in metas})
    assert composed == [{4}, {4}, {0}]
    images, targets, _ = next(iter(loader))
    assert images.shape[-2:] == (data_cfg["size"], data_cfg["size"])


@pytest.mark.parametrize(("augment", "match"), [
    ({"mosaic": {"prob": 1.5}}, r"augment.mosaic.prob=1.5"),
    ({"mosaic": {"scale": (0.5, 2.0)}}, r"augment.mosaic.scale=\(0.5, 2.0\)"),
    ({"mosaic": {"scale": 0.5}}, r"augment.mosaic.scale=0.5: expected a \(low, high\) pair"),
    ({"mosaic": {"off_last": -1}}, r"augment.mosaic.off_last=-1"),
    ({"mosaic": {"size": 3}}, r"augment.mosaic: unknown key\(s\) size"),
    ({"mosaic": 1.0}, r"augment.mosaic=1.0: expected a dict"),
    ({"mixup": {"beta": 0}}, r"augment.mixup.beta=0.0"),
    ({"mixup": {"prob": -0.1}}, r"augment.mixup.prob=-0.1"),
])
def test_bad_settings_are_named(augment: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_mosaic(augment)
        build_mixup(augment)


def test_off_or_absent_is_none() -> None:
    assert build_mosaic(None) is None and build_mosaic({"mosaic": None}) is None
    assert build_mosaic({"mosaic": {"prob": 0.0}}) is None and build_mixup({"mixup": {"prob": 0}}) is None
    assert build_mosaic({"mosaic": {}}) is None  # an empty section is off, like every other step
