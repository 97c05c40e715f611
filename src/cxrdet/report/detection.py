"""The report page of detection results (an experiment's or a tuned ensemble's OOF boxes), with PNG figures.

Figures (fixed pixel sizes, `cxrdet.report.figures.FIGURES`):
- `threshold.png`: the competition's score against the confidence cut, per prediction set, the chosen cut marked;
- `pr.png`: precision-recall at IoU 0.4 and 0.75 (boxes ranked over all images, matched per class by the RSNA
  metric's greedy matching);
- `per_iou.png`: the metric at the chosen cut, per IoU threshold (RSNA: its own per-threshold means; a VOC-scored
  competition: the mAP of the finding classes at each IoU threshold);
- `per_class.png`: the AP of each class at the chosen cut, per prediction set: the classes of the competition's metric
  where it scores per class (VinBigData's 15 at IoU > 0.4, SIIM's six at IoU > 0.5, the rows a submission adds
  included), else each detection class at IoU > 0.4 (VOC all-point);
- `curves.png`: training loss and validation score per epoch, per experiment and fold (CSV logs);
- `gallery.png`: OOF images, best, worst and with the most false positives: ground truth black, predictions green;
- `errors.png`: false negatives and false positives grouped by box size, lung zone, view position and sex;
- `box_ratio.png`: predicted over true width and height of matched pairs (the box-size bias), with the shrink
  factor that removes the median bias.

The chosen cut is the tuned `final_thr` for an ensemble and the best cut of the pooled OOF curve for a single
experiment (a slightly optimistic choice, said so in the report).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from cxrdet.boxes import rescale_xyxy
from cxrdet.io import write_text
from cxrdet.metrics.rsna import IOU_THRESHOLDS, RsnaEvaluator, match_boxes
from cxrdet.metrics.voc import VocEvaluator
from cxrdet.report.data import CUTS, ReportData, load_report_data
from cxrdet.report.figures import figure_sizes, new_figure, plot_training_curves, save_figure
from cxrdet.report.html import figure_html, items_html, page_head, table_html
from cxrdet.runs import report_dir

GALLERY_PER_GROUP = 4
SIZE_BINS = (0.0, 0.15, 0.25, 0.35, math.inf)  # sqrt(box area / image area)
SIZE_NAMES = ("small <0.15", "medium 0.15-0.25", "large 0.25-0.35", "huge >0.35")
ZONES = tuple(f"{third} {side}" for third in ("upper", "middle", "lower") for side in ("left", "right"))

# ---- analysis (pure functions) ----


def findings(data: ReportData, frame: pd.DataFrame) -> pd.DataFrame:
    """The boxes of `frame` of the competition's detection classes (without VinBigData's no-finding box)."""
    if "label" not in frame.columns:
        return frame.assign(label=0)
    return frame[frame["label"].to_numpy() < len(data.contest.classes)].reset_index(drop=True)


def per_class(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with image and class as one key (`image_id|label`; no `label`: one class): matching it matches boxes
    of one class only."""
    label = frame["label"].astype(str) if "label" in frame.columns else "0"
    return frame.assign(image_id=frame["image_id"].astype(str) + "|" + label)


def precision_recall(gt: pd.DataFrame, pred: pd.DataFrame, iou_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of `pred` (boxes ranked by score over all images) at one IoU threshold, matched per image
    by the metric's own greedy matching (`cxrdet.metrics.rsna.match_boxes`).

    Returns:
        Arrays aligned with the ranked predictions: precision = TP / kept, recall = TP / ground-truth boxes.
    """
    pred_match, _ = match_boxes(per_class(gt), per_class(pred), iou_thr)
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
    pred = findings(data, data.predictions[name])
    pred = pred[pred["score"] >= data.chosen[name]].reset_index(drop=True)
    pred_match, gt_match = match_boxes(per_class(data.gt), per_class(pred), iou_thr)
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
    pred = findings(data, data.predictions[name])
    pred = pred[pred["score"] >= data.chosen[name]].reset_index(drop=True)
    pred_match, _ = match_boxes(per_class(data.gt), per_class(pred), iou_thr)
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
    """The competition's score per fold of each prediction set at its chosen cut, plus the best validation score the
    training logged for each run."""
    rows = []
    monitor = data.contest.monitor
    for k in sorted(set(data.image_fold.tolist())):
        ids = data.image_fold.index[data.image_fold.to_numpy() == k]
        evaluator = data.evaluator(ids)
        row: dict[str, Any] = {"fold": int(k), "images": len(ids)}
        for name in data.predictions:
            row[f"{name} OOF"] = evaluator.score(kept_at_cut(data, name, ids)).score
        for run in data.runs:
            if run.fold == k:
                # The final curriculum stage's best checkpoint: the one prediction used.
                row[f"{run.experiment} {monitor}"] = run.best_record().get("val_score")
        rows.append(row)
    return pd.DataFrame(rows)


def kept_at_cut(data: ReportData, name: str, ids: pd.Index) -> pd.DataFrame:
    """The boxes of one prediction set on `ids` that its chosen cut keeps; a cut never drops the boxes outside the
    detection classes (VinBigData's no-finding box, whose confidence is not a detection's)."""
    pred = data.predictions[name]
    keep = pred["score"].to_numpy() >= data.chosen[name]
    if "label" in pred.columns:
        keep |= pred["label"].to_numpy() >= len(data.contest.classes)
    return pred[keep & pred["image_id"].isin(ids).to_numpy()]


def plot_threshold(data: ReportData, folder: Path) -> tuple[Path, pd.DataFrame]:
    """Score against the confidence cut per prediction set; returns the figure and the per-IoU rows at the cuts."""
    evaluator = data.evaluator()
    fig, ax = new_figure("threshold")
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
    ax.set(xlabel="confidence cut (boxes with score >= cut kept)", ylabel=f"{data.contest.metric} score (OOF)",
           title="Score against confidence threshold (dots: chosen cuts)", xlim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, folder, "threshold"), pd.DataFrame(at_cut)


def plot_pr(data: ReportData, folder: Path) -> Path:
    fig, axes = new_figure("pr", ncols=2)
    for ax, iou in zip(axes, (0.4, 0.75), strict=True):
        for name, pred in data.predictions.items():
            precision, recall = precision_recall(data.gt, findings(data, pred), iou)
            ax.plot(recall, precision, label=name, linewidth=2 if name == data.primary else 1)
        ax.set(xlabel="recall", ylabel="precision", title=f"IoU > {iou}", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, folder, "pr")


def finding_ap(data: ReportData, name: str, iou_thr: float) -> pd.DataFrame:
    """AP of each detection class (VOC all-point, IoU strictly above `iou_thr`) of one prediction set at its cut:
    rows `label, class, ap, n_gt, n_pred, tp` (`cxrdet.metrics.voc.VocResult.per_class`)."""
    pred = findings(data, data.predictions[name])
    pred = pred[pred["score"] >= data.chosen[name]]
    evaluator = VocEvaluator(data.gt, data.image_ids, data.contest.classes, iou_thr)
    return evaluator.score(pred).per_class


def per_iou_rows(data: ReportData, at_cut: pd.DataFrame) -> pd.DataFrame:
    """`at_cut` with one `iou_<t>` column per IoU threshold: the RSNA metric's own, else the finding classes' mAP."""
    if any(c.startswith("iou_") for c in at_cut.columns):
        return at_cut
    out = at_cut.copy()
    for t in IOU_THRESHOLDS:
        out[f"iou_{t:.2f}"] = [float(np.nanmean(finding_ap(data, name, float(t))["ap"].to_numpy(dtype=float)))
                               if len(data.gt) else math.nan for name in at_cut["prediction set"]]
    return out


def class_ap(data: ReportData, name: str) -> pd.DataFrame:
    """AP per class of one prediction set at its cut (its detection boxes cut; the rows a submission adds kept): the
    competition metric's own table when it scores per class (`per_class` of its result: VinBigData, SIIM), else
    `finding_ap` at IoU > 0.4 (RSNA)."""
    frame = data.predictions[name]
    detection = frame["label"].to_numpy() < len(data.contest.classes) if "label" in frame.columns else None
    if detection is not None:
        result = data.evaluator().score(frame[~detection | (frame["score"].to_numpy() >= data.chosen[name])])
        table = getattr(result, "per_class", None)
        if table is not None:
            return table.reset_index(drop=True)
    return finding_ap(data, name, 0.4)


def plot_per_class(data: ReportData, folder: Path) -> tuple[Path, pd.DataFrame]:
    """`per_class.png` and its table: AP of each class, per prediction set at its chosen cut (`class_ap`)."""
    tables = {name: class_ap(data, name) for name in data.predictions}
    classes = next(iter(tables.values()))["class"].tolist()
    fig, ax = new_figure("per_class")
    width = 0.8 / max(len(tables), 1)
    x = np.arange(len(classes))
    for i, (name, table) in enumerate(tables.items()):
        ax.bar(x + i * width, table["ap"].fillna(0.0).to_numpy(), width, label=name)
    ax.set_xticks(x + width * (len(tables) - 1) / 2, classes, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel=f"AP (OOF, {data.contest.metric})", ylim=(0, 1.02), title="AP per class at the chosen cut")
    ax.legend(fontsize=8)
    first = next(iter(tables.values()))
    rows = pd.DataFrame({"class": classes, "true boxes": first["n_gt"].to_numpy()})
    for name, table in tables.items():
        rows[f"{name} AP"] = table["ap"].to_numpy()
    return save_figure(fig, folder, "per_class"), rows


def plot_per_iou(at_cut: pd.DataFrame, folder: Path) -> Path:
    fig, ax = new_figure("per_iou")
    width = 0.8 / max(len(at_cut), 1)
    x = np.arange(len(IOU_THRESHOLDS))
    for i, row in enumerate(at_cut.to_dict("records")):
        values = [row[f"iou_{t:.2f}"] for t in IOU_THRESHOLDS]
        ax.bar(x + i * width, values, width, label=f"{row['prediction set']} (cut {row['cut']:.2f})")
    ax.set_xticks(x + width * (len(at_cut) - 1) / 2, [f"{t:.2f}" for t in IOU_THRESHOLDS])
    ax.set(xlabel="IoU threshold", ylabel="score at that IoU threshold", title="The metric per IoU threshold")
    ax.legend(fontsize=8)
    return save_figure(fig, folder, "per_iou")


def plot_curves(data: ReportData, folder: Path) -> Path:
    runs = [(f"{run.experiment} fold {run.fold}" if data.kind == "ensemble" else f"fold {run.fold}", run.folder)
            for run in data.runs]
    return plot_training_curves(runs, folder, data.contest.monitor)


def gallery_picks(data: ReportData, name: str) -> dict[str, list[str]]:
    """Image ids to show, `GALLERY_PER_GROUP` each: `best` (highest per-image score among images with ground truth),
    `worst` (lowest score among images with ground truth; more true boxes first on ties) and `most false positives`
    (most boxes unmatched at IoU 0.4; more boxes first on ties), at the set's chosen cut."""
    pred = findings(data, data.predictions[name])
    kept = pred[pred["score"] >= data.chosen[name]]
    # Per-image quality by the RSNA matching, whatever the competition: one number per image, boxes of any class.
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
    from cxrdet.data.prepare import load_image  # reads PNGs: only when a gallery is drawn

    name = data.primary
    picks = gallery_picks(data, name)
    pred = findings(data, data.predictions[name])
    pred = pred[pred["score"] >= data.chosen[name]]
    fig, axes = new_figure("gallery", nrows=len(picks), ncols=GALLERY_PER_GROUP)
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
    return save_figure(fig, folder, "gallery"), picks


def plot_errors(table: pd.DataFrame, folder: Path) -> Path:
    fig, axes = new_figure("errors", nrows=2, ncols=2)
    for ax, by in zip(axes.ravel(), ("size", "zone", "view", "sex"), strict=True):
        part = table[table["by"] == by]
        x = np.arange(len(part))
        ax.bar(x - 0.2, part["fn_rate"].fillna(0), 0.4, label="FN rate (missed true boxes)", color="tab:red")
        ax.bar(x + 0.2, part["fp_rate"].fillna(0), 0.4, label="FP rate (wrong predicted boxes)", color="tab:green")
        ax.set_xticks(x, [f"{g}\n{n} true / {m} pred" for g, n, m in zip(part["group"], part["n_gt"],
                                                                          part["n_pred"], strict=True)], fontsize=7)
        ax.set(ylim=(0, 1.05), title=f"by {by}", ylabel="rate")
        ax.legend(fontsize=7)
    return save_figure(fig, folder, "errors")


def plot_box_ratio(ratios: pd.DataFrame, factor: float, folder: Path) -> Path:
    fig, axes = new_figure("box_ratio", ncols=2)
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
    return save_figure(fig, folder, "box_ratio")


# ---- the page ----


def write_report(data: ReportData, out_dir: str | Path | None = None) -> Path:
    """Render every figure and the HTML page of `data` into `out_dir` (default `cxrdet.runs.report_dir(name)`).

    Returns:
        The written `index.html`.
    """
    folder = Path(out_dir) if out_dir is not None else report_dir(data.name)
    folder.mkdir(parents=True, exist_ok=True)
    primary = data.primary
    _, at_cut = plot_threshold(data, folder)
    at_cut = per_iou_rows(data, at_cut)
    plot_pr(data, folder)
    plot_per_iou(at_cut, folder)
    _, class_table = plot_per_class(data, folder)
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

    sizes = figure_sizes()

    def figure(name: str, caption: str) -> str:
        return figure_html(name, caption, sizes[name])

    notes = items_html(data.notes)
    metric = html.escape(data.contest.metric)
    rsna = data.contest.name == "rsna"
    per_iou_caption = ("Mean TP / (TP + FP + FN) at each IoU threshold, at the chosen cut" if rsna
                       else "mAP of the finding classes at each IoU threshold, at the chosen cut")
    picked = "".join(f"<li>{html.escape(g)}: {html.escape(', '.join(ids) or '-')}</li>" for g, ids in picks.items())
    page = f"""{page_head(data.name, f"{data.kind} {data.name}")}
<ul>{notes}<li>{len(data.image_ids)} OOF images, {len(data.gt)} true boxes</li></ul>
<h2>Score against confidence threshold</h2>
{figure("threshold", f"{metric} score of the OOF boxes kept at each cut; dots and dotted lines mark the chosen cuts")}
{table_html(at_cut)}
<h2>AP per class</h2>
{figure("per_class", "AP of each class of the competition's metric (VOC all-point; detection classes at IoU > "
         "0.4 where the metric has no per-class AP) at the chosen cut, per prediction set")}
{table_html(class_table)}
<h2>Precision and recall</h2>
{figure("pr", "Precision-recall of boxes ranked over all OOF images, at IoU 0.4 and 0.75")}
<h2>The metric per IoU threshold</h2>
{figure("per_iou", per_iou_caption)}
<h2>Scores per fold</h2>
{table_html(folds)}
<h2>Training and validation</h2>
{figure("curves", f"Training loss and validation {data.contest.monitor} per epoch, per run (CSV logs)")}
<h2>Gallery</h2>
{figure("gallery", f"{primary}: ground truth black, predictions green with scores")}
<ul>{picked}</ul>
<h2>Error analysis ({html.escape(primary)}, IoU &gt; 0.4, chosen cut)</h2>
{figure("errors", "False negatives and false positives by box size, lung zone, view position and sex")}
{table_html(errors)}
<h2>Box-size bias</h2>
{figure("box_ratio", "Predicted over true width and height of matched pairs")}
<p>{html.escape(medians)}.</p>
</body></html>
"""
    write_text(folder / "report.json", json.dumps({"name": data.name, "kind": data.kind, "chosen": data.chosen,
                                                     "shrink_factor": None if math.isnan(factor) else factor,
                                                     "gallery": picks}, indent=2))
    return write_text(folder / "index.html", page)


def write_page(name: str, out_dir: str | Path | None = None) -> Path:
    """The detection report of an experiment's runs, or of a tuned ensemble (`load_report_data`)."""
    return write_report(load_report_data(name), out_dir)
