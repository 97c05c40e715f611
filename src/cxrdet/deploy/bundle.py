"""The offline code-competition bundle of a tuned ensemble (`cxrdet package`): everything a Kaggle notebook needs to
write the ensemble's submission with the internet off.

A code competition (SIIM-COVID: "Internet access disabled", a notebook of at most 9 hours writing `submission.csv`)
runs the submission on hidden test images, so the models, the tuned parameters and cxrdet itself must travel as
attached files. The bundle (a folder to upload as a Kaggle dataset):

- `wheels/`: a wheel of cxrdet (built from this checkout) and of each distribution named in
  `configs/kaggle/offline_wheels.txt` at the version installed here (what Kaggle's image lacks; edit the list for
  yours). The notebook installs them with `pip install --no-index --no-deps` and then imports what inference needs,
  so a missing one fails at once, by name.
- `outputs/`: what the notebook copies into a writable outputs folder: per member and classifier fold, the run's
  resolved config, the checkpoint its test predictions came from stripped to the weights prediction loads
  (`bundle.ckpt`: the EMA copy when there is one), and the ensemble's `params.json`.
- `project/`: `CXRDET_HOME` for the notebook: this repository's `configs/` (the ensemble config byte for byte, as
  `params.json` records its hash) and the fold file the members name.
- `inference.py` and `inference.ipynb`: the same code (the notebook is the script cut at its `# %%` lines). It
  installs the wheels, prepares the test images of the competition's layout (`cxrdet prepare --split test`), runs
  every fold model of every member and of the classifier on them (`cxrdet predict --split test`, with the
  checkpoint and TTA of the predictions the ensemble was submitted from), and writes the submission with the tuned
  parameters (`cxrdet submit`): the same code path as `cxrdet submit` here, so the same inputs give the same bytes.
- `bundle.json` (manifest: every file with its size and SHA-256, the wheels, the members, the measured time),
  `provenance.json` (git revision, configs, parameters, both CV scores) and `README.md` (how to attach and run it,
  the measured seconds per image and the time estimate).

Time budget: packaging runs the bundle's own script on this machine's test images (installation skipped: cxrdet is
installed here), times it, and checks that its `submission.csv` equals `cxrdet submit`'s byte for byte. The run is
split into a fixed part, the start-up of each of its `cxrdet` steps (one per input size, fold model and the submit;
each step's start-up measured as a fresh interpreter importing cxrdet's task layer), and a part per image (the rest,
over the images run). The estimate is the fixed part plus the per-image part times the test set's size (the sample
submission's, or `--n-test-images`); a bundle whose estimate exceeds `--max-minutes` (default: the competition's
notebook limit) is refused. The folder is written beside `--out` and renamed into place only when complete.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cxrdet import paths
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.io import atomic_path, file_sha256, write_json

OFFLINE_WHEELS_FILE = "kaggle/offline_wheels.txt"
# The modules the notebook imports right after installing: each must come from the bundle or the image.
CHECK_IMPORTS: tuple[str, ...] = ("cxrdet.cli", "cxrdet.tasks", "ensemble_boxes", "mmengine", "torch", "torchvision",
                                  "timm", "pytorch_lightning", "pydicom", "pandas", "pyarrow", "optuna")
KAGGLE_SLUGS: dict[str, str] = {
    "rsna": "rsna-pneumonia-detection-challenge",
    "vinbigdata": "vinbigdata-chest-xray-abnormalities-detection",
    "siim": "siim-covid19-detection",
}


@dataclass(frozen=True)
class BundledFold:
    """One fold model the notebook runs on the test images."""

    experiment: str
    fold: int
    size: int
    tta: str
    source_checkpoint: Path
    threads: int | None = None  # torch threads its test predictions were made with (None: not recorded)


@dataclass(frozen=True)
class Timing:
    """The measured run of a bundle's script (see the module docstring).

    Attributes:
        seconds: The whole run.
        n_images: Test images it ran on.
        n_steps: Its `cxrdet` steps.
        startup: Seconds of one step's start-up.
    """

    seconds: float
    n_images: int
    n_steps: int
    startup: float

    @property
    def fixed(self) -> float:
        """Seconds that do not grow with the images (the steps' start-ups, at most the whole run)."""
        return min(self.seconds, self.n_steps * self.startup)

    @property
    def per_image(self) -> float:
        return (self.seconds - self.fixed) / max(self.n_images, 1)

    def minutes_for(self, n_images: int) -> float:
        """The estimated run on `n_images` test images, in minutes."""
        return (self.fixed + self.per_image * n_images) / 60.0


@dataclass(frozen=True)
class PackageResult:
    """What `package` wrote and measured (`timing` None when not measured)."""

    folder: Path
    n_files: int
    n_bytes: int
    wheels: list[str]
    timing: Timing | None
    estimate_n_images: int
    estimate_minutes: float | None
    limit_minutes: float | None


def offline_wheel_names(path: Path | None = None) -> list[str]:
    """The distributions bundled as wheels besides cxrdet: one name per line of `configs/kaggle/offline_wheels.txt`
    (`#` comments).

    Raises:
        ConfigError: The file is missing.
    """
    path = path or paths.CONFIGS_DIR / OFFLINE_WHEELS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: not found: expected one distribution name per line (what Kaggle's image lacks)")
    names = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n]


def bundled_folds(spec: Any) -> list[BundledFold]:
    """Every fold model of the ensemble's members and classifier, with the checkpoint and TTA its test predictions
    used (their sidecars).

    Raises:
        CxrdetError: A fold without test predictions or run config; a config whose data root or cache is a path
            (the notebook reads the competition's data from `CXRDET_DATA` and caches under its own outputs).
    """
    from cxrdet.config import load_config
    from cxrdet.runs import Run

    experiments = [(m.experiment, m.folds) for m in spec.members]
    if spec.classifier is not None:
        experiments.append((spec.classifier["experiment"], spec.folds_used))
    out, problems = [], []
    for experiment, folds in experiments:
        for k in folds:
            run = Run(experiment, k)
            sidecar = run.sidecar("test") if run.has_predictions("test") else {}
            if not sidecar or not run.has_config():
                problems.append(f"{experiment} fold {k}: no test predictions or run config "
                                f"({run.predictions_path('test')}, {run.config_path}): train and predict --split test "
                                "first")
                continue
            data = dict(load_config(run.config_path).get("data") or {})
            for key in ("root", "cache"):
                if data.get(key):
                    problems.append(f"{run.config_path}: data.{key}={data[key]!r}: a bundle reads the competition's "
                                    "data from CXRDET_DATA and caches it under its own outputs; train with "
                                    f"data.{key} unset")
            threads = sidecar.get("torch_threads")
            out.append(BundledFold(experiment, int(k), int(data.get("size") or 512), str(sidecar.get("tta", "none")),
                                   Path(sidecar["checkpoint"]), int(threads) if threads is not None else None))
    if problems:
        raise CxrdetError("cannot bundle the ensemble:\n  " + "\n  ".join(problems))
    return out


def strip_checkpoint(source: Path, target: Path) -> Path:
    """Write the weights prediction loads from `source` (`cxrdet.models.lit_base.inference_state`: the EMA copy when
    there is one) as a checkpoint of those alone, with its `cxrdet` record (validation score and threshold)."""
    import torch

    from cxrdet.models.lit_base import inference_state
    from cxrdet.runs import load_checkpoint_file

    checkpoint = load_checkpoint_file(source)
    state = checkpoint.get("state_dict", {})
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in state) else "model."
    weights = inference_state(checkpoint, str(source))
    kept = {"state_dict": {prefix + k: v for k, v in weights.items()}, "cxrdet": checkpoint.get("cxrdet", {}),
            "epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")}
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        torch.save(kept, tmp)
    return target


def build_wheels(folder: Path, names: Sequence[str], wheelhouse: Path | None = None) -> list[str]:
    """A wheel of cxrdet (this checkout) and of each of `names` at its installed version, into `folder`.

    Raises:
        CxrdetError: pip fails (its output is in the message), or a name is not installed here.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if not (paths.REPO_ROOT / "pyproject.toml").is_file():
        raise CxrdetError(f"{paths.REPO_ROOT}: no pyproject.toml: package from a cxrdet checkout")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # Built from a copy of what the wheel holds: setuptools writes build/ into the source folder and may carry stale
    # files of an earlier build into the wheel.
    with tempfile.TemporaryDirectory(prefix="cxrdet-wheel-") as tmp:
        source = Path(tmp) / "cxrdet"
        shutil.copytree(paths.REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__",
                                                                                              "*.egg-info"))
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (paths.REPO_ROOT / name).is_file():
                shutil.copy2(paths.REPO_ROOT / name, source / name)
        _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(folder), str(source)], "cxrdet")
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError as err:
            raise CxrdetError(f"{name} (in {OFFLINE_WHEELS_FILE}) is not installed here: install it or drop it "
                              "from the list") from err
    if pins:
        links = ["--find-links", str(wheelhouse)] if wheelhouse is not None else []
        _run([*pip, "download", "--no-deps", "--only-binary=:all:", "-d", str(folder), *links, *pins],
             ", ".join(pins))
    return sorted(p.name for p in folder.glob("*.whl"))


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise CxrdetError(f"building the wheel(s) of {what} failed ({' '.join(command[:6])} ...):\n"
                          f"{(done.stdout + done.stderr)[-3000:]}")


# ---- the notebook ----


def inference_source(spec: Any, folds: Sequence[BundledFold], competition: Any, bundle_name: str) -> str:
    """The bundle's inference script; `# %%` lines start the notebook's cells (`# %% [markdown]` a text cell)."""
    sizes = sorted({f.size for f in folds})
    runs = [(f.experiment, f.fold, f.tta) for f in folds]
    config = _ensemble_config_in_project(spec).as_posix()
    slug = KAGGLE_SLUGS.get(competition.name, competition.name)
    return f'''# %% [markdown]
# # {spec.name}: offline inference ({competition.title})
#
# Generated by `cxrdet package` (see README.md in the bundle). Attach this bundle and the competition's data; the
# notebook installs cxrdet from the bundle's wheels (no internet), prepares the test images, runs every fold model of
# the ensemble's members and classifier, and writes `submission.csv` with the tuned parameters.

# %%
# Where things are: environment variables override the Kaggle defaults.
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BUNDLE = Path(os.environ.get("CXRDET_BUNDLE", "/kaggle/input/{bundle_name}"))
DATA = Path(os.environ.get("CXRDET_DATA", "/kaggle/input/{slug}"))
WORK = Path(os.environ.get("CXRDET_WORK", "/kaggle/working"))
SUBMISSION = Path(os.environ.get("CXRDET_SUBMISSION", str(WORK / "submission.csv")))
START = time.perf_counter()

# %%
# Install cxrdet and what the image lacks from the bundle's wheels only, then import what inference needs.
if os.environ.get("CXRDET_BUNDLE_SKIP_INSTALL") != "1":
    wheels = sorted(str(p) for p in (BUNDLE / "wheels").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", *wheels],
                   check=True)
subprocess.run([sys.executable, "-c", "import {', '.join(CHECK_IMPORTS)}"], check=True)

# %%
# A writable outputs folder holding the bundle's runs (configs, stripped checkpoints) and the tuned parameters.
OUTPUTS = WORK / "cxrdet_outputs"
shutil.copytree(BUNDLE / "outputs", OUTPUTS, dirs_exist_ok=True)
ENV = {{**os.environ, "CXRDET_HOME": str(BUNDLE / "project"), "CXRDET_OUTPUTS": str(OUTPUTS),
       "CXRDET_DATA": str(DATA)}}


def cxrdet(*args):
    print("$ cxrdet", *args, flush=True)
    subprocess.run([sys.executable, "-m", "cxrdet", *map(str, args)], check=True, env=ENV)


# %%
# The test images of the competition's layout, decoded once per input size.
for size in {sizes!r}:
    cxrdet("prepare", "--data", DATA, "--size", size, "--split", "test")

# %%
# Every fold model of every member and of the classifier, with the checkpoint and TTA the ensemble was tuned with.
for experiment, fold, tta in {runs!r}:
    run = OUTPUTS / experiment / f"fold{{fold}}"
    cxrdet("predict", run / "config.py", "--fold", fold, "--split", "test", "--tta", tta,
           "--checkpoint", run / "bundle.ckpt")

# %%
# Fuse, post-process and complete with the tuned parameters; the competition's validator reads the file back.
cxrdet("submit", BUNDLE / "project" / "{config}", "--out", SUBMISSION)
print(f"{{SUBMISSION}} written in {{time.perf_counter() - START:.1f}} s")
'''


def notebook_json(source: str) -> dict[str, Any]:
    """The script as a Jupyter notebook (nbformat 4): one cell per `# %%` block, markdown blocks unprefixed."""
    cells = []
    for block in source.split("# %%")[1:]:
        head, _, body = block.partition("\n")
        if head.strip() == "[markdown]":
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
            cells.append({"cell_type": "markdown", "metadata": {},
                          "source": text.strip("\n").splitlines(keepends=True)})
        else:
            cells.append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                          "source": body.strip("\n").splitlines(keepends=True)})
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                         "name": "python3"},
                                          "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def _ensemble_config_in_project(spec: Any) -> Path:
    """The ensemble config's path inside the bundle's `project/` (the repository's configs tree is copied)."""
    try:
        return Path("configs") / Path(spec.path).resolve().relative_to(paths.CONFIGS_DIR.resolve())
    except ValueError as err:
        raise ConfigError(f"{spec.path}: an ensemble config outside {paths.CONFIGS_DIR}: put it under "
                          "configs/ensembles/ to bundle it (its _base_ files travel with the configs tree)") from err


# ---- the bundle ----


def package(spec: Any, out: str | Path, data_root: str | Path | None = None, max_minutes: float | None = None,
            n_test_images: int | None = None, measure: bool = True, wheelhouse: str | Path | None = None,
            overwrite: bool = False) -> PackageResult:
    """Write the offline bundle of a tuned ensemble into `out` (see the module docstring).

    Args:
        spec: The ensemble (`cxrdet.ensemble.spec.load_ensemble`), tuned, its members' test predictions written.
        out: The bundle folder (refused when it exists, unless `overwrite`).
        data_root: The data root whose test images time the bundle (default the members' data root).
        max_minutes: Refuse a bundle whose estimated run exceeds this; default the competition's notebook limit.
        n_test_images: The test set size of the estimate; default this data root's test image count.
        measure: Run and time the bundle's script here (and check its output against `cxrdet submit`).
        wheelhouse: A folder of wheels pip may take the listed distributions from (besides the index).

    Raises:
        ConfigError: Not tuned, or the config lies outside `configs/`, or `max_minutes` without `measure`.
        CxrdetError: A fold without test predictions; a run config with a data path; the script fails or its
            submission differs from `cxrdet submit`; the estimate exceeds the limit; `out` exists.
    """
    from cxrdet.ensemble.problem import data_sources
    from cxrdet.ensemble.submit import load_test_image_ids
    from cxrdet.runs import EnsembleRun, Run

    out = Path(out)
    if out.exists() and not overwrite:
        raise CxrdetError(f"{out}: exists: choose a new folder or pass --overwrite")
    ensemble = EnsembleRun(spec.name)
    record = ensemble.read_params(spec.path)
    for key in ("labels", "test_ids", "folds"):
        if spec.raw.get(key) and Path(str(spec.raw[key])).is_absolute():
            raise ConfigError(f"{spec.path}: {key}={spec.raw[key]!r} is a path of this machine: leave it unset (the "
                              "bundle finds it from the members' configs and CXRDET_DATA)")
    sources = data_sources(spec)
    competition = sources.competition
    limit = max_minutes if max_minutes is not None else competition.time_limit_minutes
    if max_minutes is not None and not measure:
        raise ConfigError("--max-minutes needs the measured time: leave --no-measure out")
    folds = bundled_folds(spec)
    names = offline_wheel_names()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        wheels = build_wheels(staging / "wheels", names, Path(wheelhouse) if wheelhouse else None)
        for f in folds:
            run, target = Run(f.experiment, f.fold), staging / "outputs" / f.experiment / f"fold{f.fold}"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run.config_path, target / "config.py")
            strip_checkpoint(f.source_checkpoint, target / "bundle.ckpt")
        params = staging / "outputs" / "ensembles" / spec.name / "params.json"
        params.parent.mkdir(parents=True)
        shutil.copy2(ensemble.params_path, params)
        shutil.copytree(paths.CONFIGS_DIR, staging / "project" / "configs",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (staging / "project" / "folds").mkdir(parents=True)
        shutil.copy2(sources.folds, staging / "project" / "folds" / sources.folds.name)
        source = inference_source(spec, folds, competition, out.name)
        (staging / "inference.py").write_text(source, encoding="utf-8")
        (staging / "inference.ipynb").write_text(json.dumps(notebook_json(source), indent=1) + "\n",
                                                 encoding="utf-8")
        root = Path(data_root) if data_root is not None else sources.labels.parent
        steps = len({f.size for f in folds}) + len(folds) + 1
        timing = _measure(spec, staging, root, steps, _common_threads(folds)) if measure else None
        n_images = n_test_images if n_test_images is not None else len(load_test_image_ids(spec, sources))
        estimate = timing.minutes_for(n_images) if timing is not None else None
        if limit is not None and estimate is not None and estimate > limit:
            raise CxrdetError(f"{spec.name}: the bundle's estimated run, {estimate:.1f} min ({timing.fixed:.0f} s of "
                              f"start-ups + {timing.per_image:.3f} s per image measured here x {n_images} test "
                              f"images), exceeds the limit of {limit:g} min: drop members or folds, or predict at a "
                              "smaller size")
        _write_records(staging, spec, record, sources, folds, wheels, timing, n_images, estimate, limit, competition)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = [p for p in out.rglob("*") if p.is_file()]
    return PackageResult(out, len(files), sum(p.stat().st_size for p in files), wheels, timing, n_images,
                         estimate, limit)


def _common_threads(folds: Sequence[BundledFold]) -> int | None:
    """The torch thread count every fold's test predictions were made with, or None when they differ or say none."""
    recorded = {f.threads for f in folds}
    return recorded.pop() if len(recorded) == 1 else None


def _measure(spec: Any, bundle: Path, data_root: Path, n_steps: int, threads: int | None = None) -> Timing:
    """Run the bundle's script here (installation skipped), time it and compare its submission with `cxrdet submit`'s;
    time one step's start-up (a fresh interpreter importing `cxrdet.tasks` and `cxrdet.cli`).

    `threads`: the torch thread count every fold's test predictions were made with, when they agree; the script runs
    with it (`OMP_NUM_THREADS`), since another count sums floats in another order and the bytes could differ (folds
    trained side by side with one thread each, for example)."""
    from cxrdet.ensemble.submit import submit

    with tempfile.TemporaryDirectory(prefix="cxrdet-bundle-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "CXRDET_BUNDLE": str(bundle), "CXRDET_DATA": str(data_root), "CXRDET_WORK": str(work),
               "CXRDET_BUNDLE_SKIP_INSTALL": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(bundle / "inference.py")], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise CxrdetError(f"the bundle's inference.py failed here:\n{(done.stdout + done.stderr)[-4000:]}")
        expected = submit(spec, work / "cxrdet_submit.csv")
        produced = work / "submission.csv"
        if produced.read_bytes() != expected.csv.read_bytes():
            where = _first_difference(produced, expected.csv)
            raise CxrdetError(f"the bundle's submission differs from `cxrdet submit`'s ({where}): the bundle would not "
                              "submit what was tuned")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import cxrdet.tasks, cxrdet.cli"], check=True)
        startup = time.perf_counter() - start
        return Timing(seconds, _n_images(produced), n_steps, startup)


def _n_images(submission: Path) -> int:
    """The image rows of a submission (SIIM's `_image` rows; every row elsewhere)."""
    lines = submission.read_text(encoding="utf-8").splitlines()[1:]
    studies = sum(1 for line in lines if line.split(",", 1)[0].endswith("_study"))
    return len(lines) - studies


def _first_difference(a: Path, b: Path) -> str:
    left, right = a.read_text().splitlines(), b.read_text().splitlines()
    for i, (x, y) in enumerate(zip(left, right, strict=False)):
        if x != y:
            return f"line {i + 1}: {x[:80]!r} vs {y[:80]!r}"
    return f"{len(left)} vs {len(right)} lines"


def _write_records(bundle: Path, spec: Any, record: dict[str, Any], sources: Any, folds: Sequence[BundledFold],
                   wheels: Sequence[str], timing: Timing | None, n_images: int, estimate: float | None,
                   limit: float | None, competition: Any) -> None:
    """`provenance.json`, `README.md` and the manifest `bundle.json` (written last: it lists every file)."""
    from cxrdet.ensemble.submit import member_provenance
    from cxrdet.provenance import git_revision

    write_json(bundle / "provenance.json", {
        "ensemble": spec.name, "competition": competition.name,
        "config": {"path": str(spec.path), "sha256": file_sha256(spec.path)},
        "members": member_provenance(spec, sources), "params": record["params"], "scores": record["scores"],
        "folds": {"file": sources.folds.name, "sha256": file_sha256(sources.folds)},
        "git": git_revision(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
    })  # fmt: skip
    scores = record.get("scores", {})
    timing_text = (f"Measured on the packaging machine ({os.cpu_count()} CPUs"
                   f"{', ' + _device() if _device() else ''}): the script ran {timing.seconds:.1f} s on "
                   f"{timing.n_images} test images (installation excepted: preparation, {len(folds)} fold models, "
                   f"fusion and the submission), of which {timing.fixed:.1f} s were the start-ups of its "
                   f"{timing.n_steps} steps ({timing.startup:.1f} s each) and the rest **{timing.per_image:.3f} s per "
                   f"image**. Estimate for {n_images} test images: **{estimate:.1f} min**"
                   + (f" of the {limit:g} min limit." if limit is not None else ".")
                   if timing is not None else "Not measured (`--no-measure`).")
    (bundle / "README.md").write_text(f"""# {spec.name}: offline bundle for {competition.title}

Generated by `cxrdet package` on {datetime.now(UTC).date().isoformat()} from git {git_revision().get('commit')}.

## Use on Kaggle
1. Upload this folder as a Kaggle dataset (its name becomes `/kaggle/input/<name>`).
2. In a notebook with the internet off, attach it and the competition's data, and run `inference.ipynb` (or
   `python inference.py`). If the paths differ, set `CXRDET_BUNDLE` (this folder), `CXRDET_DATA` (the competition's
   data root) and `CXRDET_WORK` (a writable folder) before it runs.
3. It writes `/kaggle/working/submission.csv` (`CXRDET_SUBMISSION` to change), read back through the competition's
   validator.

## What it runs
- Installs from `wheels/` only (`pip install --no-index --no-deps`): {', '.join(wheels)}. The binary wheels are
  for CPython {sys.version_info.major}.{sys.version_info.minor} on this platform: the notebook's image must match.
- Prepares the test images at {sorted({f.size for f in folds})} px and runs {len(folds)} fold models:
{chr(10).join(f'  - {f.experiment} fold {f.fold} (TTA {f.tta})' for f in folds)}
- Fuses and post-processes with the tuned parameters of `outputs/ensembles/{spec.name}/params.json` (optimistic OOF
  score {_figure(scores.get('optimistic'))}, honest nested-CV estimate {_figure(scores.get('honest'))}).

## Time
{timing_text}

`bundle.json` lists every file with its SHA-256; `provenance.json` records the configs, parameters and git revision.
""", encoding="utf-8")
    files = sorted(p for p in bundle.rglob("*") if p.is_file())
    write_json(bundle / "bundle.json", {
        "ensemble": spec.name, "competition": competition.name, "wheels": list(wheels),
        "folds": [{"experiment": f.experiment, "fold": f.fold, "size": f.size, "tta": f.tta,
                   "torch_threads": f.threads} for f in folds],
        # The thread count of the test predictions, where the folds agree: a local rerun with it reproduces the
        # submission's bytes (scripts/run_bundle_offline.py); on Kaggle the notebook uses the machine's own.
        "torch_threads": _common_threads(folds),
        "timing": None if timing is None else {
            "seconds": timing.seconds, "n_images": timing.n_images, "n_steps": timing.n_steps,
            "startup_seconds": timing.startup, "fixed_seconds": timing.fixed, "seconds_per_image": timing.per_image,
        },
        "estimate": {"n_images": n_images, "minutes": estimate, "limit_minutes": limit},
        "files": {p.relative_to(bundle).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                  for p in files},
    })  # fmt: skip


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _device() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    except Exception:  # a broken CUDA install: the CPU timing stands
        return ""
