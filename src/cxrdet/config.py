"""Experiment configs: mmengine `Config` files with `_base_` inheritance and `--cfg-options a.b=v` overrides.

One file per experiment in `configs/experiments/` (named detector_backbone_size_schedule); shared pieces in
`configs/_base_/{models,data,schedules}/`. A config never names a fold: the fold is a run-time argument. The
experiment name, which names the run folders, is the config file's stem; `load_config` stores it under
`experiment` so that a resolved config written into a run folder still carries it.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmengine.config import Config

from cxrdet.errors import ConfigError

# Keys every experiment must resolve to (after inheritance); dotted paths into the config.
REQUIRED_KEYS: tuple[str, ...] = (
    "model.type",
    "data.size",
    "data.folds",
    "data.classes",
    "data.batch_size",
    "optim.type",
    "optim.lr",
    "lr_schedule.type",
    "train.epochs",
    "predict.score_floor",
    "predict.max_per_image",
    "evaluation.thresholds",
)
# Top-level keys that would tie a config to one fold; the fold is given on the command line instead.
FORBIDDEN_KEYS: tuple[str, ...] = ("fold", "folds_to_run")
# What mmdetection's own config files carry besides `model`, for mmengine's Runner (data loaders, pipelines, optimiser
# wrapper, schedulers, hooks, ...). A config inheriting them (`_base_ = 'mmdet::...'`) keeps only their model: Lightning
# trains with cxrdet's `data`, `optim`, `lr_schedule` and `train`, so these would look in effect and not be.
MMENGINE_RUNNER_KEYS: tuple[str, ...] = (
    "train_dataloader", "val_dataloader", "test_dataloader", "train_cfg", "val_cfg", "test_cfg", "val_evaluator",
    "test_evaluator", "optim_wrapper", "param_scheduler", "auto_scale_lr", "default_scope", "default_hooks",
    "custom_hooks", "env_cfg", "vis_backends", "visualizer", "log_processor", "log_level", "load_from", "resume",
    "launcher", "randomness", "work_dir", "cudnn_benchmark", "tta_model", "tta_pipeline", "img_scales",
    "dataset_type", "data_root", "backend_args", "metainfo", "train_pipeline", "test_pipeline", "input_size",
    "data_preprocessor",
    # Module-level variables of mmdet's RTMDet, YOLOX and DINO files that only feed their runner settings.
    "base_lr", "interval", "max_epochs", "stage2_num_epochs", "num_last_epochs", "train_pipeline_stage2",
    "train_dataset", "img_scale", "checkpoint",
)  # fmt: skip


def parse_options(options: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Turn `a.b=v` strings into `{'a.b': value}`; values are Python literals where they parse, else strings.

    `data.size=128` gives an int, `train.stages=None` None, `data.folds=demo_k5` the string `'demo_k5'`,
    `data.augment.gamma=(0.9,1.1)` a tuple.

    Raises:
        ConfigError: An option has no `=` or an empty key.
    """
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    parsed: dict[str, Any] = {}
    for option in options:
        key, sep, raw = option.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"config option {option!r}: expected KEY=VALUE with a dotted key, e.g. data.size=512")
        try:
            parsed[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            parsed[key] = raw.strip()
    return parsed


def merge_options(cfg: Config, overrides: Mapping[str, Any], source: str | Path) -> None:
    """Apply `{'a.b': value}` overrides to `cfg` in place (mmengine's `merge_from_dict`).

    Raises:
        ConfigError: An override mmengine cannot apply (a key under a value that is not a dict, such as
            `data.size.x=0`, a list index out of range, ...), naming the options and mmengine's reason.
    """
    if not overrides:
        return
    overrides = dict(overrides)
    for key, value in overrides.items():
        # A dict given where the config holds None or another non-dict (e.g. `model.backbone.init_cfg=None` of a
        # from-scratch config, given a Pretrained init_cfg) replaces it; mmengine would refuse to merge the two.
        if isinstance(value, Mapping):
            try:
                current = get_key(cfg, key)
            except KeyError:
                continue
            if not isinstance(current, Mapping):
                overrides[key] = {**value, "_delete_": True}
    try:
        cfg.merge_from_dict(overrides)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as err:
        given = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        raise ConfigError(f"{source}: the option(s) {given} cannot be applied: {err}") from err


def get_key(cfg: Mapping[str, Any], dotted: str) -> Any:
    """Value at a dotted key (`'data.size'`); raises KeyError naming the first missing part."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, (Mapping, Config)) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def validate(cfg: Mapping[str, Any], source: str | Path) -> None:
    """Check that the required keys are present and that no fold is named.

    Raises:
        ConfigError: Naming every missing key and the file.
    """
    problems = []
    for key in REQUIRED_KEYS:
        try:
            get_key(cfg, key)
        except KeyError:
            problems.append(f"missing required key {key!r}")
    for key in FORBIDDEN_KEYS:
        if key in cfg:
            problems.append(f"key {key!r} names a fold; configs never do: pass the fold on the command line (--fold)")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def load_config(path: str | Path, options: Sequence[str] | Mapping[str, Any] | None = None) -> Config:
    """Load an experiment config, resolving `_base_` files, then apply `--cfg-options` overrides and validate.

    Args:
        path: The experiment's Python config file.
        options: Overrides as `a.b=v` strings (command line) or a `{'a.b': v}` mapping.

    Returns:
        The resolved config, with `experiment` set to the file stem unless the file already sets it (a resolved
        config written into a run folder keeps its experiment's name).

    Raises:
        ConfigError: The file is missing or unreadable, or a required key is missing after the overrides.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; expected a Python config such as "
                          "configs/experiments/<detector>_<backbone>_<size>_<schedule>.py")
    try:
        with warnings.catch_warnings():
            # mmengine finds `mmdet::` base files through pkg_resources, which warns that it is deprecated.
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            cfg = Config.fromfile(str(path))
    except Exception as err:  # mmengine raises several types (SyntaxError, FileNotFoundError for a bad _base_, ...)
        raise ConfigError(f"{path}: cannot be read as an mmengine config: {err}") from err
    for key in MMENGINE_RUNNER_KEYS:
        cfg.pop(key, None)
    merge_options(cfg, parse_options(options), path)
    if "experiment" not in cfg:
        cfg.experiment = path.stem
    validate(cfg, path)
    return cfg


def to_dict(cfg: Config | Mapping[str, Any]) -> dict[str, Any]:
    """A plain nested dict of a config (what a LightningModule saves as hyper-parameters)."""
    return cfg.to_dict() if isinstance(cfg, Config) else _plain(cfg)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
