"""Ensemble configs: parsing, expansion of per-member parameters, errors that name what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrdet.ensemble.spec import expanded_space, flat_params, load_ensemble, parse_ensemble, resolve
from cxrdet.errors import ConfigError

RAW = {
    "members": [{"experiment": "a", "folds": [1, 0]}, {"experiment": "b", "folds": [0, 1], "weight": 2.0}],
    "fusion": {"method": "wbf", "iou_thr": 0.4, "test_fold_merge": "after"},
    "postprocess": {"member_thr": {"b": 0.2}, "shrink": 0.875},
    "search_space": {"weight": {"type": "float", "low": 0.5, "high": 2.0},
                     "member_thr": {"type": "float", "low": 0.0, "high": 0.5},
                     "conf_type": {"type": "categorical", "choices": ["avg", "max"]}},
    "n_trials": 7,
    "seed": 11,
}


def test_parse_and_resolve() -> None:
    spec = parse_ensemble(RAW, Path("configs/ensembles/pair.py"))
    assert spec.name == "pair" and spec.folds_used == (0, 1) and spec.honest_trials == 7
    assert spec.test_fold_merge == "after" and spec.engine == "fast" and spec.test_fold_conf_type == "avg"
    # weight expands to every member but the first (only ratios matter); member_thr to every member
    assert list(expanded_space(spec)) == ["weight.b", "member_thr.a", "member_thr.b", "conf_type"]
    fixed = resolve(spec, {})
    assert fixed.fusion.weights == (1.0, 2.0) and fixed.member_thr == (0.0, 0.2)
    assert fixed.fusion.iou_thr == 0.4 and fixed.post.shrink == 0.875
    tuned = resolve(spec, {"weight.b": 0.7, "member_thr.a": 0.1, "conf_type": "max"})
    assert tuned.fusion.weights == (1.0, 0.7) and tuned.member_thr == (0.1, 0.2)
    assert tuned.fusion.conf_type == "max"
    flat = flat_params(spec, {"weight.b": 0.7})
    assert flat["weight.b"] == 0.7 and flat["member_thr.b"] == 0.2 and flat["max_boxes"] is None


def test_config_problems_are_all_listed(tmp_path: Path) -> None:
    raw = {
        "members": [{"experiment": "a", "folds": [0, 1]}, {"experiment": "b", "folds": [0]}],
        "fusion": {"methd": "wbf"},
        "n_trial": 5,
        "search_space": {"iou": {"type": "float", "low": 0, "high": 1},
                         "final_thr": {"type": "float", "low": 0.9, "high": 0.1},
                         "member_thr.c": {"type": "float", "low": 0, "high": 1}},
    }
    with pytest.raises(ConfigError) as err:
        parse_ensemble(raw, tmp_path / "bad.py")
    text = str(err.value)
    for part in ("bad.py", "unknown key(s) ['n_trial']", "folds differ", "fusion.methd", "search_space.iou",
                 "search_space.final_thr", "no member named 'c'"):
        assert part in text
    with pytest.raises(ConfigError, match="conf_type"):
        parse_ensemble({**RAW, "fusion": {"conf_type": "mean"}}, tmp_path / "x.py")
    with pytest.raises(ConfigError, match="fusion.test_fold_conf_type='mean': expected one of"):
        parse_ensemble({**RAW, "fusion": {"test_fold_conf_type": "mean"}}, tmp_path / "x.py")


def test_classifier_entry_names_an_experiment_and_optionally_its_column(tmp_path: Path) -> None:
    assert parse_ensemble(RAW, tmp_path / "x.py").classifier is None
    spec = parse_ensemble({**RAW, "classifier": {"experiment": "cls"}}, tmp_path / "x.py")
    assert spec.classifier == {"experiment": "cls", "column": None}
    spec = parse_ensemble({**RAW, "classifier": {"experiment": "cls", "column": "Pneumonia"}}, tmp_path / "x.py")
    assert spec.classifier == {"experiment": "cls", "column": "Pneumonia"}
    for bad in ({"column": "p"}, {"experiment": "cls", "col": "p"}, "cls"):
        with pytest.raises(ConfigError, match=r"classifier=.*expected None or dict\(experiment=NAME, column="):
            parse_ensemble({**RAW, "classifier": bad}, tmp_path / "x.py")


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "duo.py"
    path.write_text("members = [dict(experiment='a', folds=[0, 1])]\nfusion = dict(method='none')\n")
    spec = load_ensemble(path)
    assert spec.name == "duo" and spec.n_trials == 100
    with pytest.raises(ConfigError, match="not found"):
        load_ensemble(tmp_path / "missing.py")


def test_committed_example_configs_parse() -> None:
    configs = sorted(Path(__file__).resolve().parents[2].joinpath("configs", "ensembles").glob("*.py"))
    assert configs
    for path in configs:
        assert load_ensemble(path).members


def test_per_class_thresholds_expand_to_one_parameter_per_class() -> None:
    raw = {**RAW, "postprocess": {"class_thr": [0.1, 0.0, 0.3]},
           "search_space": {"class_thr": {"type": "float", "low": 0.0, "high": 0.5}}}
    spec = parse_ensemble(raw, Path("three.py"))
    assert list(expanded_space(spec)) == ["class_thr.0", "class_thr.1", "class_thr.2"]
    assert resolve(spec, {}).post.class_thr == (0.1, 0.0, 0.3)
    tuned = resolve(spec, {"class_thr.1": 0.25})
    assert tuned.post.class_thr == (0.1, 0.25, 0.3)
    flat = flat_params(spec, {"class_thr.1": 0.25})
    assert [flat[f"class_thr.{k}"] for k in range(3)] == [0.1, 0.25, 0.3] and "class_thr" not in flat
    assert resolve(spec, flat).post.class_thr == (0.1, 0.25, 0.3)  # params.json's values give them back
    with pytest.raises(ConfigError, match="search_space.class_thr: needs postprocess.class_thr"):
        parse_ensemble({**RAW, "search_space": {"class_thr": {"type": "float", "low": 0.0, "high": 0.5}}},
                       Path("x.py"))
    with pytest.raises(ConfigError, match="postprocess.class_thr='0.1': expected a list of one number per class"):
        parse_ensemble({**RAW, "postprocess": {"class_thr": "0.1"}}, Path("x.py"))


def test_competition_and_readers_entries_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"competition=3: expected a competition name such as 'vinbigdata'; "
                                          r"readers='fuse': expected None or dict\(mode="):
        parse_ensemble({**RAW, "competition": 3, "readers": "fuse"}, Path("x.py"))


def test_varying_image_sizes_need_a_cache_that_holds_them(tmp_path: Path) -> None:
    import pandas as pd

    from cxrdet.competitions import get_competition
    from cxrdet.ensemble.problem import DataSources, image_sizes

    spec = parse_ensemble(RAW, Path("pair.py"))
    sources = DataSources(tmp_path / "f.csv", tmp_path / "train.csv", {}, get_competition("vinbigdata"),
                          caches=(tmp_path / "no_cache",))
    with pytest.raises(ConfigError, match=r"pair.py: vinbigdata images vary in size and no prepare cache of the "
                                          r"members \(.*no_cache\) holds all 2 images: run `cxrdet prepare`"):
        image_sizes(spec, sources, pd.Index(["a", "b"]))
    fixed = parse_ensemble({**RAW, "image_size": (640, 480)}, Path("pair.py"))
    assert [v.tolist() for v in image_sizes(fixed, sources, pd.Index(["a", "b"]))] == [[640.0, 640.0], [480.0, 480.0]]
    rsna = DataSources(tmp_path / "f.csv", tmp_path / "l.csv", {}, get_competition("rsna"))
    assert [v.tolist() for v in image_sizes(spec, rsna, pd.Index(["a"]))] == [[1024.0], [1024.0]]


def test_tuning_and_calibration_entries_are_checked() -> None:
    from cxrdet.ensemble.spec import TuningSpec

    spec = parse_ensemble({**RAW, "tuning": {"pick": "top_k", "top_k": 5, "sd_penalty": 0.5},
                           "calibration": "quantile"}, Path("pair.py"))
    assert spec.tuning == TuningSpec("top_k", 5, 0.5, None) and spec.calibration == "quantile"
    assert spec.tuning.describe() == "mean of the top 5 trials, objective - 0.5 x across-fold sd"
    assert parse_ensemble(RAW, Path("pair.py")).tuning == TuningSpec()
    bad = {**RAW, "tuning": {"pick": "median", "top_k": 0, "sd_penalty": -1, "importance_floor": 1.5},
           "calibration": "isotonic"}
    with pytest.raises(ConfigError) as err:
        parse_ensemble(bad, Path("pair.py"))
    for text in ("tuning.pick='median': expected one of ['best', 'top_k']", "tuning.top_k=0: expected an integer",
                 "tuning.sd_penalty=-1: expected a number >= 0", "tuning.importance_floor=1.5: expected None or",
                 "calibration='isotonic': expected None or one of ['quantile', 'rate']"):
        assert text in str(err.value)
    with pytest.raises(ConfigError, match=r"tuning=\{'k': 3\}: expected dict\(pick="):
        parse_ensemble({**RAW, "tuning": {"k": 3}}, Path("pair.py"))
