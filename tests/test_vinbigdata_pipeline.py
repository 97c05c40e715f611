"""The VinBigData pipeline end to end on a tiny synthetic root: a 14-class detector and the 2-class classifier
trained on every fold, OOF and test outputs, tuning against the VinBigData mAP with the honest estimate, a
validated submission with every image's no-finding box, scored on the synthetic test labels, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cxrdet.competitions import get_competition
from cxrdet.competitions.vinbigdata import NO_FINDING_ID, read_submission
from cxrdet.config import load_config, to_dict
from cxrdet.paths import CONFIGS_DIR
from tests.helpers.vinbigdata import write_vinbigdata_dataset

DETECTOR = CONFIGS_DIR / "experiments" / "vinbigdata-fcos_mnv3s_128_tiny12e.py"
CLASSIFIER = CONFIGS_DIR / "experiments" / "vinbigdata-cls_regnetx002_128_tiny12e.py"
QUICK = {"train.epochs": 1, "train.limit_train_batches": 3, "train.progress_bar": False, "train.accelerator": "cpu",
         "train.log_every_n_steps": 1, "data.batch_size": 4}


@pytest.mark.slow
def test_the_vinbigdata_pipeline_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrdet.ensemble.spec import load_ensemble
    from cxrdet.ensemble.submit import submit
    from cxrdet.ensemble.tune import tune
    from cxrdet.tasks import predict, report, train

    monkeypatch.setenv("CXRDET_OUTPUTS", str(tmp_path / "outputs"))
    data = write_vinbigdata_dataset(tmp_path, n_train=30, n_test=6, k=2)
    for config in (DETECTOR, CLASSIFIER):
        cfg = to_dict(load_config(config, [f"{k}={v}" for k, v in {**data, **QUICK}.items()]))
        for fold in (0, 1):
            result = train(cfg, fold)
            if config == DETECTOR:
                assert result.monitor == "val/map40" and 0.0 <= result.best_score <= 1.0
            for split in ("oof", "test"):
                predict(cfg, fold, split=split)
    oof = pd.read_parquet(tmp_path / "outputs" / DETECTOR.stem / "fold0" / "oof.parquet")
    assert oof["label"].between(0, 13).all()  # 14 finding classes; class 14 is the submission's, not a detector's

    ensemble = tmp_path / "vbd_cls.py"
    ensemble.write_text(f"""
members = [dict(experiment='{DETECTOR.stem}', folds=[0, 1])]
classifier = dict(experiment='{CLASSIFIER.stem}', column='abnormal')
fusion = dict(method='wbf', iou_thr=0.4, skip_box_thr=0.0, conf_type='avg', test_fold_merge='before')
postprocess = dict(cls_alpha=0.5, class_thr=[0.0] * 14)
search_space = dict(iou_thr=dict(type='float', low=0.3, high=0.6), cls_tau=dict(type='float', low=0.0, high=0.5),
                    class_thr=dict(type='float', low=0.0, high=0.2))
n_trials = 3
honest_trials = 2
seed = 4
""")
    spec = load_ensemble(ensemble)
    result = tune(spec)
    assert 0.0 <= result.optimistic <= 1.0 and result.honest is not None and set(result.honest_per_fold) == {0, 1}
    record = json.loads((tmp_path / "outputs" / "ensembles" / "vbd_cls" / "params.json").read_text())
    assert len([k for k in record["params"] if k.startswith("class_thr.")]) == 14

    out = submit(spec, tmp_path / "sub.csv")
    root = Path(data["data.root"])
    test_ids = pd.read_csv(root / "sample_submission.csv")["image_id"].tolist()
    boxes = read_submission(out.csv, test_ids)  # the competition's validator
    normal = boxes[boxes["label"] == NO_FINDING_ID]
    assert sorted(normal["image_id"]) == sorted(test_ids)  # every image has its no-finding box, 0 0 1 1
    assert (normal[["x1", "y1", "x2", "y2"]].to_numpy() == [0, 0, 1, 1]).all()
    provenance = json.loads(out.provenance.read_text())
    assert provenance["competition"] == "vinbigdata" and provenance["stats"]["n_rows"] == len(test_ids)
    comp = get_competition("vinbigdata")
    labels = comp.read_labels(root / "synth_test_labels.csv")
    score = comp.score(labels, out.csv, test_ids, False, None)
    assert score["metric"] == "voc@0.4" and 0.0 <= score["score"] <= 1.0

    # The member alone, its 14 classes' fold models rate-calibrated, submitted; `cxrdet select` chooses between the two.
    alone = tmp_path / "vbd_alone.py"
    alone.write_text(f"""
members = [dict(experiment='{DETECTOR.stem}', folds=[0, 1])]
fusion = dict(method='none', iou_thr=0.5, test_fold_merge='before')
postprocess = dict(final_thr=0.0)
search_space = dict(final_thr=dict(type='float', low=0.0, high=0.3))
calibration = 'rate'
n_trials = 3
honest_trials = 2
seed = 4
""")
    spec_alone = load_ensemble(alone)
    tune(spec_alone)
    maps = json.loads((tmp_path / "outputs" / "ensembles" / "vbd_alone" / "params.json").read_text())["calibration"]
    classes = {c for fold in maps[DETECTOR.stem].values() for c in fold}
    assert set(maps[DETECTOR.stem]) == {"0", "1"} and classes and classes <= {str(c) for c in range(14)}
    read_submission(submit(spec_alone, tmp_path / "alone.csv").csv, test_ids)
    from typer.testing import CliRunner

    from cxrdet.cli import app

    done = CliRunner().invoke(app, ["select", str(ensemble), str(alone), "--out", "vbd"])
    assert done.exit_code == 0, done.output
    chosen = json.loads((tmp_path / "outputs" / "selections" / "vbd.json").read_text())
    assert {c["candidate"] for c in chosen["candidates"]} == {"vbd_cls", "vbd_alone"}, chosen
    assert chosen["chosen"] in {"vbd_cls", "vbd_alone"} and chosen["nested_selection"] is not None

    page = report(str(ensemble), tmp_path / "report").read_text()
    assert 'src="per_class.png"' in page and "Pulmonary fibrosis" in page and "val/map40" in page
