"""The one owner of run artefacts: a training run's folder (`Run`), an experiment's runs (`Experiment`) and an
ensemble's folder (`EnsembleRun`).

Every module that reads or writes what a run left goes through these objects, so a file's name and the rule that
picks it (which curriculum stage is final, which checkpoint prediction uses) live in one place. Locations come from
`cxrdet.paths`; what is inside a run folder is decided here:

```
outputs/<experiment>/fold<k>/          Run(experiment, k).folder
    config.py                          the resolved config (after `-o` overrides): the source of truth after training
    provenance.json                    git revision, fold file and its hash, versions, command
    status.json                        what training is doing: running (pid, host), failed (the error), killed
    [stage<i>_<name>/]                 one folder per curriculum stage (none for a single-stage run)
        checkpoints/{best,last}.ckpt, done.json
        tensorboard/, csv/
    {oof,test}.parquet (+ .json)       predictions of this fold's model and their sidecars
    export/                            deployment exports
outputs/<experiment>/leaderboard.json  the pooled OOF score `cxrdet runs` shows, keyed by the files it read
outputs/ensembles/<name>/              EnsembleRun(name).folder: study.db, params.json, submissions.json, report/
```

After training, later steps read the run's written config rather than the experiment config file again: a run
trained with `-o data.folds=X` is predicted on `X` without repeating the option. An `-o` given to a later step that
disagrees with the written config is an error naming both values, except for the settings a later step may choose
(`MAY_DIFFER`: prediction settings, batch size and loader workers, devices).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cxrdet import paths
from cxrdet.config import get_key, load_config, merge_options, parse_options
from cxrdet.errors import CheckpointError, ConfigError, CxrdetError, TableError
from cxrdet.io import file_sha256, write_json, write_parquet, write_text

CONFIG_FILE = "config.py"
PROVENANCE_FILE = "provenance.json"
DONE_FILE = "done.json"
PARAMS_FILE = "params.json"
STATUS_FILE = "status.json"
# A run's state (`Run.state`): finished (the final stage's done.json), running (status.json names a live process on
# this host, or another host's that has not said otherwise), failed (training raised), killed (interrupted, or its
# process is gone without finishing), not started.
STATES: tuple[str, ...] = ("finished", "running", "failed", "killed", "not started")
BEST = "best"
LAST = "last"
# What prediction can name: the best and last epochs, and the averaged weights of `train.swa` / `train.average_best`
# (`cxrdet.models.averaging`).
CHECKPOINT_NAMES: tuple[str, ...] = (BEST, LAST, "swa", "avg")
SPLITS: tuple[str, ...] = ("oof", "test")
STAGE_KEYS: frozenset[str] = frozenset({"name", "epochs", "view", "lr", "data"})
# Dotted keys (or prefixes ending in '.') that a step after training may set differently from the run's config.
MAY_DIFFER: tuple[str, ...] = ("predict.", "data.batch_size", "data.num_workers", "data.pin_memory",
                               "train.accelerator", "train.devices")
_FOLD = re.compile(r"^fold(\d+)$")


# ---- curriculum stages ----


@dataclass(frozen=True)
class Stage:
    """One curriculum stage (a whole single-stage run is one `Stage` with `name=None`).

    Attributes:
        index: Position in `train.stages`, from 0.
        name: The stage's folder name under the run folder (`stage<i>_<name>`), None for a single-stage run.
        epochs: Epochs of this stage.
        view: Training view (`full`, `crops`); None keeps `data.view`.
        lr: Learning rate of this stage; None keeps `optim.lr`.
        data: Overrides of the `data` section for this stage (e.g. `batch_size`).
    """

    index: int
    name: str | None
    epochs: int
    view: str | None = None
    lr: float | None = None
    data: Mapping[str, Any] | None = None


def resolve_stages(cfg: Mapping[str, Any], source: str = "config") -> list[Stage]:
    """The stages of a config: `train.stages`, or one stage of `train.epochs` epochs.

    Raises:
        ConfigError: A stage lacks `name` or `epochs`, has an unknown key, or two stages share a name.
    """
    stages = cfg["train"].get("stages")
    if not stages:
        return [Stage(0, None, int(cfg["train"]["epochs"]))]
    if isinstance(stages, (str, Mapping)) or not all(isinstance(st, Mapping) for st in stages):
        raise ConfigError(f"{source}: train.stages={stages!r}: expected a list of dicts such as "
                          "[{'name': 'crops', 'view': 'crops', 'epochs': 2}, {'name': 'full', 'epochs': 10}]")
    out = []
    for i, st in enumerate(stages):
        where = f"{source}: train.stages[{i}]"
        unknown = sorted(set(st) - STAGE_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(STAGE_KEYS)}")
        if "name" not in st or "epochs" not in st:
            raise ConfigError(f"{where}: expected `name` and `epochs`, got {dict(st)}")
        out.append(Stage(i, f"stage{i + 1}_{st['name']}", int(st["epochs"]), st.get("view"),
                         None if st.get("lr") is None else float(st["lr"]), dict(st.get("data") or {})))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: train.stages has repeated names {names}")
    return out


# ---- checkpoints ----


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Read a cxrdet (Lightning) checkpoint without running code: `torch.load(weights_only=True)`.

    A checkpoint is a pickle, and an unrestricted pickle runs whatever code it names the moment it is read; one shared
    by someone else must not. cxrdet's own checkpoints hold only tensors and plain containers (the config is a plain
    dict), which the restricted unpickler reads; anything else is refused.

    Raises:
        CheckpointError: The file is missing, not a checkpoint, or holds objects beyond tensors and plain containers
            (the message names the first one and says why it is refused).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises loading with weights_only=False: cxrdet never does; it names only the object.
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
        if found is None:
            raise CheckpointError(path, "cannot be read as a checkpoint: not a torch checkpoint of tensors and plain "
                                  "containers") from err
        raise CheckpointError(path, f"refused: it holds {found[1]}, an object that only code could rebuild, and cxrdet "
                              "reads checkpoints without running code (torch.load(weights_only=True)); a cxrdet "
                              "checkpoint holds tensors and plain containers only: is it from a trusted "
                              "source?") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(path, f"cannot be read as a checkpoint ({err})") from err


def checkpoint_record(path: str | Path) -> dict[str, float]:
    """The validation score and threshold stored in a checkpoint by training (`val_score`, `val_threshold`; empty
    if absent)."""
    return dict(load_checkpoint_file(path).get("cxrdet", {}))


# ---- overrides against a written config ----


def _plain(value: Any) -> Any:
    """Tuples as lists, mappings as dicts, recursively: a config written as text reads tuples back as lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _may_differ(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in MAY_DIFFER)


def check_overrides(written: Mapping[str, Any], options: Sequence[str] | Mapping[str, Any] | None,
                    source: str | Path) -> dict[str, Any]:
    """The overrides of `options` that a later step may apply on top of a run's written config.

    Returns:
        `{dotted key: value}` of the options in `MAY_DIFFER` (to merge into the written config).

    Raises:
        ConfigError: An option outside `MAY_DIFFER` whose value differs from the written config's, naming both.
    """
    allowed, conflicts = {}, []
    for key, value in parse_options(options).items():
        if _may_differ(key):
            allowed[key] = value
            continue
        try:
            have = get_key(written, key)
        except KeyError:
            have = "<not set>"
        if _plain(have) != _plain(value):
            conflicts.append(f"{key}={value!r} but the run was trained with {key}={have!r}")
    if conflicts:
        raise ConfigError(f"{source}: " + "; ".join(conflicts) + ". The run's written config is the source of truth "
                          f"after training: drop the option, or train a new run (another experiment name); only "
                          f"{', '.join(MAY_DIFFER)} may change after training")
    return allowed


# ---- one training run ----


@dataclass(frozen=True)
class Run:
    """One experiment trained on one held-out fold: its folder and everything in it.

    Attributes:
        experiment: The experiment name (the config file's stem).
        fold: The held-out fold.
    """

    experiment: str
    fold: int

    @property
    def folder(self) -> Path:
        return paths.run_dir(self.experiment, self.fold)

    @property
    def config_path(self) -> Path:
        """The resolved config training wrote."""
        return self.folder / CONFIG_FILE

    @property
    def provenance_path(self) -> Path:
        return self.folder / PROVENANCE_FILE

    def has_config(self) -> bool:
        return self.config_path.is_file()

    # -- config and provenance --

    def write_config(self, text: str) -> Path:
        """Write the resolved config (mmengine's `pretty_text`)."""
        return write_text(self.config_path, text)

    def config(self, options: Sequence[str] | Mapping[str, Any] | None = None) -> Any:
        """The resolved config the run wrote, with the `options` a later step may set (`check_overrides`).

        Raises:
            CxrdetError: The run has not written its config (not trained). ConfigError: A conflicting option.
        """
        if not self.has_config():
            raise CxrdetError(f"{self.config_path} not found: train first (`cxrdet train CONFIG --fold {self.fold}`)")
        written = load_config(self.config_path)
        merge_options(written, check_overrides(written, options, self.config_path), self.config_path)
        return written

    def provenance(self) -> dict[str, Any]:
        """`provenance.json` (empty when absent)."""
        path = self.provenance_path
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def write_provenance(self, record: Mapping[str, Any], resumed: bool) -> Path:
        """Write `provenance.json`; a resumed run keeps the first start's record and appends this one under
        `resumes`."""
        first = self.provenance() if resumed else {}
        out = {**first, "resumes": [*first.get("resumes", []), dict(record)]} if first else dict(record)
        return write_json(self.provenance_path, out)

    # -- stages and checkpoints --

    def stage_dir(self, stage: Stage | str | None) -> Path:
        """Folder of one training stage: the run folder itself for a single-stage run, else `<run>/<stage>`."""
        name = stage.name if isinstance(stage, Stage) else stage
        return paths.stage_dir(self.experiment, self.fold, name)

    def checkpoints_dir(self, stage: Stage | str | None) -> Path:
        """Checkpoints (`best.ckpt`, `last.ckpt`) and `done.json` of one training stage."""
        name = stage.name if isinstance(stage, Stage) else stage
        return paths.checkpoints_dir(self.experiment, self.fold, name)

    def done(self, stage: Stage) -> dict[str, Any] | None:
        """The `done.json` record of a finished stage, None while unfinished."""
        marker = self.checkpoints_dir(stage) / DONE_FILE
        return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None

    def mark_done(self, stage: Stage, record: Mapping[str, Any]) -> Path:
        return write_json(self.checkpoints_dir(stage) / DONE_FILE, dict(record))

    # -- status --

    @property
    def status_path(self) -> Path:
        return self.folder / STATUS_FILE

    def write_status(self, state: str, **info: Any) -> Path:
        """Record what training is doing (`running`, `failed`, `killed`, `finished`) with this process's pid and host
        and the time, plus `info` (the error of a failed run)."""
        import os
        import platform
        from datetime import UTC, datetime

        pid = os.getpid()
        return write_json(self.status_path, {"state": state, "pid": pid, "pid_start": _process_start(pid),
                                             "host": platform.node(),
                                             "time": datetime.now(UTC).isoformat(timespec="seconds"), **info})

    def status(self) -> dict[str, Any]:
        """`status.json` (empty when absent)."""
        path = self.status_path
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except json.JSONDecodeError:
            return {}

    def state(self, stages: Sequence[Stage] | None = None) -> str:
        """One of `STATES`: `finished` once the final stage's done.json exists; else what status.json says, where a
        `running` record whose process is gone from this host reads `killed` (a SIGKILL, an out-of-memory kill, a
        closed terminal); a folder with checkpoints but no status (trained before status.json existed) reads
        `killed`."""
        if stages is None:
            stages = resolve_stages(load_config(self.config_path)) if self.has_config() else []
        if stages and self.done(stages[-1]) is not None:
            return "finished"
        record = self.status()
        state = record.get("state")
        if state == "running":
            return "running" if _alive(record) else "killed"
        if state in ("failed", "killed"):
            return str(state)
        return "killed" if stages and self.existing_checkpoints(stages) else "not started"

    def existing_checkpoints(self, stages: Sequence[Stage]) -> list[Path]:
        """Every `.ckpt` file of the given stages."""
        return [p for st in stages for p in sorted(self.checkpoints_dir(st).glob("*.ckpt"))]

    def final_checkpoint(self, which: str = BEST, cfg: Mapping[str, Any] | None = None) -> Path:
        """The checkpoint prediction uses: `best` or `last` of the final curriculum stage, or an explicit file.

        Args:
            which: `best`, `last`, `swa`, `avg` or the path of a .ckpt file.
            cfg: The run's config, to tell its stages; default the written one.

        Raises:
            CxrdetError: The checkpoint does not exist (the run has not finished, or never started).
        """
        if which not in CHECKPOINT_NAMES:
            path = Path(which)
            if not path.is_file():
                raise CxrdetError(f"checkpoint {path} not found: expected one of {', '.join(CHECKPOINT_NAMES)} or the "
                                  "path of a .ckpt file")
            return path
        if cfg is None and not self.has_config():
            raise CxrdetError(f"{self.config_path} not found: train first (`cxrdet train CONFIG --fold {self.fold}`)")
        stage = resolve_stages(cfg if cfg is not None else load_config(self.config_path))[-1]
        path = self.checkpoints_dir(stage) / f"{which}.ckpt"
        if not path.is_file() and which not in (BEST, LAST):
            key = "swa" if which == "swa" else "average_best"
            raise CxrdetError(f"{path} not found: the run averaged no weights of that kind; train it with "
                              f"train.{key}=dict(...) (see cxrdet.models.averaging)")
        if not path.is_file():
            raise CxrdetError(f"{path} not found: train first (`cxrdet train CONFIG --fold {self.fold}`), or finish "
                              "the run with --resume")
        return path

    def best_record(self) -> dict[str, float]:
        """The validation score and threshold of the final stage's best checkpoint (empty when there is none)."""
        try:
            return checkpoint_record(self.final_checkpoint(BEST))
        except CxrdetError:
            return {}

    # -- predictions --

    def predictions_path(self, split: str) -> Path:
        """Predictions of this fold's model on `split` (`oof` or `test`): boxes, or per-image probabilities."""
        if split not in SPLITS:
            raise ConfigError(f"split={split!r}: expected one of {list(SPLITS)}")
        return paths.predictions_path(self.experiment, self.fold, split)

    def sidecar_path(self, split: str) -> Path:
        """The JSON record beside a prediction file (checkpoint, settings, fold file)."""
        return self.predictions_path(split).with_suffix(".json")

    def has_predictions(self, split: str) -> bool:
        return self.predictions_path(split).is_file()

    def write_predictions(self, split: str, frame: pd.DataFrame, sidecar: Mapping[str, Any]) -> Path:
        """Write a prediction table and its sidecar (each atomically)."""
        out = write_parquet(self.predictions_path(split), frame)
        write_json(self.sidecar_path(split), dict(sidecar))
        return out

    def read_predictions(self, split: str) -> pd.DataFrame:
        """This fold model's prediction table (`image_id, x1, y1, x2, y2, score, label` or, for a classifier,
        `image_id` and one probability column per class); image ids as strings.

        Raises:
            TableError: The file is missing or unreadable.
        """
        path = self.predictions_path(split)
        if not path.is_file():
            raise TableError(path, [f"file not found: predict {split} boxes of {self.experiment} fold {self.fold} "
                                    f"first (cxrdet predict ... --fold {self.fold} --split {split})"])
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a broken file
            raise TableError(path, [f"cannot be read as parquet: {err}"]) from err
        frame["image_id"] = frame["image_id"].astype(str)
        return frame

    def sidecar(self, split: str) -> dict[str, Any]:
        """The prediction file's sidecar (empty when absent)."""
        path = self.sidecar_path(split)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    # -- other outputs --

    @property
    def export_dir(self) -> Path:
        """Exported deployment models of this fold (`model.onnx` and its `model.json` sidecar, ...)."""
        return paths.export_dir(self.experiment, self.fold)

    @property
    def explain_dir(self) -> Path:
        """Default folder of `cxrdet explain`'s Grad-CAM overlays of this fold's classifier."""
        return paths.explain_dir(self.experiment, self.fold)


def _process_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux `/proc/<pid>/stat`, field 22), None where unknown:
    with the pid it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # the fields after the command name, which may hold spaces


def _alive(record: Mapping[str, Any]) -> bool:
    """Whether the process a `running` status names still runs: checked on this host (its pid exists and, where
    recorded, started when the recorded one did); another host's run is taken at its word."""
    import os
    import platform

    if record.get("host") != platform.node():
        return True
    try:
        pid = int(record["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True  # another user's process, or a record without a pid: not known to be gone
    started = record.get("pid_start")
    return started is None or _process_start(pid) in (None, started)


# ---- an experiment's runs ----


@dataclass(frozen=True)
class Experiment:
    """Every fold run of one experiment."""

    name: str

    @property
    def folder(self) -> Path:
        return paths.run_dir(self.name, 0).parent

    def run(self, fold: int) -> Run:
        return Run(self.name, fold)

    def runs(self, split: str | None = "oof") -> list[Run]:
        """The fold runs, in fold order, that have predictions on `split` (every run folder when None)."""
        found = []
        for folder in self.folder.glob("fold*"):
            match = _FOLD.match(folder.name)
            if match is None:
                continue
            run = Run(self.name, int(match[1]))
            if split is None or run.has_predictions(split):
                found.append(run)
        return sorted(found, key=lambda r: r.fold)

    @property
    def report_dir(self) -> Path:
        return self.folder / "report"

    @property
    def leaderboard_cache(self) -> Path:
        """The pooled OOF score `cxrdet runs` computed, with the file signatures it was computed from."""
        return self.folder / "leaderboard.json"


# ---- an ensemble's folder ----


@dataclass(frozen=True)
class EnsembleRun:
    """The folder of one tuned ensemble: its Optuna study, `params.json` and report."""

    name: str

    @property
    def folder(self) -> Path:
        return paths.ensemble_dir(self.name)

    @property
    def params_path(self) -> Path:
        return self.folder / PARAMS_FILE

    @property
    def honest_path(self) -> Path:
        """The honest estimate's held-out predictions: each OOF image's submitted rows under the parameters tuned on
        the other folds, with its `fold` (what `cxrdet select` re-scores)."""
        return self.folder / "honest_oof.parquet"

    @property
    def study_db(self) -> Path:
        """The default SQLite study storage."""
        return self.folder / "study.db"

    @property
    def report_dir(self) -> Path:
        return self.folder / "report"

    def is_tuned(self) -> bool:
        return self.params_path.is_file()

    def read_params(self, config: str | Path | None = None) -> dict[str, Any]:
        """The tuned `params.json` record; with `config`, checked to be tuned from that file as it is now.

        Raises:
            ConfigError: Not tuned yet, or `config` changed since it was tuned (its hash is not the recorded one).
        """
        if not self.params_path.is_file():
            raise ConfigError(f"{self.params_path} not found: tune the ensemble first (cxrdet tune CONFIG)")
        record = json.loads(self.params_path.read_text(encoding="utf-8"))
        if config is not None and record.get("config_sha256") not in (None, file_sha256(config)):
            raise ConfigError(f"{config} changed since it was tuned ({self.params_path} records another hash): "
                              "tune again")
        return record

    def write_params(self, record: Mapping[str, Any]) -> Path:
        return write_json(self.params_path, dict(record))

    @property
    def submissions_path(self) -> Path:
        """The submission files written from this ensemble (`cxrdet submit`), newest last."""
        return self.folder / "submissions.json"

    def record_submission(self, csv: str | Path, provenance: str | Path) -> Path:
        """Add a written submission (its path, hash and provenance file) to `submissions.json`; a file written again
        to the same path replaces its entry."""
        from datetime import UTC, datetime

        csv = Path(csv).resolve()
        entry = {"submission": str(csv), "sha256": file_sha256(csv), "provenance": str(Path(provenance).resolve()),
                 "date": datetime.now(UTC).isoformat(timespec="seconds")}
        kept = [e for e in self.submissions() if e.get("submission") != str(csv)]
        return write_json(self.submissions_path, [*kept, entry])

    def submissions(self) -> list[dict[str, Any]]:
        """The recorded submissions (`record_submission`), oldest first; empty when none."""
        path = self.submissions_path
        try:
            found = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        except json.JSONDecodeError:
            return []
        return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


def run_config(config: str | Path, fold: int, options: Sequence[str] | Mapping[str, Any] | None = None) -> Any:
    """The config a step after training works with: the run's written config (with the `options` it may change,
    `check_overrides`) once `Run(experiment, fold)` has one, else `config` with `options` (a run not trained yet:
    the step then says so, e.g. no checkpoint).

    Raises:
        ConfigError: An option that disagrees with the run's written config.
    """
    given = load_config(config, options)
    run = Run(given["experiment"], fold)
    return run.config(options) if run.has_config() else given


def report_dir(name: str) -> Path:
    """Default report folder of `name`: the ensemble's when `outputs/ensembles/<name>/` exists, else the
    experiment's."""
    ensemble = EnsembleRun(name)
    return ensemble.report_dir if ensemble.folder.is_dir() else Experiment(name).report_dir
