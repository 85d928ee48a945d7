"""The training CLI (LightningCLI over ``CharGPT`` and ``CharDataModule``) and the rules around it: where each run
lives, which callbacks every run has, the precision and logger a config leaves unset, and ``--ckpt_path last``.

Each run lives in ``lightning_logs/<run_name>/``: TensorBoard events, ``config.yaml`` and ``checkpoints/`` (the
best by val_loss and ``last.ckpt``, the newest state). A fixed folder per run is what lets ``--ckpt_path last`` find
the run and continue its curves, or start it when there is nothing to resume yet, so one unchanged command serves a
requeueing scheduler; starting a new fit over a run that has a ``last.ckpt`` without it is refused.
"""

from __future__ import annotations

import logging
import shlex
import sys
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from src.checkpoints.checkpoint import load_checkpoint, readable_checkpoints
from src.data.datamodule import CharDataModule
from src.errors import UserError
from src.hardware import default_precision
from src.training import budget
from src.training.board import AttentionMaps, Embeddings, RunSummary
from src.training.budget import TimeBudget
from src.training.callbacks import FitSummary, LearningRates, SampleText, Throughput
from src.training.divergence import DivergenceGuard
from src.training.last_checkpoint import LastCheckpoint, Trainer
from src.training.module import CharGPT
from src.training.renamed import BEFORE_THEIR_TIME, refuse_renamed, with_moved_classes
from src.training.rng import RNGState

TENSORBOARD = "src.training.board.TensorBoard"  # the logger a run gets unless its config names one
LOG_ROOT = "lightning_logs"  # the default of --trainer.default_root_dir
# what every run shows and keeps besides its checkpoints and text samples, by config section; also what
# benchmarks/bench_train.py gives a plain Trainer, so that the overhead it measures is a CLI run's
RUN_CALLBACKS = {
    "attention_maps": AttentionMaps,
    "throughput": Throughput,
    "run_summary": RunSummary,
    "embeddings": Embeddings,
    "rng_state": RNGState,
    "divergence": DivergenceGuard,
    "budget": TimeBudget,
}


class SaveRunConfig(SaveConfigCallback):
    """``config.yaml`` into the run's folder, logger or not: without a logger Lightning would write it into the
    working directory, where the next loggerless run overwrites it and ``--config`` picks it up by mistake."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.logger is None and not self.already_saved:
            run_dir = Path(self.config.trainer.default_root_dir or LOG_ROOT) / self.config.run_name
            if trainer.is_global_zero:
                run_dir.mkdir(parents=True, exist_ok=True)
                self.parser.save(self.config, run_dir / self.config_filename, skip_none=False, overwrite=True)
            self.already_saved = True
        super().setup(trainer, pl_module, stage)

    def record_plan(self, trainer, pl_module) -> None:
        """config.yaml gets the planned steps and evaluations beside the budget (``--trainer.max_time null``
        repeats them exactly)."""
        if not trainer.is_global_zero:
            return
        self.config.trainer.max_steps = trainer.max_steps
        self.config.trainer.val_check_interval = trainer.val_check_interval
        if trainer.logger is None:
            folder = Path(self.config.trainer.default_root_dir or LOG_ROOT) / self.config.run_name
        else:
            folder = Path(trainer.log_dir)
        self.parser.save(self.config, folder / self.config_filename, skip_none=False, overwrite=True)


class ChargptCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # predict has nothing to predict here: per-character losses are what `test` reports
        return {name: args for name, args in LightningCLI.subcommands().items() if name != "predict"}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--run_name",
            default="shakespeare_char",
            help="the run's folder under --trainer.default_root_dir (lightning_logs)",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-step={step}-val_loss={val_loss:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(LearningRates, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(SampleText, "sample")
        parser.add_lightning_class_args(FitSummary, "fit_summary")
        for name, callback in RUN_CALLBACKS.items():  # each switchable with --<name>.enabled false
            parser.add_lightning_class_args(callback, name)
        # block_size and the tokenizer are given once, under data, and reach the model; the vocabulary reaches it
        # in CharGPT.setup, once prepare_data has encoded the corpus
        parser.link_arguments("data.block_size", "model.block_size")
        parser.link_arguments("data.tokenizer", "model.tokenizer")

    def parse_arguments(self, parser, args) -> None:
        self._started = budget.clock()  # where a time budget starts
        self._argv = sys.argv[1:] if args is None else list(args) if isinstance(args, (list, tuple)) else []
        refuse_renamed(self._argv)
        super().parse_arguments(parser, args if isinstance(args, dict) else with_moved_classes(self._argv))
        self._budget = None
        if self.config.get("subcommand"):
            config, subcommand = self.config[self.config.subcommand], self.config.subcommand
            self._settle_defaults(config, subcommand)
            self._validate(config, subcommand)
            self._settle_ckpt_path(config, subcommand)
            self._settle_budget(config, subcommand)
            given = {a.split("=", 1)[0][len("--model.") :] for a in self._argv if a.startswith("--model.")}
            self._rates = {key: config.model[key] for key in RESUME_RATES if key in given}

    def before_instantiate_classes(self) -> None:
        # LightningCLI has just replaced the model's settings with the checkpoint's: the rates given as flags win
        if self.config.get("subcommand"):
            for key, value in getattr(self, "_rates", {}).items():
                self.config[self.config.subcommand].model[key] = value

    def _settle_budget(self, config, subcommand: str) -> None:
        """A ``--trainer.max_time`` for fit is a budget that TimeBudget plans the steps of (unless switched off):
        Lightning's timer, which would cut the schedule, never sees it, and only a ``--trainer.max_steps`` flag,
        not the config file's step count, caps the plan."""
        if subcommand != "fit" or config.trainer.max_time is None or not config.budget.enabled:
            return
        flags = {a.split("=", 1)[0] for a in self._argv}
        self._budget = {
            "seconds": budget.parse_duration(config.trainer.max_time),
            "cap": config.trainer.max_steps if "--trainer.max_steps" in flags else None,
            "config_steps": config.trainer.max_steps,
            "config_interval": config.trainer.val_check_interval,
            "sample_every": config.sample.every_n_steps if config.sample.enabled else 0,
            "started": self._started,
        }

    def instantiate_trainer(self, **kwargs):
        if getattr(self, "_budget", None):  # the plan sets the step count once the first steps are timed
            kwargs |= {"max_time": None, "max_steps": budget.PROVISIONAL}
        trainer = super().instantiate_trainer(**kwargs)
        # one switch for each of chargpt's callbacks: --<name>.enabled false leaves it out of the run
        trainer.callbacks = [c for c in trainer.callbacks if getattr(c, "enabled", True)]
        if not self.config.get("subcommand"):  # built without running (benchmarks/bench_train.py)
            return trainer
        config = self.config[self.config.subcommand]
        last = Path(config.last_checkpoint.dirpath) / "last.ckpt"
        for callback in trainer.callbacks:
            if isinstance(callback, budget.TimeBudget) and self._budget:
                vars(callback).update(self._budget)
            if isinstance(callback, FitSummary):
                callback.commands = {
                    "resume": resume_command(getattr(self, "_argv", [])),
                    "sample": shlex.join(["python", "-m", "src.generate", "--ckpt_path", str(last)]),
                    "watch": shlex.join(["tensorboard", "--logdir", config.trainer.default_root_dir or LOG_ROOT]),
                }
        return trainer

    def _settle_defaults(self, config, subcommand: str) -> None:
        """The run's logger, checkpoint folders and precision, unless the config gives them."""
        trainer = config.trainer
        root = trainer.default_root_dir or LOG_ROOT
        run_dir = Path(root) / config.run_name
        if trainer.logger in (None, True):
            # validate and test log into a folder of their own, so the training run's files are never touched
            version = "" if subcommand == "fit" else subcommand
            trainer.logger = {
                "class_path": TENSORBOARD,
                "init_args": {
                    "save_dir": root,
                    "name": config.run_name,
                    "version": version,
                    "default_hp_metric": False,
                },
            }
        if trainer.enable_progress_bar is None:  # the redrawn bar on a terminal, plain log lines in a file
            trainer.enable_progress_bar = sys.stdout.isatty()
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(run_dir / "checkpoints")
        if config.last_checkpoint.dirpath is None:
            config.last_checkpoint.dirpath = config.checkpoint.dirpath
        if trainer.precision is None:
            width = config.model.n_embd if config.model.model_type == "gpt" else None  # the bigram has no matmuls
            trainer.precision = default_precision(trainer.accelerator, width)

    def _validate(self, config, subcommand: str) -> None:
        """Every problem of the settings in one message, before any work starts (the data is not prepared yet)."""
        problems = []
        if subcommand == "fit" and (config.trainer.max_steps is None or config.trainer.max_steps <= 0):
            problems.append(f"--trainer.max_steps must be a positive number of steps, got {config.trainer.max_steps}")
        if config.checkpoint.save_last:
            problems.append(
                "--checkpoint.save_last: last.ckpt is written by last_checkpoint (at every validation, every "
                "--last_checkpoint.every_n_minutes, at the end and on Ctrl-C); leave checkpoint.save_last unset"
            )
        problems += [f"--model.{p}" for p in CharGPT.problems(config.model.as_dict())]
        problems += [f"--data.{p}" for p in CharDataModule.problems(config.data.as_dict())]
        if problems:
            raise UserError("; ".join(problems))

    def _other_checkpoints(self, broken: Path, config) -> str:
        """What to do instead of an unreadable ``--ckpt_path``: the readable checkpoints beside it (and in the run's
        folder), with their steps, and the command that uses the newest."""
        # one entry per folder however it is spelled, shown as the user gave it
        folders = {f.resolve(): f for f in (Path(config.checkpoint.dirpath), broken.parent)}.values()
        found = sorted((c for f in folders for c in readable_checkpoints(f, broken)), key=lambda c: -c[0])
        if not found:
            return f". No other readable checkpoint in {' or '.join(sorted(map(str, folders)))}"
        listed = ", ".join(f"{path.name} (step {step})" for step, path in found)
        command = resume_command(self._argv, str(found[0][1]))
        return f". Readable checkpoints: {listed}. To go on from the newest: {command}"

    def _settle_ckpt_path(self, config, subcommand: str) -> None:
        """Resolve ``--ckpt_path last``; refuse a bad checkpoint, or a new fit over a run that has one."""
        run_dir = Path(config.trainer.default_root_dir or LOG_ROOT) / config.run_name
        last = Path(config.last_checkpoint.dirpath) / "last.ckpt"
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            if last.is_file():
                config.ckpt_path = ckpt_path = str(last)
            elif subcommand == "fit":  # Lightning's convention: the first start of a requeued job
                notice(f"chargpt: no {last} yet: starting run {config.run_name!r} from step 0")
                config.ckpt_path = ckpt_path = None
            else:
                raise UserError(f"--ckpt_path last: there is no {last}; pick the run with --run_name")
        if subcommand == "test" and not ckpt_path:
            raise UserError("test scores a trained model: pass --ckpt_path (a .ckpt, or last for the run's newest)")
        if ckpt_path:
            try:
                ckpt = load_checkpoint(ckpt_path)  # refuses missing, corrupt, unsafe and foreign files
            except UserError as err:
                raise UserError(f"{err}{self._other_checkpoints(Path(ckpt_path), config)}") from None
            step, saved = ckpt["global_step"], ckpt.get("hyper_parameters", {})
            for key, value in BEFORE_THEIR_TIME.items():  # LightningCLI takes the rest from the checkpoint
                if key not in saved and key in config.model:
                    config.model[key] = value
            logger = config.trainer.logger
            if subcommand == "fit" and isinstance(logger, dict) and logger["class_path"] == TENSORBOARD:
                # what the interrupted run logged after its checkpoint is dropped: each step appears once
                logger["init_args"]["purge_step"] = step + 1
        elif subcommand == "fit" and last.exists():
            raise UserError(
                f"run {config.run_name!r} already has {last}: resume it with --ckpt_path last, or "
                f"start a new run with --run_name NAME (or delete {run_dir})"
            )


# the model settings that flags change when resuming (a diverged run goes on at a lower rate: DivergenceGuard
# rebuilds the schedule); LightningCLI takes every other one from the checkpoint
RESUME_RATES = ("learning_rate", "min_lr")


@rank_zero_only
def notice(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resume_command(args: list[str], ckpt_path: str = "last", change: dict[str, str] | None = None) -> str:
    """The command line that continues this run: the same arguments with ``--ckpt_path`` set to ``ckpt_path`` and
    the flags in ``change`` (``{"--model.learning_rate": "0.1"}``) set to their new values."""
    replaced = {"--ckpt_path", *(change or {})}
    kept, skip = [], False
    for arg in args:
        if skip or arg.split("=", 1)[0] in replaced and "=" in arg:
            skip = False
            continue
        skip = arg in replaced
        if not skip:
            kept.append(arg)
    changes = [part for flag, value in (change or {}).items() for part in (flag, value)]
    return shlex.join(["python", "-m", "src.train", *kept, *changes, "--ckpt_path", ckpt_path])


class NoTips(logging.Filter):
    """Drops Lightning's adverts ("💡 Tip: ... try installing litlogger"), keeping its device and precision lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def build_cli(args: list[str] | None = None, run: bool = True, callbacks: tuple = ()) -> ChargptCLI:
    """The CLI over CharGPT and CharDataModule; with ``run=False`` it only builds the module, data and Trainer.
    ``callbacks`` join the run's own (src.tune reports each evaluation to its trial)."""
    # src.train passes the command line itself as args (fit returns a result), which LightningCLI warns about
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where Lightning's rank_zero_info writes
    if not any(isinstance(f, NoTips) for f in tips.filters):
        tips.addFilter(NoTips())
    return ChargptCLI(
        CharGPT,
        CharDataModule,
        trainer_class=Trainer,  # checkpoint writes that fail on every rank at once
        args=args,
        run=run,
        auto_configure_optimizers=False,  # the module builds AdamW with its own parameter groups
        seed_everything_default=1337,
        save_config_callback=SaveRunConfig,
        save_config_kwargs={"overwrite": True},  # a resumed run writes config.yaml into its own folder again
        trainer_defaults={
            "max_steps": 2400,
            "val_check_interval": 600,
            "check_val_every_n_epoch": None,  # validate every val_check_interval steps, not per epoch
            "log_every_n_steps": 50,
            "gradient_clip_val": 1.0,
            "enable_progress_bar": None,  # settled by the CLI: a bar on a terminal, plain lines otherwise
            "precision": None,  # settled by the CLI: src.hardware.default_precision
            "callbacks": list(callbacks),
        },
    )
