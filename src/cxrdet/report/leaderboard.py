"""The local leaderboard: every experiment and every tuned ensemble under the outputs folder, with their scores,
as rows (`cxrdet runs`, `--json`) and as `outputs/index.html` (`cxrdet report --all`).

An experiment's row: its task and validation metric, folds finished out of the fold file's and which are missing,
each fold's best validation score (the final stage's `done.json`), the pooled OOF score (the task's: the
competition's metric at the best cut of the pooled OOF curve for a detector, as its report shows; mean AUROC for a
classifier), epochs, training wall time and status (`cxrdet.runs.STATES`: finished, running, failed, killed, not
started). An ensemble's row: its members, optimistic and honest scores (`params.json`), trials, and every submission
`cxrdet submit` wrote from it, scored against test labels where they exist (the synthetic data's
`synth_test_labels.csv`, or `--test-labels`).

The pooled OOF score reads every fold's OOF predictions and the labels; it is cached in the experiment folder
(`Experiment.leaderboard_cache`) and recomputed when an OOF file, the run config or the fold file changes.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrdet import paths
from cxrdet.errors import CxrdetError
from cxrdet.io import write_json, write_text
from cxrdet.report.html import number, page_head
from cxrdet.runs import DONE_FILE, STATES, EnsembleRun, Experiment, Run, resolve_stages

PooledScore = Callable[[str], tuple[str, float]]
"""`experiment -> (metric name, pooled OOF score)` (the experiment's task decides: `cxrdet.tasks`)."""
TaskOf = Callable[[Mapping[str, Any]], str]
"""`run config -> task name` (`cxrdet.tasks.task_name`: the task is read from a config in one place)."""

EXPERIMENT_COLUMNS: tuple[str, ...] = ("experiment", "task", "metric", "folds", "missing", "val_per_fold", "val_mean",
                                       "oof", "epochs", "wall_s", "status")
ENSEMBLE_COLUMNS: tuple[str, ...] = ("ensemble", "members", "optimistic", "honest", "test", "trials", "submissions",
                                     "tuned")
_NUMERIC = frozenset({"val_mean", "oof", "wall_s", "optimistic", "honest", "test", "trials"})


# ---- experiments ----


def experiment_names(outputs: Path | None = None) -> list[str]:
    """Every folder under the outputs folder with at least one `fold<k>/config.py` (a run training started), by
    name."""
    root = outputs or paths.outputs_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and p.name != "ensembles" and any(p.glob("fold*/config.py")))


def _signature(files: Sequence[Path]) -> list[list[Any]]:
    """Name, size and modification time of each file (missing ones as None): what the pooled-score cache keys on."""
    out = []
    for f in files:
        st = f.stat() if f.is_file() else None
        out.append([str(f), None if st is None else st.st_size, None if st is None else st.st_mtime_ns])
    return out


def _expected_folds(cfg: Mapping[str, Any]) -> list[int]:
    """The folds of a run's fold file (empty when it cannot be read: the folds trained are then all there is)."""
    from cxrdet.data.folds import fold_ids

    try:
        return fold_ids(cfg["data"]["folds"])
    except (CxrdetError, KeyError, OSError, ValueError):
        return []


def pooled_oof(experiment: Experiment, runs: Sequence[Run], score: PooledScore) -> tuple[str | None, float | None,
                                                                                        str | None]:
    """The pooled OOF score of the runs with OOF predictions, from the cache when nothing changed.

    Returns:
        `(metric, score, error)`: the metric and score, or `(None, None, why)` when it cannot be computed (no OOF
        predictions, unreadable labels: the reason is shown instead of a number).
    """
    with_oof = [r for r in runs if r.has_predictions("oof")]
    if not with_oof:
        return None, None, "no OOF predictions"
    files = [f for r in with_oof for f in (r.predictions_path("oof"), r.config_path)]
    key = _signature(files)
    cache = experiment.leaderboard_cache
    try:
        cached = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
    except json.JSONDecodeError:
        cached = {}
    if cached.get("key") == key:
        return cached["metric"], cached["score"], None
    try:
        metric, value = score(experiment.name)
    except CxrdetError as err:
        return None, None, str(err).splitlines()[0]
    value = None if value is None or math.isnan(value) else float(value)
    write_json(cache, {"key": key, "metric": metric, "score": value})
    return metric, value, None


def _wall(run: Run, stages: Sequence[Any], done: Sequence[Mapping[str, Any] | None]) -> float | None:
    """Training seconds of a finished run: the sum of its stages' `wall_s`; for a run trained before done.json
    recorded it, the time from `provenance.json`'s start to the final done.json (not for a resumed run, whose gap
    between attempts would count). None while unfinished."""
    from datetime import datetime

    if not done or done[-1] is None:
        return None
    walls = [d.get("wall_s") for d in done if d]
    if all(w is not None for w in walls):
        return float(sum(walls))
    record = run.provenance()
    if record.get("resumes") or not record.get("started"):
        return None
    marker = run.checkpoints_dir(stages[-1]) / DONE_FILE
    return max(marker.stat().st_mtime - datetime.fromisoformat(record["started"]).timestamp(), 0.0)


def _overall(states: Mapping[int, str], expected: Sequence[int]) -> str:
    """An experiment's status from its folds': running, failed or killed when any fold is; finished when every fold
    of the fold file is; else `incomplete`."""
    values = set(states.values())
    for state in ("running", "failed", "killed"):
        if state in values:
            return state
    wanted = expected or sorted(states)
    return "finished" if all(states.get(k) == "finished" for k in wanted) else "incomplete"


def experiment_row(name: str, score: PooledScore, task_name: TaskOf) -> dict[str, Any]:
    """One experiment's leaderboard row (keys `EXPERIMENT_COLUMNS`, plus `per_fold` details and `report`)."""
    experiment = Experiment(name)
    runs = experiment.runs(split=None)
    configs = {r.fold: r.config() for r in runs if r.has_config()}  # each run's written config, read once
    cfg = next(iter(configs.values()), None)
    per_fold: dict[int, dict[str, Any]] = {}
    for run in runs:
        if run.fold not in configs:
            continue
        stages = resolve_stages(configs[run.fold])
        done = [run.done(st) for st in stages]
        final = done[-1] or {}
        per_fold[run.fold] = {
            "state": run.state(stages),
            "best": final.get("best_score"),
            "epochs": sum(int(d.get("epochs_run", 0)) for d in done if d) if any(done) else None,
            "wall_s": _wall(run, stages, done),
            "error": run.status().get("error"),
        }
    expected = _expected_folds(cfg) if cfg is not None else []
    finished = [k for k, f in per_fold.items() if f["state"] == "finished"]
    metric, oof, why = pooled_oof(experiment, runs, score)
    bests = [f["best"] for f in per_fold.values() if f["best"] is not None and not math.isnan(f["best"])]
    epochs = sorted({f["epochs"] for f in per_fold.values() if f["epochs"] is not None})
    walls = [f["wall_s"] for f in per_fold.values() if f["wall_s"] is not None]
    report = experiment.report_dir / "index.html"
    return {
        "experiment": name,
        "task": task_name(cfg) if cfg is not None else None,
        "metric": metric,
        "folds": f"{len(finished)}/{len(expected) if expected else len(per_fold)}",
        "missing": [k for k in expected if k not in finished],
        "val_per_fold": {k: per_fold[k]["best"] for k in sorted(per_fold)},
        "val_mean": sum(bests) / len(bests) if bests else None,
        "oof": oof,
        "oof_note": why,
        "epochs": "-" if not epochs else str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}",
        "wall_s": sum(walls) if walls else None,
        "status": _overall({k: f["state"] for k, f in per_fold.items()}, expected),
        "per_fold": {k: per_fold[k] for k in sorted(per_fold)},
        "report": str(report) if report.is_file() else None,
    }


# ---- ensembles ----


def ensemble_names(outputs: Path | None = None) -> list[str]:
    """Every tuned ensemble (`ensembles/<name>/params.json`) under the outputs folder."""
    root = (outputs or paths.outputs_dir()) / "ensembles"
    return sorted(p.parent.name for p in root.glob("*/params.json")) if root.is_dir() else []


def default_test_labels(record: Mapping[str, Any]) -> Path | None:
    """The synthetic test labels beside the tuned ensemble's label table (`synth_test_labels.csv`), when they exist
    (a Kaggle download has none: its test labels are the competition's secret)."""
    from cxrdet.competitions import data_layout

    labels = (record.get("data") or {}).get("labels")
    if not labels:
        return None
    candidate = data_layout(Path(labels).parent).synth_test_labels
    return candidate if candidate.is_file() else None


def score_submission(labels: Path, submission: Path) -> tuple[float | None, str | None]:
    """A submission file's score against `labels` with the competition's metric, or `(None, why)`."""
    from cxrdet.competitions import competition_of_labels

    try:
        comp = competition_of_labels(labels)
        table = comp.read_labels(labels)
        return float(comp.score(table, submission, table.image_ids, False, None)["score"]), None
    except CxrdetError as err:
        return None, str(err).splitlines()[0]


def ensemble_row(name: str, test_labels: Path | None = None) -> dict[str, Any]:
    """One tuned ensemble's row (keys `ENSEMBLE_COLUMNS`, plus each submission's details and `report`)."""
    ens = EnsembleRun(name)
    record = ens.read_params()
    scores = record.get("scores") or {}
    labels = test_labels or default_test_labels(record)
    subs = []
    for entry in ens.submissions():
        path = Path(entry["submission"])
        sub = {**entry, "exists": path.is_file(), "test": None, "test_note": None}
        if not path.is_file():
            sub["test_note"] = "file no longer exists"
        elif labels is None:
            sub["test_note"] = "no test labels"
        else:
            sub["test"], sub["test_note"] = score_submission(labels, path)
        subs.append(sub)
    tests = [s["test"] for s in subs if s["test"] is not None]
    report = ens.report_dir / "index.html"
    return {
        "ensemble": name,
        "members": list((record.get("members") or {}).keys()),
        "optimistic": scores.get("optimistic"),
        "honest": scores.get("honest"),
        "test": tests[-1] if tests else None,  # the newest scored submission
        "trials": (record.get("study") or {}).get("n_complete"),
        "submissions": [s["submission"] for s in subs],
        "tuned": record.get("created"),
        "config": record.get("config"),
        "test_labels": None if labels is None else str(labels),
        "submission_details": subs,
        "warnings": record.get("warnings") or [],
        "report": str(report) if report.is_file() else None,
    }


# ---- the table ----


def leaderboard(score: PooledScore, task_name: TaskOf, test_labels: Path | None = None, sort: str | None = None,
                ascending: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Every experiment's and ensemble's row, each list sorted by `sort` where it has that column (default: pooled
    OOF for experiments, honest for ensembles; highest first, missing values last).

    Raises:
        CxrdetError: `sort` is not a column of either table.
    """
    if sort is not None and sort not in EXPERIMENT_COLUMNS and sort not in ENSEMBLE_COLUMNS:
        raise CxrdetError(f"--sort {sort!r}: expected a column, one of {', '.join(EXPERIMENT_COLUMNS)} (experiments) "
                          f"or {', '.join(ENSEMBLE_COLUMNS)} (ensembles)")
    experiments = [_guarded(lambda n=n: experiment_row(n, score, task_name), "experiment", n, "status")
                   for n in experiment_names()]
    ensembles = [_guarded(lambda n=n: ensemble_row(n, test_labels), "ensemble", n, "tuned")
                 for n in ensemble_names()]
    return {"experiments": sort_rows(experiments, sort if sort in EXPERIMENT_COLUMNS else "oof", ascending),
            "ensembles": sort_rows(ensembles, sort if sort in ENSEMBLE_COLUMNS else "honest", ascending)}


def _guarded(make: Callable[[], dict[str, Any]], key: str, name: str, column: str) -> dict[str, Any]:
    """`make()`, or for a folder whose files cannot be read (a hand-edited config, a truncated JSON file) a row that
    says why in `column`, so that one broken folder does not hide the others."""
    try:
        return make()
    except (CxrdetError, ValueError, OSError) as err:
        return {key: name, column: f"unreadable: {str(err).splitlines()[0]}", "error": str(err)}


def sort_rows(rows: list[dict[str, Any]], column: str, ascending: bool = False) -> list[dict[str, Any]]:
    """Rows sorted by `column`: numbers by value, anything else by its text; missing values last either way."""
    def key(row: dict[str, Any]) -> tuple[int, Any]:
        value = row.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return (1, 0)
        if column in _NUMERIC:
            return (0, float(value) if ascending else -float(value))
        return (0, str(value))

    ordered = sorted(rows, key=key)
    if column not in _NUMERIC and not ascending:
        present = [r for r in ordered if key(r)[0] == 0]
        ordered = present[::-1] + [r for r in ordered if key(r)[0] == 1]
    return ordered


def cell(column: str, value: Any) -> str:
    """A row's value as table text: scores with 4 decimals, seconds as minutes, lists joined, '-' for nothing."""
    if value is None or value == [] or value == {}:
        return "-"
    if column == "val_per_fold":
        return " ".join(f"{k}:{number(v)}" for k, v in value.items())
    if column == "wall_s":
        return f"{value / 60:.1f} min"
    if column == "submissions":
        return ", ".join(Path(v).name for v in value)
    if isinstance(value, float):
        return number(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


# ---- outputs/index.html ----


def _link(target: str | None, text: str, base: Path) -> str:
    if target is None:
        return html.escape(text)
    return f'<a href="{html.escape(os.path.relpath(target, base))}">{html.escape(text)}</a>'


def _table(rows: list[dict[str, Any]], columns: Sequence[str], first: str, base: Path) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = [_link(row.get("report"), row[first], base)]
        cells += [html.escape(cell(c, row.get(c))) for c in columns[1:]]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="t"><tr>{head}</tr>{"".join(body)}</table>'


def write_index(board: Mapping[str, list[dict[str, Any]]], out: Path | None = None,
                failures: Mapping[str, str] | None = None) -> Path:
    """`outputs/index.html`: both tables, each name linking its report where one was written; `failures` (name ->
    why its report could not be written) listed under them."""
    out = out or paths.outputs_dir() / "index.html"
    base = out.parent
    parts = [page_head("leaderboard", "cxrdet: experiments and ensembles"),
             f"<p>{html.escape(str(paths.outputs_dir()))}; status is one of {', '.join(STATES)} (or incomplete: some "
             "folds not trained); pooled OOF: the metric at the best cut of every fold's OOF predictions pooled.</p>",
             "<h2>Experiments</h2>", _table(board["experiments"], EXPERIMENT_COLUMNS, "experiment", base),
             "<h2>Ensembles</h2>", _table(board["ensembles"], ENSEMBLE_COLUMNS, "ensemble", base)]
    if failures:
        parts.append("<h2>Reports not written</h2><ul>" + "".join(
            f"<li>{html.escape(n)}: {html.escape(w)}</li>" for n, w in failures.items()) + "</ul>")
    parts.append("</body></html>\n")
    return write_text(out, "\n".join(parts))
