"""DetectionDataset: original-pixel boxes -> input-pixel boxes, crops, flips, collate and negative sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrdet.data.dataset import (
    CropSpec,
    DetectionDataset,
    ImageRecord,
    NegativeRatioSampler,
    build_records,
    collate_detection,
)
from cxrdet.errors import ConfigError

ORIG_W, ORIG_H = 1024, 768


def write_cache_image(cache: Path, split: str, image_id: str, pixels: np.ndarray) -> None:
    """One cached image in the prepare layout `images/<split>/<image_id>.png` (8-bit greyscale)."""
    path = cache / "images" / split / f"{image_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)


def bright_box_image(size: int, boxes_orig: np.ndarray) -> np.ndarray:
    """A `size x size` image, black with value 200 inside each box (given in pixels of the 1024 x 768 original)."""
    pixels = np.zeros((size, size), dtype=np.uint8)
    for x1, y1, x2, y2 in boxes_orig:
        sx, sy = size / ORIG_W, size / ORIG_H
        pixels[round(y1 * sy) : round(y2 * sy), round(x1 * sx) : round(x2 * sx)] = 200
    return pixels


def record(image_id: str, boxes: list[list[float]], split: str = "train") -> ImageRecord:
    arr = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    return ImageRecord(image_id, split, ORIG_W, ORIG_H, arr, np.zeros(len(arr), dtype=np.int64))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A 64-px cache: `pos` with two boxes, `neg` without, `small` with a box narrower than 2 input pixels."""
    root = tmp_path / "cache"
    write_cache_image(root, "train", "pos", bright_box_image(64, np.array([[256, 192, 512, 384], [640, 96, 896, 288]])))
    write_cache_image(root, "train", "neg", np.full((64, 64), 30, dtype=np.uint8))
    write_cache_image(root, "train", "small", bright_box_image(64, np.array([[512, 384, 528, 480]])))
    return root


POS = record("pos", [[256, 192, 512, 384], [640, 96, 896, 288]])
NEG = record("neg", [])
SMALL = record("small", [[512, 384, 528, 480], [0, 0, 512, 384]])


def test_full_view_maps_original_boxes_to_input_pixels(cache: Path) -> None:
    image, target, meta = DetectionDataset(cache, [POS], size=64)[0]
    # x * 64 / 1024, y * 64 / 768: (256, 192, 512, 384) -> (16, 16, 32, 32); (640, 96, 896, 288) -> (40, 8, 56, 24)
    torch.testing.assert_close(target["boxes"], torch.tensor([[16.0, 16.0, 32.0, 32.0], [40.0, 8.0, 56.0, 24.0]]))
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == [0, 0]
    assert meta == {"image_id": "pos", "orig_width": 1024, "orig_height": 768, "hflip": False, "crop": None}
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert image.stride(0) == 0, "the three channels are one expanded greyscale channel"
    assert float(image[0, 20, 20]) == pytest.approx(200 / 255) and float(image[0, 0, 0]) == 0.0


def test_cache_of_another_size_is_resized_to_the_input(cache: Path) -> None:
    image, target, _ = DetectionDataset(cache, [POS], size=32)[0]
    assert image.shape == (3, 32, 32)
    # boxes scale with the input, not with the cache: (256, 192, 512, 384) -> (8, 8, 16, 16)
    torch.testing.assert_close(target["boxes"][0], torch.tensor([8.0, 8.0, 16.0, 16.0]))


def test_test_time_flip_mirrors_image_boxes_and_sets_the_flag(cache: Path) -> None:
    plain, _, _ = DetectionDataset(cache, [POS], size=64)[0]
    image, target, meta = DetectionDataset(cache, [POS], size=64, hflip=True)[0]
    # x' = 64 - x: (16, 16, 32, 32) -> (32, 16, 48, 32); (40, 8, 56, 24) -> (8, 8, 24, 24)
    torch.testing.assert_close(target["boxes"], torch.tensor([[32.0, 16.0, 48.0, 32.0], [8.0, 8.0, 24.0, 24.0]]))
    assert meta["hflip"] is True
    assert torch.equal(image, plain.flip(-1))


def test_degenerate_boxes_are_dropped(cache: Path) -> None:
    _, target, _ = DetectionDataset(cache, [SMALL], size=64)[0]
    # (512, 384, 528, 480) is 16 * 64 / 1024 = 1 input pixel wide: dropped; the other box stays.
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0.0, 32.0, 32.0]]))
    assert target["labels"].tolist() == [0]


def test_boxes_pushed_out_by_augmentation_are_clipped(cache: Path) -> None:
    def shift_right(image: torch.Tensor, boxes: np.ndarray) -> tuple[torch.Tensor, np.ndarray, bool]:
        return image, boxes + np.array([30.0, 0.0, 30.0, 0.0]), False

    _, target, _ = DetectionDataset(cache, [POS], size=64, augment=shift_right)[0]
    # (16, 16, 32, 32) -> (46, 16, 62, 32); (40, 8, 56, 24) -> (70, 8, 86, 24), outside the 64-px input: dropped.
    torch.testing.assert_close(target["boxes"], torch.tensor([[46.0, 16.0, 62.0, 32.0]]))


def test_crops_view_items_contain_their_box(cache: Path) -> None:
    torch.manual_seed(0)
    dataset = DetectionDataset(cache, [POS, NEG], size=64, view="crops", crops=CropSpec(size_frac=0.5, neg_per_image=2))
    # one crop per box of `pos`, two random crops of `neg`
    assert dataset.items == [(0, 0), (0, 1), (1, -1), (1, -1)]
    assert dataset.positive.tolist() == [True, True, False, False]
    for index, anchor in ((0, POS.boxes[0]), (1, POS.boxes[1])):
        image, target, meta = dataset[index]
        x1, y1, x2, y2 = meta["crop"]
        assert (x2 - x1, y2 - y1) == (512.0, 384.0), "half of the 1024 x 768 original"
        assert x1 <= anchor[0] and y1 <= anchor[1] and anchor[2] <= x2 and anchor[3] <= y2
        # the anchor box in input pixels: (box - crop origin) * 64 / crop size
        expected = (anchor - np.array([x1, y1, x1, y1])) * np.array([64 / 512, 64 / 384, 64 / 512, 64 / 384])
        assert any(np.allclose(b, expected) for b in target["boxes"].numpy())
        # the bright pixels of the anchor box land inside its input-pixel box
        inside = image[0, int(expected[1]) : int(expected[3]), int(expected[0]) : int(expected[2])]
        assert float(inside.mean()) > 0.7
    for index in (2, 3):
        image, target, meta = dataset[index]
        assert target["boxes"].shape == (0, 4) and image.shape == (3, 64, 64)
        x1, y1, x2, y2 = meta["crop"]
        assert 0 <= x1 and x2 <= ORIG_W and 0 <= y1 and y2 <= ORIG_H and (x2 - x1, y2 - y1) == (512.0, 384.0)


def test_crop_smaller_than_its_box_lies_inside_the_box(cache: Path) -> None:
    wide = record("pos", [[64, 96, 960, 288]])  # 896 px wide, the crop is 512
    for seed in range(5):
        torch.manual_seed(seed)
        _, target, meta = DetectionDataset(cache, [wide], size=64, view="crops")[0]
        x1, _, x2, _ = meta["crop"]
        assert 64 <= x1 and x2 <= 960
        assert target["boxes"][0, 0] == 0.0 and target["boxes"][0, 2] == 64.0, "the box spans the crop's width"


def test_collate_stacks_expanded_images_cheaply(cache: Path) -> None:
    dataset = DetectionDataset(cache, [POS, NEG, SMALL], size=64)
    images, targets, metas = collate_detection([dataset[i] for i in range(3)])
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.float32
    assert images.stride(1) == 0, "one greyscale plane per image, expanded"
    assert torch.equal(images[1], dataset[1][0])
    assert [t["boxes"].shape[0] for t in targets] == [2, 0, 1]
    assert [m["image_id"] for m in metas] == ["pos", "neg", "small"]


def test_collate_stacks_ordinary_rgb_images() -> None:
    item = (torch.rand(3, 8, 8), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}, {})
    images, _, _ = collate_detection([item, item])
    assert images.shape == (2, 3, 8, 8) and images.is_contiguous()


def test_tta_flip_and_augment_are_exclusive(cache: Path) -> None:
    with pytest.raises(ValueError, match="exclusive"):
        DetectionDataset(cache, [POS], size=64, hflip=True, augment=lambda i, b: (i, b, False))
    with pytest.raises(ConfigError, match="view='tiles'"):
        DetectionDataset(cache, [POS], size=64, view="tiles")


def test_build_records_groups_boxes_per_image_in_the_given_order() -> None:
    meta = pd.DataFrame(
        {"image_id": ["a", "b", "c"], "split": ["train", "train", "test"], "orig_width": [100, 200, 300],
         "orig_height": [110, 210, 310]}
    )  # fmt: skip
    boxes = pd.DataFrame(
        {"image_id": ["b", "a", "b"], "x1": [1.0, 2.0, 3.0], "y1": [0.0] * 3, "x2": [5.0] * 3, "y2": [6.0] * 3,
         "label": [0, 0, 0]}
    )  # fmt: skip
    records = build_records(meta, ["b", "c", "a"], boxes)
    assert [r.image_id for r in records] == ["b", "c", "a"]
    assert (records[0].orig_width, records[0].orig_height, records[0].split) == (200, 210, "train")
    np.testing.assert_array_equal(records[0].boxes[:, 0], [1.0, 3.0])
    assert records[1].boxes.shape == (0, 4) and not records[1].positive
    np.testing.assert_array_equal(records[2].boxes, [[2.0, 0.0, 5.0, 6.0]])


def test_negative_ratio_sampler_counts_and_redraws() -> None:
    positive = np.array([True] * 3 + [False] * 10)
    sampler = NegativeRatioSampler(positive, neg_ratio=2.0, seed=7)
    assert len(sampler) == 9
    epoch0 = list(sampler)
    assert sorted(epoch0)[:3] == [0, 1, 2], "every positive, every epoch"
    assert len(set(epoch0)) == 9 and all(0 <= i < 13 for i in epoch0)
    epoch1 = list(sampler)  # the epoch advances after each pass
    sampler.set_epoch(0)
    assert list(sampler) == epoch0, "same seed and epoch, same order"
    sampler.set_epoch(1)
    assert list(sampler) == epoch1
    assert epoch0 != epoch1
    draws = set()
    for epoch in range(10):
        sampler.set_epoch(epoch)
        draws |= set(sampler) - {0, 1, 2}
    assert len(draws) > 6, "negatives are redrawn across epochs"


@pytest.mark.parametrize(("neg_ratio", "expected"), [(None, 13), (0.0, 3), (1.0, 6), (100.0, 13)])
def test_negative_ratio_sampler_lengths(neg_ratio: float | None, expected: int) -> None:
    sampler = NegativeRatioSampler([True] * 3 + [False] * 10, neg_ratio=neg_ratio)
    assert len(sampler) == expected == len(list(sampler))
    with pytest.raises(ConfigError, match="neg_ratio=-1"):
        NegativeRatioSampler([True], neg_ratio=-1)
