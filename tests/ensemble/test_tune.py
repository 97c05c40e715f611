"""Tuning: parameters and scores written, resume after a kill, several workers on one study, reseeded sampler."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from cxrdet import paths
from cxrdet.ensemble.problem import load_oof
from cxrdet.ensemble.spec import load_ensemble
from cxrdet.ensemble.tune import member_scores, n_complete, open_storage, redact, run_study, tune
from tests.helpers.ensemble_world import write_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

WORKER = """
import sys, time
import optuna
import pandas as pd
from cxrdet.ensemble.problem import load_oof
from cxrdet.ensemble.spec import load_ensemble
from cxrdet.ensemble.tune import run_study
optuna.logging.set_verbosity(optuna.logging.WARNING)
config, url, n, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
spec = load_ensemble(config)
problem = load_oof(spec).problem
score = problem.score
def slow(params):
    print("scoring", flush=True)  # every parameter is drawn: a kill from now on lands inside the trial's sleep
    time.sleep(delay)  # a trial long enough to be killed in the middle of
    return score(params)
problem.score = slow
print("ready", flush=True)
run_study(problem, spec, spec.name, url, n, spec.seed)
"""


def start_worker(tmp_path: Path, config: Path, url: str, n: int, delay: float) -> subprocess.Popen[str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return subprocess.Popen([sys.executable, str(script), str(config), url, str(n), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def complete_params(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.get_trials(states=(TrialState.COMPLETE,))]


@pytest.mark.slow
def test_tune_writes_params_scores_and_resumes_without_new_trials(world, tmp_path: Path) -> None:
    spec = load_ensemble(write_config(tmp_path / "ens.py", world, n_trials=6))
    result = tune(spec)
    record = json.loads((paths.ensemble_dir("ens") / "params.json").read_text())
    assert record["scores"]["optimistic"] == pytest.approx(result.optimistic)
    assert set(record["scores"]["honest_per_fold"]) == {"0", "1", "2"}
    # The honest figure is scored like the optimistic one: each fold predicted with the parameters its own study
    # (tuned on the other folds) chose, pooled, scored once over all OOF images.
    from cxrdet.ensemble.spec import resolve
    from cxrdet.ensemble.tune import best_values

    oof = load_oof(spec)
    url = f"sqlite:///{paths.ensemble_dir('ens') / 'study.db'}"
    held = []
    for k in (0, 1, 2):
        chosen = best_values(optuna.load_study(study_name=f"ens.holdout{k}", storage=url))[0]
        part = oof.problem.subset(oof.image_fold == k)
        held.append(part.submitted(part.predict(resolve(spec, chosen))).astype({"image_id": str}))
    pooled = oof.problem.evaluator.score(pd.concat(held, ignore_index=True)).score
    # Each held-out study's choice is also scored on all folds (the main study's convergence check).
    for k in (0, 1, 2):
        chosen = best_values(optuna.load_study(study_name=f"ens.holdout{k}", storage=url))[0]
        assert record["scores"]["holdout_choices_on_all"][str(k)] == pytest.approx(
            oof.problem.score(resolve(spec, chosen)), abs=1e-12)
    assert record["scores"]["honest"] == pytest.approx(pooled, abs=1e-12)
    assert record["scores"]["honest"] != pytest.approx(sum(result.honest_per_fold.values()) / 3, abs=1e-9)
    # The held-out rows are kept for `cxrdet select`: the same rows, each with its fold.
    kept = pd.read_parquet(paths.ensemble_dir("ens") / "honest_oof.parquet")
    assert oof.problem.evaluator.score(kept.drop(columns="fold")).score == pytest.approx(pooled, abs=1e-12)
    assert (kept.groupby("fold").size() == pd.concat(held).assign(
        fold=oof.image_fold[oof.problem.image_ids.get_indexer(pd.concat(held)["image_id"])]).groupby("fold").size()
            ).all()
    # Per fold, the tuned-on-all parameters scored on that fold's images alone.
    best = resolve(spec, result.best_params)
    part = oof.problem.subset(oof.image_fold == 1)
    assert record["scores"]["optimistic_per_fold"]["1"] == pytest.approx(
        part.evaluator.score(part.submitted(part.predict(best))).score, abs=1e-12)
    assert set(record["members"]) == {"det_a", "det_b"}
    assert record["study"]["n_complete"] == 6
    assert record["params"]["weight.det_a"] == 1.0  # the first member's weight stays fixed
    assert record["params"]["iou_thr"] == pytest.approx(result.best_params["iou_thr"])
    assert set(record["study"]["importances"]) <= set(result.best_params)
    # The config's own values are trial 0, so the tuned score is never below them.
    study = optuna.load_study(study_name="ens", storage=f"sqlite:///{paths.ensemble_dir('ens') / 'study.db'}")
    first = study.trials[0]
    assert first.params["iou_thr"] == 0.5 and first.params["final_thr"] == 0.3
    assert result.optimistic >= first.value
    # The best parameters reproduce the best value.
    assert oof.problem.score(resolve(spec, result.best_params)) == pytest.approx(result.optimistic, abs=1e-12)
    # Run again: the study is complete, nothing new runs, same result.
    again = tune(spec, honest=False)
    assert again.n_complete == 6 and again.optimistic == result.optimistic
    assert n_complete(study) == 6


def test_member_scores_by_hand_threshold(world, tmp_path: Path) -> None:
    spec = load_ensemble(write_config(tmp_path / "ens.py", world))
    oof = load_oof(spec)
    scores = member_scores(oof)
    frame = oof.members["det_a"]
    thr = scores["det_a"]["threshold"]
    direct = oof.problem.evaluator.score(frame[frame["score"] >= thr]).score
    assert scores["det_a"]["optimistic"] == pytest.approx(direct)
    assert scores["det_a"]["honest"] <= scores["det_a"]["optimistic"] + 1e-12


@pytest.mark.slow
def test_resumed_study_draws_what_an_uninterrupted_one_draws(world, tmp_path: Path) -> None:
    spec = load_ensemble(write_config(tmp_path / "ens.py", world))
    problem = load_oof(spec).problem
    whole = run_study(problem, spec, "whole", f"sqlite:///{tmp_path / 'a.db'}", 14, seed=5)
    url = f"sqlite:///{tmp_path / 'b.db'}"
    run_study(problem, spec, "parts", url, 6, seed=5)
    parts = run_study(problem, spec, "parts", url, 14, seed=5)  # a new process would do the same
    assert complete_params(parts) == complete_params(whole)
    assert len(set(complete_params(parts))) == 14  # nothing repeated


@pytest.mark.slow
def test_killed_study_resumes_with_no_trial_lost_or_repeated(world, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ens.py", world)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    proc = start_worker(tmp_path, config, url, 40, delay=2.0)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr.read()
        # The worker says "scoring" once a trial's parameters are all drawn, just before its 2 s sleep: killing right
        # after the fifth says puts the kill inside trial 4's sleep, with trials 0-3 complete (a kill timed from the
        # storage could land while the parameters are still being drawn, and the retry would then draw the rest).
        for _ in range(5):
            line = proc.stdout.readline().strip()
            assert line == "scoring", (line, proc.stderr.read() if not line else "")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    study = optuna.load_study(study_name="ens", storage=url)
    before = {t.number: (t.params, t.value) for t in study.get_trials(states=(TrialState.COMPLETE,))}
    running = study.get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 1 and len(before) >= 4

    spec = load_ensemble(config)
    resumed = run_study(load_oof(spec).problem, spec, "ens", url, len(before) + 4, spec.seed)
    trials = resumed.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(before) + 4
    for number, (params, value) in before.items():  # nothing done is lost or changed
        assert trials[number].state == TrialState.COMPLETE
        assert trials[number].params == params and trials[number].value == value
    for killed in running:  # the killed trial failed and was re-run once with its parameters
        assert trials[killed.number].state == TrialState.FAIL
        retries = [t for t in complete if t.user_attrs.get("retry_of") == killed.number]
        assert len(retries) == 1 and retries[0].params == killed.params
    assert len(set(complete_params(resumed))) == len(complete)  # nothing repeated


def run_two_workers(tmp_path: Path, world, url: str, n: int = 14) -> optuna.Study:
    config = write_config(tmp_path / "ens.py", world)
    workers = [start_worker(tmp_path, config, url, n, delay=0.4) for _ in range(2)]
    try:
        for w in workers:
            _, err = w.communicate(timeout=300)
            assert w.returncode == 0, err
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    study = optuna.load_study(study_name="ens", storage=open_storage(url))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == n  # together the workers stop at exactly n
    assert study.best_value == max(t.value for t in complete)
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert len(set(complete_params(study))) == n  # the workers drew different points
    assert len({t.user_attrs["worker"]["pid"] for t in complete}) == 2  # both workers ran trials
    return study


@pytest.mark.slow
def test_two_workers_share_a_journal_file_study(world, tmp_path: Path) -> None:
    run_two_workers(tmp_path, world, f"journal:{tmp_path / 'study.log'}")


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(world, tmp_path: Path, postgres_url: str) -> None:
    run_two_workers(tmp_path, world, postgres_url)


def test_redact_hides_passwords() -> None:
    assert redact("postgresql://me:secret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("sqlite:///a/b.db") == "sqlite:///a/b.db"


# ---- how the parameters are chosen (the config's `tuning`) ----


def test_top_k_values_average_numbers_on_their_scale_and_vote_categories() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import create_trial

    from cxrdet.ensemble.tune import top_k_values

    dists = {"a": FloatDistribution(0.0, 1.0), "lr": FloatDistribution(1e-4, 1.0, log=True),
             "s": FloatDistribution(0.8, 1.0, step=0.025), "n": IntDistribution(1, 9),
             "c": CategoricalDistribution(["x", "y", "z"])}
    study = optuna.create_study(direction="maximize")
    rows = [(0.9, dict(a=0.2, lr=1e-3, s=0.8, n=1, c="y")), (0.8, dict(a=0.4, lr=1e-1, s=0.85, n=2, c="x")),
            (0.7, dict(a=0.9, lr=1e-2, s=0.9, n=2, c="x")), (0.6, dict(a=0.3, lr=1e-4, s=1.0, n=9, c="y")),
            (0.1, dict(a=1.0, lr=1.0, s=1.0, n=9, c="z"))]
    for value, params in rows:
        study.add_trial(create_trial(params=params, distributions=dists, value=value))
    got = top_k_values(study, dists, 3)
    assert got["a"] == pytest.approx(0.5)  # (0.2 + 0.4 + 0.9) / 3
    assert got["lr"] == pytest.approx(1e-2)  # geometric mean of 1e-3, 1e-1, 1e-2
    assert got["s"] == pytest.approx(0.85)  # 0.85 snapped to the 0.025 grid
    assert got["n"] == 2 and isinstance(got["n"], int)  # 5 / 3 rounded
    assert got["c"] == "x"  # two votes of three
    tied = top_k_values(study, dists, 4)
    assert tied["c"] == "y"  # two each: the better trial's value wins
    assert top_k_values(study, dists, 1) == rows[0][1]


def test_the_penalised_objective_is_the_pooled_score_minus_lambda_sd_by_hand(world, tmp_path: Path) -> None:
    import numpy as np

    from cxrdet.ensemble.spec import resolve
    from cxrdet.ensemble.tune import fold_objective
    from cxrdet.errors import ConfigError

    spec = load_ensemble(write_config(tmp_path / "ens.py", world))
    oof = load_oof(spec)
    params = resolve(spec, {"final_thr": 0.2})
    per_fold = [oof.problem.subset(oof.image_fold == k).score(params) for k in (0, 1, 2)]
    assert len(set(per_fold)) > 1
    want = oof.problem.score(params) - 0.5 * np.std(per_fold, ddof=1)
    assert fold_objective(oof.problem, oof.image_fold, 0.5)(params) == pytest.approx(want, abs=1e-12)
    assert fold_objective(oof.problem, oof.image_fold, 0.0)(params) == oof.problem.score(params)
    with pytest.raises(ConfigError, match="needs at least 2 folds"):
        fold_objective(oof.problem, np.zeros_like(oof.image_fold), 0.5)


@pytest.mark.slow
def test_tuning_options_choose_as_configured_and_report_the_metric(world, tmp_path: Path) -> None:
    from cxrdet.ensemble.spec import fixed_params, resolve
    from cxrdet.ensemble.tune import best_values, top_k_values

    url = lambda name: f"sqlite:///{paths.ensemble_dir(name) / 'study.db'}"  # noqa: E731
    # Top-k: the chosen values are the top-k mean of the study, scored by the metric.
    spec = load_ensemble(write_config(tmp_path / "topk.py", world, n_trials=8,
                                      extra="tuning = dict(pick='top_k', top_k=3)"))
    result = tune(spec, honest=False)
    study = optuna.load_study(study_name="topk", storage=url("topk"))
    from cxrdet.ensemble.tune import distributions
    from cxrdet.ensemble.spec import expanded_space

    assert result.best_params == top_k_values(study, distributions(expanded_space(spec)), 3)
    assert result.best_params != best_values(study)[0]
    oof = load_oof(spec)
    assert result.optimistic == pytest.approx(oof.problem.score(resolve(spec, result.best_params)), abs=1e-12)
    # A penalised objective: its own study name, trial values at most the pooled metric, the metric reported.
    spec = load_ensemble(write_config(tmp_path / "sd.py", world, n_trials=5, extra="tuning = dict(sd_penalty=1.0)"))
    result = tune(spec)
    study = optuna.load_study(study_name="sd.sd1", storage=url("sd"))
    best = study.best_trial
    assert best.value <= oof.problem.score(resolve(spec, best.params)) + 1e-12
    assert result.optimistic == pytest.approx(oof.problem.score(resolve(spec, best.params)), abs=1e-12)
    names = {s.study_name for s in optuna.get_all_study_summaries(url("sd"))}
    assert names == {"sd.sd1", "sd.holdout0.sd1", "sd.holdout1.sd1", "sd.holdout2.sd1"}
    # An importance floor: a second study tunes only the important parameters; the others keep the config's values.
    spec = load_ensemble(write_config(tmp_path / "imp.py", world, n_trials=12,
                                      extra="tuning = dict(importance_floor=0.15)"))
    result = tune(spec, honest=False)
    record = json.loads((paths.ensemble_dir("imp") / "params.json").read_text())
    kept = record["tuning"]["kept"]
    imp = record["study"]["importances"]
    assert kept and set(kept) == {k for k, v in imp.items() if v >= 0.15} and len(kept) < len(imp)
    pruned = optuna.load_study(study_name="imp.pruned", storage=url("imp"))
    assert all(set(t.params) == set(kept) for t in pruned.get_trials(states=(TrialState.COMPLETE,)))
    assert set(result.best_params) == set(kept)
    defaults = fixed_params(spec)
    for name in set(imp) - set(kept):
        assert record["params"][name] == pytest.approx(defaults[name])
    assert record["tuning"]["importance_floor"] == 0.15 and "pruned" in record["tuning"]["described"]


def test_a_held_out_choice_above_the_main_best_says_the_main_study_has_not_converged(tmp_path: Path) -> None:
    from cxrdet.ensemble.tune import TuneResult

    def result(on_all: dict[int, float], plain: bool = True) -> TuneResult:
        return TuneResult(params_path=tmp_path, best_params={"a": 1, "b": 2}, optimistic=0.14, honest=0.17,
                          honest_per_fold={}, members={}, n_complete=80, importances={}, holdout_on_all=on_all,
                          plain_best=plain)

    warning = result({0: 0.13, 1: 0.19, 2: 0.15}).unconverged
    assert warning is not None and "fold-1 held-out study chose score 0.19000" in warning
    assert "main study's best 0.14000 (80 trials over 2 parameters)" in warning and "raise n_trials" in warning
    assert result({0: 0.13, 1: 0.14}).unconverged is None
    assert result({0: 0.19}, plain=False).unconverged is None  # a top-k mean is below the best by design
    assert result({}).unconverged is None


def test_a_penalised_objective_with_the_honest_estimate_needs_three_folds(tmp_path: Path) -> None:
    from cxrdet.errors import ConfigError
    from tests.helpers.ensemble_world import make_world

    two = make_world(tmp_path / "two", n_folds=2)
    spec = load_ensemble(write_config(tmp_path / "sd2.py", two, extra="tuning = dict(sd_penalty=1.0)"))
    with pytest.raises(ConfigError, match=r"sd2.py: tuning.sd_penalty needs at least 3 folds with the honest "
                                          r"estimate .* the members have \[0, 1\]: set sd_penalty=0"):
        tune(spec)
