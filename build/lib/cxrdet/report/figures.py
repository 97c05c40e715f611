"""Figure plumbing of the reports: fixed-size matplotlib figures (no pyplot: no global state, no display backend),
atomic PNG writing, and the training-curve figure every run's report has."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxrdet.io import atomic_path

DPI = 100
# Figure name -> (width, height) in inches; at DPI this is the PNG's pixel size (saved without tight cropping).
FIGURES: dict[str, tuple[float, float]] = {
    "threshold": (8.0, 4.5), "pr": (10.0, 4.5), "per_iou": (8.0, 4.0), "curves": (10.0, 4.5),
    "gallery": (12.0, 9.0), "errors": (12.0, 8.0), "box_ratio": (10.0, 4.0), "per_class": (10.0, 4.5),
}
# Figures of a classifier experiment's report; `probabilities.png` grows with the class count
# (`probabilities_figure_size`).
CLASSIFIER_FIGURES: dict[str, tuple[float, float]] = {"roc": (8.0, 7.0), "curves": FIGURES["curves"]}
PROBABILITY_COLUMNS = 4
CLASSIFIER_VAL_KEY = "val/auroc"  # what LitClassifier logs and selects its best checkpoint on


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


def new_figure(name: str, size: tuple[float, float] | None = None, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure of the fixed size of `name` (or `size`, inches) and its axes (no pyplot: no global state, no display
    backend)."""
    fig = Figure(figsize=size or FIGURES.get(name) or CLASSIFIER_FIGURES[name], dpi=DPI)
    return fig, fig.subplots(**kwargs)


def save_figure(fig: Figure, folder: Path, name: str) -> Path:
    """Write `fig` as `<folder>/<name>.png` (atomically) at its fixed size."""
    out = folder / f"{name}.png"
    fig.tight_layout()  # lays out inside the fixed canvas; the saved size stays FIGURES[name] x DPI
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return out


def plot_training_curves(runs: Sequence[tuple[str, Path]], folder: Path, val_key: str = "val/rsna") -> Path:
    """`curves.png`: training loss and the validation metric `val_key` per epoch of each (label, run folder)."""
    fig, (loss_ax, val_ax) = new_figure("curves", ncols=2)
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
    return save_figure(fig, folder, "curves")


def figure_sizes() -> Mapping[str, tuple[int, int]]:
    """The pixel size (width, height) of each figure file."""
    return {name: (int(round(w * DPI)), int(round(h * DPI))) for name, (w, h) in FIGURES.items()}

