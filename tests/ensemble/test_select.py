"""Choosing what to submit: the ranking, the paired rule, and the nested-selection estimate computed by hand."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrdet import paths
from cxrdet.cli import app
from cxrdet.ensemble.problem import load_oof
from cxrdet.ensemble.select import Candidate, choose, same_data, select
from cxrdet.ensemble.spec import load_ensemble
from cxrdet.errors import ConfigError
from tests.helpers.ensemble_world import write_config


def rows(per_fold: Sequence[float]) -> pd.DataFrame:
    """One row per fold holding that fold's score."""
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(len(per_fold))], "score": list(per_fold),
                         "fold": range(len(per_fold))})


def mean_score(frame: pd.DataFrame, folds: Sequence[int]) -> float:
    """A metric whose value on a set of folds is the mean of their scores (one image per fold)."""
    return float(frame.loc[frame["fold"].isin(folds), "score"].sum()) / len(folds)


# A and C are members alone; B combines them (more tuned parameters). Over the 3 folds: A 0.5, B 0.6, C 0.48333.
A = Candidate("A", rows([0.5, 0.5, 0.5]), simple=True, n_tuned=2)
B = Candidate("B", rows([0.9, 0.1, 0.8]), simple=False, n_tuned=5)
C = Candidate("C", rows([0.6, 0.4, 0.45]), simple=True, n_tuned=2)


def test_nested_selection_by_hand_with_the_honest_rule() -> None:
    result = select([A, B, C], [0, 1, 2], mean_score, rule="honest")
    assert list(result.table["candidate"]) == ["B", "A", "C"]
    assert result.table.loc[0, "honest"] == pytest.approx(0.6)
    assert result.table.loc[0, "fold_sd"] == pytest.approx(pd.Series([0.9, 0.1, 0.8]).std())
    assert result.choice.name == "B"
    # Outer fold 0: on folds 1, 2 A 0.5, B 0.45, C 0.425 -> A, whose fold 0 scores 0.5. Outer fold 1: on folds 0, 2
    # B 0.85 -> B, 0.1 on fold 1. Outer fold 2: on folds 0, 1 all three 0.5 -> the fewest tuned parameters, first
    # given: A, 0.5. Pooled: (0.5 + 0.1 + 0.5) / 3.
    assert result.nested_per_fold == {0: "A", 1: "B", 2: "A"}
    assert result.nested == pytest.approx(1.1 / 3)
    assert result.optimism == pytest.approx(0.6 - 1.1 / 3)


def test_paired_rule_keeps_the_member_when_the_gain_is_within_one_standard_error() -> None:
    # B - A per fold: +0.4, -0.4, +0.3: mean 0.1, standard error sqrt(0.19 / 3) = 0.2517 > 0.1 -> A.
    choice = choose([A, B, C], [0, 1, 2], mean_score, rule="paired")
    assert choice.name == "A"
    assert "do not support" in choice.reason and "B" in choice.reason
    # On folds 0 and 2, B - C is +0.3, +0.35 (mean 0.325, standard error 0.025): supported.
    assert choose([A, B, C], [0, 2], mean_score, rule="paired").name == "B"
    result = select([A, B, C], [0, 1, 2], mean_score)
    assert result.choice.name == "A" and result.nested_per_fold == {0: "A", 1: "B", 2: "A"}
    assert result.optimism == pytest.approx(0.5 - 1.1 / 3)


def test_selection_refuses_what_it_cannot_compare() -> None:
    with pytest.raises(ConfigError, match="rule 'best'"):
        choose([A, B], [0, 1], mean_score, rule="best")
    with pytest.raises(ConfigError, match="at least 2 folds"):
        select([A, B], [0], mean_score)
    with pytest.raises(ConfigError, match="a name repeats"):
        select([A, A], [0, 1], mean_score)


def test_candidates_tuned_on_different_data_are_refused_by_name() -> None:
    def record(sha: str, n: int) -> dict:
        return {"data": {"folds_sha256": sha, "labels": "/data/labels.csv", "n_images": n}}

    same_data({"a": record("ab" * 32, 90), "b": record("ab" * 32, 90)})  # one image set: no error
    with pytest.raises(ConfigError, match=r"different data \(a: folds sha256 abababababab, labels /data/labels.csv, "
                                          r"90 images; b: folds sha256 cdcdcdcdcdcd, .*, 80 images\)"):
        same_data({"a": record("ab" * 32, 90), "b": record("cd" * 32, 80)})


@pytest.mark.slow
def test_select_command_on_tuned_ensembles(world, tmp_path: Path) -> None:
    alone = write_config(tmp_path / "alone.py", world, experiments=("det_a",), n_trials=4)
    both = write_config(tmp_path / "both.py", world, n_trials=4)
    runner = CliRunner()
    for config in (alone, both):
        assert runner.invoke(app, ["tune", str(config)]).exit_code == 0
    result = runner.invoke(app, ["select", str(alone), str(both), "--out", "mine", "--rule", "honest"])
    assert result.exit_code == 0, result.output
    record = json.loads((paths.outputs_dir() / "selections" / "mine.json").read_text())
    tuned = {n: json.loads((paths.ensemble_dir(n) / "params.json").read_text())["scores"] for n in ("alone", "both")}
    # The re-scored held-out rows give back each ensemble's honest score; the choice is the better one.
    for c in record["candidates"]:
        assert c["honest"] == pytest.approx(tuned[c["candidate"]]["honest"], abs=1e-12)
        assert c["optimistic"] == tuned[c["candidate"]]["optimistic"]
    assert record["chosen"] == max(tuned, key=lambda n: tuned[n]["honest"])
    # The nested estimate: each fold's rows from the candidate chosen on the other folds, pooled, scored on all.
    oof = load_oof(load_ensemble(alone))
    kept = []
    for k, name in record["nested_choice_per_fold"].items():
        held = pd.read_parquet(paths.ensemble_dir(name) / "honest_oof.parquet")
        kept.append(held[held["fold"] == int(k)].drop(columns="fold"))
    nested = oof.problem.evaluator.score(pd.concat(kept, ignore_index=True)).score
    assert record["nested_selection"] == pytest.approx(nested, abs=1e-12)
    assert record["selection_optimism"] == pytest.approx(record["chosen_honest"] - nested, abs=1e-12)
    assert record["submit"].endswith(f"{record['chosen']}.py")
    # An ensemble tuned without the honest estimate cannot be a candidate: it has no held-out rows.
    assert runner.invoke(app, ["tune", str(alone), "--no-honest"]).exit_code == 0
    refused = runner.invoke(app, ["select", str(alone), str(both)])
    assert refused.exit_code != 0 and "honest_oof.parquet not found" in refused.output
