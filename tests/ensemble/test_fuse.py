"""Fused boxes of the fast engine against ensemble-boxes itself (the reference), and the library wrapper."""

from __future__ import annotations

import warnings
import zlib

import ensemble_boxes
import numpy as np
import pandas as pd
import pytest

from cxrdet.ensemble.fuse import CONF_TYPES, BoxSet, FusionInput, FusionParams, fuse_image, fuse_predictions
from cxrdet.errors import ConfigError, TableError

SIZE = 1024.0


def frame(image_ids, boxes, scores, labels=None) -> pd.DataFrame:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = pd.DataFrame(boxes, columns=["x1", "y1", "x2", "y2"])
    out.insert(0, "image_id", list(image_ids))
    out["score"] = np.asarray(scores, dtype=np.float64)
    out["label"] = np.zeros(len(out), np.int64) if labels is None else np.asarray(labels, np.int64)
    return out


def random_members(rng: np.random.Generator, n_images: int, n_members: int, per_member: int, clustered: bool,
                   score_decimals: int | None = None, n_labels: int = 1) -> list[pd.DataFrame]:
    """Random members; `clustered` draws boxes around a few objects per image (as detectors do)."""
    members = []
    centres = rng.uniform(100, 900, (n_images, 3, 2))
    sizes = rng.uniform(60, 300, (n_images, 3, 2))
    for _ in range(n_members):
        k = int(rng.integers(0, per_member + 1))
        image = rng.integers(0, n_images, k)
        if clustered:
            obj = rng.integers(0, 3, k)
            wh = sizes[image, obj] * rng.lognormal(0, 0.15, (k, 2))
            c = centres[image, obj] + rng.normal(0, 0.1, (k, 2)) * wh
        else:
            wh = rng.uniform(0, 400, (k, 2))
            c = rng.uniform(-50, 1074, (k, 2))
        boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
        scores = rng.random(k)
        if score_decimals is not None:
            scores = np.round(scores, score_decimals)
        members.append(frame([f"im{i}" for i in image], boxes, scores, rng.integers(0, n_labels, k)))
    return members


def library_reference(members: list[pd.DataFrame], image_ids: list[str], sizes: dict[str, tuple[float, float]],
                      params: FusionParams) -> pd.DataFrame:
    """The straightforward per-image loop over ensemble-boxes, written independently of the code under test."""
    rows = []
    weights = None if params.weights is None else list(params.weights)
    for image_id in image_ids:
        w, h = sizes[image_id]
        scale = np.array([w, h, w, h])
        boxes, scores, labels = [], [], []
        for m in members:
            part = m[m["image_id"] == image_id]
            boxes.append(part[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64) / scale)
            scores.append(part["score"].to_numpy(dtype=np.float64))
            labels.append(part["label"].to_numpy())
        if sum(len(s) for s in scores) == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fused, fused_scores, fused_labels = ensemble_boxes.weighted_boxes_fusion(
                boxes, scores, labels, weights=weights, iou_thr=params.iou_thr, skip_box_thr=params.skip_box_thr,
                conf_type=params.conf_type, allows_overflow=params.allows_overflow)
        for b, s, lab in zip(fused * scale, fused_scores, fused_labels, strict=True):
            rows.append((image_id, *b, s, int(lab)))
    return pd.DataFrame(rows, columns=["image_id", "x1", "y1", "x2", "y2", "score", "label"])


def assert_same(fast: pd.DataFrame, ref: pd.DataFrame) -> None:
    """Same boxes, scores and labels, in the same order, bit for bit (NaN corners compare equal)."""
    assert len(fast) == len(ref)
    assert fast["image_id"].tolist() == ref["image_id"].tolist()
    cols = ["x1", "y1", "x2", "y2", "score"]
    np.testing.assert_array_equal(fast[cols].to_numpy(), ref[cols].to_numpy())
    assert fast["label"].tolist() == ref["label"].tolist()


@pytest.mark.parametrize("conf_type", CONF_TYPES)
@pytest.mark.parametrize("clustered", [True, False])
@pytest.mark.parametrize("ties", [None, 1])
def test_fast_wbf_equals_ensemble_boxes(conf_type: str, clustered: bool, ties: int | None) -> None:
    # A seed fixed by the case (Python's str hash changes from process to process: PYTHONHASHSEED).
    rng = np.random.default_rng(zlib.crc32(repr((conf_type, clustered, ties)).encode()))
    n_images = 40
    image_ids = [f"im{i}" for i in range(n_images)]
    members = random_members(rng, n_images, 4, 200, clustered, ties, n_labels=2)
    params = FusionParams(iou_thr=float(rng.uniform(0.2, 0.7)), skip_box_thr=0.05, conf_type=conf_type,
                          weights=(1.0, 2.0, 0.5, 3.0))
    fast = fuse_predictions(members, image_ids, SIZE, SIZE, params)
    ref = library_reference(members, image_ids, {i: (SIZE, SIZE) for i in image_ids}, params)
    assert len(fast) > 50
    assert_same(fast, ref)
    assert_same(fuse_predictions(members, image_ids, SIZE, SIZE, params, engine="library"), ref)


def test_all_scores_equal_like_multi_reader_annotations() -> None:
    # Readers' boxes all have confidence 1: every ordering decision is a tie.
    rng = np.random.default_rng(7)
    image_ids = [f"im{i}" for i in range(30)]
    members = random_members(rng, 30, 3, 60, clustered=True)
    for m in members:
        m["score"] = 1.0
    for conf_type in CONF_TYPES:
        params = FusionParams(iou_thr=0.4, conf_type=conf_type)
        ref = library_reference(members, image_ids, {i: (SIZE, SIZE) for i in image_ids}, params)
        assert_same(fuse_predictions(members, image_ids, SIZE, SIZE, params), ref)


def test_varying_image_sizes_and_boxes_outside_the_image() -> None:
    rng = np.random.default_rng(3)
    image_ids = [f"im{i}" for i in range(20)]
    widths = rng.choice([512.0, 1024.0, 2000.0, 1841.0], len(image_ids))
    heights = rng.choice([512.0, 1024.0, 1955.0], len(image_ids))
    members = random_members(rng, 20, 3, 80, clustered=False)  # corners from -250 to 1274: some clipped
    members[1].loc[0, ["x1", "x2"]] = members[1].loc[0, ["x2", "x1"]].to_numpy()  # swapped corners
    params = FusionParams(iou_thr=0.3)
    fast = fuse_predictions(members, image_ids, widths, heights, params)
    sizes = dict(zip(image_ids, zip(widths, heights, strict=True), strict=True))
    assert_same(fast, library_reference(members, image_ids, sizes, params))


def test_empty_members_and_images_without_boxes() -> None:
    image_ids = ["a", "b", "c"]
    empty = frame([], np.zeros((0, 4)), [])
    one = frame(["b"], [[10, 10, 110, 110]], [0.8])
    params = FusionParams(iou_thr=0.5)
    fused = fuse_predictions([empty, one, empty], image_ids, SIZE, SIZE, params)
    # One box of three members: 0.8 * min(3, 1) / 3.
    assert fused["image_id"].tolist() == ["b"]
    np.testing.assert_allclose(fused[["x1", "y1", "x2", "y2"]].to_numpy(), [[10, 10, 110, 110]])
    assert fused["score"].iloc[0] == pytest.approx(0.8 / 3)
    assert fused["votes"].tolist() == [1]
    assert len(fuse_predictions([empty, empty], image_ids, SIZE, SIZE, params)) == 0
    assert len(fuse_predictions([], image_ids, SIZE, SIZE, FusionParams(method="none"))) == 0
    for method in ("nms", "soft_nms", "nmw", "wbf"):
        assert len(fuse_predictions([empty, empty], image_ids, SIZE, SIZE, FusionParams(method=method),
                                    engine="library")) == 0


def test_two_boxes_fused_by_hand() -> None:
    # Two members, one box each, IoU 0.6 > 0.5: coordinates averaged with score weights, confidence averaged.
    a = frame(["x"], [[0, 0, 100, 100]], [0.9])
    b = frame(["x"], [[0, 0, 100, 60]], [0.3])
    fused = fuse_predictions([a, b], ["x"], 1000.0, 1000.0, FusionParams(iou_thr=0.5))
    expected_y2 = (0.9 * 100 + 0.3 * 60) / 1.2
    assert fused["y2"].iloc[0] == pytest.approx(expected_y2, rel=1e-6)  # float32 inside the library
    assert fused["score"].iloc[0] == pytest.approx((0.9 + 0.3) / 2, rel=1e-6)
    assert fused["votes"].tolist() == [2]
    # Weights 1 and 3: confidence (0.9 * 1 + 0.3 * 3) / 2 * min(2, 2) / 4.
    weighted = fuse_predictions([a, b], ["x"], 1000.0, 1000.0, FusionParams(iou_thr=0.5, weights=(1.0, 3.0)))
    assert weighted["score"].iloc[0] == pytest.approx((0.9 + 0.9) / 2 * 2 / 4, rel=1e-6)
    # IoU 0.6 is not above 0.6: two boxes stay apart.
    apart = fuse_predictions([a, b], ["x"], 1000.0, 1000.0, FusionParams(iou_thr=0.6))
    assert apart["score"].tolist() == pytest.approx([0.45, 0.15])


def test_member_thresholds_and_votes() -> None:
    a = frame(["x", "x"], [[0, 0, 100, 100], [500, 500, 600, 600]], [0.9, 0.2])
    b = frame(["x"], [[2, 2, 100, 100]], [0.5])
    c = frame(["x"], [[4, 0, 100, 100]], [0.4])
    inp = FusionInput.from_frames([a, b, c], ["x"], SIZE, SIZE)
    fused = inp.fuse(FusionParams(iou_thr=0.5), member_thr=[0.3, 0.0, 0.45])
    # Member 0's 0.2 box and member 2's box fall below their thresholds.
    assert fused.votes.tolist() == [2]
    assert fused.score[0] == pytest.approx((0.9 + 0.5) / 2 * 2 / 3, rel=1e-6)


def test_fast_engine_with_member_thresholds_equals_library_engine() -> None:
    rng = np.random.default_rng(11)
    image_ids = [f"im{i}" for i in range(30)]
    members = random_members(rng, 30, 5, 150, clustered=True, score_decimals=2)
    inp = FusionInput.from_frames(members, image_ids, SIZE, SIZE)
    params = FusionParams(iou_thr=0.45, skip_box_thr=0.1, weights=(1.0, 1.5, 1.0, 0.7, 1.2))
    thr = [0.0, 0.3, 0.5, 0.2, 0.0]
    fast, lib = inp.fuse(params, thr), inp.fuse(params, thr, engine="library")
    ids = pd.Index(image_ids)
    assert_same(fast.to_frame(ids), lib.to_frame(ids))


@pytest.mark.parametrize("method", ["nms", "soft_nms", "nmw"])
def test_other_methods_use_the_library(method: str) -> None:
    rng = np.random.default_rng(5)
    image_ids = [f"im{i}" for i in range(10)]
    members = random_members(rng, 10, 3, 40, clustered=True)
    params = FusionParams(method=method, iou_thr=0.5, weights=(1.0, 2.0, 1.0))
    fused = fuse_predictions(members, image_ids, SIZE, SIZE, params)
    # Image im0 by hand through the library.
    parts = [m[m["image_id"] == "im0"] for m in members]
    ref = fuse_image([p[["x1", "y1", "x2", "y2"]].to_numpy() / SIZE for p in parts],
                     [p["score"].to_numpy() for p in parts], [p["label"].to_numpy() for p in parts], params)
    got = fused[fused["image_id"] == "im0"]
    np.testing.assert_array_equal(got[["x1", "y1", "x2", "y2"]].to_numpy(), ref[0] * SIZE)
    np.testing.assert_array_equal(got["score"].to_numpy(), ref[1])


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    a = frame(["x", "x"], [[0, 0, 100, 100], [300, 300, 400, 400]], [0.9, 0.6])
    b = frame(["x"], [[5, 5, 100, 100]], [0.95])
    fused = fuse_predictions([a, b], ["x"], SIZE, SIZE, FusionParams(method="nms", iou_thr=0.5))
    # Weights (1, 1) divide each score by 2; the 0.9 box is suppressed by the 0.95 one.
    assert fused["score"].tolist() == pytest.approx([0.475, 0.3])
    assert fused["x1"].tolist() == pytest.approx([5, 300])


def test_none_passes_a_single_member_through() -> None:
    a = frame(["y", "x", "x"], [[0, 0, 10, 10], [1, 1, 5, 5], [2, 2, 8, 8]], [0.3, 0.2, 0.7])
    fused = fuse_predictions([a], ["x", "y"], SIZE, SIZE, FusionParams(method="none"), member_thr=0.25)
    assert fused["image_id"].tolist() == ["x", "y"]
    assert fused["score"].tolist() == [0.7, 0.3]
    np.testing.assert_allclose(fused[["x1", "y1", "x2", "y2"]].to_numpy(), [[2, 2, 8, 8], [0, 0, 10, 10]])


def test_library_output_never_reaches_the_user(capsys: pytest.CaptureFixture[str]) -> None:
    boxes = [np.array([[-0.1, 0.2, 1.3, 0.2], [0.5, 0.5, 0.4, 0.9]]), np.zeros((0, 4))]
    scores = [np.array([0.5, 0.6]), np.zeros(0)]
    labels = [np.zeros(2), np.zeros(0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("wbf", "nms", "soft_nms", "nmw"):
            fuse_image(boxes, scores, labels, FusionParams(method=method))
    assert capsys.readouterr().out == ""


def test_subset_keeps_the_images_and_their_boxes() -> None:
    rng = np.random.default_rng(2)
    image_ids = [f"im{i}" for i in range(12)]
    members = random_members(rng, 12, 3, 50, clustered=True)
    inp = FusionInput.from_frames(members, image_ids, SIZE, SIZE)
    mask = np.arange(12) % 3 == 0
    sub = inp.subset(mask)
    params = FusionParams(iou_thr=0.5)
    whole = inp.fuse(params).to_frame(inp.image_ids)
    assert_same(sub.fuse(params).to_frame(sub.image_ids), whole[whole["image_id"].isin(sub.image_ids)])


def test_bad_inputs_are_reported() -> None:
    good = frame(["x"], [[0, 0, 1, 1]], [0.5])
    bad = frame(["x", "zz"], [[0, 0, np.nan, 1], [0, 0, 1, 1]], [0.5, 0.5])
    with pytest.raises(TableError) as err:
        FusionInput.from_frames([good, bad], ["x"], SIZE, SIZE, names=["good", "bad"])
    assert "bad: 1 non-finite value(s) in column 'x2' at row(s) [1]" in str(err.value)
    assert "'zz'" in str(err.value)
    with pytest.raises(ConfigError, match="conf_type"):
        FusionParams(conf_type="median")
    with pytest.raises(ConfigError, match="2 weight"):
        fuse_predictions([good], ["x"], SIZE, SIZE, FusionParams(weights=(1.0, 2.0)))


def test_boxset_concat_and_take() -> None:
    a = BoxSet(np.array([0]), np.array([[0.0, 0, 1, 1]]), np.array([0.5]), np.array([0]), np.array([1]))
    both = BoxSet.concat([a, a.take(np.array([0]))])
    assert len(both) == 2
    assert len(BoxSet.concat([])) == 0


@pytest.mark.real_data
@pytest.mark.parametrize("conf_type", ["avg", "box_and_model_avg"])
def test_fast_equals_library_on_real_boxes_as_several_readers(real_rsna_labels, conf_type: str) -> None:
    # Real RSNA boxes, read by three simulated readers (each misses some, moves others, scores all 1: every order
    # decision is a tie, as with multi-reader annotations).
    from cxrdet.data.labels import read_rsna_labels

    gt = read_rsna_labels(real_rsna_labels).boxes
    image_ids = pd.unique(gt["image_id"])
    rng = np.random.default_rng(0)
    readers = []
    for _ in range(3):
        kept = gt[rng.random(len(gt)) < 0.8]
        boxes = kept[["x1", "y1", "x2", "y2"]].to_numpy()
        size = boxes[:, 2:] - boxes[:, :2]
        boxes = boxes + np.concatenate([rng.normal(0, 0.08, size.shape) * size] * 2, axis=1)
        readers.append(frame(kept["image_id"], boxes, np.ones(len(kept))))
    inp = FusionInput.from_frames(readers, image_ids, SIZE, SIZE)
    params = FusionParams(iou_thr=0.4, conf_type=conf_type)
    ids = pd.Index(image_ids)
    assert_same(inp.fuse(params).to_frame(ids), inp.fuse(params, engine="library").to_frame(ids))
