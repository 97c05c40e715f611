"""The SIIM-COVID pipeline end to end on a tiny synthetic root, and its offline code-competition bundle.

An opacity detector and a 4-category study classifier (softmax) trained on two folds grouped by study; OOF and test
outputs; tuning against the six-class SIIM metric with the honest estimate; a validated submission with a row per
study and per image, scored on the synthetic test labels; then `cxrdet package` and the bundle's notebook run as
Kaggle runs it: a fresh virtual environment, the network cut, installation from the bundle only, its
`submission.csv` byte-identical to `cxrdet submit`'s."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cxrdet import paths
from cxrdet.competitions import get_competition
from cxrdet.competitions.siim import read_submission
from cxrdet.config import load_config, to_dict
from cxrdet.errors import CxrdetError
from tests.helpers.siim import write_siim_dataset

DETECTOR = paths.CONFIGS_DIR / "experiments" / "siim-fcos_mnv3s_128_tiny12e.py"
CLASSIFIER = paths.CONFIGS_DIR / "experiments" / "siim-cls_regnetx002_128_tiny12e.py"
QUICK = {"train.epochs": 1, "train.limit_train_batches": 2, "train.progress_bar": False, "train.accelerator": "cpu",
         "train.log_every_n_steps": 1, "data.batch_size": 4}
ENSEMBLE = f"""
members = [dict(experiment='{DETECTOR.stem}', folds=[0, 1])]
classifier = dict(experiment='{CLASSIFIER.stem}', column='negative', complement=True)
fusion = dict(method='wbf', iou_thr=0.5, skip_box_thr=0.0, conf_type='avg', test_fold_merge='before')
postprocess = dict(cls_alpha=0.5, none_weight=0.5, study_pool='mean')
search_space = dict(iou_thr=dict(type='float', low=0.3, high=0.6), none_weight=dict(type='float', low=0.0, high=1.0),
                    study_pool=dict(type='categorical', choices=['mean', 'max']))
n_trials = 3
honest_trials = 2
seed = 4
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two folds of both models trained and predicted, the ensemble tuned and submitted; env and configs dir set."""
    from cxrdet.ensemble.spec import load_ensemble
    from cxrdet.ensemble.submit import submit
    from cxrdet.ensemble.tune import tune
    from cxrdet.tasks import predict, train

    tmp = tmp_path_factory.mktemp("siim_world")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRDET_OUTPUTS", str(tmp / "outputs"))
        mp.setenv("CXRDET_DATA", str(tmp / "siim"))
        (tmp / "outputs" / "folds").mkdir(parents=True)
        options = write_siim_dataset(tmp / "siim")
        results = {}
        for config in (DETECTOR, CLASSIFIER):
            cfg = to_dict(load_config(config, [f"{k}={v}" for k, v in {**options, **QUICK}.items()]))
            for fold in (0, 1):
                results[(config.stem, fold)] = train(cfg, fold)
                for split in ("oof", "test"):
                    predict(cfg, fold, split=split)
        # The ensemble config lives in a configs tree of its own (a bundle copies the tree it lies in).
        configs = tmp / "configs"
        (configs / "ensembles").mkdir(parents=True)
        shutil.copytree(paths.CONFIGS_DIR / "kaggle", configs / "kaggle")
        (configs / "ensembles" / "siim_tiny.py").write_text(ENSEMBLE)
        mp.setattr(paths, "CONFIGS_DIR", configs)
        spec = load_ensemble(configs / "ensembles" / "siim_tiny.py")
        tuned = tune(spec)
        submitted = submit(spec, tmp / "submission.csv")
        yield {"tmp": tmp, "spec": spec, "tuned": tuned, "submitted": submitted, "results": results,
               "configs": configs}


@pytest.fixture
def in_world(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`world` with its outputs, data root and configs tree in force again (each test gets its own outputs folder
    otherwise: `tests/conftest.py`)."""
    monkeypatch.setenv("CXRDET_OUTPUTS", str(world["tmp"] / "outputs"))
    monkeypatch.setenv("CXRDET_DATA", str(world["tmp"] / "siim"))
    monkeypatch.setattr(paths, "CONFIGS_DIR", world["configs"])
    return world


@pytest.mark.slow
def test_the_models_train_on_the_siim_metric_and_the_study_level(world: dict[str, Any]) -> None:
    detector = world["results"][(DETECTOR.stem, 0)]
    classifier = world["results"][(CLASSIFIER.stem, 0)]
    assert detector.monitor == "val/siim_image" and 0.0 <= detector.best_score <= 1.0
    assert classifier.monitor == "val/study_map" and 0.0 <= classifier.best_score <= 1.0
    probs = pd.read_parquet(world["tmp"] / "outputs" / CLASSIFIER.stem / "fold0" / "test.parquet")
    columns = ["negative", "typical", "indeterminate", "atypical"]
    np.testing.assert_allclose(probs[columns].sum(axis=1), 1.0, rtol=1e-6)  # a softmax, not four sigmoids


@pytest.mark.slow
def test_tuning_and_the_submission_follow_the_siim_format(world: dict[str, Any]) -> None:
    tuned, submitted = world["tuned"], world["submitted"]
    assert 0.0 <= tuned.optimistic <= 1.0 and tuned.honest is not None and set(tuned.honest_per_fold) == {0, 1}
    assert {"none_weight", "study_pool"} <= set(tuned.best_params)
    root = world["tmp"] / "siim"
    comp = get_competition("siim")
    rows = comp.sample_ids(root / "sample_submission.csv")
    boxes = read_submission(submitted.csv, rows)  # every study and image of the sample, validated
    studies = boxes[boxes["image_id"].str.endswith("_study")]
    assert studies.groupby("image_id")["label"].nunique().eq(4).all()  # four category boxes per study
    test_images = [r.removesuffix("_image") for r in rows if r.endswith("_image")]
    assert set(boxes.loc[boxes["label"] == 1, "image_id"]) == set(test_images)  # every image's none box
    labels = comp.read_labels(root / "synth_test_image_level.csv")
    score = comp.score(labels, submitted.csv, test_images, False, None)
    assert score["metric"] == "siim" and 0.0 <= score["score"] <= 1.0 and score["n_studies"] == 4
    provenance = json.loads(submitted.provenance.read_text())
    assert provenance["competition"] == "siim"


@pytest.mark.slow
def test_a_bundle_over_the_time_limit_is_refused_and_leaves_nothing(in_world: dict[str, Any]) -> None:
    world = in_world
    from cxrdet.deploy.bundle import package

    out = world["tmp"] / "bundles" / "too_slow"
    with pytest.raises(CxrdetError, match=r"estimated run, .* exceeds the limit of 1e-06 min"):
        package(world["spec"], out, max_minutes=1e-6)
    assert not out.exists() and list(out.parent.iterdir()) == []  # the staging folder is gone too


@pytest.mark.slow
def test_the_bundle_runs_offline_in_a_fresh_environment_and_reproduces_the_submission(in_world: dict[str, Any]) -> None:
    world = in_world
    import nbformat

    from cxrdet.deploy.bundle import package

    out = world["tmp"] / "bundles" / "siim_tiny"
    result = package(world["spec"], out)
    names = " ".join(result.wheels)
    assert "cxrdet-0.1.0-py3-none-any.whl" in names and "ensemble_boxes" in names and "mmengine" in names
    assert result.timing is not None and result.timing.n_images == 4 and result.estimate_minutes is not None
    assert result.limit_minutes == 540  # SIIM's 9-hour notebook limit
    manifest = json.loads((out / "bundle.json").read_text())
    assert {f"outputs/{DETECTOR.stem}/fold1/bundle.ckpt", "inference.ipynb", "project/configs/ensembles/siim_tiny.py",
            "project/folds/siim_tiny_k2.csv"} <= set(manifest["files"])
    assert manifest["timing"]["seconds_per_image"] == pytest.approx(result.timing.per_image)
    nbformat.validate(nbformat.read(out / "inference.ipynb", as_version=4))
    assert "s per image" in (out / "README.md").read_text()

    work = world["tmp"] / "offline"
    done = subprocess.run([sys.executable, str(paths.REPO_ROOT / "scripts" / "run_bundle_offline.py"), str(out),
                           str(world["tmp"] / "siim"), str(work)], capture_output=True, text=True)
    if done.returncode == 2:
        pytest.skip(f"the network cannot be cut here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    imported = json.loads(done.stdout.strip().splitlines()[-1])["imported"]
    assert all(str(work / "venv") in path for path in imported)  # cxrdet and ensemble-boxes came from the bundle
    assert (work / "submission.csv").read_bytes() == world["submitted"].csv.read_bytes()


@pytest.mark.slow
def test_a_run_config_with_a_data_path_is_not_bundled(in_world: dict[str, Any]) -> None:
    world = in_world
    from cxrdet.deploy.bundle import bundled_folds

    config = world["tmp"] / "outputs" / DETECTOR.stem / "fold1" / "config.py"
    original = config.read_text()
    try:
        config.write_text(original + "\ndata = dict(data, root='/somewhere/siim')\n")
        with pytest.raises(CxrdetError, match=r"fold1/config.py: data.root='/somewhere/siim': a bundle reads"):
            bundled_folds(world["spec"])
    finally:
        config.write_text(original)
