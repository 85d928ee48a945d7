"""One trial: an ordinary ``fit`` of the study's config with the trial's values as flags, in
``<root>/tune/<study>/trial_<n>/``, each evaluation reported to Optuna so that its pruner can stop the trial."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import lightning as L
import optuna
import yaml

from src.errors import UserError
from src.training.cli import build_cli
from src.training.divergence import Diverged
from src.training.fit import FitResult, fit
from src.tuning.space import Param, flags


def config_keys(base: list[str]) -> set[str]:
    """Every key fit takes (``model.learning_rate``, ``trainer.max_steps``, ...), from its ``--print_config`` of
    ``base``: what a space may name."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            build_cli(["fit", *base, "--print_config"])
    except SystemExit as stop:
        if stop.code not in (0, None):  # the parser's own message, without its usage lines
            said = [line for line in err.getvalue().splitlines() if "error:" in line] or err.getvalue().splitlines()
            raise UserError(f"fit refuses the trials' flags: {said[-1].split('error:', 1)[-1].strip()}") from None
    keys: set[str] = set()

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            keys.add(prefix + key)
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    walk(yaml.safe_load(out.getvalue()) or {}, "")
    return keys


class ReportValLoss(L.Callback):
    """Each validation loss to the trial, as its k-th evaluation, and the pruner's verdict. Pruners compare trials at
    the same report, and under a time budget each trial plans its own step count with its evaluations at the same
    fractions of the budget: keyed by the step, no two trials would ever be compared. (optuna-integration's
    PyTorchLightningPruningCallback reports at the epoch, and a chargpt run is one epoch of steps: it would report
    only the first evaluation.)"""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial, self.evaluations = trial, 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val_loss" not in trainer.callback_metrics:
            return
        val, step = trainer.callback_metrics["val_loss"].item(), trainer.global_step
        self.evaluations += 1
        self.trial.report(val, self.evaluations)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at evaluation {self.evaluations}, step {step} (val {val:.4f})")


def run_trial(trial: optuna.Trial, space: list[Param], base: list[str], root: Path, study: str) -> float:
    """The trial's best validation loss: a fit of ``base`` with the trial's values from ``space`` as flags."""
    values = {param.key: param.suggest(trial) for param in space}
    name = f"tune/{study}/trial_{trial.number}"
    args = [*base, *flags(values), f"--run_name={name}", f"--trainer.default_root_dir={root}"]
    result = fit_trial(trial, args, root / name)
    if result.best_val is None:
        raise UserError(f"{name} ran no evaluation: give the trials at least one (--trainer.val_check_interval)")
    return result.best_val


def fit_trial(trial: optuna.Trial, args: list[str], folder: Path, prune: bool = True) -> FitResult:
    """``fit(args)`` for ``trial``, its output in ``folder``/fit.log, each evaluation reported (``prune``: to the
    pruner too); its steps, wall time and folder go into the trial's user attributes. A combination the settings
    refuse (heads that do not divide the width) is pruned as skipped, with the reason; a run that diverges raises
    ``Diverged``, which the study records as failed."""
    folder.mkdir(parents=True, exist_ok=True)
    trial.set_user_attr("run_dir", str(folder))
    try:
        with output_to(folder / "fit.log"):
            result = fit(args, callbacks=(ReportValLoss(trial),) if prune else ())
    except UserError as err:
        trial.set_user_attr("reason", f"skipped: {err}")
        raise optuna.TrialPruned(f"skipped: {err}") from None
    except optuna.TrialPruned as pruned:
        trial.set_user_attr("reason", str(pruned))
        raise
    except Diverged as err:
        trial.set_user_attr("reason", f"diverged: {err}")
        raise
    trial.set_user_attr("steps", result.steps)
    trial.set_user_attr("wall", round(result.wall, 1))
    trial.set_user_attr("final_val", result.final_val)
    trial.set_user_attr("params", result.params)
    return result


class output_to:
    """This process's stdout and stderr (file descriptors 1 and 2, which Lightning's log handlers and C++ warnings
    write to as well as ``print``) into ``path`` for the duration: each trial's output in its own folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        sys.stdout.flush(), sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        self.file = open(self.path, "w")
        os.dup2(self.file.fileno(), 1), os.dup2(self.file.fileno(), 2)

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush(), sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        self.file.close()
