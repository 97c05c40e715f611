"""An offline HTML report of an experiment's or an ensemble's out-of-fold results, with PNG figures (matplotlib).

`cxrdet report NAME` reads, for an experiment, every `outputs/<experiment>/fold<k>/` that holds OOF predictions (its
resolved config, `oof.parquet`, CSV training logs, best checkpoint record); for an ensemble (a config in
`configs/ensembles/` tuned into `params.json`), its members' OOF boxes and the tuned parameters, fused as the
submission fuses them. The ground truth, folds and cached images come from the runs' configs.

Figures (fixed pixel sizes, `FIGURES`):
- `threshold.png`: RSNA score against the confidence cut, per prediction set, the chosen cut marked;
- `pr.png`: precision-recall at IoU 0.4 and 0.75 (boxes ranked over all images, greedy matching as the metric does);
- `per_iou.png`: the metric at the chosen cut, per IoU threshold;
- `curves.png`: training loss and validation score per epoch, per experiment and fold (CSV logs);
- `gallery.png`: OOF images, best, worst and with the most false positives: ground truth black, predictions green;
- `errors.png`: false negatives and false positives grouped by box size, lung zone, view position and sex;
- `box_ratio.png`: predicted over true width and height of matched pairs (the box-size bias), with the shrink
  factor that removes the median bias.

The chosen cut is the tuned `final_thr` for an ensemble and the best cut of the pooled OOF curve for a single
experiment (a slightly optimistic choice, said so in the report).

A classifier experiment (`task='classify'` in its runs' written config) gets its own page, from its OOF probability
files scored by `cxrdet.metrics.classification` against the data root's label table:
- `roc.png`: the pooled OOF ROC curve per class, AUROC in the legend; tables of per-class AUROC, prevalence and
  positives, of AUROC per fold, and for a binary task F1 at its best threshold;
- `curves.png`: training loss and `val/auroc` per epoch, per fold (CSV logs);
- `probabilities.png`: histograms of the OOF probabilities of true-negative and true-positive images, per class.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cxrdet import paths
from cxrdet.boxes import iou_matrix, rescale_xyxy
from cxrdet.errors import CxrdetError
from cxrdet.io import atomic_path, write_text
from cxrdet.metrics.classification import (
    ClassificationResult,
    ExperimentOof,
    evaluate,
    is_classifier_run,
    load_experiment_oof,
)
from cxrdet.metrics.rsna import IOU_THRESHOLDS, RsnaEvaluator

DPI = 100
# Figure name -> (width, height) in inches; at DPI this is the PNG's pixel size (saved without tight cropping).
FIGURES: dict[str, tuple[float, float]] = {
    "threshold": (8.0, 4.5), "pr": (10.0, 4.5), "per_iou": (8.0, 4.0), "curves": (10.0, 4.5),
    "gallery": (12.0, 9.0), "errors": (12.0, 8.0), "box_ratio": (10.0, 4.0),
}
# Figures of a classifier experiment's report; `probabilities.png` grows with the class count
# (`probabilities_figure_size`).
CLASSIFIER_FIGURES: dict[str, tuple[float, float]] = {"roc": (8.0, 7.0), "curves": FIGURES["curves"]}
PROBABILITY_COLUMNS = 4
CLASSIFIER_VAL_KEY = "val/auroc"  # what LitClassifier logs and selects its best checkpoint on
CUTS = np.round(np.arange(0.0, 1.0001, 0.02), 4)
GALLERY_PER_GROUP = 4
SIZE_BINS = (0.0, 0.15, 0.25, 0.35, math.inf)  # sqrt(box area / image area)
SIZE_NAMES = ("small <0.15", "medium 0.15-0.25", "large 0.25-0.35", "huge >0.35")
ZONES = tuple(f"{third} {side}" for third in ("upper", "middle", "lower") for side in ("left", "right"))
ENSEMBLE = "ensemble"


@dataclass
class ReportData:
    """Everything the figures need, for an experiment or an ensemble.

    Attributes:
        name: Experiment or ensemble name.
        kind: `experiment` or `ensemble`.
        image_ids: The OOF image set (every image of the folds used).
        image_fold: Fold of each image, indexed by image id.
        gt: Ground truth `image_id, x1, y1, x2, y2` (xyxy, pixels of the original image).
        predictions: OOF boxes per prediction set (`image_id, x1, y1, x2, y2, score`, same units); the primary set
            (the ensemble, or the experiment) is first.
        chosen: The confidence cut of each prediction set.
        meta: Per image (index image id): `orig_width, orig_height, view, sex` and the cached image's `cache` path.
        cache: The prepare cache folder the gallery reads images from.
        runs: (experiment, fold, run folder) of the training runs behind it.
        notes: Lines for the report's header.
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
    runs: list[tuple[str, int, Path]]
    notes: list[str] = field(default_factory=list)

    @property
    def primary(self) -> str:
        return next(iter(self.predictions))


# ---- loading ----



def page_head(title: str, heading: str) -> str:
    """The start of a report page, up to its first heading: offline, no external style or script."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cxrdet report: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1250px;margin:auto;padding:1em}} img{{max-width:100%;height:auto}}
table.t{{border-collapse:collapse;font-size:0.9em}}
table.t td,table.t th{{padding:2px 8px;border-bottom:1px solid #ddd}}
figcaption{{color:#555;font-size:0.9em}}</style></head><body>
<h1>{html.escape(heading)}</h1>"""

def experiment_runs(experiment: str) -> list[tuple[int, Path]]:
    """(fold, run folder) of every fold of `experiment` that has OOF predictions, in fold order."""
    parent = paths.run_dir(experiment, 0).parent
    runs = []
    for folder in parent.glob("fold*"):
        suffix = folder.name[len("fold"):]
        if suffix.isdigit() and paths.predictions_path(experiment, int(suffix), "oof").is_file():
            runs.append((int(suffix), folder))
    return sorted(runs)


def _data_of_run(run: Path) -> Any:
    """The resolved `data` section of a run's written config."""
    from cxrdet.config import load_config
    from cxrdet.data.datamodule import DataConfig

    return DataConfig.from_dict(load_config(run / "config.py")["data"])


def _ground_truth(data: Any, folds_used: Sequence[int]) -> tuple[pd.Index, pd.Series, pd.DataFrame, pd.DataFrame]:
    """Image set, fold per image, ground-truth boxes and cache meta of the folds used."""
    from cxrdet.data.folds import read_folds
    from cxrdet.data.labels import read_labels
    from cxrdet.data.prepare import load_meta

    folds = read_folds(data.folds)
    folds = folds[folds["fold"].isin(list(folds_used))].reset_index(drop=True)
    image_ids = pd.Index(folds["image_id"].astype(str))
    boxes = read_labels(paths.KaggleLayout(data.root).labels_csv).boxes
    gt = boxes[boxes["image_id"].isin(image_ids)][["image_id", "x1", "y1", "x2", "y2"]].reset_index(drop=True)
    meta = load_meta(data.cache)
    meta = meta[meta["split"] == "train"].drop_duplicates("image_id").set_index("image_id")
    return image_ids, pd.Series(folds["fold"].to_numpy(), index=image_ids), gt, meta.reindex(image_ids)


def best_cut(curve: pd.DataFrame) -> float:
    """The cut of the highest score on a score-vs-threshold table (the lowest cut wins ties; NaN counts as 0)."""
    return float(curve["threshold"].iloc[int(np.argmax(curve["score"].fillna(0.0).to_numpy()))])


def load_experiment(experiment: str) -> ReportData:
    """The pooled OOF results of every fold of `experiment` that has them.

    Raises:
        CxrdetError: No fold has OOF predictions.
    """
    from cxrdet.ensemble.problem import read_predictions

    runs = experiment_runs(experiment)
    if not runs:
        raise CxrdetError(f"{paths.run_dir(experiment, 0).parent}: no fold<k>/oof.parquet; train and predict first "
                          f"(cxrdet train / cxrdet predict CONFIG --fold k --split oof), or name a tuned ensemble")
    data = _data_of_run(runs[0][1])
    image_ids, image_fold, gt, meta = _ground_truth(data, [k for k, _ in runs])
    pred = pd.concat([read_predictions(experiment, k, "oof") for k, _ in runs], ignore_index=True)
    curve = RsnaEvaluator(gt, image_ids).score_vs_threshold(pred, CUTS)
    return ReportData(
        name=experiment, kind="experiment", image_ids=image_ids, image_fold=image_fold, gt=gt,
        predictions={experiment: pred}, chosen={experiment: best_cut(curve)}, meta=meta, cache=data.cache,
        runs=[(experiment, k, run) for k, run in runs],
        notes=[f"folds {', '.join(str(k) for k, _ in runs)}; the chosen cut is the best of the pooled OOF curve "
               "(tuned on the same images it is scored on: slightly optimistic)"],
    )  # fmt: skip


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
    from cxrdet.ensemble.submit import load_params

    spec = load_ensemble(config)
    record = load_params(spec)
    oof = load_oof(spec)
    problem = oof.problem
    params = resolve(spec, record["params"])
    # Fuse without the final cut so that the curve shows every cut; the tuned cut is marked on it.
    uncut = dataclasses.replace(params, post=dataclasses.replace(params.post, final_thr=0.0))
    fused = problem.frame(problem.predict(uncut))
    fused["image_id"] = fused["image_id"].astype(str)
    predictions = {ENSEMBLE: fused, **{name: frame for name, frame in oof.members.items()}}
    chosen = {ENSEMBLE: float(params.post.final_thr)}
    for name, frame in oof.members.items():
        chosen[name] = best_cut(problem.evaluator.score_vs_threshold(frame, CUTS))
    runs = [(m.experiment, k, paths.run_dir(m.experiment, k)) for m in spec.members for k in m.folds]
    data = _data_of_run(runs[0][2])
    _, _, _, meta = _ground_truth(data, spec.folds_used)
    scores = record.get("scores", {})
    return ReportData(
        name=spec.name, kind="ensemble", image_ids=problem.image_ids, image_fold=pd.Series(oof.image_fold,
        index=problem.image_ids), gt=problem.gt, predictions=predictions, chosen=chosen, meta=meta,
        cache=data.cache, runs=runs,
        notes=[f"members: {', '.join(spec.member_names)}; folds {', '.join(map(str, spec.folds_used))}",
               f"tuned OOF score {_number(scores.get('optimistic'))} (optimistic), honest "
               f"{_number(scores.get('honest'))} (nested across folds; '-' when not run)",
               "member cuts: best of each member's pooled OOF curve; ensemble cut: the tuned final_thr"],
    )  # fmt: skip


def _number(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def load_report_data(name: str) -> ReportData:
    """An ensemble when `name` is a tuned ensemble config, else an experiment's runs."""
    config = ensemble_config(name)
    if config is not None and (paths.ensemble_dir(config.stem) / "params.json").is_file():
        return load_ensemble_data(config)
    return load_experiment(name)


# ---- analysis (pure functions) ----


def match_boxes(gt: pd.DataFrame, pred: pd.DataFrame, iou_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching per image as the RSNA metric does at one IoU threshold: predictions in descending score each
    take the unmatched ground-truth box of highest IoU, if that IoU is strictly above `iou_thr`.

    Args:
        gt: `image_id, x1, y1, x2, y2` (xyxy, pixels of the original image).
        pred: `image_id, x1, y1, x2, y2, score`, same units.

    Returns:
        For each row of `pred`, the positional index of its matched `gt` row or -1; for each row of `gt`, the
        positional index of its matching `pred` row or -1.
    """
    pred_match = np.full(len(pred), -1, dtype=np.int64)
    gt_match = np.full(len(gt), -1, dtype=np.int64)
    gt_rows = gt.reset_index(drop=True).groupby("image_id", sort=False).indices
    pred_rows = pred.reset_index(drop=True).groupby("image_id", sort=False).indices
    gt_xyxy = gt[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
    pred_xyxy = pred[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
    score = pred["score"].to_numpy(dtype=np.float64)
    for image_id, p_idx in pred_rows.items():
        g_idx = gt_rows.get(image_id)
        if g_idx is None:
            continue
        p_idx = p_idx[np.argsort(-score[p_idx], kind="stable")]
        iou = iou_matrix(pred_xyxy[p_idx], gt_xyxy[g_idx])
        free = np.ones(len(g_idx), dtype=bool)
        for row, p in enumerate(p_idx):
            cand = np.where(free, iou[row], -1.0)
            j = int(np.argmax(cand))
            if cand[j] > iou_thr:
                free[j] = False
                pred_match[p], gt_match[g_idx[j]] = g_idx[j], p
    return pred_match, gt_match


def precision_recall(gt: pd.DataFrame, pred: pd.DataFrame, iou_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of `pred` (boxes ranked by score over all images) at one IoU threshold.

    Returns:
        Arrays aligned with the ranked predictions: precision = TP / kept, recall = TP / ground-truth boxes.
    """
    pred_match, _ = match_boxes(gt, pred, iou_thr)
    order = np.argsort(-pred["score"].to_numpy(dtype=np.float64), kind="stable")
    tp = np.cumsum(pred_match[order] >= 0)
    kept = np.arange(1, len(order) + 1)
    return tp / kept, tp / max(len(gt), 1)


def size_group(xyxy: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Box size class of xyxy boxes (pixels of images `width` x `height`): sqrt(box area / image area) binned by
    `SIZE_BINS`."""
    side = np.sqrt(np.clip((xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]), 0, None) / (width * height))
    return np.asarray(SIZE_NAMES, dtype=object)[np.digitize(side, SIZE_BINS[1:-1])]


def lung_zone(xyxy: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Zone of each box centre: image left/right half x upper/middle/lower third (xyxy pixels of the image)."""
    cx = (xyxy[:, 0] + xyxy[:, 2]) / 2 / width
    cy = (xyxy[:, 1] + xyxy[:, 3]) / 2 / height
    thirds = ("upper", "middle", "lower")
    return np.asarray([f"{thirds[min(max(int(y * 3), 0), 2)]} {'left' if x < 0.5 else 'right'}"
                       for x, y in zip(cx, cy, strict=True)], dtype=object)


def error_table(data: ReportData, name: str, iou_thr: float = 0.4) -> pd.DataFrame:
    """False negatives and false positives of one prediction set at its chosen cut, by group.

    Returns:
        Rows `by, group, n_gt, fn, fn_rate, n_pred, fp, fp_rate` for `by` in size, zone, view, sex; a box's size and
        zone are those of the true box for FN and of the predicted box for FP; view and sex are the image's.
    """
    pred = data.predictions[name]
    pred = pred[pred["score"] >= data.chosen[name]].reset_index(drop=True)
    pred_match, gt_match = match_boxes(data.gt, pred, iou_thr)
    rows = []
    for side, boxes, missed in (("gt", data.gt, gt_match < 0), ("pred", pred, pred_match < 0)):
        meta = data.meta.reindex(boxes["image_id"].astype(str))
        w, h = meta["orig_width"].to_numpy(dtype=float), meta["orig_height"].to_numpy(dtype=float)
        xyxy = boxes[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
        groups = {"size": size_group(xyxy, w, h), "zone": lung_zone(xyxy, w, h),
                  "view": meta["view"].fillna("unknown").to_numpy(), "sex": meta["sex"].fillna("unknown").to_numpy()}
        for by, values in groups.items():
            frame = pd.DataFrame({"group": values, "missed": missed})
            for group, part in frame.groupby("group", sort=True):
                rows.append({"side": side, "by": by, "group": str(group), "n": len(part),
                             "err": int(part["missed"].sum())})
    long = pd.DataFrame(rows, columns=["side", "by", "group", "n", "err"])
    gt_part = long[long["side"] == "gt"].rename(columns={"n": "n_gt", "err": "fn"}).drop(columns="side")
    pred_part = long[long["side"] == "pred"].rename(columns={"n": "n_pred", "err": "fp"}).drop(columns="side")
    table = gt_part.merge(pred_part, on=["by", "group"], how="outer").fillna(0)
    for col in ("n_gt", "fn", "n_pred", "fp"):
        table[col] = table[col].astype(int)
    table["fn_rate"] = table["fn"] / table["n_gt"].where(table["n_gt"] > 0)
    table["fp_rate"] = table["fp"] / table["n_pred"].where(table["n_pred"] > 0)
    # Sizes from small to huge and zones from top to bottom read better than alphabetical order.
    rank = {**{g: i for i, g in enumerate(SIZE_NAMES)}, **{g: i for i, g in enumerate(ZONES)}}
    table["_by"] = table["by"].map({"size": 0, "zone": 1, "view": 2, "sex": 3})
    table["_group"] = [rank.get(g, len(rank)) for g in table["group"]]
    table = table.sort_values(["_by", "_group", "group"], kind="stable")
    return table[["by", "group", "n_gt", "fn", "fn_rate", "n_pred", "fp", "fp_rate"]].reset_index(drop=True)


def box_ratios(data: ReportData, name: str, iou_thr: float = 0.4) -> pd.DataFrame:
    """Predicted over true width and height of the matched pairs of one prediction set at its chosen cut."""
    pred = data.predictions[name]
    pred = pred[pred["score"] >= data.chosen[name]].reset_index(drop=True)
    pred_match, _ = match_boxes(data.gt, pred, iou_thr)
    hit = np.flatnonzero(pred_match >= 0)
    p = pred[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)[hit]
    g = data.gt[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)[pred_match[hit]]
    return pd.DataFrame({"width_ratio": (p[:, 2] - p[:, 0]) / (g[:, 2] - g[:, 0]),
                         "height_ratio": (p[:, 3] - p[:, 1]) / (g[:, 3] - g[:, 1])})


def shrink_factor(ratios: pd.DataFrame) -> float:
    """The factor of width and height (`cxrdet.boxes.shrink_xyxy`) that brings the median predicted/true ratio of
    both sides to 1 on geometric average: 1 / sqrt(median width ratio x median height ratio); NaN without pairs."""
    if ratios.empty:
        return float("nan")
    return float(1.0 / math.sqrt(ratios["width_ratio"].median() * ratios["height_ratio"].median()))


def per_fold_table(data: ReportData) -> pd.DataFrame:
    """RSNA score per fold of each prediction set at its chosen cut, plus the best validation score the training
    logged for each run."""
    from cxrdet.train import checkpoint_record

    rows = []
    for k in sorted(set(data.image_fold.tolist())):
        ids = data.image_fold.index[data.image_fold.to_numpy() == k]
        evaluator = RsnaEvaluator(data.gt[data.gt["image_id"].isin(ids)], ids)
        row: dict[str, Any] = {"fold": int(k), "images": len(ids)}
        for name, pred in data.predictions.items():
            kept = pred[(pred["score"] >= data.chosen[name]) & pred["image_id"].isin(ids)]
            row[f"{name} OOF"] = evaluator.score(kept).score
        for experiment, fold, run in data.runs:
            if fold == k:
                best = next(iter(sorted(run.glob("**/checkpoints/best.ckpt"))), None)
                row[f"{experiment} val/rsna"] = checkpoint_record(best).get("val_score") if best else None
        rows.append(row)
    return pd.DataFrame(rows)


def training_logs(run: Path, val_key: str = "val/rsna") -> pd.DataFrame:
    """Per-epoch `epoch, train_loss, <val_key with '/' as '_'>` (e.g. `val_rsna`) of a run's CSV logs (every stage
    and version, in order)."""
    val_col = val_key.replace("/", "_")
    frames = []
    for csv in sorted(run.glob("**/csv/version_*/metrics.csv")):
        raw = pd.read_csv(csv)
        if "epoch" not in raw:
            continue
        cols = {c: n for c, n in (("train/loss_epoch", "train_loss"), (val_key, val_col)) if c in raw}
        per_epoch = raw.groupby("epoch")[list(cols)].mean(numeric_only=True).rename(columns=cols)
        frames.append(per_epoch)
    if not frames:
        return pd.DataFrame(columns=["epoch", "train_loss", val_col])
    out = pd.concat(frames).reset_index()
    out["epoch"] = np.arange(1, len(out) + 1)  # stages restart their epoch count; number them in run order
    return out.reindex(columns=["epoch", "train_loss", val_col])


# ---- figures ----


def _figure(name: str, size: tuple[float, float] | None = None, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure of the fixed size of `name` (or `size`, inches) and its axes (no pyplot: no global state, no display
    backend)."""
    fig = Figure(figsize=size or FIGURES.get(name) or CLASSIFIER_FIGURES[name], dpi=DPI)
    return fig, fig.subplots(**kwargs)


def _save(fig: Figure, folder: Path, name: str) -> Path:
    out = folder / f"{name}.png"
    fig.tight_layout()  # lays out inside the fixed canvas; the saved size stays FIGURES[name] x DPI
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return out


def plot_threshold(data: ReportData, folder: Path) -> tuple[Path, pd.DataFrame]:
    """Score against the confidence cut per prediction set; returns the figure and the per-IoU rows at the cuts."""
    evaluator = RsnaEvaluator(data.gt, data.image_ids)
    fig, ax = _figure("threshold")
    at_cut = []
    for name, pred in data.predictions.items():
        curve = evaluator.score_vs_threshold(pred, np.union1d(CUTS, [data.chosen[name]]))
        line, = ax.plot(curve["threshold"], curve["score"].fillna(0.0), label=name,
                        linewidth=2.5 if name == data.primary else 1.2)
        row = curve[np.isclose(curve["threshold"], data.chosen[name])].iloc[0]
        ax.axvline(data.chosen[name], color=line.get_color(), linestyle=":", linewidth=1)
        ax.plot([row["threshold"]], [row["score"]], "o", color=line.get_color())
        at_cut.append({"prediction set": name, "cut": data.chosen[name], "score": row["score"],
                       **{c: row[c] for c in curve.columns if c.startswith("iou_")}})
    ax.set(xlabel="confidence cut (boxes with score >= cut kept)", ylabel="RSNA score (OOF)",
           title="Score against confidence threshold (dots: chosen cuts)", xlim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, folder, "threshold"), pd.DataFrame(at_cut)


def plot_pr(data: ReportData, folder: Path) -> Path:
    fig, axes = _figure("pr", ncols=2)
    for ax, iou in zip(axes, (0.4, 0.75), strict=True):
        for name, pred in data.predictions.items():
            precision, recall = precision_recall(data.gt, pred, iou)
            ax.plot(recall, precision, label=name, linewidth=2 if name == data.primary else 1)
        ax.set(xlabel="recall", ylabel="precision", title=f"IoU > {iou}", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, folder, "pr")


def plot_per_iou(at_cut: pd.DataFrame, folder: Path) -> Path:
    fig, ax = _figure("per_iou")
    width = 0.8 / max(len(at_cut), 1)
    x = np.arange(len(IOU_THRESHOLDS))
    for i, row in enumerate(at_cut.to_dict("records")):
        values = [row[f"iou_{t:.2f}"] for t in IOU_THRESHOLDS]
        ax.bar(x + i * width, values, width, label=f"{row['prediction set']} (cut {row['cut']:.2f})")
    ax.set_xticks(x + width * (len(at_cut) - 1) / 2, [f"{t:.2f}" for t in IOU_THRESHOLDS])
    ax.set(xlabel="IoU threshold", ylabel="mean TP / (TP + FP + FN)", title="The metric per IoU threshold")
    ax.legend(fontsize=8)
    return _save(fig, folder, "per_iou")


def plot_curves(data: ReportData, folder: Path) -> Path:
    runs = [(f"{experiment} fold {fold}" if data.kind == "ensemble" else f"fold {fold}", run)
            for experiment, fold, run in data.runs]
    return plot_training_curves(runs, folder)


def plot_training_curves(runs: Sequence[tuple[str, Path]], folder: Path, val_key: str = "val/rsna") -> Path:
    """`curves.png`: training loss and the validation metric `val_key` per epoch of each (label, run folder)."""
    fig, (loss_ax, val_ax) = _figure("curves", ncols=2)
    val_col = val_key.replace("/", "_")
    for label, run in runs:
        logs = training_logs(run, val_key)
        loss = logs.dropna(subset=["train_loss"])
        val = logs.dropna(subset=[val_col])
        loss_ax.plot(loss["epoch"], loss["train_loss"], marker=".", label=label)
        val_ax.plot(val["epoch"], val[val_col], marker=".", label=label)
    loss_ax.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="Training")
    val_ax.set(xlabel="epoch", ylabel=f"{val_key} (held-out fold)", title="Validation")
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return _save(fig, folder, "curves")


def gallery_picks(data: ReportData, name: str) -> dict[str, list[str]]:
    """Image ids to show, `GALLERY_PER_GROUP` each: `best` (highest per-image score among images with ground truth),
    `worst` (lowest score among images with ground truth; more true boxes first on ties) and `most false positives`
    (most boxes unmatched at IoU 0.4; more boxes first on ties), at the set's chosen cut."""
    pred = data.predictions[name]
    kept = pred[pred["score"] >= data.chosen[name]]
    result = RsnaEvaluator(data.gt, data.image_ids).score(kept)
    table = pd.DataFrame({"score": result.per_image.to_numpy(), "n_gt": result.n_gt, "n_pred": result.n_pred,
                          "fp": result.n_pred - result.tp[:, 0]}, index=data.image_ids)
    positive = table[table["n_gt"] > 0]  # a true negative left empty is not worth a panel
    best = positive.sort_values(["score", "n_gt"], ascending=[False, False], kind="stable")
    worst = positive.sort_values(["score", "n_gt"], ascending=[True, False], kind="stable")
    fp = table[table["fp"] > 0].sort_values(["fp", "n_pred"], ascending=[False, False], kind="stable")
    n = GALLERY_PER_GROUP
    return {"best": list(best.index[:n]), "worst": list(worst.index[:n]), "most false positives": list(fp.index[:n])}


def plot_gallery(data: ReportData, folder: Path) -> tuple[Path, dict[str, list[str]]]:
    from cxrdet.data.prepare import load_image

    name = data.primary
    picks = gallery_picks(data, name)
    pred = data.predictions[name]
    pred = pred[pred["score"] >= data.chosen[name]]
    fig, axes = _figure("gallery", nrows=len(picks), ncols=GALLERY_PER_GROUP)
    for r, (group, ids) in enumerate(picks.items()):
        for c in range(GALLERY_PER_GROUP):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(ids):
                continue
            image_id = ids[c]
            try:
                pixels = load_image(data.cache, "train", image_id)
            except FileNotFoundError:
                ax.text(0.5, 0.5, f"{image_id}\n(not in cache)", ha="center", va="center", fontsize=8)
                continue
            ax.imshow(pixels, cmap="gray", vmin=0, vmax=255)
            meta = data.meta.loc[image_id]
            src = (float(meta["orig_width"]), float(meta["orig_height"]))
            dst = (pixels.shape[1], pixels.shape[0])
            for boxes, color, scores in ((data.gt[data.gt["image_id"] == image_id], "black", None),
                                         (pred[pred["image_id"] == image_id], "lime", True)):
                xyxy = rescale_xyxy(boxes[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64), src, dst)
                for i, (x1, y1, x2, y2) in enumerate(xyxy):
                    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                                               linewidth=2))
                    if scores:
                        ax.text(x1, y1, f"{boxes['score'].iloc[i]:.2f}", color=color, fontsize=7, va="bottom")
            # Kaggle ids are 36-character UUIDs: the first 13 identify an image and fit above a panel.
            ax.set_title(f"{group}\n{image_id[:13]}", fontsize=8)
    fig.suptitle(f"{name} OOF at cut {data.chosen[name]:.2f}: ground truth black, predictions green", fontsize=10)
    return _save(fig, folder, "gallery"), picks


def plot_errors(table: pd.DataFrame, folder: Path) -> Path:
    fig, axes = _figure("errors", nrows=2, ncols=2)
    for ax, by in zip(axes.ravel(), ("size", "zone", "view", "sex"), strict=True):
        part = table[table["by"] == by]
        x = np.arange(len(part))
        ax.bar(x - 0.2, part["fn_rate"].fillna(0), 0.4, label="FN rate (missed true boxes)", color="tab:red")
        ax.bar(x + 0.2, part["fp_rate"].fillna(0), 0.4, label="FP rate (wrong predicted boxes)", color="tab:green")
        ax.set_xticks(x, [f"{g}\n{n} true / {m} pred" for g, n, m in zip(part["group"], part["n_gt"],
                                                                          part["n_pred"], strict=True)], fontsize=7)
        ax.set(ylim=(0, 1.05), title=f"by {by}", ylabel="rate")
        ax.legend(fontsize=7)
    return _save(fig, folder, "errors")


def plot_box_ratio(ratios: pd.DataFrame, factor: float, folder: Path) -> Path:
    fig, axes = _figure("box_ratio", ncols=2)
    for ax, col in zip(axes, ("width_ratio", "height_ratio"), strict=True):
        values = ratios[col].to_numpy()
        if len(values):
            ax.hist(values, bins=30, color="tab:green", alpha=0.8)
            ax.axvline(float(np.median(values)), color="black", label=f"median {np.median(values):.3f}")
            ax.legend(fontsize=8)
        ax.axvline(1.0, color="grey", linestyle=":")
        ax.set(xlabel=f"predicted / true {col.split('_')[0]}", ylabel="matched pairs (IoU > 0.4)")
    fig.suptitle(f"Box-size bias of {len(ratios)} matched pairs; shrink factor removing the median bias: "
                 f"{factor:.3f}", fontsize=10)
    return _save(fig, folder, "box_ratio")


# ---- the page ----


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-", border=0, classes="t")


def write_report(data: ReportData, out_dir: str | Path | None = None) -> Path:
    """Render every figure and the HTML page of `data` into `out_dir` (default `cxrdet.paths.report_dir(name)`).

    Returns:
        The written `index.html`.
    """
    folder = Path(out_dir) if out_dir is not None else paths.report_dir(data.name)
    folder.mkdir(parents=True, exist_ok=True)
    primary = data.primary
    _, at_cut = plot_threshold(data, folder)
    plot_pr(data, folder)
    plot_per_iou(at_cut, folder)
    plot_curves(data, folder)
    _, picks = plot_gallery(data, folder)
    errors = error_table(data, primary)
    plot_errors(errors, folder)
    ratios = box_ratios(data, primary)
    factor = shrink_factor(ratios)
    plot_box_ratio(ratios, factor, folder)
    folds = per_fold_table(data)
    medians = (f"median predicted/true width {ratios['width_ratio'].median():.3f}, height "
               f"{ratios['height_ratio'].median():.3f} over {len(ratios)} matched pairs; scaling width "
               f"and height by {factor:.3f} (postprocess shrink: below 1 shrinks, above 1 enlarges) removes the "
               "median bias" if len(ratios) else "no matched pairs")

    def figure(name: str, caption: str) -> str:
        w, h = (int(round(v * DPI)) for v in FIGURES[name])
        return (f'<figure><img src="{name}.png" width="{w}" height="{h}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.notes)
    picked = "".join(f"<li>{html.escape(g)}: {html.escape(', '.join(ids) or '-')}</li>" for g, ids in picks.items())
    page = f"""{page_head(data.name, f"{data.kind} {data.name}")}
<ul>{notes}<li>{len(data.image_ids)} OOF images, {len(data.gt)} true boxes</li></ul>
<h2>Score against confidence threshold</h2>
{figure("threshold", "RSNA score of the OOF boxes kept at each cut; dots and dotted lines mark the chosen cuts")}
{_table_html(at_cut)}
<h2>Precision and recall</h2>
{figure("pr", "Precision-recall of boxes ranked over all OOF images, at IoU 0.4 and 0.75")}
<h2>The metric per IoU threshold</h2>
{figure("per_iou", "Mean TP / (TP + FP + FN) at each IoU threshold, at the chosen cut")}
<h2>Scores per fold</h2>
{_table_html(folds)}
<h2>Training and validation</h2>
{figure("curves", "Training loss and validation RSNA score per epoch, per run (CSV logs)")}
<h2>Gallery</h2>
{figure("gallery", f"{primary}: ground truth black, predictions green with scores")}
<ul>{picked}</ul>
<h2>Error analysis ({html.escape(primary)}, IoU &gt; 0.4, chosen cut)</h2>
{figure("errors", "False negatives and false positives by box size, lung zone, view position and sex")}
{_table_html(errors)}
<h2>Box-size bias</h2>
{figure("box_ratio", "Predicted over true width and height of matched pairs")}
<p>{html.escape(medians)}.</p>
</body></html>
"""
    write_text(folder / "report.json", json.dumps({"name": data.name, "kind": data.kind, "chosen": data.chosen,
                                                     "shrink_factor": None if math.isnan(factor) else factor,
                                                     "gallery": picks}, indent=2))
    return write_text(folder / "index.html", page)


# ---- classifier experiments ----


def probabilities_figure_size(n_classes: int) -> tuple[float, float]:
    """Size in inches of `probabilities.png`: one panel per class, `PROBABILITY_COLUMNS` panels a row."""
    cols = min(PROBABILITY_COLUMNS, max(n_classes, 1))
    rows = math.ceil(max(n_classes, 1) / cols)
    return max(6.0, 3.0 * cols), 2.6 * rows + 0.8


def classifier_figure_sizes(n_classes: int) -> dict[str, tuple[int, int]]:
    """The pixel size (width, height) of each figure file of a classifier report with `n_classes` classes."""
    inches = {**CLASSIFIER_FIGURES, "probabilities": probabilities_figure_size(n_classes)}
    return {name: (round(w * DPI), round(h * DPI)) for name, (w, h) in inches.items()}


def plot_roc(result: ClassificationResult, folder: Path) -> Path:
    """`roc.png`: the pooled OOF ROC curve of every scorable class, its AUROC in the legend (best first)."""
    fig, ax = _figure("roc")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance (0.5)")
    auc = result.per_class.set_index("class")["auroc"]
    for name in result.ranked_classes():
        curve = result.roc[name]
        ax.plot(curve["fpr"], curve["tpr"], linewidth=1.5, label=f"{name} {auc[name]:.3f}")
    ax.set(xlabel="false-positive rate (1 - specificity)", ylabel="true-positive rate (sensitivity)",
           title=f"OOF ROC per class (mean AUROC {_number(result.mean_auroc)})", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_aspect("equal", adjustable="box")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", title="class AUROC", title_fontsize=7)
    return _save(fig, folder, "roc")


def plot_probabilities(result: ClassificationResult, folder: Path) -> Path:
    """`probabilities.png`: per class, histograms of the OOF probability of true-negative and true-positive images,
    each as a fraction of its group (the groups differ much in size); a binary task's F1 threshold is marked."""
    n = len(result.classes)
    cols = min(PROBABILITY_COLUMNS, n)
    fig, axes = _figure("probabilities", size=probabilities_figure_size(n), nrows=math.ceil(n / cols), ncols=cols,
                        squeeze=False)
    bins = np.linspace(0.0, 1.0, 21)
    for ax, name in zip(axes.ravel(), result.classes, strict=False):
        y = result.truth[name].to_numpy(dtype=bool)
        p = result.probs[name].to_numpy(dtype=np.float64)
        for mask, color, label in ((~y, "tab:blue", "negative"), (y, "tab:red", "positive")):
            if mask.any():
                ax.hist(p[mask], bins=bins, weights=np.full(mask.sum(), 1.0 / mask.sum()), color=color, alpha=0.55,
                        label=f"{label} ({mask.sum()})")
        if result.f1 is not None and not math.isnan(result.f1.threshold):
            ax.axvline(result.f1.threshold, color="black", linestyle="--", linewidth=1,
                       label=f"best-F1 cut {result.f1.threshold:.3f}")
        ax.set(xlim=(0, 1), title=name, xlabel="OOF probability", ylabel="fraction of group")
        ax.legend(fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("OOF probabilities by truth", fontsize=10)
    return _save(fig, folder, "probabilities")


def classifier_fold_table(result: ClassificationResult, runs: Sequence[tuple[int, Path]], val_key: str
                          ) -> pd.DataFrame:
    """AUROC per fold (mean and per class) and the best validation score the training recorded per run."""
    table = result.per_fold.copy()
    recorded = {}
    for fold, run in runs:
        best = next(iter(sorted(run.glob("**/checkpoints/best.ckpt"))), None)
        if best is not None:
            from cxrdet.train import checkpoint_record  # imports Lightning: only when there is a checkpoint to read

            recorded[fold] = checkpoint_record(best).get("val_score")
    table.insert(3, f"{val_key} (best checkpoint)", [recorded.get(k) for k in table["fold"]])
    return table


def write_classifier_report(oof: ExperimentOof, result: ClassificationResult, out_dir: str | Path | None = None
                            ) -> Path:
    """Render a classifier experiment's figures (ROC curves, probabilities by truth, training curves) and HTML page
    into `out_dir` (default `cxrdet.paths.report_dir(experiment)`).

    Returns:
        The written `index.html`.
    """
    folder = Path(out_dir) if out_dir is not None else paths.report_dir(oof.experiment)
    folder.mkdir(parents=True, exist_ok=True)
    plot_roc(result, folder)
    plot_probabilities(result, folder)
    plot_training_curves([(f"fold {k}", run) for k, run in oof.runs], folder, CLASSIFIER_VAL_KEY)
    sizes = classifier_figure_sizes(len(result.classes))
    folds = classifier_fold_table(result, oof.runs, CLASSIFIER_VAL_KEY)
    per_class = result.per_class.rename(columns={"n_images": "images", "n_positive": "positives"})

    def figure(name: str, caption: str) -> str:
        w, h = sizes[name]
        return (f'<figure><img src="{name}.png" width="{w}" height="{h}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    f1_html = ""
    if result.f1 is not None:
        f1 = result.f1
        f1_html = (f"<h2>F1 at the best threshold</h2>\n<p>Calling images with probability &gt;= "
                   f"{_number(f1.threshold)} positive gives F1 {_number(f1.f1)} (precision {_number(f1.precision)}, "
                   f"recall {_number(f1.recall)}) on the pooled OOF images; the cut is chosen on the same images "
                   "(slightly optimistic).</p>")
    folds_used = ", ".join(str(k) for k, _ in oof.runs)
    notes = [f"folds {folds_used}; {len(result.probs)} OOF images; classes {', '.join(result.classes)}",
             f"mean AUROC over scorable classes {_number(result.mean_auroc)}", *result.notes]
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = f"""{page_head(oof.experiment, f"classifier {oof.experiment}")}
<ul>{notes_html}</ul>
<h2>ROC curves</h2>
{figure("roc", "Pooled OOF ROC curve per class; the legend gives each class's AUROC")}
<h2>Per class</h2>
{_table_html(per_class)}
{f1_html}
<h2>AUROC per fold</h2>
{_table_html(folds)}
<h2>Training and validation</h2>
{figure("curves", f"Training loss and {CLASSIFIER_VAL_KEY} per epoch, per fold (CSV logs)")}
<h2>Probabilities by truth</h2>
{figure("probabilities", "OOF probability histograms of true-negative and true-positive images, per class")}
</body></html>
"""
    summary = {"name": oof.experiment, "kind": "classifier", "mean_auroc": _json_number(result.mean_auroc),
               "auroc": {c: _json_number(v) for c, v in zip(result.classes, result.per_class["auroc"], strict=True)},
               "f1": None if result.f1 is None else {k: _json_number(v) for k, v in
                                                      dataclasses.asdict(result.f1).items()},
               "notes": result.notes}
    write_text(folder / "report.json", json.dumps(summary, indent=2))
    return write_text(folder / "index.html", page)


def _json_number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def classifier_experiment(name: str) -> bool:
    """Whether `name` is an experiment whose runs are classifiers (`task='classify'` in their written config)."""
    runs = experiment_runs(name)
    return bool(runs) and is_classifier_run(runs[0][1])


def report(name: str, out_dir: str | Path | None = None) -> Path:
    """Load an experiment's (detector or classifier) or a tuned ensemble's OOF results and write the report; returns
    `index.html`."""
    config = ensemble_config(name)
    tuned = config is not None and (paths.ensemble_dir(config.stem) / "params.json").is_file()
    if not tuned and classifier_experiment(name):
        oof = load_experiment_oof(name)
        return write_classifier_report(oof, evaluate(oof.probs, oof.truth, oof.image_fold), out_dir)
    return write_report(load_report_data(name), out_dir)


def figure_sizes() -> Mapping[str, tuple[int, int]]:
    """The pixel size (width, height) of each figure file."""
    return {name: (int(round(w * DPI)), int(round(h * DPI))) for name, (w, h) in FIGURES.items()}
