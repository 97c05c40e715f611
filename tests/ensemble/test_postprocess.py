"""Post-processing steps against values computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrdet.ensemble.fuse import BoxSet
from cxrdet.ensemble.postprocess import (
    PostParams,
    apply_classifier,
    cap_per_image,
    classifier_column,
    classifier_probs,
    drop_non_finite,
    postprocess,
    scale_by_votes,
    shrink,
    threshold,
)
from cxrdet.errors import ConfigError, TableError


def boxset(image, boxes, score, votes=None) -> BoxSet:
    n = len(image)
    return BoxSet(np.asarray(image, np.int64), np.asarray(boxes, np.float64).reshape(-1, 4),
                  np.asarray(score, np.float64), np.zeros(n, np.int64),
                  np.ones(n, np.int64) if votes is None else np.asarray(votes, np.int64))


def test_scale_by_votes() -> None:
    b = boxset([0, 0, 1], [[0, 0, 1, 1]] * 3, [0.8, 0.6, 0.5], votes=[4, 2, 1])
    # score * (votes / 4) ** power
    assert scale_by_votes(b, 4, 1.0).score.tolist() == pytest.approx([0.8, 0.3, 0.125])
    assert scale_by_votes(b, 4, 2.0).score.tolist() == pytest.approx([0.8, 0.15, 0.03125])
    assert scale_by_votes(b, 4, 0.0) is b
    unknown = boxset([0], [[0, 0, 1, 1]], [0.5], votes=[0])
    with pytest.raises(ConfigError, match="vote count"):
        scale_by_votes(unknown, 2, 1.0)


def test_apply_classifier_gates_and_rescales() -> None:
    b = boxset([0, 1, 1, 2], [[0, 0, 1, 1]] * 4, [0.8, 0.6, 0.4, 0.9])
    prob = np.array([0.25, 0.81, 0.1])
    out = apply_classifier(b, prob, alpha=0.5, tau=0.2)
    # image 2 (p 0.1 < 0.2) dropped; scores * sqrt(p)
    assert out.image.tolist() == [0, 1, 1]
    assert out.score.tolist() == pytest.approx([0.8 * 0.5, 0.6 * 0.9, 0.4 * 0.9])
    assert apply_classifier(b, prob, alpha=0.0, tau=0.0) is b
    assert apply_classifier(b, prob, alpha=0.0, tau=0.3).image.tolist() == [1, 1]


def test_shrink_around_the_centre() -> None:
    b = boxset([0], [[100, 200, 300, 600]], [0.5])
    # centre (200, 400), size 200 x 400 -> 175 x 350
    np.testing.assert_allclose(shrink(b, 0.875).boxes, [[112.5, 225.0, 287.5, 575.0]])
    assert shrink(b, 1.0) is b


def test_threshold_and_cap() -> None:
    b = boxset([1, 0, 1, 1, 0], [[0, 0, 5, 5], [0, 0, 1, 1], [3, 3, 9, 9], [1, 1, 4, 4], [2, 2, 3, 3]],
               [0.5, 0.2, 0.7, 0.5, 0.9])
    assert threshold(b, 0.5).score.tolist() == [0.5, 0.7, 0.5, 0.9]
    capped = cap_per_image(b, 2)
    # image 0: 0.9, 0.2; image 1: 0.7 and, of the tied 0.5 boxes, the one with the lower x1 -> (0, 0, 5, 5)
    kept = sorted(zip(capped.image.tolist(), capped.score.tolist(), capped.boxes[:, 0].tolist(), strict=True))
    assert kept == [(0, 0.2, 0.0), (0, 0.9, 2.0), (1, 0.5, 0.0), (1, 0.7, 3.0)]
    # the result does not depend on row order
    rev = cap_per_image(b.take(np.arange(5)[::-1]), 2)
    assert sorted(zip(rev.image.tolist(), rev.boxes[:, 0].tolist(), strict=True)) == sorted(
        zip(capped.image.tolist(), capped.boxes[:, 0].tolist(), strict=True))
    assert cap_per_image(b, None) is b


def test_drop_non_finite() -> None:
    b = boxset([0, 0], [[np.nan, 0, 1, 1], [0, 0, 1, 1]], [0.0, 0.4])
    assert drop_non_finite(b).score.tolist() == [0.4]


def test_postprocess_order_of_steps() -> None:
    b = boxset([0, 0, 1], [[0, 0, 100, 100], [200, 200, 300, 300], [0, 0, 40, 80]], [0.9, 0.5, 0.6],
               votes=[2, 1, 2])
    params = PostParams(vote_power=1.0, cls_alpha=1.0, cls_tau=0.3, shrink=0.5, final_thr=0.2, max_boxes=1)
    out = postprocess(b, params, 2, prob=np.array([0.5, 0.25]))
    # votes: 0.9, 0.25, 0.6 -> classifier: image 1 (p 0.25 < 0.3) dropped, image 0 * 0.5: 0.45, 0.125
    # -> threshold 0.2 drops 0.125 -> shrink -> cap 1 per image
    assert out.score.tolist() == pytest.approx([0.45])
    np.testing.assert_allclose(out.boxes, [[25, 25, 75, 75]])
    with pytest.raises(ConfigError, match="no classifier"):
        postprocess(b, params, 2, prob=None)
    assert len(postprocess(b, PostParams(), 2)) == 3


def test_post_params_are_checked() -> None:
    with pytest.raises(ConfigError, match="shrink"):
        PostParams(shrink=0.0)
    with pytest.raises(ConfigError, match="max_boxes"):
        PostParams(max_boxes=0)


def test_classifier_probs_seam() -> None:
    ids = pd.Index(["a", "b", "c"])
    table = pd.DataFrame({"image_id": ["c", "a", "b", "a"], "p": [0.9, 0.2, 0.5, 0.4]})
    # rows of one image (fold models on the test set) are averaged
    assert classifier_probs(table, ids).tolist() == pytest.approx([0.3, 0.5, 0.9])
    with pytest.raises(TableError) as err:
        classifier_probs(pd.DataFrame({"image_id": ["a", "b"], "p": [1.5, 0.2]}), ids, "cls.parquet")
    text = str(err.value)
    assert "cls.parquet" in text and "p not in [0, 1] at row(s) [1]" in text and "'c'" in text


def test_classifier_probs_reads_the_named_class_column_of_a_classifier_table() -> None:
    ids = pd.Index(["a", "b"])
    table = pd.DataFrame({"image_id": ["a", "b"], "Effusion": [0.1, 0.7], "Pneumonia": [0.8, 0.3]})
    assert classifier_probs(table, ids, column="Pneumonia").tolist() == [0.8, 0.3]
    assert classifier_probs(table[["image_id", "Effusion"]], ids).tolist() == [0.1, 0.7]  # the only class column
    assert classifier_column(table, "Effusion") == "Effusion"
    with pytest.raises(TableError, match=r"has 2 class columns \['Effusion', 'Pneumonia'\]: name the one"):
        classifier_probs(table, ids, "oof.parquet")
    with pytest.raises(TableError, match=r"lacks the classifier column 'opacity'; its class columns are \['Effusion'"):
        classifier_probs(table, ids, "oof.parquet", column="opacity")
    with pytest.raises(TableError, match=r"lacks column\(s\) \['image_id'\]"):
        classifier_probs(table.drop(columns="image_id"), ids)


def test_per_class_cuts_drop_low_boxes_of_their_class_only() -> None:
    boxes = BoxSet(image=np.array([0, 0, 1, 1, 1]), boxes=np.tile([0.0, 0.0, 10.0, 10.0], (5, 1)),
                   score=np.array([0.2, 0.6, 0.2, 0.6, 0.05]), label=np.array([0, 0, 1, 1, 5]),
                   votes=np.ones(5, dtype=np.int64))
    kept = threshold(boxes, 0.0, (0.5, 0.1))  # class 0 needs 0.5, class 1 needs 0.1, class 5 has no cut
    assert kept.score.tolist() == [0.6, 0.2, 0.6, 0.05]
    assert threshold(boxes, 0.1, (0.5, 0.1)).score.tolist() == [0.6, 0.2, 0.6]  # final_thr still applies
    assert threshold(boxes, 0.0).score.tolist() == boxes.score.tolist()
