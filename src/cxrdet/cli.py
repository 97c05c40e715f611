"""The `cxrdet` command: thin wrappers, argument -> function. All logic lives in importable modules.

Heavy imports (torch, pydicom, ...) happen inside each command so that `cxrdet --help` stays fast.
"""

from __future__ import annotations

import functools
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


def user_errors(func: F) -> F:
    """Turn a `CxrdetError` into its message on stderr and exit status 1 (no traceback: the message says what to fix)."""

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

@app.command("folds")
@user_errors
def folds_command(
    labels: Annotated[Path, typer.Option("--labels", help="Label table: RSNA stage_2_train_labels.csv or NIH CSV.")],
    out: Annotated[Path, typer.Option("--out", help="Fold CSV to write (image_id,patient_id,fold), e.g. folds/x.csv.")],
    headers: Annotated[
        Path | None,
        typer.Option(
            "--headers",
            help="Per-image view/sex/age to stratify on: a DICOM header table (CSV/CSV.gz) or a prepare meta.parquet.",
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Label format: auto, rsna or nih.")] = "auto",
    k: Annotated[int, typer.Option("--k", help="Number of folds.", min=2)] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fold shuffle.")] = 42,
    strata: Annotated[
        str | None,
        typer.Option(
            "--strata",
            help="Comma-separated columns to stratify on, most important first "
            "(default: those of positive,n_boxes,view,sex,age the tables have).",
        ),
    ] = None,
) -> None:
    """Build patient-grouped, stratified folds from a label table (and headers); write them and print their balance.

    Reads --labels (and --headers); writes --out atomically, sorted by image id (same inputs and seed, same bytes).
    """
    from rich.console import Console as StdoutConsole

    from cxrdet.data.folds import fold_summary, images_for_folds, make_folds, summary_table, write_folds

    images = images_for_folds(labels, headers, fmt=fmt)
    columns = [c.strip() for c in strata.split(",") if c.strip()] if strata is not None else None
    folds = make_folds(images, k=k, seed=seed, strata_columns=columns)
    write_folds(folds, out)
    StdoutConsole().print(summary_table(fold_summary(folds, images), title=f"{out} (k={k}, seed={seed})"))


# ---- metric and submissions: score, validate-submission ----


@app.command("score")
@user_errors
def score_command(
    labels: Annotated[Path, typer.Option("--labels", help="RSNA labels CSV (patientId,x,y,width,height,Target).")],
    submission: Annotated[Path, typer.Option("--submission", help="Submission CSV (patientId,PredictionString).")],
    metric: Annotated[
        str, typer.Option("--metric", help="rsna (the competition metric) or coco (score = mAP@0.50:0.95).")
    ] = "rsna",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (the last line) instead.")] = False,
    allow_missing: Annotated[
        bool, typer.Option("--allow-missing", help="Labelled images without a submission row get no predictions.")
    ] = False,
) -> None:
    """Score a submission against a labels file; the labels define the image set.

    Reads --labels and --submission (both validated, every problem listed); writes nothing. Submission ids that are
    not labelled are an error; labelled ids without a row are an error unless --allow-missing.
    """
    import json

    from cxrdet.submission import score_submission

    report = score_submission(labels, submission, metric=metric, allow_missing=allow_missing)
    if report["n_missing"]:
        console.print(f"note: {report['n_missing']} labelled image(s) had no submission row and were scored as "
                      "having no predictions (--allow-missing)", highlight=False)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"{metric} score {report['score']:.6f} over {report['n_images']} image(s) "
               f"({report['n_labelled_images']} labelled, {report['n_boxes']} predicted boxes)")
    if metric == "rsna":
        for t, v in report["per_threshold"].items():
            typer.echo(f"  IoU > {t}: {v:.6f}")
    else:
        for key in ("map_50_95", "map_50", "map_40"):
            typer.echo(f"  {key}: {report[key]:.6f}")


@app.command("validate-submission")
@user_errors
def validate_submission_command(
    submission: Annotated[Path, typer.Argument(help="Submission CSV (patientId,PredictionString) to check.")],
    sample: Annotated[Path, typer.Option("--sample", help="Sample submission whose patientIds are the test set.")],
    image_size: Annotated[int, typer.Option("--image-size", help="Side of the square images, pixels.", min=1)] = 1024,
) -> None:
    """Check a submission file against the sample submission's ids; list every problem with its line.

    Reads SUBMISSION and --sample; writes nothing. Exit status 1 when any problem is found.
    """
    from cxrdet.submission import read_image_ids, validate_submission

    stats = validate_submission(submission, image_ids=read_image_ids(sample), image_size=image_size)
    typer.echo(f"{submission}: OK: {stats.n_rows} rows, {stats.n_boxes} boxes, {stats.n_empty} empty rows")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
