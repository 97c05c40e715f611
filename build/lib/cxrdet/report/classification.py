"""The report page of a classifier experiment, from its OOF probability files scored by
`cxrdet.metrics.classification` against the data root's label table:

- `roc.png`: the pooled OOF ROC curve per class, AUROC in the legend; tables of per-class AUROC, prevalence and
  positives, of AUROC per fold, and for a binary task F1 at its best threshold;
- `curves.png`: training loss and `val/auroc` per epoch, per fold (CSV logs);
- `probabilities.png`: histograms of the OOF probabilities of true-negative and true-positive images, per class.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.io import write_text
from cxrdet.metrics.classification import ClassificationResult, evaluate
from cxrdet.report.data import ExperimentOof, load_experiment_oof
from cxrdet.report.figures import (CLASSIFIER_FIGURES, CLASSIFIER_VAL_KEY, DPI, PROBABILITY_COLUMNS, new_figure,
                                   plot_training_curves, save_figure)
from cxrdet.report.html import figure_html, items_html, json_number, number, page_head, table_html
from cxrdet.runs import Run, report_dir

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
    fig, ax = new_figure("roc")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance (0.5)")
    auc = result.per_class.set_index("class")["auroc"]
    for name in result.ranked_classes():
        curve = result.roc[name]
        ax.plot(curve["fpr"], curve["tpr"], linewidth=1.5, label=f"{name} {auc[name]:.3f}")
    ax.set(xlabel="false-positive rate (1 - specificity)", ylabel="true-positive rate (sensitivity)",
           title=f"OOF ROC per class (mean AUROC {number(result.mean_auroc)})", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_aspect("equal", adjustable="box")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", title="class AUROC", title_fontsize=7)
    return save_figure(fig, folder, "roc")


def plot_probabilities(result: ClassificationResult, folder: Path) -> Path:
    """`probabilities.png`: per class, histograms of the OOF probability of true-negative and true-positive images,
    each as a fraction of its group (the groups differ much in size); a binary task's F1 threshold is marked."""
    n = len(result.classes)
    cols = min(PROBABILITY_COLUMNS, n)
    fig, axes = new_figure("probabilities", size=probabilities_figure_size(n), nrows=math.ceil(n / cols), ncols=cols,
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
    return save_figure(fig, folder, "probabilities")


def classifier_fold_table(result: ClassificationResult, runs: Sequence[Run], val_key: str) -> pd.DataFrame:
    """AUROC per fold (mean and per class) and the best validation score the training recorded per run (its final
    curriculum stage's best checkpoint)."""
    table = result.per_fold.copy()
    recorded = {run.fold: run.best_record().get("val_score") for run in runs}
    table.insert(3, f"{val_key} (best checkpoint)", [recorded.get(k) for k in table["fold"]])
    return table


def write_classifier_report(oof: ExperimentOof, result: ClassificationResult, out_dir: str | Path | None = None
                            ) -> Path:
    """Render a classifier experiment's figures (ROC curves, probabilities by truth, training curves) and HTML page
    into `out_dir` (default `cxrdet.runs.report_dir(experiment)`).

    Returns:
        The written `index.html`.
    """
    folder = Path(out_dir) if out_dir is not None else report_dir(oof.experiment)
    folder.mkdir(parents=True, exist_ok=True)
    plot_roc(result, folder)
    plot_probabilities(result, folder)
    plot_training_curves([(f"fold {run.fold}", run.folder) for run in oof.runs], folder, CLASSIFIER_VAL_KEY)
    sizes = classifier_figure_sizes(len(result.classes))
    folds = classifier_fold_table(result, oof.runs, CLASSIFIER_VAL_KEY)
    per_class = result.per_class.rename(columns={"n_images": "images", "n_positive": "positives"})

    def figure(name: str, caption: str) -> str:
        return figure_html(name, caption, sizes[name])

    f1_html = ""
    if result.f1 is not None:
        f1 = result.f1
        f1_html = (f"<h2>F1 at the best threshold</h2>\n<p>Calling images with probability &gt;= "
                   f"{number(f1.threshold)} positive gives F1 {number(f1.f1)} (precision {number(f1.precision)}, "
                   f"recall {number(f1.recall)}) on the pooled OOF images; the cut is chosen on the same images "
                   "(slightly optimistic).</p>")
    folds_used = ", ".join(str(run.fold) for run in oof.runs)
    notes = [f"folds {folds_used}; {len(result.probs)} OOF images; classes {', '.join(result.classes)}",
             f"mean AUROC over scorable classes {number(result.mean_auroc)}", *result.notes]
    notes_html = items_html(notes)
    page = f"""{page_head(oof.experiment, f"classifier {oof.experiment}")}
<ul>{notes_html}</ul>
<h2>ROC curves</h2>
{figure("roc", "Pooled OOF ROC curve per class; the legend gives each class's AUROC")}
<h2>Per class</h2>
{table_html(per_class)}
{f1_html}
<h2>AUROC per fold</h2>
{table_html(folds)}
<h2>Training and validation</h2>
{figure("curves", f"Training loss and {CLASSIFIER_VAL_KEY} per epoch, per fold (CSV logs)")}
<h2>Probabilities by truth</h2>
{figure("probabilities", "OOF probability histograms of true-negative and true-positive images, per class")}
</body></html>
"""
    summary = {"name": oof.experiment, "kind": "classifier", "mean_auroc": json_number(result.mean_auroc),
               "auroc": {c: json_number(v) for c, v in zip(result.classes, result.per_class["auroc"], strict=True)},
               "f1": None if result.f1 is None else {k: json_number(v) for k, v in
                                                      dataclasses.asdict(result.f1).items()},
               "notes": result.notes}
    write_text(folder / "report.json", json.dumps(summary, indent=2))
    return write_text(folder / "index.html", page)


def write_page(experiment: str, out_dir: str | Path | None = None) -> Path:
    """A classifier experiment's report: its OOF probabilities scored and rendered (`write_classifier_report`)."""
    oof = load_experiment_oof(experiment)
    return write_classifier_report(oof, evaluate(oof.probs, oof.truth, oof.image_fold), out_dir)
