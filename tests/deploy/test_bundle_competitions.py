"""`cxrdet package` for the competitions that were not code competitions (RSNA, VinBigData): the same bundle, its
script timed and reproducing `cxrdet submit` byte for byte on each one's synthetic test images; the notebook format;
the stripped checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cxrdet import paths
from cxrdet.config import load_config, to_dict
from cxrdet.data.folds import images_for_folds, label_classes, make_folds, multilabel_classes, write_folds
from cxrdet.data.prepare import prepare_cache
from cxrdet.runs import Run

QUICK = {"train.epochs": 1, "train.limit_train_batches": 2, "train.progress_bar": False, "train.accelerator": "cpu",
         "train.log_every_n_steps": 1, "data.batch_size": 4, "data.size": 64, "data.folds": "bundle_k2"}
CASES = {
    "rsna": ("fcos_mnv3s_128_tiny12e", "stage_2_train_labels.csv"),
    "vinbigdata": ("vinbigdata-fcos_mnv3s_128_tiny12e", "train.csv"),
}


def _synth(competition: str, root: Path) -> None:
    if competition == "rsna":
        from cxrdet.synth.rsna import generate_dataset

        generate_dataset(root, 12, 3, seed=3, workers=1, progress=False)
    else:
        from cxrdet.synth.vinbigdata import generate_vinbigdata_dataset

        generate_vinbigdata_dataset(root, 12, 3, seed=3, scale=0.05, workers=1, grid=96)


@pytest.mark.slow
@pytest.mark.parametrize("competition", sorted(CASES))
def test_a_bundle_reproduces_the_submission_for_every_competition(competition: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrdet.deploy.bundle import KAGGLE_SLUGS, package
    from cxrdet.ensemble.spec import load_ensemble
    from cxrdet.ensemble.submit import submit
    from cxrdet.ensemble.tune import tune
    from cxrdet.tasks import predict, train

    experiment, labels = CASES[competition]
    root = tmp_path / competition
    monkeypatch.setenv("CXRDET_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("CXRDET_DATA", str(root))
    _synth(competition, root)
    prepare_cache(root, 64, workers=1, progress=False)
    images = images_for_folds(root / labels)
    multilabel = multilabel_classes(images, label_classes(root / labels, "auto"))
    (tmp_path / "outputs" / "folds").mkdir(parents=True)
    folds = make_folds(images, k=2, seed=3, multilabel=multilabel)
    write_folds(folds, tmp_path / "outputs" / "folds" / "bundle_k2.csv")
    cfg = to_dict(load_config(paths.CONFIGS_DIR / "experiments" / f"{experiment}.py",
                              [f"{k}={v}" for k, v in QUICK.items()]))
    for fold in (0, 1):
        train(cfg, fold)
        predict(cfg, fold, split="test")
        predict(cfg, fold, split="oof")
    assert Run(experiment, 0).sidecar("test")["torch_threads"] == torch.get_num_threads()
    configs = tmp_path / "configs"
    (configs / "ensembles").mkdir(parents=True)
    (configs / "kaggle").mkdir()
    (configs / "kaggle" / "offline_wheels.txt").write_text("ensemble-boxes\n")  # the mechanism, kept small
    (configs / "ensembles" / "tiny.py").write_text(f"""
members = [dict(experiment='{experiment}', folds=[0, 1])]
fusion = dict(method='wbf', iou_thr=0.5, skip_box_thr=0.0, conf_type='avg', test_fold_merge='before')
postprocess = dict()
search_space = dict(iou_thr=dict(type='float', low=0.3, high=0.6))
n_trials = 2
honest_trials = 1
seed = 1
""")
    monkeypatch.setattr(paths, "CONFIGS_DIR", configs)
    spec = load_ensemble(configs / "ensembles" / "tiny.py")
    tune(spec, honest=False)
    expected = submit(spec, tmp_path / "submission.csv")
    result = package(spec, tmp_path / "bundle")  # raises when its script's submission differs from submit's
    assert result.limit_minutes is None  # not a code competition: no limit of its own
    assert result.timing is not None and result.timing.n_images == 3 and result.estimate_n_images == 3
    assert sorted(result.wheels)[0].startswith("cxrdet-") and any(w.startswith("ensemble_boxes") for w in result.wheels)
    manifest = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert manifest["competition"] == competition and len(manifest["folds"]) == 2
    assert manifest["torch_threads"] == torch.get_num_threads()  # a local rerun reproduces the bytes with it
    assert manifest["files"]["outputs/ensembles/tiny/params.json"]["bytes"] > 0
    source = (tmp_path / "bundle" / "inference.py").read_text()
    assert f'"/kaggle/input/{KAGGLE_SLUGS[competition]}"' in source  # the competition's Kaggle data folder
    assert expected.n_rows == 3


def test_the_check_run_uses_the_thread_count_of_the_predictions(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread count sums floats in another order: the bundle's script is checked with the count the test
    predictions were made with (their sidecars), and with the environment as it is when they do not say one."""
    from cxrdet.deploy import bundle

    class Started(Exception):
        pass

    seen: list[dict[str, str]] = []

    def fake_run(command: list[str], env: dict[str, str] | None = None, **_: object) -> None:
        seen.append(dict(env or {}))
        raise Started

    monkeypatch.setattr(bundle.subprocess, "run", fake_run)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    for threads in (1, None):
        with pytest.raises(Started):
            bundle._measure(None, tmp_path, tmp_path, 3, threads)
    assert [env["OMP_NUM_THREADS"] for env in seen] == ["1", "7"]


def test_the_notebook_is_the_script_cut_at_its_cell_marks() -> None:
    import nbformat

    from cxrdet.deploy.bundle import notebook_json

    source = "# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nimport os\nx = 1\n\n# %%\nprint(x)\n"
    book = notebook_json(source)
    nbformat.validate(nbformat.from_dict(book))
    assert [c["cell_type"] for c in book["cells"]] == ["markdown", "code", "code"]
    assert "".join(book["cells"][0]["source"]) == "# Title\n\ntext"
    assert "".join(book["cells"][1]["source"]) == "import os\nx = 1"


def test_a_stripped_checkpoint_holds_the_weights_prediction_loads(tiny_run: dict, tmp_path: Path) -> None:
    import torch

    from cxrdet.deploy.bundle import strip_checkpoint
    from cxrdet.models.lit_base import inference_state
    from cxrdet.runs import load_checkpoint_file

    source = Path(tiny_run["outputs"]) / tiny_run["experiment"] / "fold0" / "checkpoints" / "best.ckpt"
    target = strip_checkpoint(source, tmp_path / "bundle.ckpt")
    full, stripped = load_checkpoint_file(source), load_checkpoint_file(target)
    assert set(stripped) == {"state_dict", "cxrdet", "epoch", "global_step"}
    assert stripped["cxrdet"] == full["cxrdet"] and target.stat().st_size < source.stat().st_size / 1.5
    want, got = inference_state(full), inference_state(stripped)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
