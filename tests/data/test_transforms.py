"""Box-aware transforms: boxes follow the pixels under flip and affine; photometric steps leave boxes alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrdet.data.transforms import (
    Clahe,
    DetectionAugment,
    RandomGamma,
    build_augment,
    build_clahe,
    hflip_sample,
)
from cxrdet.errors import ConfigError

MILD = dict(hflip=0.5, affine=dict(degrees=3, translate=0.03, scale=(0.95, 1.05)), brightness=0.1, contrast=0.1,
            gamma=(0.9, 1.1), clahe=False)  # fmt: skip


def rect_image(box: tuple[int, int, int, int], size: int = 64) -> torch.Tensor:
    """A black `[1, size, size]` float image with a white rectangle covering the xyxy pixel box."""
    image = torch.zeros(1, size, size)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 1.0
    return image


def bright_extent(image: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """xyxy pixel extent of the pixels brighter than `threshold` (x2, y2 exclusive, like a box)."""
    ys, xs = torch.nonzero(image[0] > threshold, as_tuple=True)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def test_hflip_sample_mirrors_image_and_box_together() -> None:
    image = rect_image((10, 5, 20, 30))
    flipped, boxes = hflip_sample(image, np.array([[10.0, 5.0, 20.0, 30.0]]))
    # width 64: x1' = 64 - 20 = 44, x2' = 64 - 10 = 54; y unchanged.
    np.testing.assert_allclose(boxes, [[44.0, 5.0, 54.0, 30.0]])
    np.testing.assert_allclose(bright_extent(flipped), [44.0, 5.0, 54.0, 30.0])
    assert torch.equal(image, rect_image((10, 5, 20, 30))), "the input image must not be modified"


@pytest.mark.parametrize("seed", range(6))
def test_affine_moves_boxes_with_the_pixels(seed: int) -> None:
    torch.manual_seed(seed)
    augment = DetectionAugment(degrees=3, translate=0.05, scale=(0.9, 1.1))
    box = (20, 16, 40, 44)
    out, boxes, flipped = augment(rect_image(box), np.array([box], dtype=np.float64))
    assert not flipped
    assert boxes.shape == (1, 4)
    # Bilinear sampling blurs one pixel of edge; a 3-degree turn adds the enclosing box's corners (< 1.5 px here).
    np.testing.assert_allclose(boxes[0], bright_extent(out), atol=1.5)


def test_full_mild_pipeline_keeps_alignment_and_reports_the_flip() -> None:
    augment = build_augment(MILD)
    assert augment is not None
    box = (8, 20, 24, 40)  # left half of a 64-px image
    flags = []
    for seed in range(12):
        torch.manual_seed(seed)
        out, boxes, flipped = augment(rect_image(box), np.array([box], dtype=np.float64))
        flags.append(flipped)
        assert out.shape == (1, 64, 64) and out.dtype == torch.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        centre_x = (boxes[0, 0] + boxes[0, 2]) / 2
        assert (centre_x > 32) == flipped, "a flipped sample has its box on the other side"
        # brightness, contrast and gamma can dim the rectangle, so threshold at half its brightest value
        np.testing.assert_allclose(boxes[0], bright_extent(out, threshold=float(out.max()) / 2), atol=1.5)
    assert any(flags) and not all(flags), "hflip=0.5 flips some samples and not others over 12 seeds"


def test_photometric_steps_change_pixels_not_boxes() -> None:
    torch.manual_seed(0)
    augment = DetectionAugment(brightness=0.5, contrast=0.5, gamma=(0.5, 2.0))
    image = torch.full((1, 8, 8), 0.4)
    boxes = np.array([[1.0, 2.0, 5.0, 6.0]])
    out, out_boxes, flipped = augment(image, boxes)
    np.testing.assert_array_equal(out_boxes, boxes)
    assert not flipped
    assert not torch.equal(out, image)


def test_random_gamma_applies_the_drawn_exponent() -> None:
    # gamma fixed at 0.5: 0.25 ** 0.5 = 0.5
    out = RandomGamma((0.5, 0.5))(torch.full((1, 4, 4), 0.25))
    torch.testing.assert_close(out, torch.full((1, 4, 4), 0.5))
    with pytest.raises(ConfigError, match="gamma"):
        RandomGamma((1.2, 0.8))


def test_build_augment_off_and_partial() -> None:
    assert build_augment(None) is None
    assert build_augment({}) is None
    assert build_augment(dict(hflip=0, affine=None, brightness=0, contrast=0, gamma=None, clahe=True)) is None
    flip_only = build_augment(dict(hflip=1.0))
    assert flip_only is not None and flip_only.affine is None and flip_only.photometric is None
    out, boxes, flipped = flip_only(rect_image((0, 0, 10, 10)), np.array([[0.0, 0.0, 10.0, 10.0]]))
    assert flipped
    np.testing.assert_allclose(boxes, [[54.0, 0.0, 64.0, 10.0]])


@pytest.mark.parametrize(
    ("augment", "match"),
    [
        (dict(hflip=0.5, rotate=10), "unknown key.*rotate"),
        (dict(affine=dict(degrees=3, shear=5)), "augment.affine: unknown key.*shear"),
        (dict(affine=dict(scale=0.9)), r"affine.scale=0.9: expected a \(low, high\) pair"),
        (dict(hflip=1.5), r"hflip=1.5: expected a probability"),
        (dict(gamma=(0.0, 1.0)), "gamma"),
        (dict(affine=5), "augment.affine=5"),
    ],
)
def test_build_augment_rejects_bad_settings(augment: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_augment(augment)


def test_build_clahe_settings() -> None:
    assert build_clahe(None) is None
    assert build_clahe(dict(clahe=False)) is None
    assert build_clahe(dict(clahe=True)) == Clahe(clip_limit=2.0, tile_grid=8)
    assert build_clahe(dict(clahe=dict(clip_limit=3.0))) == Clahe(clip_limit=3.0, tile_grid=8)
    with pytest.raises(ConfigError, match="augment.clahe: unknown key.*tiles"):
        build_clahe(dict(clahe=dict(tiles=4)))
    with pytest.raises(ConfigError, match="augment.clahe=0.5"):
        build_clahe(dict(clahe=0.5))


def test_clahe_stretches_a_low_contrast_image() -> None:
    rng = np.random.default_rng(0)
    image = (100 + rng.integers(0, 10, size=(64, 64))).astype(np.uint8)  # values 100..109
    out = Clahe(clip_limit=4.0, tile_grid=2)(image)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert out.std() > 2 * image.std()
