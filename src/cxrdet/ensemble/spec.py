"""Ensemble descriptions (`configs/ensembles/NAME.py`) and their parameters.

An ensemble config is an mmengine Python config with these keys (see `configs/ensembles/` for examples):

- `members`: list of `dict(experiment=NAME, folds=[0, 1, ...], weight=1.0, name=NAME)`; `weight` and `name` are
  optional. Prediction files derive from the experiment name and fold (`cxrdet.runs.Run.predictions_path`), never
  from paths in the config. Every member must list the same folds (the OOF boxes are pooled over them).
- `fusion`: `FusionParams` fields (`method`, `iou_thr`, `skip_box_thr`, `conf_type`, ...) plus `engine`
  (`fast` or `library`) and `test_fold_merge` (`before`: each member's fold models are merged on the test set first,
  then the members fused; `after`: each fold's members are fused, then the folds merged) and `test_fold_conf_type`
  (the WBF `conf_type` of that fold merge, default `avg`, which scales a box found by m of k fold models by m/k:
  `max` keeps the single-model score scale that the OOF-tuned thresholds were fitted on).
- `postprocess`: `PostParams` fields plus `member_thr` (one number, or a dict member name -> number); `class_thr`
  is a list of one cut per class index (e.g. 14 for VinBigData), and tuning it (`search_space.class_thr`) expands to
  one parameter per class, `class_thr.<k>`.
- `classifier`: None, or `dict(experiment=NAME, column=None)`: an image-level classifier whose files at
  `predictions_path(NAME, fold, split)` hold `image_id` and one probability column per class (`cxrdet predict` of a
  classifier config); `column` names the class that gates the boxes (None: the table's only class column), and
  `complement=True` gates with 1 - that column (SIIM: P(opacity) = 1 - P(negative)). For a competition with study
  classes (SIIM) the classifier's columns of those classes are also the study predictions (`Competition.complete`).
- `search_space`: parameter name -> `dict(type='float'|'int'|'categorical', low=, high=, step=, log=, choices=)`.
  Names are fusion and postprocess keys; `weight` and `member_thr` expand to one parameter per member
  (`weight.<member>`, `member_thr.<member>`; the first member's weight stays fixed: only ratios matter).
- `n_trials`, `honest_trials` (per held-out fold; default `n_trials`), `seed`.
- `tuning`: how a study's parameters are chosen (`TuningSpec`): `pick='best'` (the best trial) or `'top_k'` (the
  mean of the `top_k` best trials' numeric values, the vote of their categorical ones), `sd_penalty` (the objective
  is the pooled score minus this times the across-fold standard deviation of the per-fold scores) and
  `importance_floor` (after the full study, a second one tunes only the parameters whose importance is at least
  this, the others at the config's values). Default: the best trial of one plain study.
- `calibration`: None, `'quantile'` or `'rate'`: each fold model's scores mapped per class onto the member's pooled
  score scale before pooling and before the test-time fold merge (`cxrdet.ensemble.calibrate`).
- Optional: `image_size` ((width, height) or a side; default the competition's size, or for a competition whose
  images vary (VinBigData) each image's size from the members' prepare cache), `folds` and `labels` (default: the
  members' experiment configs' `data.folds` and `data.root`), `competition` (default: told by the labels' header),
  `readers` (how a multi-reader label table becomes the ground truth, `cxrdet.data.readers`; default the members'
  `data.readers`), `storage` (default SQLite under `outputs/ensembles/NAME/`),
  `test_ids` (a submission-format CSV listing the test images; default the data root's sample submission).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrdet import paths
from cxrdet.ensemble.calibrate import METHODS as CALIBRATIONS
from cxrdet.ensemble.fuse import CONF_TYPES, FusionParams
from cxrdet.ensemble.postprocess import PostParams
from cxrdet.errors import ConfigError

FUSION_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FusionParams) if f.name != "weights")
POST_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PostParams))
SCALAR_POST_KEYS: tuple[str, ...] = tuple(k for k in POST_KEYS if k != "class_thr")
PER_MEMBER_KEYS: tuple[str, ...] = ("weight", "member_thr")
PER_CLASS_KEY = "class_thr"
FOLD_MERGES: tuple[str, ...] = ("before", "after")
ENGINES: tuple[str, ...] = ("fast", "library")
SPACE_TYPES: tuple[str, ...] = ("float", "int", "categorical")
CLASSIFIER_KEYS: frozenset[str] = frozenset({"experiment", "column", "complement"})
TOP_KEYS: tuple[str, ...] = (
    "name", "members", "fusion", "postprocess", "classifier", "search_space", "n_trials", "honest_trials", "seed",
    "image_size", "folds", "labels", "storage", "test_ids", "competition", "readers", "tuning", "calibration",
)  # fmt: skip
PICKS: tuple[str, ...] = ("best", "top_k")


@dataclass(frozen=True)
class TuningSpec:
    """How a study's parameters are chosen (the `tuning` key; see the module docstring).

    Attributes:
        pick: `best` (the best trial) or `top_k` (the top_k best trials' values averaged, or voted when
            categorical).
        top_k: Trials averaged by `top_k`.
        sd_penalty: lambda of the objective `score - lambda * sd(per-fold scores)`; 0 scores the pooled folds alone.
        importance_floor: None, or the importance (Optuna's fANOVA, normalised to sum 1) below which a parameter is
            fixed at the config's value in a second study.
    """

    pick: str = "best"
    top_k: int = 10
    sd_penalty: float = 0.0
    importance_floor: float | None = None

    def describe(self) -> str:
        """One line for logs and reports."""
        parts = ["best trial" if self.pick == "best" else f"mean of the top {self.top_k} trials"]
        if self.sd_penalty:
            parts.append(f"objective - {self.sd_penalty:g} x across-fold sd")
        if self.importance_floor is not None:
            parts.append(f"space pruned to importance >= {self.importance_floor:g}")
        return ", ".join(parts)


@dataclass(frozen=True)
class MemberSpec:
    """One member of an ensemble: an experiment's fold models.

    Attributes:
        name: Unique name in the ensemble (default: the experiment name); names its parameters.
        experiment: Experiment name (config stem); its predictions are at `predictions_path(experiment, k, split)`.
        folds: The folds whose models predicted OOF and test boxes.
        weight: Fixed fusion weight (when `weight` is not tuned).
    """

    name: str
    experiment: str
    folds: tuple[int, ...]
    weight: float = 1.0


@dataclass(frozen=True)
class EnsembleSpec:
    """A parsed ensemble config (see the module docstring for the keys)."""

    name: str
    path: Path
    members: tuple[MemberSpec, ...]
    fusion: dict[str, Any]
    postprocess: dict[str, Any]
    classifier: dict[str, Any] | None
    search_space: dict[str, dict[str, Any]]
    n_trials: int
    honest_trials: int
    seed: int
    image_size: tuple[float, float] | None
    folds: str | None
    labels: str | None
    storage: str | None
    engine: str
    test_fold_merge: str
    test_fold_conf_type: str
    raw: dict[str, Any]
    tuning: TuningSpec = TuningSpec()
    calibration: str | None = None

    @property
    def member_names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def folds_used(self) -> tuple[int, ...]:
        """The folds all members share."""
        return self.members[0].folds


@dataclass(frozen=True)
class EnsembleParams:
    """Everything one trial (or the submission) applies to the members' boxes."""

    fusion: FusionParams
    member_thr: tuple[float, ...]
    post: PostParams


def load_ensemble(path: str | Path) -> EnsembleSpec:
    """Read and check an ensemble config.

    Raises:
        ConfigError: Naming the file and every problem found.
    """
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: ensemble config not found; expected a Python config such as "
                          "configs/ensembles/<name>.py")
    try:
        raw = Config.fromfile(str(path)).to_dict()
    except Exception as err:  # mmengine raises several types for unreadable files
        raise ConfigError(f"{path}: cannot be read as an mmengine config: {err}") from err
    return parse_ensemble(raw, path)


def _section(raw: Mapping[str, Any], key: str, problems: list[str]) -> dict[str, Any]:
    """`raw[key]` as a dict (absent or None: empty); anything else is a problem."""
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{key}={value!r}: expected a dict")
        return {}
    return {str(k): v for k, v in value.items()}


def _integer(raw: Mapping[str, Any], key: str, default: int | None, problems: list[str], low: int) -> int | None:
    """`raw[key]` as an integer >= `low` (absent: `default`); anything else is a problem."""
    value = raw.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        problems.append(f"{key}={value!r}: expected an integer >= {low}")
        return default
    return int(value)


def _image_size(value: Any, problems: list[str]) -> tuple[float, float]:
    """`image_size`: one side (square images) or (width, height), in pixels."""
    pair = (value, value) if np.isscalar(value) else value
    try:
        width, height = (float(v) for v in pair)
        if width > 0 and height > 0:
            return width, height
    except (TypeError, ValueError):
        pass
    problems.append(f"image_size={value!r}: expected a number of pixels or (width, height)")
    return 1024.0, 1024.0


def parse_ensemble(raw: Mapping[str, Any], path: Path) -> EnsembleSpec:
    """Build an `EnsembleSpec` from a config's dict; `path` names it (its stem is the ensemble name).

    Raises:
        ConfigError: Naming the file and every problem found (an unknown key, a section of the wrong type, a bad
            member, search-space entry, count or size).
    """
    problems: list[str] = []
    unknown = sorted(str(k) for k in raw if k not in TOP_KEYS and not str(k).startswith("_"))
    if unknown:
        problems.append(f"unknown key(s) {unknown}; expected some of {list(TOP_KEYS)}")
    members = _parse_members(raw.get("members"), problems)
    fusion = _section(raw, "fusion", problems)
    engine = str(fusion.pop("engine", "fast"))
    merge = str(fusion.pop("test_fold_merge", "before"))
    fold_conf = str(fusion.pop("test_fold_conf_type", "avg"))
    post = _section(raw, "postprocess", problems)
    if engine not in ENGINES:
        problems.append(f"fusion.engine={engine!r}: expected one of {list(ENGINES)}")
    if merge not in FOLD_MERGES:
        problems.append(f"fusion.test_fold_merge={merge!r}: expected one of {list(FOLD_MERGES)}")
    if fold_conf not in CONF_TYPES:
        problems.append(f"fusion.test_fold_conf_type={fold_conf!r}: expected one of {list(CONF_TYPES)}")
    for key in fusion:
        if key not in FUSION_KEYS:
            problems.append(f"fusion.{key}: unknown key; expected some of {list(FUSION_KEYS)}")
    for key in post:
        if key not in (*POST_KEYS, "member_thr"):
            problems.append(f"postprocess.{key}: unknown key; expected some of {[*POST_KEYS, 'member_thr']}")
    class_thr = post.get(PER_CLASS_KEY)
    if class_thr is not None and (isinstance(class_thr, (str, Mapping)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in np.ravel(np.asarray(class_thr,
                                                                                               dtype=object)))):
        problems.append(f"postprocess.class_thr={class_thr!r}: expected a list of one number per class index")
    space = {}
    for key, entry in _section(raw, "search_space", problems).items():
        if isinstance(entry, Mapping):
            space[key] = dict(entry)
        else:
            problems.append(f"search_space.{key}={entry!r}: expected dict(type=..., low=..., high=...) or "
                            "dict(type='categorical', choices=[...])")
    names = [m.name for m in members]
    for key, entry in space.items():
        problems += _space_problems(key, entry, names)
    if PER_CLASS_KEY in space and not post.get(PER_CLASS_KEY):
        problems.append("search_space.class_thr: needs postprocess.class_thr=[...] with one starting cut per class "
                        "index (its length says how many classes are tuned)")
    n_trials = _integer(raw, "n_trials", 100, problems, low=1)
    honest = _integer(raw, "honest_trials", None, problems, low=1)
    seed = _integer(raw, "seed", 0, problems, low=0)
    image_size = _image_size(raw["image_size"], problems) if raw.get("image_size") is not None else None
    classifier = raw.get("classifier")
    if classifier is not None:
        if not isinstance(classifier, Mapping) or "experiment" not in classifier or set(classifier) - CLASSIFIER_KEYS:
            problems.append(f"classifier={classifier!r}: expected None or dict(experiment=NAME, column=None or a "
                            "class name, complement=False)")
        else:
            classifier = {"column": None, **dict(classifier)}
    for key in ("folds", "labels", "storage"):
        if raw.get(key) is not None and not isinstance(raw[key], (str, Path)):
            problems.append(f"{key}={raw[key]!r}: expected a file name or path")
    if raw.get("competition") is not None and not isinstance(raw["competition"], str):
        problems.append(f"competition={raw['competition']!r}: expected a competition name such as 'vinbigdata'")
    if raw.get("readers") is not None and not isinstance(raw["readers"], Mapping):
        problems.append(f"readers={raw['readers']!r}: expected None or dict(mode=..., iou_thr=..., drop=[...])")
    try:
        paths.component(raw.get("name", path.stem), "ensemble name")  # it names the ensemble's output folder
    except ConfigError as err:
        problems.append(str(err))
    tuning = _tuning(raw.get("tuning"), problems)
    calibration = raw.get("calibration")
    if calibration is not None and calibration not in CALIBRATIONS:
        problems.append(f"calibration={calibration!r}: expected None or one of {list(CALIBRATIONS)}")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    spec = EnsembleSpec(
        name=str(raw.get("name", path.stem)), path=path, members=tuple(members), fusion=fusion, postprocess=post,
        classifier=dict(classifier) if classifier is not None else None, search_space=space, n_trials=n_trials,
        honest_trials=honest if honest is not None else n_trials, seed=seed,
        image_size=image_size, folds=raw.get("folds"), labels=raw.get("labels"), storage=raw.get("storage"),
        engine=engine, test_fold_merge=merge, test_fold_conf_type=fold_conf, raw=dict(raw), tuning=tuning,
        calibration=calibration,
    )  # fmt: skip
    try:
        resolve(spec, {})  # the fixed values alone must make valid parameters
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise ConfigError(f"{path}: the fixed fusion and postprocess values do not make valid parameters: "
                          f"{type(err).__name__}: {err}") from err
    return spec


def _tuning(raw: Any, problems: list[str]) -> TuningSpec:
    """The `tuning` section as a `TuningSpec`; problems appended."""
    if raw is None:
        return TuningSpec()
    if not isinstance(raw, Mapping) or set(raw) - {"pick", "top_k", "sd_penalty", "importance_floor"}:
        problems.append(f"tuning={raw!r}: expected dict(pick='best'|'top_k', top_k=10, sd_penalty=0.0, "
                        "importance_floor=None)")
        return TuningSpec()
    pick, top_k = raw.get("pick", "best"), raw.get("top_k", 10)
    penalty, floor = raw.get("sd_penalty", 0.0), raw.get("importance_floor")
    ok = True
    if pick not in PICKS:
        problems.append(f"tuning.pick={pick!r}: expected one of {list(PICKS)}")
        ok = False
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        problems.append(f"tuning.top_k={top_k!r}: expected an integer >= 1")
        ok = False
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not 0 <= penalty < np.inf:
        problems.append(f"tuning.sd_penalty={penalty!r}: expected a number >= 0")
        ok = False
    if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < 1):
        problems.append(f"tuning.importance_floor={floor!r}: expected None or a number in [0, 1)")
        ok = False
    return TuningSpec(str(pick), int(top_k), float(penalty), None if floor is None else float(floor)) if ok \
        else TuningSpec()


def _parse_members(raw: Any, problems: list[str]) -> list[MemberSpec]:
    """Members from the config's list; problems appended."""
    if not raw or isinstance(raw, (str, Mapping)) or not isinstance(raw, Sequence):
        problems.append(f"members={raw!r}: expected a non-empty list of dict(experiment=NAME, folds=[...])")
        return []
    members = []
    for i, m in enumerate(raw):
        if not isinstance(m, Mapping) or "experiment" not in m or "folds" not in m:
            problems.append(f"members[{i}]: expected dict(experiment=NAME, folds=[...]), got {m!r}")
            continue
        folds_raw = m["folds"]
        if isinstance(folds_raw, (str, Mapping)) or not isinstance(folds_raw, Sequence) or not folds_raw or not all(
                isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 0 for k in folds_raw):
            problems.append(f"members[{i}].folds={folds_raw!r}: expected a non-empty list of fold numbers >= 0")
            continue
        weight = m.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight):
            problems.append(f"members[{i}].weight={weight!r}: expected a number")
            continue
        members.append(MemberSpec(str(m.get("name", m["experiment"])), str(m["experiment"]),
                                  tuple(sorted(int(k) for k in folds_raw)), float(weight)))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        problems.append(f"members: names {names} repeat; give repeated experiments a distinct name=")
    if len({m.folds for m in members}) > 1:
        problems.append(f"members: folds differ ({[list(m.folds) for m in members]}); every member must list the "
                        "same folds so that their OOF boxes cover the same images")
    return members


def _space_problems(key: str, entry: Mapping[str, Any], names: list[str]) -> list[str]:
    """What is wrong with one search-space entry."""
    base, _, member = key.partition(".")
    known = base in (*FUSION_KEYS, *POST_KEYS, *PER_MEMBER_KEYS) and (not member or base in PER_MEMBER_KEYS
                                                                       or base == PER_CLASS_KEY)
    if not known:
        return [f"search_space.{key}: unknown parameter; expected one of "
                f"{[*FUSION_KEYS, *POST_KEYS, *PER_MEMBER_KEYS]} (per member: weight.<member>, member_thr.<member>)"]
    if member and base in PER_MEMBER_KEYS and member not in names:
        return [f"search_space.{key}: no member named {member!r} (members: {names})"]
    kind = entry.get("type")
    if kind not in SPACE_TYPES:
        return [f"search_space.{key}.type={kind!r}: expected one of {list(SPACE_TYPES)}"]
    if kind == "categorical":
        return [] if entry.get("choices") else [f"search_space.{key}: categorical needs choices=[...]"]
    if "low" not in entry or "high" not in entry or not entry["low"] <= entry["high"]:
        return [f"search_space.{key}: {kind} needs low <= high, got {dict(entry)!r}"]
    return []


def expanded_space(spec: EnsembleSpec) -> dict[str, dict[str, Any]]:
    """The search space with `weight` and `member_thr` expanded per member (`weight.<name>`, ...)."""
    out: dict[str, dict[str, Any]] = {}
    for key, entry in spec.search_space.items():
        if key == "weight":
            out.update({f"weight.{m.name}": entry for m in spec.members[1:]})
        elif key == "member_thr":
            out.update({f"member_thr.{m.name}": entry for m in spec.members})
        elif key == PER_CLASS_KEY:
            out.update({f"class_thr.{k}": entry for k in range(len(spec.postprocess[PER_CLASS_KEY]))})
        else:
            out[key] = entry
    return out


def fixed_params(spec: EnsembleSpec) -> dict[str, Any]:
    """The flat parameters the config fixes (what a trial starts from before its own values)."""
    flat: dict[str, Any] = {**spec.fusion, **{k: v for k, v in spec.postprocess.items()
                                              if k not in ("member_thr", PER_CLASS_KEY)}}
    flat.update({f"class_thr.{k}": float(v) for k, v in enumerate(spec.postprocess.get(PER_CLASS_KEY) or ())})
    thr = spec.postprocess.get("member_thr", 0.0)
    for m in spec.members:
        flat[f"weight.{m.name}"] = m.weight
        flat[f"member_thr.{m.name}"] = float(thr.get(m.name, 0.0) if isinstance(thr, Mapping) else thr)
    return flat


def resolve(spec: EnsembleSpec, values: Mapping[str, Any]) -> EnsembleParams:
    """Turn flat parameter values (a trial's, or `params.json`'s) over the config's fixed ones into parameters.

    Raises:
        ConfigError: A value is out of its valid range (e.g. an unknown conf_type).
    """
    flat = {**fixed_params(spec), **values}
    if PER_CLASS_KEY in flat:  # a whole list of per-class cuts
        flat.update({f"class_thr.{k}": float(v) for k, v in enumerate(flat.pop(PER_CLASS_KEY) or ())})
    for key in list(flat):
        base, _, member = key.partition(".")
        if base in PER_MEMBER_KEYS and not member:
            flat.update({f"{base}.{m.name}": flat[key] for m in spec.members})
            del flat[key]
    weights = tuple(float(flat[f"weight.{m.name}"]) for m in spec.members)
    fusion = FusionParams(**{k: flat[k] for k in FUSION_KEYS if k in flat}, weights=weights)
    per_class = sorted((int(k.partition(".")[2]), float(v)) for k, v in flat.items() if k.startswith("class_thr."))
    post = PostParams(**{k: flat[k] for k in SCALAR_POST_KEYS if k in flat},
                      class_thr=tuple(v for _, v in per_class))
    member_thr = tuple(float(flat[f"member_thr.{m.name}"]) for m in spec.members)
    return EnsembleParams(fusion, member_thr, post)


def flat_params(spec: EnsembleSpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """The complete flat parameters (fixed ones overlaid with `values`), as saved in `params.json`."""
    params = resolve(spec, values)
    flat: dict[str, Any] = {k: getattr(params.fusion, k) for k in FUSION_KEYS}
    flat.update({k: getattr(params.post, k) for k in SCALAR_POST_KEYS})
    flat.update({f"class_thr.{k}": v for k, v in enumerate(params.post.class_thr)})
    for m, w, t in zip(spec.members, params.fusion.weights or (), params.member_thr, strict=True):
        flat[f"weight.{m.name}"] = w
        flat[f"member_thr.{m.name}"] = t
    return flat
