"""Tune chargpt for a corpus and a machine: ``python -m src.tune --config CONFIG --space configs/tune/default.yaml
--trials 20 --trainer.max_time 00:00:02:00``. Each trial is an ordinary fit of CONFIG with the trial's values as
flags (and every flag after the known ones), in ``lightning_logs/tune/<study>/trial_<n>/``; the study lives in
``lightning_logs/tune/<study>.db`` (or ``--storage``), so the same command continues it, on this machine or on
several (docs/tuning.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import optuna

from src import Interrupted, run_command
from src.training.last_checkpoint import TrainingInterrupted
from src.tuning.space import load_space
from src.tuning.study import PRUNERS, SAMPLERS, StudySettings, open_study, run_study, summary
from src.tuning.trial import config_keys


def default_space() -> Path:
    """configs/tune/default.yaml: beside src/ in a checkout, in src/configs/ once installed (pyproject.toml)."""
    package = Path(__file__).resolve().parent
    for configs in (package.parent / "configs", package / "configs"):
        if (configs / "tune" / "default.yaml").is_file():
            return configs / "tune" / "default.yaml"
    return package.parent / "configs" / "tune" / "default.yaml"


class TuneParser(argparse.ArgumentParser):
    """The study's own flags; what is left goes to every trial's fit (``args.fit_flags``)."""

    def parse_args(self, args=None, namespace=None):
        known, rest = self.parse_known_args(args, namespace)
        known.fit_flags = rest
        if known.trials < 1:
            self.error(f"--trials must be positive, got {known.trials}")
        return known


def build_parser() -> TuneParser:
    parser = TuneParser(
        prog="python -m src.tune",
        description="An Optuna study of fit runs; flags after these go to every trial, as fit takes them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="the config every trial starts from (default: fit's defaults)")
    parser.add_argument("--space", default=str(default_space()), help="the search space: config keys and ranges")
    parser.add_argument("--trials", type=int, default=20, help="trials to run now (a rerun adds as many more)")
    parser.add_argument("--study", help="the study's name (default: the config's and the space's names)")
    parser.add_argument("--storage", help="a database URL Optuna takes (default: lightning_logs/tune/<study>.db)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe")
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="stops trials worse than others")
    parser.add_argument("--sampler_seed", type=int, help="the sampler's seed (default: a fresh one each run)")
    parser.add_argument("--root", default="lightning_logs", help="where the trials' folders go (under tune/)")
    return parser


def tune(args: argparse.Namespace, argv: list[str]) -> None:
    base = ([f"--config={args.config}"] if args.config else []) + args.fit_flags
    space = load_space(args.space, config_keys(base))  # an unknown key stops here, before any trial
    name = args.study or "-".join(Path(p).stem for p in (args.config or "defaults", args.space))
    settings = StudySettings(name, space, base, Path(args.root), args.storage, args.sampler, args.pruner,
                             args.sampler_seed)  # fmt: skip
    try:
        study = run_study(settings, args.trials)
    except (TrainingInterrupted, Interrupted, KeyboardInterrupt):
        print(summary(open_study(settings), settings), flush=True)
        print(
            f"chargpt tune: stopped; the running trial is failed. Continue: {continue_command(argv)}", file=sys.stderr
        )
        sys.exit(130)
    print(summary(study, settings), flush=True)


def continue_command(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "src.tune", *argv])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its trial lines repeat ours; a failed trial's is in the table
    run_command("tune", build_parser, lambda args: tune(args, argv), argv)


if __name__ == "__main__":
    main()
