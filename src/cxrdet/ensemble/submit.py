"""Apply an ensemble's tuned parameters to its members' test boxes and write a validated submission.

Each member has one model per fold, so the test set has k predictions per member (each fold model's scores through
its calibration map first, when the ensemble calibrates: `cxrdet.ensemble.calibrate`). They are merged per image with
weighted boxes fusion (equal weights, `avg`, the tuned IoU threshold) either before the members are fused (each
member's folds first: `test_fold_merge='before'`) or after (each fold's members fused with the tuned parameters, the
vote scaling applied, then the folds merged: `'after'`); the remaining post-processing steps follow. A single member
with `method='none'` is an ensemble too, so every model is submitted the same way.

Outputs: the competition's CSV (`Competition.write_submission`: written, then read back through its validator;
VinBigData's gets every image's no-finding box, `Competition.complete`) and, beside it, a JSON provenance record:
git revision, the ensemble config, the member configs and fold-file hashes, the parameters, both CV scores and date.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrdet import paths
from cxrdet.ensemble.calibrate import apply_map
from cxrdet.ensemble.fuse import BoxSet, FusionInput, FusionParams
from cxrdet.ensemble.postprocess import drop_non_finite, postprocess, scale_by_votes
from cxrdet.ensemble.problem import (
    DataSources,
    classifier_inputs,
    data_sources,
    image_sizes,
    require_predictions,
    study_images,
)
from cxrdet.ensemble.spec import EnsembleParams, EnsembleSpec, resolve
from cxrdet.errors import ConfigError
from cxrdet.io import file_sha256, write_json
from cxrdet.provenance import git_revision
from cxrdet.runs import EnsembleRun, Run


@dataclass(frozen=True)
class SubmitResult:
    """What `submit` wrote."""

    csv: Path
    provenance: Path
    n_rows: int
    n_boxes: int
    n_empty: int


def track_submission(spec: EnsembleSpec, result: SubmitResult, uri: str) -> str:
    """Log one submission to MLflow (the CSV and its provenance sidecar as artefacts, its hash and the scores it was
    tuned to); returns the run id."""
    import json

    from cxrdet import tracking

    record = json.loads(result.provenance.read_text(encoding="utf-8"))
    scores = record.get("scores") or {}
    return tracking.log_run(
        tracking.ensemble_experiment(spec.name), f"submit {result.csv.name}", uri, params=record.get("params") or {},
        metrics={"optimistic": scores.get("optimistic"), "honest": scores.get("honest"),
                 "n_rows": result.n_rows, "n_boxes": result.n_boxes, "n_empty": result.n_empty},
        tags={"cxrdet.kind": "submit", "cxrdet.ensemble": spec.name, "cxrdet.submission": result.csv.resolve(),
              "cxrdet.sha256": record.get("sha256"), "cxrdet.git": (record.get("git") or {}).get("commit")},
        files=[result.csv, result.provenance])


def load_test_image_ids(spec: EnsembleSpec, sources: DataSources) -> list[str]:
    """The test image set: the config's `test_ids` file, else the data root's sample submission, else the ids of
    its test image folder.

    Raises:
        ConfigError: None of them exists.
    """
    if spec.raw.get("test_ids"):
        return sources.competition.image_ids_of(sources.competition.sample_ids(Path(spec.raw["test_ids"])))
    try:
        return sources.competition.test_image_ids(sources.labels.parent)
    except ConfigError as err:
        raise ConfigError(f"{spec.path}: {err}, or set test_ids=<a submission-format CSV> in the config") from err


@dataclass(frozen=True)
class SubmissionImages:
    """What the test images bring besides the members' boxes: their index, sizes, classifier probabilities and (for
    a competition with studies) their studies with the study classifier's probabilities (`EnsembleProblem.images`)."""

    ids: pd.Index
    sizes: tuple[np.ndarray, np.ndarray]
    prob: np.ndarray | None
    images: pd.DataFrame | None = None


def submission_images(spec: EnsembleSpec, sources: DataSources, image_ids: list[str]) -> SubmissionImages:
    """The test image set's index, `(widths, heights)` (`image_sizes`), classifier outputs (`classifier_inputs`) and
    studies (`Competition.studies` of the data root's test folder), read once."""
    ids = pd.Index(image_ids)
    prob, class_probs = classifier_inputs(spec, sources.competition, ids, "test")
    images = None
    if sources.competition.studies is not None:
        root = sources.labels.parent
        images = study_images(sources.competition.studies(root, "test"), ids, class_probs,
                              f"{root}: the test images' study folders")
    return SubmissionImages(ids, image_sizes(spec, sources, ids), prob, images)


def predict_test(spec: EnsembleSpec, params: EnsembleParams, image_ids: list[str], test: SubmissionImages | None = None,
                 calibration: Mapping[str, Any] | None = None) -> tuple[BoxSet, pd.Index]:
    """The ensemble's test boxes (xyxy pixels of the original image) under `params`.

    Args:
        test: The image set's sizes and probabilities when already read (`submission_images`).
        calibration: The fold models' score maps fitted on their OOF boxes (`params.json`'s `calibration`), applied
            to each fold model's test boxes before any merge; required when the config sets `calibration`.

    Returns:
        The boxes and the image index their `image` refers to.

    Raises:
        TableError: Missing prediction files (all listed).
    """
    test = test if test is not None else submission_images(spec, data_sources(spec), image_ids)
    ids, size, prob = test.ids, test.sizes, test.prob
    folds = spec.folds_used
    require_predictions(spec, "test")
    if spec.calibration is not None and calibration is None:
        raise ConfigError(f"{spec.path}: calibration={spec.calibration!r} but the tuned parameters hold no calibration "
                          f"maps: rerun `cxrdet tune {spec.path}`")
    params_path = EnsembleRun(spec.name).params_path
    frames = {m.name: [_calibrated(Run(m.experiment, k), m.name, k, calibration, params_path) for k in folds]
              for m in spec.members}
    merge = FusionParams(method="wbf", iou_thr=params.fusion.iou_thr, conf_type=spec.test_fold_conf_type)
    n_members = len(spec.members)

    def merge_folds(parts: list[pd.DataFrame], names: list[str]) -> BoxSet:
        inp = FusionInput.from_frames(parts, ids, *size, names=names)
        return inp.fuse(replace(merge, method="none") if len(parts) == 1 else merge)

    if spec.test_fold_merge == "before":
        merged = [merge_folds(frames[m.name], [f"{m.name} fold {k}" for k in folds]).to_frame(ids)
                  for m in spec.members]
        inp = FusionInput.from_frames(merged, ids, *size, names=spec.member_names)
        fused = inp.fuse(params.fusion, params.member_thr, spec.engine)
        return postprocess(fused, params.post, n_members, prob), ids
    per_fold = []
    for i, k in enumerate(folds):
        inp = FusionInput.from_frames([frames[m.name][i] for m in spec.members], ids, *size,
                                      names=[f"{m.name} fold {k}" for m in spec.members])
        fused = drop_non_finite(inp.fuse(params.fusion, params.member_thr, spec.engine))
        per_fold.append(scale_by_votes(fused, n_members, params.post.vote_power).to_frame(ids))
    merged = merge_folds(per_fold, [f"fold {k}" for k in folds])
    return postprocess(merged, replace(params.post, vote_power=0.0), n_members, prob), ids


def _calibrated(run: Run, member: str, fold: int, calibration: Mapping[str, Any] | None, source: Path
                ) -> pd.DataFrame:
    """One fold model's test boxes, through its calibration map (read from `source`) when there is one."""
    frame = run.read_predictions("test")
    if calibration is None:
        return frame
    maps = calibration.get(member, {}).get(str(fold))
    if maps is None:
        raise ConfigError(f"{source}: calibration holds no map of member {member!r} fold {fold}: rerun `cxrdet tune`")
    return apply_map(frame, maps, f"{source} calibration of {member} fold {fold}")


def member_provenance(spec: EnsembleSpec, sources: DataSources) -> list[dict[str, Any]]:
    """Per member: experiment, folds, config file and hash, and the fold file and hash each run recorded."""
    out = []
    for m in spec.members:
        config = sources.member_configs.get(m.name)
        runs = {}
        for k in m.folds:
            data = Run(m.experiment, k).provenance()
            if data:
                runs[str(k)] = {"folds_file": data.get("folds_file"), "folds_sha256": data.get("folds_sha256"),
                                "git": data.get("git")}
        out.append({
            "name": m.name, "experiment": m.experiment, "folds": list(m.folds),
            "config": str(config) if config else None, "config_sha256": file_sha256(config) if config else None,
            "runs": runs,
        })  # fmt: skip
    return out


def tuned_test(spec: EnsembleSpec) -> tuple[EnsembleRun, dict[str, Any], EnsembleParams, DataSources, list[str],
                                            SubmissionImages]:
    """What predicting a tuned ensemble's test boxes reads: its run, `params.json` record, resolved parameters, data
    sources, test image ids and per-image inputs (`submit` and `cxrdet.ensemble.pseudo` both start here).

    Raises:
        ConfigError: Not tuned yet, or no test image list.
    """
    ensemble = EnsembleRun(spec.name)
    record = ensemble.read_params(spec.path)
    params = resolve(spec, record["params"])
    sources = data_sources(spec)
    image_ids = load_test_image_ids(spec, sources)
    return ensemble, record, params, sources, image_ids, submission_images(spec, sources, image_ids)


def submit(spec: EnsembleSpec, out: str | Path | None = None) -> SubmitResult:
    """Write `out` (default `submissions/NAME.csv`) and its provenance `out` with suffix `.json`.

    Raises:
        ConfigError: Not tuned yet, or no test image list. TableError: Missing or invalid prediction files, or the
            written file fails validation.
    """
    ensemble, record, params, sources, image_ids, test = tuned_test(spec)
    boxes, ids = predict_test(spec, params, image_ids, test, record.get("calibration"))
    frame = boxes.to_frame(ids)
    # The file format takes confidences in [0, 1]; weights can push a fused one above 1.
    frame["score"] = frame["score"].clip(0.0, 1.0)
    frame = sources.competition.complete(frame, ids, test.prob, test.images, params.post)
    csv = Path(out) if out is not None else paths.SUBMISSIONS_DIR / f"{spec.name}.csv"
    widths, heights = test.sizes
    sizes = {i: (int(w), int(h)) for i, w, h in zip(ids, widths, heights, strict=True)}
    stats = sources.competition.write_submission(csv, frame, image_ids, sizes)
    provenance = csv.with_suffix(".json")
    write_json(provenance, {
        "submission": str(csv), "sha256": file_sha256(csv), "ensemble": spec.name,
        "config": {"path": str(spec.path), "sha256": file_sha256(spec.path),
                   "text": spec.path.read_text(encoding="utf-8")},
        "members": member_provenance(spec, sources),
        "folds": {"file": str(sources.folds), "sha256": file_sha256(sources.folds)},
        "params": record["params"], "scores": record["scores"], "test_fold_merge": spec.test_fold_merge,
        "params_json": {"path": str(ensemble.params_path), "sha256": file_sha256(ensemble.params_path)},
        "competition": sources.competition.name,
        "stats": {**stats, "n_test_images": len(image_ids),
                  "mean_boxes_per_image": float(np.float64(stats["n_boxes"]) / max(stats["n_rows"], 1))},
        "git": git_revision(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    })  # fmt: skip
    ensemble.record_submission(csv, provenance)
    return SubmitResult(csv, provenance, stats["n_rows"], stats["n_boxes"], stats["n_empty"])
