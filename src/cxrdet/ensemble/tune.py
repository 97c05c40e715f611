"""Tune an ensemble's parameters against the competition's metric on pooled OOF boxes, with Optuna.

- Objective: the competition metric (RSNA's, VinBigData's mAP, ...) of the fused, post-processed OOF boxes of all
  folds, completed as a submission would be (`EnsembleProblem.score`).
- Sampler: TPE, reseeded for every trial from (seed, trial number). The suggestions of trial n then do not depend on
  how many processes ran before it: a resumed study does not replay the first trials' random draws, and two
  workers on one study do not draw the same points.
- Storage: SQLite under `outputs/ensembles/NAME/study.db` by default (`optuna-dashboard sqlite:///...` shows it), or
  any URL: `postgresql://...`, `sqlite:///...`, or `journal:PATH` (a JournalFileStorage log, for several workers
  on a shared disk).
- Resume: only COMPLETE trials count towards `n_trials`. A trial left RUNNING by a killed worker (its process is
  gone, or it ran past `stale_after_s` on another host) is marked FAIL and its parameters are enqueued once, so the
  next trial re-runs it: nothing is lost and nothing done is repeated. A trial that starts when the target is already
  covered by earlier trials (another worker's) is pruned at once, so workers together stop at exactly `n_trials`.
- Honest estimate: for each fold k, a study tuned on the other folds' OOF boxes picks the parameters that then
  predict fold k; the pooled held-out predictions of all folds, scored like the optimistic figure (the metric over
  all OOF images), estimate the score on unseen images (each fold's own score is kept too). The tuned-on-all score
  is optimistic.
- Choosing the parameters (the config's `tuning`, `cxrdet.ensemble.spec.TuningSpec`): the best trial (default), or
  the mean (vote) of the top-k trials' values; the objective may subtract a multiple of the across-fold standard
  deviation; with an importance floor a second study tunes only the parameters at least that important (fANOVA on
  the first study), the others at the config's values. Each held-out-fold study chooses the same way, so the honest
  estimate measures the whole procedure. The reported scores are always the metric's, never the penalised objective.
- Output: `outputs/ensembles/NAME/params.json`: best parameters, both scores (pooled and per fold), each member's
  own scores, the importance of each parameter, how they were chosen and any calibration maps
  (`cxrdet.ensemble.calibrate`); `honest_oof.parquet` beside it: the held-out predictions the
  honest score pools (each image's rows under the parameters tuned without its fold), which `cxrdet select` reuses.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, Trial, TrialState

from cxrdet.ensemble.problem import EnsembleProblem, OofData, load_oof
from cxrdet.ensemble.spec import EnsembleParams, EnsembleSpec, expanded_space, fixed_params, flat_params, resolve
from cxrdet.errors import ConfigError
from cxrdet.io import file_sha256, write_parquet
from cxrdet.provenance import git_revision
from cxrdet.runs import EnsembleRun

STALE_AFTER_S = 600.0  # a RUNNING trial of another host older than this is taken as killed
YOUNG_S = 60.0  # a RUNNING trial without an owner yet (just created) counts as alive this long
THRESHOLD_GRID = np.round(np.arange(0.0, 1.0, 0.025), 3)  # members scored alone: confidence cuts tried

# ---- storage and sampler ----


def storage_url(spec: EnsembleSpec, url: str | None = None) -> str:
    """The study storage: `url`, else the config's `storage`, else SQLite in the ensemble's folder."""
    url = url or spec.storage
    if url:
        return url
    db = EnsembleRun(spec.name).study_db
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for a URL: `journal:PATH` (JournalFileStorage) or an SQLAlchemy URL (SQLite, PostgreSQL)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Several workers on one SQLite file wait for each other's writes instead of failing at once.
        kwargs = {"engine_kwargs": {"connect_args": {"timeout": 120}}}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (ImportError, ModuleNotFoundError, ValueError) as err:
            raise ConfigError(f"storage {redact(url)!r}: {err}; expected journal:PATH, sqlite:///PATH or "
                              "postgresql://user@host/db (with psycopg installed)") from err
        except Exception as err:  # SQLAlchemy raises its own types: unreachable server, or a schema race
            # Workers starting together on an empty database race to create its tables; the loser retries.
            if attempt == 4:
                raise ConfigError(f"storage {redact(url)!r} cannot be opened: {err}") from err
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def redact(url: str) -> str:
    """The URL without a password (saved in params.json and printed)."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


class TrialSeededTPE(BaseSampler):
    """TPE whose random state for trial n is seeded from (seed, n), whatever process runs the trial.

    Args:
        seed: The study's seed.
        **tpe_kwargs: `TPESampler` arguments.
    """

    def __init__(self, seed: int, **tpe_kwargs: Any) -> None:
        self._seed = int(seed)
        self._kwargs = tpe_kwargs
        self._by_trial: dict[int, TPESampler] = {}

    def _for(self, trial: FrozenTrial) -> TPESampler:
        if trial.number not in self._by_trial:
            seed = int(np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate TPE
                self._by_trial[trial.number] = TPESampler(seed=seed, **self._kwargs)
        return self._by_trial[trial.number]

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        del self._by_trial[trial.number]

    def reseed_rng(self) -> None:
        """Nothing to do: every trial's random state derives from the seed and its number."""


def distributions(space: Mapping[str, Mapping[str, Any]]) -> dict[str, BaseDistribution]:
    """Optuna distributions of an expanded search space."""
    out: dict[str, BaseDistribution] = {}
    for name, e in space.items():
        if e["type"] == "categorical":
            out[name] = CategoricalDistribution(list(e["choices"]))
        elif e["type"] == "int":
            out[name] = IntDistribution(int(e["low"]), int(e["high"]), log=bool(e.get("log", False)),
                                        step=int(e.get("step", 1)))
        else:
            out[name] = FloatDistribution(float(e["low"]), float(e["high"]), log=bool(e.get("log", False)),
                                          step=e.get("step"))
    return out


def suggest(trial: Trial, dists: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """Draw every parameter of the space for one trial."""
    values: dict[str, Any] = {}
    for name, d in dists.items():
        if isinstance(d, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, d.choices)
        elif isinstance(d, IntDistribution):
            values[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        else:
            values[name] = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    return values


# ---- worker bookkeeping: who runs a trial, and is it still alive ----


def _process_start(pid: int) -> str | None:
    """Start time of a process (Linux /proc), to tell a live worker from a new process that reused its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_id() -> dict[str, Any]:
    """This process, as recorded on the trials it runs."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _alive(trial: FrozenTrial, now: float, stale_after_s: float) -> bool:
    """Whether the worker of a RUNNING trial may still be running it."""
    owner = trial.user_attrs.get("worker")
    age = now - trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    if not owner:
        return age < YOUNG_S
    if owner.get("host") != socket.gethostname():
        return age < stale_after_s
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return owner.get("start") is None or _process_start(pid) == owner.get("start")


def recover_killed(study: Study, storage: optuna.storages.BaseStorage, stale_after_s: float = STALE_AFTER_S) -> list[
        int]:
    """Mark trials of dead workers FAIL and enqueue their parameters once (see the module docstring).

    Returns:
        The numbers of the recovered trials.
    """
    now = time.time()
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    study_id = storage.get_study_id_from_name(study.study_name)
    recovered = []
    for t in trials:
        if t.state != TrialState.RUNNING or _alive(t, now, stale_after_s):
            continue
        if t.number not in retried and t.params:
            # Enqueue before failing it: a kill between the two leaves it RUNNING, and the next resume retries.
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        recovered.append(t.number)
    return recovered


def n_complete(study: Study) -> int:
    """COMPLETE trials of a study."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _covered_before(study: Study, number: int, stale_after_s: float) -> int:
    """Trials numbered below `number` that are COMPLETE or still running in a live worker."""
    now = time.time()
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    return sum(1 for t in trials if t.number < number
               and (t.state == TrialState.COMPLETE or _alive(t, now, stale_after_s)))


# ---- one study ----


def run_study(problem: EnsembleProblem, spec: EnsembleSpec, study_name: str, storage_url_: str, n_trials: int,
              seed: int, on_trial: Callable[[FrozenTrial], None] | None = None,
              stale_after_s: float = STALE_AFTER_S, objective: Callable[[EnsembleParams], float] | None = None,
              dists: Mapping[str, BaseDistribution] | None = None) -> Study:
    """Create or resume one study and run it until it has `n_trials` COMPLETE trials.

    Args:
        problem: The data the objective scores.
        spec: The ensemble (search space and fixed parameters).
        study_name: Name of the study in the storage.
        storage_url_: Storage URL (see `open_storage`).
        n_trials: COMPLETE trials wanted in total (over all runs and workers).
        seed: Sampler seed.
        on_trial: Called after each trial of this process (progress display).
        stale_after_s: See `recover_killed`.
        objective: What a trial maximises (default `problem.score`; see `fold_objective`).
        dists: The parameters tuned (default the config's whole expanded space); the others keep the config's values.

    Returns:
        The study.
    """
    storage = open_storage(storage_url_)
    dists = dict(dists) if dists is not None else distributions(expanded_space(spec))
    score = objective or problem.score
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=TrialSeededTPE(seed, multivariate=True, n_startup_trials=10))
    recover_killed(study, storage, stale_after_s)
    if not study.get_trials(deepcopy=False):
        # The config's own values first, so that tuning never ends below them on its data.
        defaults = fixed_params(spec)
        start = {k: defaults[k] for k, d in dists.items() if k in defaults and _contains(d, defaults[k])}
        if start:
            study.enqueue_trial(start, user_attrs={"config_values": True}, skip_if_exists=True)
    me = worker_id()

    def objective(trial: Trial) -> float:
        trial.set_user_attr("worker", me)
        if _covered_before(study, trial.number, stale_after_s) >= n_trials:
            study.stop()
            raise optuna.TrialPruned("the target number of trials is covered by earlier trials")
        earlier = study.get_trials(deepcopy=False) if trial.user_attrs.get("config_values") else []
        if any(t.user_attrs.get("config_values") and t.number < trial.number for t in earlier):
            # Two workers that started on an empty study both enqueued the config's values: run them once.
            raise optuna.TrialPruned("the config's values are already another trial")
        return score(resolve(spec, suggest(trial, dists)))

    def stop_at_target(study_: Study, trial: FrozenTrial) -> None:
        if on_trial is not None and trial.state == TrialState.COMPLETE:
            on_trial(trial)
        if n_complete(study_) >= n_trials:
            study_.stop()

    while n_complete(study) < n_trials:
        study.optimize(objective, n_trials=n_trials - n_complete(study), callbacks=[stop_at_target],
                       gc_after_trial=False, show_progress_bar=False)
        if _covered_before(study, 1 << 62, stale_after_s) >= n_trials:
            break  # the rest is running in other workers
    return study


def _contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether a fixed value lies in a distribution (only such values can be enqueued)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def best_values(study: Study) -> tuple[dict[str, Any], float]:
    """Best parameters and value of a study's COMPLETE trials."""
    if n_complete(study) == 0:
        raise ConfigError(f"study {study.study_name!r} has no complete trial")
    return dict(study.best_params), float(study.best_value)


def importances(study: Study, seed: int = 0) -> dict[str, float]:
    """Importance of each tuned parameter (fANOVA, Optuna's default evaluator, seeded so that a rerun agrees; the
    importances sum to 1); empty when it cannot be computed."""
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


# ---- how a study's parameters are chosen (the config's `tuning`) ----


def fold_objective(problem: EnsembleProblem, image_fold: npt.NDArray[np.int64], sd_penalty: float
                   ) -> Callable[[EnsembleParams], float]:
    """The objective a study maximises: the pooled score, minus `sd_penalty` times the sample standard deviation of
    the per-fold scores (each fold's OOF images scored alone) when it is positive.

    Raises:
        ConfigError: A penalty with fewer than two folds.
    """
    if not sd_penalty:
        return problem.score
    folds = np.unique(image_fold)
    if len(folds) < 2:
        raise ConfigError(f"tuning.sd_penalty={sd_penalty:g} needs at least 2 folds to measure their spread; the "
                          f"images here come from folds {folds.tolist()} (an honest estimate of k folds tunes each "
                          "held-out study on k - 1: use at least 3 folds, or sd_penalty=0)")
    parts = [problem.subset(image_fold == k) for k in folds]

    def objective(params: EnsembleParams) -> float:
        per_fold = [p.score(params) for p in parts]
        return problem.score(params) - sd_penalty * float(np.std(per_fold, ddof=1))

    return objective


def top_k_values(study: Study, dists: Mapping[str, BaseDistribution], k: int) -> dict[str, Any]:
    """The parameters of the `k` best COMPLETE trials: numeric values averaged (geometric mean on a log scale, then
    snapped to the distribution's step), categorical ones voted (a tie goes to the value of the better trial)."""
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                    key=lambda t: (-float(t.value), t.number))[:k]
    if not trials:
        raise ConfigError(f"study {study.study_name!r} has no complete trial")
    out: dict[str, Any] = {}
    for name, d in dists.items():
        values = [t.params[name] for t in trials if name in t.params]
        if not values:
            continue
        if isinstance(d, CategoricalDistribution):
            counts = Counter(values)
            out[name] = next(v for v in values if counts[v] == max(counts.values()))  # values are in rank order
            continue
        arr = np.asarray(values, dtype=np.float64)
        mean = float(np.exp(np.log(arr).mean())) if d.log else float(arr.mean())
        step = d.step
        if step:
            mean = d.low + round((mean - d.low) / step) * step
        mean = min(max(mean, d.low), d.high)
        out[name] = int(round(mean)) if isinstance(d, IntDistribution) else float(np.round(mean, 12))
    return out


@dataclass(frozen=True)
class Tuned:
    """What one tuning (the main one, or one held-out fold's) chose.

    Attributes:
        values: The chosen parameter values (the tuned ones; the rest keep the config's).
        study: The study they came from (the pruned one when the space was pruned).
        importances: Of the full study's parameters.
        kept: The parameters the pruned study tuned, or None when the space was not pruned.
    """

    values: dict[str, Any]
    study: Study
    importances: dict[str, float]
    kept: list[str] | None = None


def tune_study(problem: EnsembleProblem, image_fold: npt.NDArray[np.int64], spec: EnsembleSpec, name: str, url: str,
               n_trials: int, seed: int, progress: Callable[[str], Callable[[FrozenTrial], None] | None]
               ) -> Tuned:
    """Tune on `problem` the way the config's `tuning` says: one study (objective `fold_objective`), then with an
    `importance_floor` a second one on the parameters at least that important, and the values picked from the last
    study (`best` trial, or `top_k_values`).

    Study names: `name` (with `.sd<lambda>` when the objective is penalised: its values are not comparable with a
    plain study's), and `<that>.pruned` for the second study.
    """
    how = spec.tuning
    objective = fold_objective(problem, image_fold, how.sd_penalty)
    study_name = f"{name}.sd{how.sd_penalty:g}" if how.sd_penalty else name
    dists = distributions(expanded_space(spec))
    study = run_study(problem, spec, study_name, url, n_trials, seed, progress(study_name), objective=objective)
    found = importances(study, seed)
    kept = None
    if how.importance_floor is not None and found:
        kept = [k for k in dists if found.get(k, 0.0) >= how.importance_floor] or [max(found, key=found.__getitem__)]
        dists = {k: dists[k] for k in kept}
        pruned = f"{study_name}.pruned"
        study = run_study(problem, spec, pruned, url, n_trials, seed + 1, progress(pruned), objective=objective,
                          dists=dists)
    values = best_values(study)[0] if how.pick == "best" else top_k_values(study, dists, how.top_k)
    return Tuned(values, study, found, kept)


# ---- members scored alone ----


def _score(value: float) -> float:
    return 0.0 if np.isnan(value) else float(value)


def member_scores(oof: OofData) -> dict[str, dict[str, float]]:
    """Each member alone, its boxes cut at the best confidence threshold: the score tuned on all folds (optimistic),
    and the honest one (for each fold, the threshold best on the other folds keeps that fold's boxes; the pooled
    kept boxes scored on all OOF images, as the optimistic one is)."""
    problem = oof.problem
    folds = np.unique(oof.image_fold)
    out = {}
    for name, frame in oof.members.items():
        curve = problem.evaluator.score_vs_threshold(frame, THRESHOLD_GRID)["score"].fillna(0.0).to_numpy()
        best = int(np.argmax(curve))
        kept = []
        for k in folds:
            ev = problem.subset(oof.image_fold != k).evaluator
            boxes = frame[frame["image_id"].isin(ev.image_ids)]
            cut = THRESHOLD_GRID[int(np.argmax(ev.score_vs_threshold(boxes, THRESHOLD_GRID)["score"].fillna(0.0)))]
            held = frame[frame["image_id"].isin(problem.image_ids[oof.image_fold == k])]
            kept.append(held[held["score"].to_numpy() >= cut])
        honest = _score(problem.evaluator.score(pd.concat(kept, ignore_index=True)).score)
        out[name] = {"threshold": float(THRESHOLD_GRID[best]), "optimistic": float(curve[best]), "honest": honest}
    return out


# ---- the whole tuning ----


def track_tuning(spec: EnsembleSpec, result: TuneResult, uri: str) -> str:
    """Log one tuning to MLflow (`cxrdet.tracking`: the best trial and both CV scores, not every trial); returns
    the run id."""
    from cxrdet import tracking

    metrics: dict[str, float] = {"optimistic": result.optimistic, "n_complete": float(result.n_complete)}
    if result.honest is not None:
        metrics["honest"] = result.honest
    metrics.update({f"optimistic_fold{k}": v for k, v in result.optimistic_per_fold.items()})
    metrics.update({f"honest_fold{k}": v for k, v in result.honest_per_fold.items()})
    metrics.update({f"member_honest.{name}": m["honest"] for name, m in result.members.items()
                    if m.get("honest") is not None})
    record = EnsembleRun(spec.name).read_params()
    return tracking.log_run(
        tracking.ensemble_experiment(spec.name), "tune", uri, params=result.best_params, metrics=metrics,
        tags={"cxrdet.kind": "tune", "cxrdet.ensemble": spec.name, "cxrdet.config": spec.path,
              "cxrdet.members": ",".join(spec.member_names), "cxrdet.git": (record.get("git") or {}).get("commit"),
              "cxrdet.study_storage": (record.get("study") or {}).get("storage")},
        files=[result.params_path, spec.path])


@dataclass(frozen=True)
class TuneResult:
    """What `tune` found (also written to `params.json`)."""

    params_path: Path
    best_params: dict[str, Any]
    optimistic: float
    honest: float | None
    honest_per_fold: dict[int, float]
    members: dict[str, dict[str, float]]
    n_complete: int
    importances: dict[str, float]
    optimistic_per_fold: dict[int, float] = field(default_factory=dict)
    kept: list[str] | None = None
    holdout_on_all: dict[int, float] = field(default_factory=dict)
    plain_best: bool = True

    @property
    def unconverged(self) -> str | None:
        """A warning when a held-out study's choice scores above the main study's best on all folds (the main study
        then has not found the best region: more trials, or a smaller space), else None. Only for the plain best
        trial: a top-k mean or a penalised objective is below the best by design."""
        if not self.plain_best or not self.holdout_on_all:
            return None
        k, value = max(self.holdout_on_all.items(), key=lambda kv: kv[1])
        if value <= self.optimistic + 1e-9:
            return None
        return (f"the parameters the fold-{k} held-out study chose score {value:.5f} on all OOF images, above the "
                f"main study's best {self.optimistic:.5f} ({self.n_complete} trials over {len(self.best_params)} "
                "parameters): the main study has not converged, so its parameters and both scores understate the "
                "ensemble; raise n_trials or narrow the search space")


def per_fold_scores(oof: OofData, params: EnsembleParams) -> dict[int, float]:
    """The score of `params` on each fold's OOF images alone (the tuned-on-all parameters: optimistic per fold), to
    show whether a gain is one lucky fold."""
    out = {}
    for k in np.unique(oof.image_fold):
        part = oof.problem.subset(oof.image_fold == k)
        out[int(k)] = _score(part.evaluator.score(part.submitted(part.predict(params), params.post)).score)
    return out


def tune(spec: EnsembleSpec, n_trials: int | None = None, storage: str | None = None, honest: bool = True,
         on_trial: Callable[[str, FrozenTrial], None] | None = None, oof: OofData | None = None) -> TuneResult:
    """Tune the ensemble on all folds' OOF boxes, estimate its score honestly, and write `params.json`.

    Args:
        spec: The ensemble.
        n_trials: COMPLETE trials of the main study and of each held-out-fold study (default: the config's
            `n_trials` and `honest_trials`).
        storage: Storage URL (default: the config's, else SQLite in `outputs/ensembles/NAME/`).
        honest: Also run the held-out-fold studies.
        on_trial: Called with the study name and each finished trial (progress display).
        oof: Already loaded data (default: `load_oof(spec)`).

    Returns:
        The result, also written to `outputs/ensembles/NAME/params.json`.
    """
    oof = oof or load_oof(spec)
    url = storage_url(spec, storage)
    main_trials = n_trials or spec.n_trials
    study_name = spec.name

    def progress(name: str) -> Callable[[FrozenTrial], None] | None:
        return None if on_trial is None else (lambda t: on_trial(name, t))

    if spec.tuning.sd_penalty and honest and len(np.unique(oof.image_fold)) < 3:
        raise ConfigError(f"{spec.path}: tuning.sd_penalty needs at least 3 folds with the honest estimate (each "
                          f"held-out study measures the spread of k - 1 folds); the members have "
                          f"{np.unique(oof.image_fold).tolist()}: set sd_penalty=0 or run with --no-honest")
    main = tune_study(oof.problem, oof.image_fold, spec, study_name, url, main_trials, spec.seed, progress)
    best = main.values
    optimistic = oof.problem.score(resolve(spec, best))  # the metric itself, whatever the objective was
    per_fold: dict[int, float] = {}
    on_all: dict[int, float] = {}
    if honest:
        folds = np.unique(oof.image_fold)
        if len(folds) < 2:
            raise ConfigError(f"{spec.path}: the honest estimate needs at least 2 folds, the members have "
                              f"{folds.tolist()}; run with --no-honest")
        held_out = []
        for k in folds:
            mask = oof.image_fold != k
            sub = tune_study(oof.problem.subset(mask), oof.image_fold[mask], spec, f"{spec.name}.holdout{k}", url,
                             n_trials or spec.honest_trials, spec.seed + 1000 * (int(k) + 1), progress)
            part = oof.problem.subset(oof.image_fold == k)
            chosen = resolve(spec, sub.values)
            on_all[int(k)] = oof.problem.score(chosen)  # above the main study's best: it has not converged
            frame = part.submitted(part.predict(chosen), chosen.post)
            held_out.append(frame.assign(image_id=frame["image_id"].astype(str), fold=int(k)))
            per_fold[int(k)] = _score(part.evaluator.score(held_out[-1]).score)
        # Scored like the optimistic figure: the pooled held-out predictions of all folds, on all OOF images (a
        # per-class mAP is not the mean of per-fold mAPs).
        pooled = pd.concat(held_out, ignore_index=True)
        honest_score: float | None = _score(oof.problem.evaluator.score(pooled).score)
        write_parquet(EnsembleRun(spec.name).honest_path, pooled)  # what `cxrdet select` re-scores
    else:
        honest_score = None
        EnsembleRun(spec.name).honest_path.unlink(missing_ok=True)  # rows of an earlier estimate no longer hold
    optimistic_per_fold = per_fold_scores(oof, resolve(spec, best))
    members = member_scores(oof)
    result = TuneResult(
        params_path=EnsembleRun(spec.name).params_path, best_params=best, optimistic=optimistic,
        honest=honest_score, honest_per_fold=per_fold,
        members=members, n_complete=n_complete(main.study), importances=main.importances,
        optimistic_per_fold=optimistic_per_fold, kept=main.kept, holdout_on_all=on_all,
        plain_best=spec.tuning.pick == "best" and not spec.tuning.sd_penalty,
    )  # fmt: skip
    write_params(spec, result, oof, url)
    return result


def write_params(spec: EnsembleSpec, result: TuneResult, oof: OofData, url: str) -> Path:
    """Write `params.json`: parameters, scores, members alone, study summary and where the data came from."""

    record = {
        "ensemble": spec.name,
        "config": str(spec.path),
        "config_sha256": file_sha256(spec.path),
        "params": _jsonable(flat_params(spec, result.best_params)),
        "tuned": _jsonable(result.best_params),
        "scores": {
            "optimistic": result.optimistic,
            "honest": result.honest,
            "honest_per_fold": {str(k): v for k, v in result.honest_per_fold.items()},
            "optimistic_per_fold": {str(k): v for k, v in result.optimistic_per_fold.items()},
            "holdout_choices_on_all": {str(k): v for k, v in result.holdout_on_all.items()},
            "best_member_honest": max(m["honest"] for m in result.members.values()),
        },
        "members": result.members,
        "study": {"name": spec.name, "storage": redact(url), "n_complete": result.n_complete, "seed": spec.seed,
                  "importances": result.importances},
        "tuning": {**dataclasses.asdict(spec.tuning), "described": spec.tuning.describe(), "kept": result.kept},
        "calibration": oof.calibration,
        "warnings": [w for w in (result.unconverged,) if w],
        "data": {"folds": str(oof.sources.folds), "folds_sha256": file_sha256(oof.sources.folds),
                 "labels": str(oof.sources.labels), "n_images": len(oof.problem.image_ids),
                 "n_gt_boxes": len(oof.problem.gt)},
        "git": git_revision(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return EnsembleRun(spec.name).write_params(record)


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Python values (numpy scalars and tuples made JSON-friendly)."""
    out = {}
    for k, v in values.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, tuple):
            v = list(v)
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def summary_frame(result: TuneResult) -> pd.DataFrame:
    """Members and the ensemble side by side: optimistic and honest OOF scores."""
    rows = [{"model": name, "optimistic": m["optimistic"], "honest": m["honest"]}
            for name, m in result.members.items()]
    rows.append({"model": "ensemble", "optimistic": result.optimistic, "honest": result.honest})
    return pd.DataFrame(rows)
