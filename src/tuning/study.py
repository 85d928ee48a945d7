"""An Optuna study of ``fit`` runs: its storage (a SQLite file beside the runs, or any database URL Optuna takes, which
several machines can share), the trials it runs in this process, a line per trial, and what it leaves: the table of
trials, ``best.yaml`` and the parameters' importances."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import sqlalchemy.exc
import yaml

from src.errors import UserError
from src.training.divergence import Diverged
from src.tuning.space import Param
from src.tuning.trial import run_trial

PRUNERS = ("median", "halving", "none")
SAMPLERS = ("tpe", "random", "grid")
SCHEMA_TRIES = 5  # opening a new database while other workers create its tables


@dataclass
class StudySettings:
    name: str
    space: list[Param]
    base: list[str]  # fit's flags for every trial: --config and the flags after the known ones
    root: Path  # --trainer.default_root_dir of every trial: the trials go to <root>/tune/<name>/
    storage: str | None = None  # None: sqlite:///<root>/tune/<name>.db
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int | None = None  # the sampler's; None draws a fresh one (what several workers on one study want)
    extra: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.root / "tune" / self.name

    def storage_url(self) -> str:
        if self.storage:
            return self.storage
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.folder.parent / f'{self.name}.db'}"


def open_study(settings: StudySettings, sampler=None, pruner=None) -> optuna.Study:
    """The study by this name in the storage, created if new: a rerun continues it."""
    url = settings.storage_url()
    try:
        return optuna.create_study(
            study_name=settings.name,
            storage=rdb_storage(url),
            direction="minimize",
            load_if_exists=True,
            sampler=sampler or make_sampler(settings),
            pruner=pruner or make_pruner(settings.pruner),
        )
    except ImportError as err:  # Optuna wraps the driver's ModuleNotFoundError
        name = getattr(err.__cause__, "name", None) or err.name or "its module"
        raise UserError(f"--storage {url}: its database driver is not installed ({name}); for PostgreSQL: "
                        f"pip install -e \".[tune]\" (psycopg)") from None  # fmt: skip
    except Exception as err:  # SQLAlchemy's: a bad URL, a server that refuses, a locked file
        raise UserError(f"--storage {url}: {storage_problem(err)}") from None


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's storage: a trial whose process died stops beating, and the next worker to start a trial marks it
    failed; SQLite waits up to a minute for another worker's write instead of failing at once."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for attempt in range(SCHEMA_TRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: Optuna >= 2.9
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30, grace_period=120)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # workers started together on a new database create its tables at once, and all but one lose the race
            # (PostgreSQL: "duplicate key value violates unique constraint pg_type_typname_nsp_index"); the winner's
            # tables are there a moment later
            if attempt == SCHEMA_TRIES - 1:
                raise
            time.sleep(1.0)


def storage_problem(err: Exception) -> str:
    text = str(err).splitlines()[0]
    if "database is locked" in text:
        return "the SQLite file is locked by another process: wait for it, or give the study a PostgreSQL --storage"
    if "unable to open database file" in text:
        return "SQLite cannot create the file there: make its folder, or check that it is writable"
    if type(err).__name__ == "ArgumentError" or "Could not parse" in text:
        return "not a database URL: sqlite:///path.db, or postgresql+psycopg://user:password@host/database"
    return text


def make_sampler(settings: StudySettings) -> optuna.samplers.BaseSampler:
    if settings.sampler == "grid":
        return optuna.samplers.GridSampler({p.key: p.grid() for p in settings.space}, seed=settings.seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    return optuna.samplers.TPESampler(seed=settings.seed)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=4)  # four complete trials before any is compared


def run_study(settings: StudySettings, trials: int, say=print, sampler=None, pruner=None) -> optuna.Study:
    """``trials`` more trials of the study (Optuna's ``n_trials``), a line for each; a diverged trial is failed and
    the study goes on. Ctrl-C (an exception out of here) leaves the running trial failed."""
    study = open_study(settings, sampler, pruner)
    started, ran = time.perf_counter(), []

    def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        ran.append(trial.number)  # this worker's: others may add trials to the same study meanwhile
        n = len(ran)
        eta = (time.perf_counter() - started) / max(n, 1) * (trials - n)
        value = f"val {trial.value:.4f}" if trial.value is not None else trial.user_attrs.get("reason", "")
        best = best_trial(study)
        shown = f"best {best.value:.4f} (trial {best.number})" if best else "no complete trial yet"
        say(f"chargpt tune: trial {trial.number} ({n} of {trials}) {trial.state.name.lower()}: {value}; {shown}; "
            f"ETA {clock(eta)}")  # fmt: skip

    study.optimize(
        lambda trial: run_trial(trial, settings.space, settings.base, settings.root, settings.name),
        n_trials=trials,
        catch=(Diverged,),
        callbacks=[progress],
        gc_after_trial=True,
    )
    return study


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return min(complete, key=lambda t: t.value) if complete else None


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def table(study: optuna.Study) -> str:
    """Every trial of the study as a Markdown table: its values, best val, steps, wall and state."""
    keys = sorted({k for t in study.trials for k in t.params})
    lines = ["| trial | " + " | ".join(keys) + " | best val | steps | wall | state |"]
    lines.append("|" + " --- |" * (len(keys) + 5))
    for t in study.trials:
        values = [format_value(t.params.get(k)) for k in keys]
        val = f"{t.value:.4f}" if t.value is not None else "-"
        steps, wall = t.user_attrs.get("steps", "-"), t.user_attrs.get("wall")
        state = t.state.name.lower() + (f": {t.user_attrs['reason']}" if "reason" in t.user_attrs else "")
        lines.append(f"| {t.number} | " + " | ".join(values) +
                     f" | {val} | {steps} | {clock(wall) if wall else '-'} | {state} |")  # fmt: skip
    return "\n".join(lines)


def format_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_best(study: optuna.Study, settings: StudySettings) -> Path | None:
    """The best trial's whole config as ``best.yaml`` in the study's folder, for ``fit --config best.yaml``: its
    run's config.yaml with the run's own folders left to be settled again, and a budget's planned steps fixed
    (``max_time`` null), so that it trains the same steps to the same val."""
    best = best_trial(study)
    if best is None:
        return None
    config = yaml.safe_load((Path(best.user_attrs["run_dir"]) / "config.yaml").read_text(encoding="utf-8"))
    config["run_name"] = f"{settings.name}_best"
    config["ckpt_path"] = None
    trainer = config["trainer"]
    trainer["default_root_dir"] = trainer["logger"] = trainer["enable_progress_bar"] = trainer["max_time"] = None
    config["checkpoint"]["dirpath"] = config["last_checkpoint"]["dirpath"] = None
    settings.folder.mkdir(parents=True, exist_ok=True)
    path = settings.folder / "best.yaml"
    header = (
        f"# The best trial ({best.number}) of study {settings.name!r}: val {best.value:.4f} in "
        f"{best.user_attrs.get('steps')} steps.\n# Train it again: python -m src.train fit --config {path}\n"
    )
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA) over the complete trials; empty with fewer than two, or when every
    trial has the same value."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        return {}
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. a parameter that only one value was tried for
        return {}


def summary(study: optuna.Study, settings: StudySettings) -> str:
    lines = [table(study)]
    best = best_trial(study)
    if best is None:
        lines.append("no trial has completed yet")
        return "\n".join(lines)
    lines.append(f"best: trial {best.number}, val {best.value:.4f}, in {best.user_attrs.get('run_dir')}")
    path = write_best(study, settings)
    lines.append(f"its config: {path} (python -m src.train fit --config {path})")
    shares = importances(study)
    if shares:
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items()))
    if math.isfinite(best.value):
        lines.append(f"see every trial: tensorboard --logdir {settings.folder}")
    return "\n".join(lines)
