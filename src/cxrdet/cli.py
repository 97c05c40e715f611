"""The `cxrdet` command: thin wrappers, argument -> function. All logic lives in importable modules.

Heavy imports (torch, pydicom, ...) happen inside each command so that `cxrdet --help` stays fast.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from cxrdet.errors import CxrdetError

app = typer.Typer(
    name="cxrdet",
    help="Chest X-ray object detection, Kaggle-style: synthetic data, prepare, folds, train, predict, tune, submit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _root() -> None:
    """Chest X-ray object detection, Kaggle-style. Each subcommand's --help says what it reads and writes."""


TrackingUriOpt = Annotated[str | None, typer.Option(
    "--tracking-uri", help="MLflow tracking URI (http://HOST:PORT of an `mlflow server`, sqlite:///PATH); default "
    "MLFLOW_TRACKING_URI, else outputs/mlflow.db. Implies --mlflow.")]
MlflowOpt = Annotated[bool | None, typer.Option(
    "--mlflow/--no-mlflow", help="Log this step to MLflow (default: on when --tracking-uri or MLFLOW_TRACKING_URI is "
    "given).")]


def _track(enabled: bool | None, uri: str | None, log: Callable[[str], str]) -> None:
    """Log a tune or submit to MLflow with `log(uri) -> run id` when asked (--mlflow, --tracking-uri or
    MLFLOW_TRACKING_URI), and say where."""
    import os

    from cxrdet.tracking import tracking_uri

    if enabled is False or (enabled is None and not uri and not os.environ.get("MLFLOW_TRACKING_URI")):
        return
    uri = tracking_uri(uri)
    typer.echo(f"mlflow run {log(uri)} ({uri})")


def user_errors(func: F) -> F:
    """Turn a `CxrdetError` into its message on stderr and exit status 1 (no traceback: the message says what to
    fix)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CxrdetError as err:
            console.print(
                f"[bold red]error:[/bold red] {escape(str(err))}", markup=True, highlight=False, soft_wrap=True
            )
            raise typer.Exit(code=1) from err

    return wrapper  # type: ignore[return-value]


# ---- data: synth, prepare, folds ----


@app.command("synth")
@user_errors
def synth_command(
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder to write (default: outputs/demo/data; nih: outputs/demo/nih).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Data set format: rsna (Kaggle DICOMs) or nih (PNGs).")] = "rsna",
    competition: Annotated[
        str | None, typer.Option("--competition", help="A competition's layout: rsna, vinbigdata or siim (sets "
                                    "--format).")
    ] = None,
    scale: Annotated[
        float, typer.Option("--scale", help="vinbigdata and siim: factor of the real image sides "
                           "(2,000-3,000 px; siim 2,000-4,000; default 0.25, siim 0.2).")
    ] = None,
    size: Annotated[
        int | None, typer.Option("--size", help="nih only: side of the PNGs (default 1024, as NIH's).", min=32)
    ] = None,
    n_train: Annotated[int, typer.Option("--n-train", help="Training images (siim: studies).", min=0)] = 400,
    n_test: Annotated[int, typer.Option("--n-test", help="Test images (siim: studies).", min=0)] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Data-set seed; the same seed gives the same bytes.", min=0)] = 0,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Rendering processes (default: all CPUs).", min=1)
    ] = None,
    labels_only: Annotated[bool, typer.Option("--labels-only", help="Write the tables but no images.")] = False,
) -> None:
    """Generate a synthetic RSNA-format data set laid out like the Kaggle download, or (--format nih) an NIH
    ChestX-ray14-format one.

    rsna writes into --out: stage_2_train_labels.csv, stage_2_detailed_class_info.csv, stage_2_sample_submission.csv,
    stage_2_train_images/*.dcm and stage_2_test_images/*.dcm (1024 x 1024, 8-bit, JPEG baseline), plus the test
    labels (synth_test_labels.csv) and per-image truth (synth_truth.csv). nih writes Data_Entry_2017_v2020.csv
    (14 findings, several images per patient), images/<patient>_<follow-up>.png (8-bit, --size), the
    patient-disjoint train_val_list.txt (--n-train images) and test_list.txt (--n-test), synth_truth.csv and
    synth_boxes.csv (where each finding was drawn). vinbigdata (--competition vinbigdata) writes train.csv (three
    of 17 readers per image, 14 classes and "No finding"), train/*.dicom and test/*.dicom (uncompressed, 12-16 bit,
    some MONOCHROME1, sides 2,000-3,000 px times --scale), sample_submission.csv, synth_test_labels.csv and
    synth_truth.csv. siim (--competition siim) writes train_image_level.csv and train_study_level.csv (--n-train
    studies of 1-3 images, four categories with their own opacity patterns), train/<study>/<series>/<image>.dcm and
    test/... (uncompressed, 10-16 bit, sides 2,000-4,000 px times --scale), sample_submission.csv, the test labels
    synth_test_image_level.csv and synth_test_study_level.csv, and synth_truth.csv. Reads nothing. Refuses a folder
    that holds data not written by this command; an earlier synth folder is overwritten.
    """
    from cxrdet import paths
    from cxrdet.errors import ConfigError

    if competition is not None:
        if competition not in ("rsna", "vinbigdata", "siim"):
            raise ConfigError(f"--competition {competition!r}: expected rsna, vinbigdata or siim")
        fmt = competition
    if fmt not in ("rsna", "nih", "vinbigdata", "siim"):
        raise ConfigError(f"--format {fmt!r}: expected rsna, nih, vinbigdata or siim")
    if scale is not None and fmt not in ("vinbigdata", "siim"):
        raise ConfigError(f"--scale {scale}: only vinbigdata and siim images vary in size (--format {fmt})")
    if fmt == "siim":
        from cxrdet.synth.siim import generate_siim_dataset

        if labels_only or size is not None:
            raise ConfigError("--labels-only and --size are not for siim (its labels come from the drawn opacities; "
                              "its sizes vary: --scale)")
        target = out if out is not None else paths.demo_dir("siim")
        m = generate_siim_dataset(target, n_train, n_test, seed=seed, scale=0.2 if scale is None else scale,
                                  workers=workers)
        typer.echo(f"{m.root}: {m.n_train_studies} train + {m.n_test_studies} test studies, {m.n_images} DICOMs "
                   f"({m.n_none_images} without opacity), seed {m.seed}, {m.seconds:.1f} s")
        return
    if fmt == "vinbigdata":
        from cxrdet.synth.vinbigdata import generate_vinbigdata_dataset

        if labels_only or size is not None:
            raise ConfigError("--labels-only and --size are not for vinbigdata (its labels come from the drawn "
                              "signs; its sizes vary: --scale)")
        target = out if out is not None else paths.demo_dir("vinbigdata")
        v = generate_vinbigdata_dataset(target, n_train, n_test, seed=seed, scale=0.25 if scale is None else scale,
                                        workers=workers)
        typer.echo(f"{v.root}: {v.n_train} train + {v.n_test} test DICOMs ({v.n_normal} 'No finding'), "
                   f"{v.n_rows} train.csv rows, seed {v.seed}, {v.seconds:.1f} s")
        return
    if fmt == "nih":
        from cxrdet.synth.nih import DEFAULT_SIZE, generate_nih_dataset

        target = out if out is not None else paths.demo_nih_data_dir()
        n = generate_nih_dataset(target, n_train, n_test, seed=seed, size=size or DEFAULT_SIZE, workers=workers,
                                 labels_only=labels_only)  # fmt: skip
        typer.echo(f"{n.root}: {n.n_train} train ({n.n_train_patients} patients) + {n.n_test} test "
                   f"({n.n_test_patients} patients), {n.n_no_finding} 'No Finding', {n.images_written} PNGs of "
                   f"{n.size} px, seed {n.seed}, {n.seconds:.1f} s")  # fmt: skip
        return
    if size is not None and size != 1024:
        raise ConfigError(f"--size {size}: the RSNA format is 1024 x 1024 only (--size is for --format nih)")
    from cxrdet.synth.rsna import generate_dataset

    target = out if out is not None else paths.demo_data_dir()
    s = generate_dataset(target, n_train, n_test, seed=seed, workers=workers, labels_only=labels_only)
    typer.echo(f"{s.root}: {s.n_train} train ({s.n_train_positive} positive, {s.n_train_boxes} boxes) + {s.n_test} "
               f"test ({s.n_test_positive} positive, {s.n_test_boxes} boxes), {s.images_written} DICOMs, "
               f"seed {s.seed}, {s.seconds:.1f} s")


@app.command("prepare")
@user_errors
def prepare_command(
    data: Annotated[
        Path, typer.Option("--data", help="Data root: RSNA Kaggle layout (stage_2_train_images/) or NIH (images/).")
    ],
    size: Annotated[int, typer.Option("--size", help="Side of the square cached images, in pixels.", min=1)] = 512,
    out: Annotated[
        Path | None, typer.Option("--out", help="Cache folder (default: outputs/cache/<data name>/<size>px).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Decoding processes (default: all CPUs).", min=1)
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Stop with exit status 1 at the first bad file.")] = False,
    split: Annotated[
        list[str] | None, typer.Option("--split", help="train or test; repeat for both (default both). An offline "
                                       "bundle's notebook prepares the test images only.")
    ] = None,
) -> None:
    """Decode every DICOM (or NIH PNG) once into a cache of square 8-bit PNGs plus a metadata table.

    Reads --data/stage_2_train_images/*.dcm and stage_2_test_images/*.dcm (optional); or, for an NIH root
    (Data_Entry_2017*.csv), images/*.png split by train_val_list.txt and test_list.txt, with sex, age and view from the
    table. Writes into the cache folder
    images/{train,test}/<image_id>.png, meta.parquet (original size, header fields) and errors.csv (path,reason of the
    files that could not be used). Incremental: up-to-date images are skipped. Without --strict a bad file is reported
    and the others are still cached (exit status 0).
    """
    from cxrdet import paths
    from cxrdet.data.prepare import prepare_cache

    report = prepare_cache(data, size, out=out, workers=workers, strict=strict,
                           **({"splits": tuple(split)} if split else {}))
    cache = paths.CacheLayout(report.cache_root)
    typer.echo(f"cache: {cache.root}\n  images: {cache.root / 'images'}\n  meta: {cache.meta}\n"
               f"  errors: {cache.errors}")
    typer.echo(f"written {report.n_written}, skipped {report.n_skipped} (up to date), failed {len(report.errors)}")
    for path, reason in report.errors:
        typer.echo(f"  failed: {path}: {reason}")


@app.command("folds")
@user_errors
def folds_command(
    labels: Annotated[Path, typer.Option("--labels", help="Label table: RSNA stage_2_train_labels.csv, VinBigData "
                                         "train.csv or the NIH CSV.")],
    out: Annotated[Path, typer.Option("--out", help="Fold CSV to write (image_id,patient_id,fold), e.g. folds/x.csv.")],
    headers: Annotated[
        Path | None,
        typer.Option(
            "--headers",
            help="Per-image view/sex/age to stratify on: a DICOM header table (CSV/CSV.gz) or a prepare meta.parquet.",
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Label format: auto, rsna, vinbigdata or nih.")] = "auto",
    k: Annotated[int, typer.Option("--k", help="Number of folds.", min=2)] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fold shuffle.")] = 42,
    strata: Annotated[
        str | None,
        typer.Option(
            "--strata",
            help="Comma-separated columns to stratify on, most important first "
            "(default: those of positive,finding,n_boxes,view,sex,age the tables have; finding: an NIH-style "
            "multi-label image's rarest finding).",
        ),
    ] = None,
) -> None:
    """Build patient-grouped, stratified folds from a label table (and headers); write them and print their balance.

    Reads --labels (and --headers); writes --out atomically, sorted by image id (same inputs and seed, same bytes).
    An NIH table beside its train_val_list.txt gives folds of the listed images only (test_list.txt is held out).
    """
    from rich.console import Console as StdoutConsole

    import cxrdet.competitions  # noqa: F401 -- registers the competitions' label formats (vinbigdata, ...)
    from cxrdet.data.folds import (fold_summary, images_for_folds, label_classes, make_folds, multilabel_classes,
                                   summary_table, write_folds)

    images = images_for_folds(labels, headers, fmt=fmt)
    columns = [c.strip() for c in strata.split(",") if c.strip()] if strata is not None else None
    # A multi-label table with one image per patient (VinBigData) is stratified on all its classes at once.
    multilabel = multilabel_classes(images, label_classes(labels, fmt)) if strata is None else None
    folds = make_folds(images, k=k, seed=seed, strata_columns=columns, multilabel=multilabel)
    write_folds(folds, out)
    StdoutConsole().print(summary_table(fold_summary(folds, images), title=f"{out} (k={k}, seed={seed})"))


# ---- metric and submissions: score, validate-submission ----


CompetitionOpt = Annotated[
    str, typer.Option("--competition", help="rsna, vinbigdata, siim, or auto (told by the file's "
                                    "header).")
]


@app.command("score")
@user_errors
def score_command(
    labels: Annotated[Path, typer.Option("--labels", help="Label table: RSNA stage_2_train_labels.csv (or its test "
                                         "labels), a VinBigData train.csv-format table or a SIIM *_image_level.csv "
                                         "(its *_study_level.csv beside it).")],
    submission: Annotated[Path, typer.Option("--submission", help="Submission CSV of the same competition.")],
    metric: Annotated[
        str | None, typer.Option("--metric", help="RSNA: rsna (the competition metric, default) or coco (score = "
                                 "mAP@0.50:0.95). VinBigData: voc (mAP at IoU > 0.4, the only one). SIIM: its own "
                                 "mAP at IoU > 0.5 over the six study and image classes.")
    ] = None,
    competition: CompetitionOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (the last line) instead.")] = False,
    allow_missing: Annotated[
        bool, typer.Option("--allow-missing", help="Labelled images without a submission row get no predictions.")
    ] = False,
) -> None:
    """Score a submission against a labels file with the competition's metric; the labels define the image set.

    Reads --labels and --submission (both validated, every problem listed); writes nothing. Submission ids that are
    not labelled are an error; labelled ids without a row are an error unless --allow-missing. VinBigData labels with
    several readers per image are fused per class (WBF, IoU 0.4) into one ground truth; an image left without a box
    is scored as "No finding" (class 14, box 0 0 1 1).
    """
    import json

    from cxrdet.competitions import competition_of_labels, get_competition

    comp = competition_of_labels(labels) if competition == "auto" else get_competition(competition)
    table = comp.read_labels(labels)
    report = {"labels": str(labels), **comp.score(table, submission, table.image_ids, allow_missing, metric)}
    metric = report["metric"]
    if report["n_missing"]:
        console.print(f"note: {report['n_missing']} labelled image(s) had no submission row and were scored as "
                      "having no predictions (--allow-missing)", highlight=False)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"{metric} score {report['score']:.6f} over {report['n_images']} image(s) "
               f"({report['n_labelled_images']} labelled, {report['n_boxes']} predicted boxes)")
    if "per_threshold" in report:
        for t, v in report["per_threshold"].items():
            typer.echo(f"  IoU > {t}: {v:.6f}")
    elif "per_class" in report:
        if "study_map" in report:
            typer.echo(f"  study-level mAP {report['study_map']:.6f} ({report['n_studies']} studies), image-level mAP "
                       f"{report['image_map']:.6f}")
        for name, ap in report["per_class"].items():
            typer.echo(f"  AP {name}: {'-' if ap is None else f'{ap:.6f}'}")
    else:
        for key in ("map_50_95", "map_50", "map_40"):
            typer.echo(f"  {key}: {report[key]:.6f}")


@app.command("validate-submission")
@user_errors
def validate_submission_command(
    submission: Annotated[Path, typer.Argument(help="Submission CSV to check (RSNA, VinBigData or SIIM format).")],
    sample: Annotated[Path, typer.Option("--sample", help="Sample submission whose ids are the test set.")],
    image_size: Annotated[int | None, typer.Option("--image-size", help="RSNA: side of the square images, pixels "
                                                   "(default 1024).", min=1)] = None,
    competition: CompetitionOpt = "auto",
) -> None:
    """Check a submission file against the sample submission's ids; list every problem with its line.

    Reads SUBMISSION and --sample; writes nothing. Exit status 1 when any problem is found. The competition is told
    by the sample submission's header unless --competition names it.
    """
    from cxrdet.competitions import competition_of_submission, get_competition

    comp = competition_of_submission(sample) if competition == "auto" else get_competition(competition)
    typer.echo(f"{submission}: OK: {comp.validate(submission, comp.sample_ids(sample), image_size)}")


# ---- ensemble: tune, submit ----


@app.command("tune")
@user_errors
def tune_command(
    config: Annotated[Path, typer.Argument(help="Ensemble config, configs/ensembles/NAME.py.")],
    n_trials: Annotated[
        int | None, typer.Option("--n-trials", min=1, help="COMPLETE trials wanted per study (default: the config's).")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option("--storage", help="Study storage: sqlite:///PATH, postgresql://USER@HOST/DB or journal:PATH "
                                       "(default: SQLite in outputs/ensembles/NAME/)."),
    ] = None,
    honest: Annotated[
        bool, typer.Option("--honest/--no-honest", help="Also tune on k-1 folds and score the held-out fold.")
    ] = True,
    mlflow: MlflowOpt = None,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Tune an ensemble's fusion and post-processing on the members' pooled OOF boxes (RSNA metric, Optuna TPE).

    Reads the members' OOF predictions (outputs/<experiment>/fold<k>/oof.parquet), the fold file and the labels.
    Writes the study (resumable: run the same command again after a kill; several workers may share --storage) and
    outputs/ensembles/NAME/params.json (best parameters, optimistic and honest CV scores, parameter importances).
    """
    import optuna
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cxrdet.ensemble.spec import load_ensemble
    from cxrdet.ensemble.tune import summary_frame, track_tuning, tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_ensemble(config)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("best {task.fields[best]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def on_trial(study_name: str, trial: Any) -> None:
            total = n_trials or (spec.honest_trials if ".holdout" in study_name else spec.n_trials)
            if study_name not in tasks:
                tasks[study_name] = bar.add_task(study_name, total=total, best="-")
            best = max(bar.tasks[tasks[study_name]].fields.get("best_value", float("-inf")), trial.value)
            bar.update(tasks[study_name], advance=1, best=f"{best:.5f}", best_value=best)

        result = tune(spec, n_trials=n_trials, storage=storage, honest=honest, on_trial=on_trial)
    frame = summary_frame(result)
    typer.echo(frame.to_string(index=False, float_format=lambda v: f"{v:.5f}"))
    honest_text = f"{result.honest:.5f}" if result.honest is not None else "not estimated (--no-honest)"
    typer.echo(f"ensemble {spec.name}: tuned-on-all OOF score {result.optimistic:.5f} (optimistic), honest "
               f"{honest_text}; {result.n_complete} trials")
    if result.importances:
        typer.echo("importance: " + ", ".join(f"{k} {v:.3f}" for k, v in result.importances.items()))
    if result.unconverged:
        typer.echo(f"warning: {result.unconverged}")
    typer.echo(f"wrote {result.params_path}")
    _track(mlflow, tracking_uri, lambda uri: track_tuning(spec, result, uri))


@app.command("dashboard")
@user_errors
def dashboard_command(
    config: Annotated[Path, typer.Argument(help="Ensemble config, configs/ensembles/NAME.py.")],
    storage: Annotated[str | None, typer.Option("--storage", help="Study storage (default: the one the ensemble was "
                                                "tuned with, from params.json; else its config's or SQLite in "
                                                "outputs/ensembles/NAME/).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (default loopback only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: a free one, printed).")] = 0,
) -> None:
    """Serve optuna-dashboard on the ensemble's study storage (SQLite, journal or PostgreSQL): the main study and the
    honest estimate's held-out studies, their trials, importances and plots. Prints the URL once listening; Ctrl-C
    stops it. Reads the storage (and params.json); writes nothing.
    """
    from cxrdet.ensemble.dashboard import is_loopback, serve
    from cxrdet.ensemble.spec import load_ensemble

    spec = load_ensemble(config)
    if not is_loopback(host):
        console.print(f"warning: listening on {host}: anyone who can reach this machine can read (and edit) the "
                      "studies; the dashboard has no login", highlight=False, markup=False)
    serve(spec, storage, host, port, announce=lambda line: typer.echo(line))


@app.command("select")
@user_errors
def select_command(
    configs: Annotated[list[Path], typer.Argument(help="Tuned ensemble configs to choose among (members alone, fused, "
                                                       "gated), on one image set.")],
    out: Annotated[str, typer.Option("--out", help="Name of the record, outputs/selections/NAME.json.")] = "selection",
    rule: Annotated[str, typer.Option("--rule", help="paired: the best honest candidate unless its per-fold gain over "
                                                     "the best member alone is within one standard error (then the "
                                                     "member); honest: the best honest candidate.")] = "paired",
) -> None:
    """Choose what to submit by the honest estimate, and estimate the choice itself by nested selection.

    Reads each ensemble's params.json and honest_oof.parquet (written by `cxrdet tune`) and the first ensemble's OOF
    data (for the metric). Prints the ranking with per-fold honest scores, the choice and why, the nested-selection
    estimate and the selection's optimism; writes outputs/selections/NAME.json.
    """
    from cxrdet.ensemble.problem import load_oof
    from cxrdet.ensemble.select import evaluator_scorer, load_candidate, same_data, select, write_selection
    from cxrdet.ensemble.spec import load_ensemble

    specs = [load_ensemble(c) for c in configs]
    loaded = [load_candidate(s) for s in specs]
    candidates = [c for c, _ in loaded]
    records = {c.name: r for c, r in loaded}
    same_data(records)
    oof = load_oof(specs[0])
    result = select(candidates, sorted({int(k) for k in oof.image_fold}),
                    evaluator_scorer(oof.problem, oof.image_fold), rule)
    table = result.table.assign(optimistic=[records[n]["scores"].get("optimistic") for n in result.table["candidate"]])
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.5f}"))
    typer.echo(f"chosen: {result.choice.name} ({result.choice.reason})")
    per_fold = ", ".join(f"fold {k}: {n}" for k, n in result.nested_per_fold.items())
    typer.echo(f"nested selection: {result.nested:.5f} (each fold's choice made on the other folds: {per_fold}); "
               f"selection optimism {result.optimism:+.5f}")
    path = write_selection(out, result, candidates, records)
    chosen = next(c for c in candidates if c.name == result.choice.name)
    typer.echo(f"wrote {path}; submit with: cxrdet submit {chosen.config}")


@app.command("submit")
@user_errors
def submit_command(
    config: Annotated[Path, typer.Argument(help="Ensemble config, configs/ensembles/NAME.py (tuned).")],
    out: Annotated[Path | None, typer.Option("--out", help="Submission CSV (default submissions/NAME.csv).")] = None,
    mlflow: MlflowOpt = None,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Apply the tuned parameters to the members' test boxes and write a validated submission.

    Reads outputs/ensembles/NAME/params.json and outputs/<experiment>/fold<k>/test.parquet of every member and fold.
    Writes the CSV and, beside it, NAME.json (git revision, configs, fold-file hashes, parameters, CV scores, date).
    """
    from cxrdet.ensemble.spec import load_ensemble
    from cxrdet.ensemble.submit import submit, track_submission

    spec = load_ensemble(config)
    result = submit(spec, out)
    typer.echo(f"wrote {result.csv}: {result.n_rows} rows, {result.n_boxes} boxes, {result.n_empty} empty rows "
               f"(validated); provenance {result.provenance}")
    _track(mlflow, tracking_uri, lambda uri: track_submission(spec, result, uri))


@app.command("pseudo-label")
@user_errors
def pseudo_label_command(
    config: Annotated[Path, typer.Argument(help="Ensemble config, configs/ensembles/NAME.py (tuned, test predicted).")],
    out: Annotated[str, typer.Option("--out", help="Name of the round: writes outputs/pseudo/NAME/.")],
    box_thr: Annotated[float, typer.Option("--box-thr", help="Keep boxes with a fused score at least this.")] = 0.5,
    image_thr: Annotated[float, typer.Option("--image-thr", help="Keep images whose classifier probability is at "
                                             "least this (ensembles with a classifier).")] = 0.5,
    negatives_below: Annotated[float | None, typer.Option(
        "--negatives-below", help="Also keep images with no box and a classifier probability below this, as "
        "negatives.")] = None,
) -> None:
    """Turn the tuned ensemble's test predictions into a pseudo-label table for the next training round.

    Train on it with -o data.pseudo=NAME: its images join every fold's training set, never a validation fold.
    """
    from cxrdet.ensemble.pseudo import pseudo_label
    from cxrdet.ensemble.spec import load_ensemble

    result = pseudo_label(load_ensemble(config), out, box_thr=box_thr, image_thr=image_thr,
                          negatives_below=negatives_below)
    typer.echo(f"wrote {result.labels}: {result.n_images} images ({result.n_negatives} negatives), {result.n_boxes} "
               f"boxes; provenance {result.provenance}; train on it with -o data.pseudo={out}")


@app.command("package")
@user_errors
def package_command(
    config: Annotated[Path, typer.Argument(help="Ensemble config, configs/ensembles/NAME.py (tuned, test predicted).")],
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write (refused when it exists).")],
    data: Annotated[Path | None, typer.Option("--data", help="Data root whose test images time the bundle (default "
                                              "the members' data root).")] = None,
    max_minutes: Annotated[float | None, typer.Option("--max-minutes", help="Refuse a bundle whose estimated run "
                                                      "exceeds this (default: the competition's notebook limit, "
                                                      "SIIM 540).", min=0)] = None,
    n_test_images: Annotated[int | None, typer.Option("--n-test-images", help="Test set size of the estimate "
                                                      "(default: this data root's test images).", min=1)] = None,
    measure: Annotated[bool, typer.Option("--measure/--no-measure", help="Run and time the bundle's notebook code "
                                          "here, checking its submission equals `cxrdet submit`'s.")] = True,
    wheelhouse: Annotated[Path | None, typer.Option("--wheelhouse", help="A folder of wheels to take the bundled "
                                                    "distributions from (besides the package index).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle folder.")] = False,
) -> None:
    """Write the offline code-competition bundle of a tuned ensemble: wheels, stripped checkpoints, parameters,
    provenance, and inference.ipynb / inference.py that write submission.csv with the internet off.

    Reads the ensemble config, its params.json, the members' and classifier's run configs, test-prediction sidecars
    and checkpoints, and configs/kaggle/offline_wheels.txt; builds a cxrdet wheel and downloads the listed wheels.
    Writes --out (built beside it, renamed into place when complete): see cxrdet.deploy.bundle. Run the notebook as
    Kaggle would with `python scripts/run_bundle_offline.py BUNDLE DATA WORK`.
    """
    from cxrdet.deploy.bundle import package
    from cxrdet.ensemble.spec import load_ensemble

    result = package(load_ensemble(config), out, data_root=data, max_minutes=max_minutes,
                     n_test_images=n_test_images, measure=measure, wheelhouse=wheelhouse, overwrite=overwrite)
    typer.echo(f"wrote {result.folder}: {result.n_files} files, {result.n_bytes / 1e6:.1f} MB, wheels "
               f"{', '.join(result.wheels)}")
    t = result.timing
    if t is not None:
        limit = f" of the {result.limit_minutes:g} min limit" if result.limit_minutes is not None else ""
        typer.echo(f"measured here: {t.seconds:.1f} s on {t.n_images} test images ({t.fixed:.1f} s of start-ups of "
                   f"{t.n_steps} steps, {t.per_image:.3f} s per image); estimate for {result.estimate_n_images} "
                   f"images {result.estimate_minutes:.1f} min{limit}; its submission equals `cxrdet submit`'s")


# ---- detectors: train, predict ----

ConfigArg = Annotated[Path, typer.Argument(help="Experiment config, e.g. configs/experiments/<name>.py.")]
FoldOpt = Annotated[int, typer.Option("--fold", help="The held-out fold (0-based).", min=0)]
FoldsOpt = Annotated[
    list[int] | None,
    typer.Option("--fold", help="The held-out fold (0-based); repeat for several, run one after the other in this "
                 "process.", min=0),
]
AllFoldsOpt = Annotated[bool, typer.Option("--all-folds", help="Every fold of the config's fold file, in order.")]
CfgOptions = Annotated[
    list[str] | None,
    typer.Option("--cfg-options", "-o", help="Config override KEY=VALUE with a dotted key (repeatable), e.g. "
                 "-o data.size=512 -o train.epochs=2."),
]


@app.command("fold-ids")
@user_errors
def fold_ids_command(config: ConfigArg, cfg_options: CfgOptions = None) -> None:
    """Print the fold numbers of the config's fold file (data.folds), space-separated; the bash loops use it.

    Reads the config and its fold file; writes nothing.
    """
    from cxrdet.config import load_config

    typer.echo(" ".join(str(k) for k in _fold_ids(load_config(config, cfg_options))))


def _fold_ids(cfg: Any) -> list[int]:
    """The folds of a config's fold file (data.folds), ascending."""
    from cxrdet.data.folds import fold_ids

    return fold_ids(cfg["data"]["folds"])


def _chosen_folds(cfg: Any, folds: list[int] | None, all_folds: bool) -> list[int]:
    """The folds a train or predict command runs: --fold (repeatable) or --all-folds, one of the two."""
    if all_folds and folds:
        raise typer.BadParameter("give --fold or --all-folds, not both")
    if all_folds:
        return _fold_ids(cfg)
    if not folds:
        raise typer.BadParameter("give --fold K (repeatable) or --all-folds")
    return list(dict.fromkeys(folds))


@app.command("train")
@user_errors
def train_command(
    config: ConfigArg,
    fold: FoldsOpt = None,
    all_folds: AllFoldsOpt = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run from its last.ckpt.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete this run's checkpoints, start again.")] = False,
    then_predict: Annotated[
        list[str] | None, typer.Option("--predict", help="After each fold trains, predict this split (oof or test) "
                                       "with its best checkpoint, as `cxrdet predict` would; repeatable.")
    ] = None,
    limit_train_batches: Annotated[
        float | None, typer.Option("--limit-train-batches", help="Batches per epoch (>1) or a fraction (<=1).")
    ] = None,
    accelerator: Annotated[str | None, typer.Option("--accelerator", help="cpu, gpu, ... (default: config).")] = None,
    devices: Annotated[str | None, typer.Option("--devices", help="Device count or list (default: config).")] = None,
    strategy: Annotated[str | None, typer.Option("--strategy", help="auto, ddp, ddp_spawn, ... (default: config).")
                        ] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="Also log to MLflow at this URI (adds 'mlflow' to train.loggers; default store "
        "outputs/mlflow.db when train.loggers has 'mlflow' without a URI).")] = None,
    cfg_options: CfgOptions = None,
) -> None:
    """Train a detector or a classifier (config task='classify') on every fold but --fold and validate on --fold
    (detectors: the competition metric over a threshold sweep; classifiers: AUROC or AP).

    Several folds (--fold repeated, or --all-folds) train one after the other in this one process, each from a
    fresh copy of the config and its own seed, exactly as separate runs would (one start-up instead of one per
    fold); the first fold that fails stops the rest, named. With --predict, each fold's predictions follow its
    training in the same process.

    Reads the config, the fold file, the labels and the prepare cache. Writes outputs/<experiment>/fold<k>/:
    config.py (resolved), provenance.json (git revision, fold-file hash), checkpoints/{best,last}.ckpt and done.json
    (per curriculum stage in stage<i>_<name>/), tensorboard/ and csv/ logs; with --predict, <split>.parquet too.
    """
    import copy

    from cxrdet.config import load_config
    from cxrdet.tasks import train

    overrides = list(cfg_options or [])
    for key, value in (("limit_train_batches", limit_train_batches), ("accelerator", accelerator),
                       ("devices", devices), ("strategy", strategy)):
        if value is not None:
            overrides.append(f"train.{key}={value}")
    cfg = load_config(config, overrides)
    if tracking_uri:
        from cxrdet.tracking import logger_names

        cfg["train"]["tracking_uri"] = tracking_uri
        cfg["train"]["loggers"] = list(dict.fromkeys([*logger_names(cfg["train"], str(config)), "mlflow"]))
    folds = _chosen_folds(cfg, fold, all_folds)
    for k in folds:
        if len(folds) > 1:
            typer.echo(f"==> train {config} fold {k}")
        try:
            result = train(copy.deepcopy(cfg), k, resume=resume, overwrite=overwrite)
            # A multi-label or multi-class classifier has no single threshold: say nothing rather than "nan".
            cut = "" if math.isnan(result.best_threshold) else f" at threshold {result.best_threshold:.2f}"
            typer.echo(f"{result.run_dir}: best {result.monitor} {result.best_score:.4f}{cut} "
                       f"({result.best_checkpoint})")
            if then_predict:
                _predict_fold(config, k, then_predict, cfg_options)
        except CxrdetError as err:
            raise _fold_failed(err, "train", k, folds) from err


def _fold_failed(err: CxrdetError, command: str, fold: int, folds: list[int]) -> CxrdetError:
    """The error of a fold of a multi-fold command, naming the fold and the folds left undone."""
    left = folds[folds.index(fold) + 1:]
    after = f"; folds {left} were not run" if left else ""
    return CxrdetError(f"{command} fold {fold}: {err}{after}") if len(folds) > 1 else err


def _predict_fold(config: Path, fold: int, splits: list[str], cfg_options: list[str] | None, **kwargs: Any) -> None:
    """Predict each split of one fold with its run's resolved config (what `cxrdet predict` does per fold)."""
    from cxrdet.runs import run_config
    from cxrdet.tasks import predict

    cfg = run_config(config, fold, cfg_options)
    for one in splits:
        typer.echo(str(predict(cfg, fold, split=one, **kwargs)))


@app.command("predict")
@user_errors
def predict_command(
    config: ConfigArg,
    fold: FoldsOpt = None,
    all_folds: AllFoldsOpt = False,
    split: Annotated[
        list[str] | None, typer.Option("--split", help="oof (the images of --fold) or test; repeat for both.")
    ] = None,
    tta: Annotated[str | None, typer.Option(
        "--tta", help="none, hflip, or scales=448/512/576[+hflip] (default: config predict.tta).")] = None,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="best, last, swa, avg or a .ckpt path (default: config, best).")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 (default: CUDA if present).")
                      ] = None,
    cfg_options: CfgOptions = None,
) -> None:
    """Predict boxes (or a classifier's per-image probabilities) of a split with the fold-k model (OOF = fold k's
    images, which that model never trained on). Several folds (--fold repeated, --all-folds) run in this process.

    Reads the config, the run's checkpoint, the fold file and the prepare cache. Writes, per --split,
    outputs/<experiment>/fold<k>/<split>.parquet and a <split>.json sidecar (checkpoint, settings). Detectors: one row
    per box, image_id, x1, y1, x2, y2 in original pixels, score, label. Classifiers (task='classify'): one row per
    image, image_id and one probability column per class; hflip TTA averages the two passes.
    """
    from cxrdet.config import load_config

    folds = _chosen_folds(load_config(config, cfg_options) if all_folds else None, fold, all_folds)
    for k in folds:
        try:
            _predict_fold(config, k, split or ["oof"], cfg_options, tta=tta, checkpoint=checkpoint, device=device)
        except CxrdetError as err:
            raise _fold_failed(err, "predict", k, folds) from err


# ---- reports and export: report, explain, export, infer ----


@app.command("runs")
@user_errors
def runs_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as one JSON object, not tables.")] = False,
    sort: Annotated[str | None, typer.Option("--sort", help="Column to sort by (either table's; default oof for "
                                             "experiments, honest for ensembles), highest first.")] = None,
    ascending: Annotated[bool, typer.Option("--ascending", help="Lowest first.")] = False,
    test_labels: Annotated[Path | None, typer.Option("--test-labels", help="Test labels to score every recorded "
                                                     "submission against (default: the data's "
                                                     "synth_test_labels.csv where it exists).")] = None,
) -> None:
    """The local leaderboard: every experiment (folds done and missing, best validation score per fold, pooled OOF
    score, epochs, wall time, status) and every tuned ensemble (optimistic, honest and test score, its submissions).

    Reads the outputs folder (run folders, done.json, status.json, OOF predictions, params.json, submissions.json);
    writes only each experiment's leaderboard.json (the pooled OOF score, cached). `cxrdet report --all` writes the
    same tables as outputs/index.html.
    """
    import json

    from rich.table import Table

    from cxrdet.report.leaderboard import ENSEMBLE_COLUMNS, EXPERIMENT_COLUMNS, cell
    from cxrdet.tasks import leaderboard

    board = leaderboard(test_labels, sort, ascending)
    if as_json:
        typer.echo(json.dumps(board, default=str))
        return
    out = Console(width=max(Console().width, 160))
    for title, key, columns in (("Experiments", "experiments", EXPERIMENT_COLUMNS),
                                ("Ensembles", "ensembles", ENSEMBLE_COLUMNS)):
        table = Table(title=f"{title} ({len(board[key])})", title_justify="left")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in board[key]:
            table.add_row(*(escape(cell(c, row.get(c))) for c in columns))
        out.print(table)


@app.command("report")
@user_errors
def report_command(
    name: Annotated[str | None, typer.Argument(help="An experiment name (outputs/<experiment>/fold<k>) or a tuned "
                                               "ensemble (configs/ensembles/<name>.py with params.json).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default outputs/<experiment>/report or "
                                             "outputs/ensembles/<name>/report).")] = None,
    all_reports: Annotated[bool, typer.Option("--all", help="Every experiment's and tuned ensemble's report, then "
                                              "outputs/index.html: the leaderboard linking them.")] = False,
) -> None:
    """Write an offline HTML report with PNG figures of OOF results: score vs threshold, PR curves, per-IoU metric,
    per-fold scores, training curves, an image gallery, error analysis and the box-size bias. For a classifier
    experiment: ROC curves and AUROC per class and per fold, F1 at the best threshold (binary), training curves and
    probability histograms by truth.

    Reads the runs' configs, OOF predictions, CSV logs and checkpoint records (and, for an ensemble, params.json),
    the labels, fold file and prepare cache. Writes index.html, report.json and the PNGs to --out.
    """
    if all_reports:
        if name is not None or out is not None:
            raise CxrdetError("report --all writes every report to its default folder: give no NAME and no --out")
        from cxrdet.tasks import report_all

        index, written, failures = report_all()
        for what, path in written.items():
            typer.echo(f"{what}: {path}")
        for what, why in failures.items():
            console.print(f"warning: {what}: no report ({why})", highlight=False, markup=False)
        typer.echo(str(index))
        return
    if name is None:
        raise CxrdetError("report: name an experiment or a tuned ensemble, or pass --all")
    from cxrdet.tasks import report

    typer.echo(str(report(name, out)))


@app.command("explain")
@user_errors
def explain_command(
    config: Annotated[Path, typer.Argument(help="Classifier experiment config, e.g. configs/experiments/cls_*.py.")],
    fold: Annotated[int, typer.Option("--fold", help="The fold whose model is explained (0-based).", min=0)],
    image_id: Annotated[list[str] | None, typer.Option("--image-id", help="An image to explain (repeatable; train or "
                                                       "test split of the cache). Default: the fold's OOF images of "
                                                       "highest probability for the chosen classes.")] = None,
    n: Annotated[int, typer.Option("--n", help="Images to pick when no --image-id is given.", min=1)] = 8,
    classes: Annotated[str, typer.Option("--classes", help="auto (the top 4 classes by OOF AUROC) or names, "
                                         "comma-separated: A,B.")] = "auto",
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best, last, swa, avg or a .ckpt path.")] = "best",
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default outputs/<experiment>/report/"
                                             "explain/fold<k>).")] = None,
    cfg_options: Annotated[list[str] | None, typer.Option("--cfg-options", "-o", help="Config override KEY=VALUE "
                                                          "(repeatable).")] = None,
) -> None:
    """Grad-CAM of a fold's classifier: one PNG per image and class, the heatmap over the original X-ray at its own
    size, captioned with the class, probability and truth.

    Reads the config, the run's checkpoint, the prepare cache and labels, the original DICOM or PNG of each image
    (the cached image stretched back when it is gone), and (for --classes auto or no --image-id) the OOF
    probabilities of the experiment's folds. Writes <image_id>_<class>.png and explain.csv (image_id, role, class,
    probability, truth, file, width, height, drawn_on) to --out.
    """
    from cxrdet.runs import run_config
    from cxrdet.tasks import explain

    cfg = run_config(config, fold, cfg_options)
    result = explain(cfg, fold, image_ids=image_id, n=n, classes=classes, out_dir=out, checkpoint=checkpoint)
    drawn = result.table["drawn_on"].value_counts().to_dict()
    typer.echo(f"{result.folder}: {len(result.table)} overlays of {result.table['image_id'].nunique()} images at "
               f"their original size (heatmaps from the {result.size} x {result.size} px input; drawn on "
               f"{', '.join(f'{n} {k}' for k, n in sorted(drawn.items()))})")


@app.command("export")
@user_errors
def export_command(
    config: Annotated[Path, typer.Argument(help="Experiment config, e.g. configs/experiments/<name>.py.")],
    fold: Annotated[int, typer.Option("--fold", help="The fold whose model is exported (0-based).", min=0)],
    fmt: Annotated[str, typer.Option("--format", help="onnx; coreml (classifiers; refused for detectors, with "
                                     "the reason); or safetensors (the weights alone, no pickle, for sharing).")
                   ] = "onnx",
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best, last, swa, avg or a .ckpt path.")] = "best",
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default outputs/<experiment>/fold<k>/"
                                             "export).")] = None,
    cfg_options: Annotated[list[str] | None, typer.Option("--cfg-options", "-o", help="Config override KEY=VALUE "
                                                          "(repeatable).")] = None,
) -> None:
    """Export a fold's detector for deployment, post-processing (score floor, NMS, cap) inside the graph; or a
    classifier (task='classify'), with logits and sigmoid probabilities as outputs.

    Reads the config and the run's checkpoint. Writes model.onnx (or, for a classifier with --format coreml,
    model.mlpackage; with --format safetensors, model.safetensors), model.json (input size and range, the
    pre-processing, normalisation, score floor, NMS IoU or the classifier's outputs, validation threshold, classes;
    for safetensors the config that rebuilds the network) and manifest.json (the SHA-256 of each file) to --out.
    """
    from cxrdet.runs import run_config
    from cxrdet.tasks import export

    cfg = run_config(config, fold, cfg_options)
    typer.echo(str(export(cfg, fold, fmt=fmt, checkpoint=checkpoint, out_dir=out)))


@app.command("infer")
@user_errors
def infer_command(
    model: Annotated[Path, typer.Option("--model", help="An exported model.onnx or model.safetensors (cxrdet export) "
                                        "or a .ckpt file.")],
    dicom: Annotated[list[Path] | None, typer.Option("--dicom", help="A DICOM file (repeatable); more may follow "
                                                     "as arguments: --dicom A.dcm B.dcm.")] = None,
    files: Annotated[list[Path] | None, typer.Argument(help="More DICOM files.", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default outputs/infer).")] = None,
    threshold: Annotated[float | None, typer.Option("--threshold", help="Keep boxes with score >= this (default: "
                                                    "the model's validation threshold; detectors only).")] = None,
) -> None:
    """Detect on single studies: read each DICOM, run the model, write boxes and an overlay PNG per study; or, with a
    classifier, write each study's class probabilities.

    Reads the model (and the .json sidecar of an .onnx) and the DICOM files. Writes to --out: boxes.csv (image_id,
    source, x1, y1, x2, y2 in original pixels, score, label, class), boxes.json (per study, with errors) and
    <image_id>.png overlays; for a classifier probabilities.csv (image_id, source, one column per class) and
    probabilities.json (per study, with classes, threshold and errors). A file that cannot be read is reported with
    the reason; the others are still processed, and the exit status is 1 if any failed.
    """
    from cxrdet import paths
    from cxrdet.tasks import infer, load_model

    out = out or paths.infer_dir()
    sources = [*(dicom or []), *(files or [])]
    if not sources:
        raise CxrdetError("no DICOM files: pass --dicom FILE (repeatable) or files after the options")
    result = infer(load_model(model), sources, out, threshold=threshold)
    typer.echo(result.summary(out, len(sources)))
    for message in result.errors.values():
        console.print(f"[bold red]error:[/bold red] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    if result.errors:
        raise typer.Exit(code=1)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
