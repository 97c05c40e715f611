"""Box conversions, checked against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdet import boxes


def test_xywh_xyxy_round_trip() -> None:
    xywh = np.array([[10.0, 20.0, 30.0, 40.0], [0.5, 0.0, 1.0, 2.5]])
    xyxy = boxes.xywh_to_xyxy(xywh)
    np.testing.assert_allclose(xyxy, [[10, 20, 40, 60], [0.5, 0.0, 1.5, 2.5]])
    np.testing.assert_allclose(boxes.xyxy_to_xywh(xyxy), xywh)


def test_empty_boxes_keep_shape() -> None:
    assert boxes.xywh_to_xyxy([]).shape == (0, 4)
    assert boxes.iou_matrix([], [[0, 0, 1, 1]]).shape == (0, 1)


def test_bad_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        boxes.xywh_to_xyxy([[1, 2, 3]])


def test_clip_normalize_rescale_hflip() -> None:
    b = np.array([[-5.0, 10.0, 120.0, 50.0]])
    np.testing.assert_allclose(boxes.clip_xyxy(b, 100, 40), [[0, 10, 100, 40]])
    np.testing.assert_allclose(boxes.normalize_xyxy([[10, 20, 50, 100]], 100, 200), [[0.1, 0.1, 0.5, 0.5]])
    np.testing.assert_allclose(boxes.denormalize_xyxy([[0.1, 0.1, 0.5, 0.5]], 100, 200), [[10, 20, 50, 100]])
    np.testing.assert_allclose(boxes.rescale_xyxy([[100, 200, 300, 400]], (1024, 1024), (256, 512)),
                               [[25, 100, 75, 200]])
    np.testing.assert_allclose(boxes.hflip_xyxy([[10, 5, 30, 15]], 100), [[70, 5, 90, 15]])


def test_shrink_around_centre() -> None:
    # A 80 x 40 box centred at (50, 30) shrunk to 0.875: 70 x 35 around the same centre.
    np.testing.assert_allclose(boxes.shrink_xyxy([[10, 10, 90, 50]], 0.875), [[15, 12.5, 85, 47.5]])


def test_iou_by_hand() -> None:
    a = [[0, 0, 10, 10]]
    b = [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]]
    # Overlap 5 x 10 = 50, union 100 + 100 - 50 = 150.
    np.testing.assert_allclose(boxes.iou_matrix(a, b), [[50 / 150, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(boxes.area_xyxy(b), [100, 100, 100, 0])
