"""An ensemble's data and the score of a parameter set: what every tuning trial evaluates.

`EnsembleProblem` holds what does not change across trials: the members' boxes prepared for fusion
(`FusionInput`), the competition metric's grouped ground truth (its `Evaluator`) and the classifier's probabilities.
A trial thresholds, fuses (per class), post-processes, adds the boxes the competition's submission needs besides the
detectors' (VinBigData's no-finding box, from the classifier when there is one) and scores, all vectorised over the
images.

`load_oof` finds the data of an ensemble config: the members' OOF prediction files (from experiment names and folds),
the fold file and the labels (from the config, else from the members' experiment configs); with
`calibration` set each fold model's scores are calibrated first (`cxrdet.ensemble.calibrate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from cxrdet import paths
from cxrdet.competitions import Competition, competition_of_labels, data_layout, get_competition, studies_of
from cxrdet.data.readers import scored_readers
from cxrdet.ensemble.calibrate import calibrate_member
from cxrdet.ensemble.fuse import BoxSet, FusionInput
from cxrdet.ensemble.postprocess import PostParams, classifier_probs, postprocess
from cxrdet.ensemble.spec import EnsembleParams, EnsembleSpec
from cxrdet.errors import ConfigError, CxrdetError, TableError
from cxrdet.runs import Run

_MAX_LISTED = 10


class EnsembleProblem:
    """The members' boxes and the ground truth of one image set, scored under many parameter sets.

    Args:
        inp: The members' boxes, prepared.
        gt: Ground-truth boxes `image_id, x1, y1, x2, y2[, label]` (xyxy, pixels of the original image) of
            `inp.image_ids`: the competition's `ground_truth`.
        prob: Classifier probability of each image of `inp.image_ids`, or None.
        engine: `fast` or `library` (see `cxrdet.ensemble.fuse`).
        competition: Whose metric scores (default RSNA).
        images: Per image of `inp.image_ids` (in order), for a competition with studies (SIIM): `image_id,
            study_id`, the truth `study_class` (the metric's) and the study classifier's `prob_<class>` columns
            (`complete`'s); None for the others.
    """

    def __init__(self, inp: FusionInput, gt: pd.DataFrame, prob: npt.NDArray[np.float64] | None = None,
                 engine: str = "fast", competition: Competition | None = None,
                 images: pd.DataFrame | None = None) -> None:
        self.inp = inp
        self.gt = gt if "label" in gt.columns else gt.assign(label=0)
        self.prob = prob
        self.engine = engine
        self.competition = competition or get_competition("rsna")
        self.images = images
        self.evaluator = self.competition.evaluator(self.gt, inp.image_ids, images)

    @property
    def image_ids(self) -> pd.Index:
        return self.inp.image_ids

    def predict(self, params: EnsembleParams) -> BoxSet:
        """Fused and post-processed boxes (xyxy pixels of the original image) under `params`."""
        if params.fusion.method == "wbf" and self.engine == "fast":
            thr = np.maximum(np.asarray(params.member_thr), params.fusion.skip_box_thr)
            fused = self.inp.fuse_wbf(params.fusion, thr)  # the final order does not matter to the metric
        else:
            fused = self.inp.fuse(params.fusion, params.member_thr, self.engine)
        return postprocess(fused, params.post, self.inp.n_members, self.prob)

    def score(self, params: EnsembleParams) -> float:
        """The competition metric of the predictions under `params` (0 when no image counts)."""
        value = self.evaluator.score(self.submitted(self.predict(params), params.post)).score
        return 0.0 if np.isnan(value) else float(value)

    def submitted(self, boxes: BoxSet, post: PostParams | None = None) -> pd.DataFrame:
        """What a submission would hold: `boxes` as a table, completed by the competition (`Competition.complete`,
        with the completion options of `post`: `none_weight`, `study_pool`, `study_weight`, `study_power`)."""
        return self.competition.complete(self.frame(boxes), self.image_ids, self.prob, self.images, post)

    def frame(self, boxes: BoxSet) -> pd.DataFrame:
        """A metric-ready table of `boxes`: image ids as a categorical over this image set (fast to index)."""
        out = pd.DataFrame(boxes.boxes, columns=["x1", "y1", "x2", "y2"])
        out["image_id"] = pd.Categorical.from_codes(boxes.image, categories=self.image_ids)
        out["score"] = boxes.score
        out["label"] = boxes.label
        return out

    def subset(self, image_mask: npt.NDArray[np.bool_]) -> EnsembleProblem:
        """The same ensemble restricted to the images where `image_mask` is True."""
        inp = self.inp.subset(image_mask)
        gt = self.gt[self.gt["image_id"].isin(inp.image_ids)]
        prob = None if self.prob is None else self.prob[image_mask]
        images = None if self.images is None else self.images[np.asarray(image_mask)].reset_index(drop=True)
        return EnsembleProblem(inp, gt, prob, self.engine, self.competition, images)


@dataclass(frozen=True)
class DataSources:
    """Where an ensemble's data come from.

    Attributes:
        folds: The fold file.
        labels: The labels CSV.
        member_configs: Per member, the experiment config file found (the run folder's resolved config first), or
            None.
        competition: The competition (the config's `competition`, else told by the labels' header).
        readers: How the labels' readers make one ground truth (`cxrdet.data.readers`), or None (the competition's
            default).
        caches: The prepare caches the members read (where each image's size is when sizes vary).
    """

    folds: Path
    labels: Path
    member_configs: dict[str, Path | None]
    competition: Competition
    readers: dict[str, Any] | None = None
    caches: tuple[Path, ...] = ()


def member_config_path(experiment: str, folds: tuple[int, ...]) -> Path | None:
    """The experiment's config: the resolved one a run wrote into its folder, else `configs/experiments/<name>.py`
    (prediction files made without a training run, e.g. simulated members)."""
    for k in folds:
        if Run(experiment, k).has_config():
            return Run(experiment, k).config_path
    committed = paths.CONFIGS_DIR / "experiments" / f"{experiment}.py"
    return committed if committed.is_file() else None


def data_sources(spec: EnsembleSpec) -> DataSources:
    """The fold file and labels of an ensemble: the config's `folds` / `labels`, else what the members' runs used
    (the fold file their prediction sidecars record, else their written configs' `data.folds`; their `data.root`),
    which must agree.

    Raises:
        ConfigError: Neither the ensemble nor the members' runs name them, or the members disagree.
    """
    configs = {m.name: member_config_path(m.experiment, m.folds) for m in spec.members}
    folds_names, roots, readers, caches = set(), set(), [], []
    for m in spec.members:
        recorded = {Run(m.experiment, k).sidecar("oof").get("folds_file") for k in m.folds} - {None}
        path = configs[m.name]
        data = _read_data_section(path) if path is not None else {}
        if recorded:
            folds_names |= {str(Path(f).resolve()) for f in recorded}
        elif path is not None:
            folds_names.add(str(paths.folds_file(data["folds"]).resolve()) if data.get("folds") else None)
        if path is not None:
            roots.add(str(data.get("root") or paths.data_root(data.get("competition"))))
            readers.append(scored_readers(data.get("readers")))  # what its OOF boxes were scored against
            if data.get("size"):
                root = Path(data["root"]) if data.get("root") else paths.data_root(data.get("competition"))
                caches.append(Path(data["cache"]) if data.get("cache") else paths.cache_dir(root, int(data["size"])))
    if spec.folds is not None:
        folds = paths.folds_file(spec.folds)
    elif len(folds_names) == 1 and None not in folds_names:
        folds = Path(folds_names.pop())
    else:
        raise ConfigError(f"{spec.path}: cannot tell the fold file: set folds=... in the ensemble config (the members' "
                          f"runs give {sorted(map(str, folds_names)) or 'none'})")
    if spec.labels is not None:
        labels = Path(spec.labels)
    elif len(roots) <= 1:
        root = next(iter(roots), None)
        labels = Path(data_layout(Path(root) if root else paths.data_root(spec.raw.get("competition"))).labels_csv)
    else:
        raise ConfigError(f"{spec.path}: the members' data.root differ ({sorted(map(str, roots))}); set labels=...")
    if spec.raw.get("competition"):
        competition = get_competition(str(spec.raw["competition"]))
    else:
        try:
            competition = competition_of_labels(labels)
        except CxrdetError as err:
            raise ConfigError(f"{spec.path}: cannot tell the competition ({err}); set competition=...") from err
    if spec.raw.get("readers") is not None:
        chosen = scored_readers(spec.raw["readers"])
    else:
        distinct = {repr(r) for r in readers}
        if len(distinct) > 1:
            raise ConfigError(f"{spec.path}: the members' data.readers differ ({sorted(distinct)}): their OOF boxes "
                              "were scored against different ground truths; set readers=... in the ensemble config")
        chosen = readers[0] if readers else None
    return DataSources(folds, labels, configs, competition, chosen, tuple(dict.fromkeys(caches)))


def image_sizes(spec: EnsembleSpec, sources: DataSources, image_ids: pd.Index
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """`(widths, heights)` of `image_ids` in pixels: the config's `image_size`, else the competition's fixed size,
    else each image's size from the members' prepare cache (`orig_width`, `orig_height` of its meta table).

    Raises:
        ConfigError: Sizes vary and no cache of the members holds every image.
    """
    from cxrdet.data.prepare import load_meta

    n = len(image_ids)
    fixed = spec.image_size or sources.competition.image_size
    if fixed is not None:
        return np.full(n, float(fixed[0])), np.full(n, float(fixed[1]))
    for cache in sources.caches:
        try:
            meta = load_meta(cache).drop_duplicates("image_id").set_index("image_id")
        except FileNotFoundError:
            continue
        found = meta.reindex(image_ids)
        if not found["orig_width"].isna().any():
            return (found["orig_width"].to_numpy(dtype=np.float64), found["orig_height"].to_numpy(dtype=np.float64))
    raise ConfigError(f"{spec.path}: {sources.competition.name} images vary in size and no prepare cache of the "
                      f"members ({', '.join(map(str, sources.caches)) or 'none found'}) holds all {n} images: run "
                      "`cxrdet prepare`, or set image_size=... in the ensemble config")


def _read_data_section(path: Path) -> dict[str, Any]:
    """The `data` dict of an experiment config (no validation beyond that)."""
    from mmengine.config import Config

    try:
        return dict(Config.fromfile(str(path)).to_dict().get("data") or {})
    except Exception as err:  # mmengine raises several types for unreadable files
        raise ConfigError(f"{path}: cannot be read as an mmengine config: {err}") from err


def require_predictions(spec: EnsembleSpec, split: str) -> None:
    """Check that every prediction file of the ensemble on `split` exists (members and classifier, every fold).

    Raises:
        TableError: Listing every missing file at once.
    """
    experiments = [m.experiment for m in spec.members] + ([spec.classifier["experiment"]] if spec.classifier else [])
    missing = [str(Run(e, k).predictions_path(split)) for e in experiments for k in spec.folds_used
               if not Run(e, k).has_predictions(split)]
    if missing:
        raise TableError("OOF predictions" if split == "oof" else f"{split} predictions",
                         [f"missing {p}" for p in missing])


@dataclass(frozen=True)
class OofData:
    """An ensemble's pooled OOF problem and the fold of each of its images."""

    problem: EnsembleProblem
    image_fold: npt.NDArray[np.int64]
    sources: DataSources
    members: dict[str, pd.DataFrame]
    calibration: dict[str, Any] | None = None
    """With `calibration` set: member name -> fold -> class -> map (`cxrdet.ensemble.calibrate`), already
    applied to `members` and `problem`; None without calibration."""


def load_oof(spec: EnsembleSpec) -> OofData:
    """Load the members' OOF boxes of all folds, the ground truth and the classifier probabilities.

    Raises:
        TableError: Missing or unreadable prediction files (all listed), OOF boxes on images outside their fold.
        ConfigError: The fold file or labels cannot be found.
    """
    from cxrdet.data.folds import read_folds
    from cxrdet.data.labels import read_labels

    require_predictions(spec, "oof")
    sources = data_sources(spec)
    folds = read_folds(sources.folds)
    folds = folds[folds["fold"].isin(spec.folds_used)].reset_index(drop=True)
    image_ids = pd.Index(folds["image_id"])
    ann = read_labels(sources.labels)
    truth = sources.competition.ground_truth(ann, sources.readers)
    gt = truth[truth["image_id"].isin(image_ids)].reset_index(drop=True)
    fold_of = pd.Series(folds["fold"].to_numpy(), index=image_ids)
    members, problems, maps = {}, [], {}
    n_per_fold = {int(k): int(n) for k, n in folds["fold"].value_counts().items()}  # images, boxes or not
    for m in spec.members:
        parts = {}
        for k in spec.folds_used:
            part = Run(m.experiment, k).read_predictions("oof")
            wrong = fold_of.reindex(part["image_id"]).to_numpy() != k
            if wrong.any():
                ids = pd.unique(part["image_id"][wrong])
                problems.append(f"{Run(m.experiment, k).predictions_path('oof')}: {len(ids)} image(s) not in fold "
                                f"{k} of {sources.folds}, e.g. {list(ids[:_MAX_LISTED])}")
            parts[k] = part
        parts, maps[m.name] = calibrate_member(parts, spec.calibration, n_per_fold)
        members[m.name] = pd.concat(list(parts.values()), ignore_index=True)
    if problems:
        raise TableError("OOF predictions", problems)
    inp = FusionInput.from_frames(list(members.values()), image_ids, *image_sizes(spec, sources, image_ids),
                                  names=spec.member_names)
    prob, class_probs = classifier_inputs(spec, sources.competition, image_ids, "oof")
    images = None
    if sources.competition.studies is not None:
        images = study_images(ann.images, image_ids, class_probs, str(sources.labels))
    problem = EnsembleProblem(inp, gt, prob, spec.engine, sources.competition, images)
    return OofData(problem, folds["fold"].to_numpy(dtype=np.int64), sources, members,
                   maps if spec.calibration is not None else None)


def classifier_inputs(spec: EnsembleSpec, competition: Competition, image_ids: pd.Index, split: str
                      ) -> tuple[npt.NDArray[np.float64] | None, pd.DataFrame | None]:
    """The ensemble classifier's outputs on `split` (`oof`: each image from its fold's model; `test`: the mean of the
    fold models), aligned with `image_ids`: the gate probability (its `column`, or 1 - it with `complement=True`) and,
    for a competition with study classes (SIIM), the `prob_<class>` table of every study class. `(None, None)`
    without a classifier.

    Raises:
        TableError: A missing column, a probability outside [0, 1], an image without a row.
    """
    if spec.classifier is None:
        return None, None
    exp = spec.classifier["experiment"]
    frame = pd.concat([Run(exp, k).read_predictions(split) for k in spec.folds_used], ignore_index=True)
    source = f"{'OOF' if split == 'oof' else split} probabilities of {exp}"
    prob = classifier_probs(frame, image_ids, source, spec.classifier.get("column"))
    if spec.classifier.get("complement"):
        prob = 1.0 - prob
    if not competition.study_classes:
        return prob, None
    table = pd.DataFrame({f"prob_{c}": classifier_probs(frame, image_ids, source, c)
                          for c in competition.study_classes})
    return prob, table


def study_images(images: pd.DataFrame, image_ids: pd.Index, class_probs: pd.DataFrame | None,
                 source: str) -> pd.DataFrame:
    """`EnsembleProblem.images`: the `image_id, study_id` (and `study_class` when labelled) rows of `image_ids` from a
    per-image table (`Annotations.images`, or a test split's `Competition.studies`), with the study classifier's
    `prob_<class>` columns beside them.

    Raises:
        TableError: An image of the set has no row in `images`.
    """
    out = studies_of(images, image_ids, source)
    if class_probs is not None:
        out = pd.concat([out, class_probs.reset_index(drop=True)], axis=1)
    return out
