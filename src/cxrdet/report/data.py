"""What a report shows, loaded from the runs' artefacts: the pooled OOF boxes of an experiment or a tuned ensemble
with their ground truth, folds and cache (`ReportData`), and a classifier experiment's OOF probabilities with their
truth (`ExperimentOof`).

Everything is read through `cxrdet.runs` (each run's written config, prediction files, checkpoint records), never from
the experiment config files again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrdet import paths
from cxrdet.competitions import Competition, Evaluator, data_layout, get_competition, of_data, studies_of
from cxrdet.data.readers import scored_readers
from cxrdet.errors import CxrdetError, TableError
from cxrdet.metrics.classification import ClassificationResult, evaluate
from cxrdet.report.html import number
from cxrdet.runs import EnsembleRun, Experiment, Run

_MAX_LISTED = 10
CUTS = np.round(np.arange(0.0, 1.0001, 0.02), 4)

ENSEMBLE = "ensemble"


@dataclass
class ReportData:
    """Everything the figures need, for an experiment or an ensemble.

    Attributes:
        name: Experiment or ensemble name.
        kind: `experiment` or `ensemble`.
        image_ids: The OOF image set (every image of the folds used).
        image_fold: Fold of each image, indexed by image id.
        gt: Ground truth `image_id, x1, y1, x2, y2, label` (xyxy, pixels of the original image): the competition's
            (readers fused where there are several).
        predictions: OOF boxes per prediction set (`image_id, x1, y1, x2, y2, score, label`, same units); the
            primary set (the ensemble, or the experiment) is first.
        chosen: The confidence cut of each prediction set.
        meta: Per image (index image id): `orig_width, orig_height, view, sex` and the cached image's `cache` path.
        cache: The prepare cache folder the gallery reads images from.
        runs: The training runs behind it.
        notes: Lines for the report's header.
        competition: Whose metric the scores are (None: RSNA).
        images: For a competition with studies (SIIM): per OOF image `image_id, study_id, study_class`, what its
            evaluator scores the study rows against; else None.
    """

    name: str
    kind: str
    image_ids: pd.Index
    image_fold: pd.Series
    gt: pd.DataFrame
    predictions: dict[str, pd.DataFrame]
    chosen: dict[str, float]
    meta: pd.DataFrame
    cache: Path
    runs: list[Run]
    notes: list[str] = field(default_factory=list)
    competition: Competition | None = None
    images: pd.DataFrame | None = None

    @property
    def primary(self) -> str:
        return next(iter(self.predictions))

    @property
    def contest(self) -> Competition:
        """The competition (RSNA when none was given)."""
        return self.competition or get_competition("rsna")

    def evaluator(self, image_ids: pd.Index | None = None) -> Evaluator:
        """The competition metric on `image_ids` (default: every OOF image)."""
        ids = self.image_ids if image_ids is None else image_ids
        images = None if self.images is None else self.images[self.images["image_id"].isin(ids)]
        return self.contest.evaluator(self.gt[self.gt["image_id"].isin(ids)], ids, images)


def _data_of_run(run: Run) -> Any:
    """The resolved `data` section of a run's written config."""
    from cxrdet.data.datamodule import DataConfig

    return DataConfig.from_dict(run.config()["data"])


def _fold_images(data: Any, folds_used: Sequence[int]) -> pd.Series:
    """The fold of each image of the folds used (index: image id, fold-file order)."""
    from cxrdet.data.folds import read_folds

    folds = read_folds(data.folds)
    folds = folds[folds["fold"].isin(list(folds_used))].reset_index(drop=True)
    return pd.Series(folds["fold"].to_numpy(), index=pd.Index(folds["image_id"].astype(str)))


def _ground_truth(data: Any, competition: Competition, image_ids: pd.Index
                  ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The competition's ground-truth boxes of `image_ids`, the run's `data.readers` scored as validation scored, and
    for a competition with studies the images' `image_id, study_id, study_class` (else None)."""
    from cxrdet.data.labels import read_labels

    labels_csv = data_layout(data.root).labels_csv
    labels = read_labels(labels_csv)
    truth = competition.ground_truth(labels, scored_readers(data.readers))
    images = studies_of(labels.images, image_ids, labels_csv) if competition.studies is not None else None
    return truth[truth["image_id"].isin(image_ids)].reset_index(drop=True), images


def _cache_meta(data: Any, image_ids: pd.Index) -> pd.DataFrame:
    """The prepare cache's meta rows of `image_ids` (training split), indexed by image id."""
    from cxrdet.data.prepare import load_meta

    meta = load_meta(data.cache)
    return meta[meta["split"] == "train"].drop_duplicates("image_id").set_index("image_id").reindex(image_ids)


def no_oof_error(experiment: Experiment, hint: str = "") -> CxrdetError:
    """The error for an experiment without OOF predictions (report pages, and choosing one by task)."""
    return CxrdetError(f"{experiment.folder}: no fold<k>/oof.parquet; train and predict first (cxrdet train / cxrdet "
                       f"predict CONFIG --fold k --split oof){hint}")


def best_cut(curve: pd.DataFrame) -> float:
    """The cut of the highest score on a score-vs-threshold table (the lowest cut wins ties; NaN counts as 0)."""
    return float(curve["threshold"].iloc[int(np.argmax(curve["score"].fillna(0.0).to_numpy()))])


def load_experiment(experiment: str) -> ReportData:
    """The pooled OOF results of every fold of `experiment` that has them.

    Raises:
        CxrdetError: No fold has OOF predictions.
    """
    runs = Experiment(experiment).runs("oof")
    if not runs:
        raise no_oof_error(Experiment(experiment), ", or name a tuned ensemble")
    data = _data_of_run(runs[0])
    competition = of_data({"root": data.root, "competition": data.competition})
    image_fold = _fold_images(data, [r.fold for r in runs])
    image_ids = image_fold.index
    (gt, images), meta = _ground_truth(data, competition, image_ids), _cache_meta(data, image_ids)
    pred = pd.concat([r.read_predictions("oof") for r in runs], ignore_index=True)
    curve = competition.evaluator(gt, image_ids, images).score_vs_threshold(pred, CUTS)
    return ReportData(
        name=experiment, kind="experiment", image_ids=image_ids, image_fold=image_fold, gt=gt,
        predictions={experiment: pred}, chosen={experiment: best_cut(curve)}, meta=meta, cache=data.cache,
        runs=runs, competition=competition, images=images,
        notes=[f"folds {', '.join(str(r.fold) for r in runs)}; the chosen cut is the best of the pooled OOF curve "
               "(tuned on the same images it is scored on: slightly optimistic)"],
    )  # fmt: skip


def pooled_detection_score(experiment: str) -> tuple[str, float]:
    """The competition's metric (name, score) on an experiment's pooled OOF boxes at the best cut of their curve
    (what its report shows: slightly optimistic, the cut is chosen on the same images)."""
    data = load_experiment(experiment)
    pred = data.predictions[experiment]
    kept = pred[pred["score"].to_numpy() >= data.chosen[experiment]].reset_index(drop=True)
    return data.contest.metric, float(data.evaluator().score(kept).score)


def ensemble_config(name: str) -> Path | None:
    """`configs/ensembles/<name>.py` when it exists (a path to a config is taken as is)."""
    given = Path(name)
    if given.suffix == ".py" and given.is_file():
        return given
    candidate = paths.CONFIGS_DIR / "ensembles" / f"{name}.py"
    return candidate if candidate.is_file() else None


def load_ensemble_data(config: Path) -> ReportData:
    """The members' and the fused OOF boxes of a tuned ensemble (`params.json`), with the members' runs."""
    from cxrdet.ensemble.problem import load_oof
    from cxrdet.ensemble.spec import load_ensemble, resolve

    spec = load_ensemble(config)
    record = EnsembleRun(spec.name).read_params()
    oof = load_oof(spec)
    problem = oof.problem
    params = resolve(spec, record["params"])
    # Fuse without the final cut so that the curve shows every cut; the tuned cut is marked on it.
    uncut = dataclasses.replace(params, post=dataclasses.replace(params.post, final_thr=0.0))
    fused = problem.submitted(problem.predict(uncut), uncut.post)  # with the competition's extra boxes (no-finding)
    fused["image_id"] = fused["image_id"].astype(str)
    predictions = {ENSEMBLE: fused, **{name: frame for name, frame in oof.members.items()}}
    chosen = {ENSEMBLE: float(params.post.final_thr)}
    for name, frame in oof.members.items():
        chosen[name] = best_cut(problem.evaluator.score_vs_threshold(frame, CUTS))
    runs = [Run(m.experiment, k) for m in spec.members for k in m.folds]
    data = _data_of_run(runs[0])
    meta = _cache_meta(data, problem.image_ids)  # the ground truth is the problem's
    scores = record.get("scores", {})
    return ReportData(
        name=spec.name, kind="ensemble", image_ids=problem.image_ids, image_fold=pd.Series(oof.image_fold,
        index=problem.image_ids), gt=problem.gt, predictions=predictions, chosen=chosen, meta=meta,
        cache=data.cache, runs=runs, competition=problem.competition, images=problem.images,
        notes=[f"members: {', '.join(spec.member_names)}; folds {', '.join(map(str, spec.folds_used))}",
               f"tuned OOF score {number(scores.get('optimistic'))} (optimistic), honest "
               f"{number(scores.get('honest'))} (nested across folds; '-' when not run)",
               "per outer fold (a gain on one lucky fold shows here): " + _per_fold_text(scores),
               f"parameters chosen by: {(record.get('tuning') or {}).get('described', 'best trial')}; per-fold "
               f"calibration: {spec.calibration or 'none'} (member curves below are "
               f"{'after' if spec.calibration else 'without'} it)",
               "member cuts: best of each member's pooled OOF curve; ensemble cut: the tuned final_thr",
               *(f"warning: {w}" for w in record.get("warnings") or ())],
    )  # fmt: skip


def _per_fold_text(scores: dict[str, Any]) -> str:
    """`fold k: optimistic / honest` for every fold `params.json` scores."""
    opt, hon = scores.get("optimistic_per_fold") or {}, scores.get("honest_per_fold") or {}
    folds = sorted(set(opt) | set(hon), key=int)
    if not folds:
        return "not recorded (tuned before per-fold scores were kept)"
    return "; ".join(f"fold {k}: {number(opt.get(k))} tuned on all / {number(hon.get(k))} honest" for k in folds)


def load_report_data(name: str) -> ReportData:
    """An ensemble when `name` is a tuned ensemble config, else an experiment's runs."""
    config = tuned_ensemble_config(name)
    return load_ensemble_data(config) if config is not None else load_experiment(name)


def tuned_ensemble_config(name: str) -> Path | None:
    """The ensemble config of `name` when it has been tuned (`params.json` exists), else None."""
    config = ensemble_config(name)
    return config if config is not None and EnsembleRun(config.stem).is_tuned() else None


# ---- a classifier experiment's OOF probabilities ----


def read_probabilities(path: str | Path, classes: Sequence[str]) -> pd.DataFrame:
    """A classifier prediction file as an `image_id`-indexed table of the class columns, in `classes` order.

    Raises:
        TableError: Listing every problem: missing columns, duplicate image ids, probabilities that are not finite
            numbers in [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(path, ["file not found: run `cxrdet predict CONFIG --fold k --split oof` first"])
    frame = pd.read_parquet(path)
    missing = [c for c in ("image_id", *classes) if c not in frame.columns]
    if missing:
        expected = f"expected image_id and one probability column per class ({', '.join(classes)})"
        raise TableError(path, [f"missing column(s) {', '.join(map(repr, missing))}: {expected}"])
    problems = []
    ids = frame["image_id"].astype(str)
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        problems.append(f"{len(dup)} image id(s) repeat, e.g. {', '.join(map(repr, dup[:_MAX_LISTED]))}: expected "
                        "one row per image")
    values = frame[list(classes)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad_rows, bad_cols = np.nonzero(~((values >= 0) & (values <= 1)))  # NaN fails both comparisons
    for r, c in list(zip(bad_rows, bad_cols, strict=True))[:_MAX_LISTED]:
        problems.append(f"row {r + 1} (image_id {ids.iloc[r]!r}): {classes[c]}={frame[classes[c]].iloc[r]}: "
                        "expected a probability in [0, 1]")
    if len(bad_rows) > _MAX_LISTED:
        problems.append(f"... and {len(bad_rows) - _MAX_LISTED} more values outside [0, 1]")
    if problems:
        raise TableError(path, problems)
    return pd.DataFrame(values, index=pd.Index(ids, name="image_id"), columns=list(classes))


@dataclass(frozen=True)
class ExperimentOof:
    """The pooled OOF probabilities of a classifier experiment, with what they are scored against.

    Attributes:
        experiment: Its name.
        cfg: The resolved config of its first fold's run (`config.py` in the run folder).
        runs: The fold runs with OOF predictions.
        probs: `image_id`-indexed probabilities of every fold's OOF file, one column per class.
        image_fold: Fold of each image.
        truth: `image_id`-indexed 0/1 truth of those images (`truth_table`).
    """

    experiment: str
    cfg: dict
    runs: list[Run]
    probs: pd.DataFrame
    image_fold: pd.Series
    truth: pd.DataFrame


def load_experiment_oof(experiment: str) -> ExperimentOof:
    """Every fold's OOF probabilities of a classifier experiment, and their truth from the data root's label table.

    Raises:
        CxrdetError: No fold has OOF predictions. TableError: A prediction file is malformed or holds images the label
            table does not have.
    """
    from cxrdet.config import to_dict
    from cxrdet.data.classify import truth_table
    from cxrdet.data.labels import read_labels

    runs = Experiment(experiment).runs("oof")
    if not runs:
        raise no_oof_error(Experiment(experiment))
    cfg = to_dict(runs[0].config())
    classes = tuple(cfg["data"]["classes"])
    frames, folds = [], []
    for run in runs:
        frame = read_probabilities(run.predictions_path("oof"), classes)
        frames.append(frame)
        folds.append(pd.Series(run.fold, index=frame.index))
    probs = pd.concat(frames)
    image_fold = pd.concat(folds)
    root = cfg["data"].get("root") or paths.data_root(cfg["data"].get("competition"))
    labels_csv = data_layout(root).labels_csv  # a competition's or NIH's layout
    labels = read_labels(labels_csv)
    truth = truth_table(labels.images, labels.boxes, labels.classes, classes)
    unknown = probs.index.difference(truth.index)
    dup = probs.index[probs.index.duplicated()].unique()
    problems = []
    if len(unknown):
        problems.append(f"{len(unknown)} OOF image id(s) are not in the label table {labels_csv}, e.g. "
                        f"{', '.join(map(repr, unknown[:_MAX_LISTED].tolist()))}")
    if len(dup):
        problems.append(f"{len(dup)} image id(s) are predicted by more than one fold, e.g. "
                        f"{', '.join(map(repr, dup[:_MAX_LISTED].tolist()))}: expected each image in one fold")
    if problems:
        raise TableError(Experiment(experiment).folder, problems)
    return ExperimentOof(experiment=experiment, cfg=cfg, runs=runs, probs=probs, image_fold=image_fold,
                         truth=truth.loc[probs.index])


def evaluate_experiment(experiment: str) -> ClassificationResult:
    """Pooled and per-fold OOF metrics of a classifier experiment (`load_experiment_oof` then `evaluate`)."""
    oof = load_experiment_oof(experiment)
    return evaluate(oof.probs, oof.truth, oof.image_fold)


def pooled_classification_score(experiment: str) -> tuple[str, float]:
    """A classifier experiment's mean AUROC over its classes on the pooled OOF probabilities."""
    return "mean AUROC", float(evaluate_experiment(experiment).mean_auroc)
