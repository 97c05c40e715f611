"""Choose what to submit among tuned ensembles by their honest estimate, and estimate what the choice itself costs.

Every candidate is an ensemble config already tuned with its honest estimate (`cxrdet tune`): its
`honest_oof.parquet` holds each OOF image's submitted rows under the parameters tuned without that image's fold.
Candidates may be members alone (one member, no classifier), fused members or gated ensembles, of any competition,
as long as they share one image set (fold file and labels).

- Ranking: by the honest score (the pooled held-out rows scored on all OOF images, as `cxrdet tune` prints it), with
  the per-fold honest scores and their spread beside it.
- Rule `paired` (the default): the best honest candidate, unless it is a combination (several members or a
  classifier) whose gain over the best member alone is not supported by the folds: the per-fold differences'
  mean is at most one standard error (sd / sqrt(k)), in which case the member is chosen and the reason says so.
  Rule `honest`: the best honest candidate, whatever its margin.
- Nested selection: the choice is made on the same OOF rows it is judged by, so the winner's honest score is
  itself optimistic. For each outer fold k the rule chooses among the candidates on the other folds only (their
  held-out rows on those folds, scored on those folds' images), and the chosen candidate's rows on fold k are kept;
  the kept rows of all folds, pooled and scored on all OOF images, estimate the score of "run the selection, submit
  its choice". The winner's honest score minus this is the selection's optimism. (Each candidate's held-out rows on
  fold j came from parameters tuned on the folds other than j, fold k among them: the selection is nested, the
  tuning inside it is not re-run per outer fold, which would cost k - 1 more studies per fold and candidate.)

Output: `outputs/selections/NAME.json`: the ranking with per-fold scores, the choice and why, the nested estimate
and the optimism, and the config to submit (`cxrdet submit CONFIG`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet import paths
from cxrdet.ensemble.spec import EnsembleSpec, expanded_space
from cxrdet.errors import ConfigError
from cxrdet.io import write_json
from cxrdet.provenance import git_revision
from cxrdet.runs import EnsembleRun

RULES = ("paired", "honest")

Scorer = Callable[[pd.DataFrame, Sequence[int]], float]
"""Scores rows (with a `fold` column) on the images of the given folds: the competition metric of the subset."""


@dataclass(frozen=True)
class Candidate:
    """One tuned ensemble as the selection sees it.

    Attributes:
        name: The ensemble's name.
        rows: Its held-out submitted rows, each with its `fold`.
        simple: One member and no classifier (a member alone: what a combination must beat).
        n_tuned: Tuned parameters (the search space, expanded per member).
        config: The ensemble config file.
    """

    name: str
    rows: pd.DataFrame
    simple: bool
    n_tuned: int = 0
    config: str = ""


@dataclass(frozen=True)
class Choice:
    """What a rule chose on some folds, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Selection:
    """The ranking, the choice and the nested estimate of the choice."""

    table: pd.DataFrame
    choice: Choice
    nested: float
    nested_per_fold: dict[int, str]
    rule: str

    @property
    def chosen_honest(self) -> float:
        """The chosen candidate's honest score (its row of the table)."""
        return float(self.table.loc[self.table["candidate"] == self.choice.name, "honest"].iloc[0])

    @property
    def optimism(self) -> float:
        """What the selection itself adds to the chosen candidate's honest score: its honest minus nested."""
        return self.chosen_honest - self.nested


def _per_fold(c: Candidate, folds: Sequence[int], score: Scorer) -> dict[int, float]:
    return {int(k): score(c.rows[c.rows["fold"] == k], [int(k)]) for k in folds}


def choose(candidates: Sequence[Candidate], folds: Sequence[int], score: Scorer, rule: str = "paired") -> Choice:
    """The rule's choice among `candidates` judged on `folds` only (see the module docstring).

    Raises:
        ConfigError: An unknown rule.
    """
    if rule not in RULES:
        raise ConfigError(f"selection rule {rule!r}: expected one of {list(RULES)}")
    pooled = {c.name: score(c.rows[c.rows["fold"].isin(folds)], folds) for c in candidates}
    # Ties go to the simpler candidate (fewer tuned parameters), then to the order given.
    order = sorted(range(len(candidates)), key=lambda i: (-pooled[candidates[i].name], candidates[i].n_tuned, i))
    best = candidates[order[0]]
    text = f"best honest score {pooled[best.name]:.5f} on folds {list(folds)}"
    if rule == "honest" or best.simple:
        return Choice(best.name, text)
    simple = [candidates[i] for i in order if candidates[i].simple]
    if not simple:
        return Choice(best.name, text + "; no member alone among the candidates to compare with")
    member = simple[0]
    a, b = _per_fold(best, folds, score), _per_fold(member, folds, score)
    diff = np.array([a[k] - b[k] for k in a])
    se = float(np.std(diff, ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.inf
    gain = f"per-fold gain over {member.name} {diff.mean():+.5f} (standard error {se:.5f}, {len(diff)} folds)"
    if diff.mean() > se:
        return Choice(best.name, f"{text}; {gain}: supported")
    return Choice(member.name, f"{best.name} scores best ({pooled[best.name]:.5f}) but its {gain} is within one "
                               f"standard error: the data do not support the combination, so the member alone "
                               f"{member.name} ({pooled[member.name]:.5f}) is chosen")


def select(candidates: Sequence[Candidate], folds: Sequence[int], score: Scorer, rule: str = "paired") -> Selection:
    """Rank the candidates, choose one by `rule` on all folds, and estimate the choice by nested selection."""
    if len({c.name for c in candidates}) != len(candidates):
        raise ConfigError(f"candidates {[c.name for c in candidates]}: a name repeats")
    folds = [int(k) for k in folds]
    if len(folds) < 2:
        raise ConfigError(f"nested selection needs at least 2 folds, got {folds}")
    rows = []
    for c in candidates:
        per_fold = _per_fold(c, folds, score)
        values = np.array(list(per_fold.values()))
        rows.append({"candidate": c.name, "honest": score(c.rows, folds), "fold_mean": float(values.mean()),
                     "fold_sd": float(values.std(ddof=1)), "n_tuned": c.n_tuned, "member_alone": c.simple,
                     **{f"fold{k}": v for k, v in per_fold.items()}})
    table = pd.DataFrame(rows).sort_values("honest", ascending=False, kind="stable").reset_index(drop=True)
    choice = choose(candidates, folds, score, rule)
    kept, chosen_per_fold = [], {}
    by_name = {c.name: c for c in candidates}
    for k in folds:
        inner = choose(candidates, [j for j in folds if j != k], score, rule)
        chosen_per_fold[k] = inner.name
        held = by_name[inner.name].rows
        kept.append(held[held["fold"] == k])
    return Selection(table, choice, score(pd.concat(kept, ignore_index=True), folds), chosen_per_fold, rule)


# ---- candidates from tuned ensembles ----


def load_candidate(spec: EnsembleSpec) -> tuple[Candidate, dict[str, Any]]:
    """A tuned ensemble as a candidate, and its `params.json` record.

    Raises:
        ConfigError: Not tuned, tuned without the honest estimate, or tuned from another version of the config.
    """
    run = EnsembleRun(spec.name)
    record = run.read_params(spec.path)
    if not run.honest_path.is_file():
        raise ConfigError(f"{run.honest_path} not found: {spec.name} was tuned without its honest estimate (or "
                          f"before cxrdet kept its held-out rows): run `cxrdet tune {spec.path}`")
    rows = pd.read_parquet(run.honest_path)
    simple = len(spec.members) == 1 and spec.classifier is None
    return Candidate(spec.name, rows, simple, len(expanded_space(spec)), str(spec.path)), record


def same_data(records: Mapping[str, Mapping[str, Any]]) -> None:
    """Check that the candidates were tuned on one image set (fold file hash, labels, image count).

    Raises:
        ConfigError: Naming the candidates that differ and the values.
    """
    seen = {name: (r["data"]["folds_sha256"], str(Path(r["data"]["labels"]).resolve()), r["data"]["n_images"])
            for name, r in records.items()}
    if len(set(seen.values())) > 1:
        listed = "; ".join(f"{n}: folds sha256 {v[0][:12]}, labels {v[1]}, {v[2]} images" for n, v in seen.items())
        raise ConfigError(f"the candidates were tuned on different data ({listed}): a selection compares one image "
                          "set")


def evaluator_scorer(problem: Any, image_fold: npt.NDArray[np.int64]) -> Scorer:
    """A `Scorer` from an ensemble's pooled OOF problem: the competition metric on the chosen folds' images (the
    evaluator of each fold set built once)."""
    cache: dict[tuple[int, ...], Any] = {}

    def score(rows: pd.DataFrame, folds: Sequence[int]) -> float:
        key = tuple(sorted(int(k) for k in folds))
        if key not in cache:
            cache[key] = problem.subset(np.isin(image_fold, key)).evaluator
        value = cache[key].score(rows.drop(columns="fold")).score
        return 0.0 if value is None or np.isnan(value) else float(value)

    return score


def selection_path(name: str) -> Path:
    """Where `cxrdet select --out NAME` writes its record."""
    return paths.outputs_dir() / "selections" / f"{paths.component(name, 'selection name')}.json"


def write_selection(name: str, result: Selection, candidates: Sequence[Candidate],
                    records: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write the selection record (atomically) and return its path."""
    by_name = {c.name: c for c in candidates}
    table = result.table.replace({np.nan: None})
    return write_json(selection_path(name), {
        "chosen": result.choice.name,
        "config": by_name[result.choice.name].config,
        "submit": f"cxrdet submit {by_name[result.choice.name].config}",
        "reason": result.choice.reason,
        "rule": result.rule,
        "chosen_honest": result.chosen_honest,
        "nested_selection": result.nested,
        "nested_choice_per_fold": {str(k): v for k, v in result.nested_per_fold.items()},
        "selection_optimism": result.optimism,
        "candidates": [{**row, "optimistic": records[row["candidate"]]["scores"].get("optimistic"),
                        "optimistic_per_fold": records[row["candidate"]]["scores"].get("optimistic_per_fold")}
                       for row in table.to_dict("records")],
        "git": git_revision(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    })
