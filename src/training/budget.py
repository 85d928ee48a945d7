"""TimeBudget: ``--trainer.max_time`` plans the number of steps that fill the budget instead of cutting the run off.

Lightning's own ``max_time`` stops training when the time is up, with the learning-rate schedule cut off mid-way.
Here the run starts with a provisional step count, times its first steps (the first ``SETTLE`` excluded: kernels
warm up), and at ``plan_step`` (the end of the warm-up, or step 30 if sooner) fixes the step count that fits what is
left of the budget, with what its evaluations and text samples will cost; the schedule's decay, the evaluations (as
many as the config has, the last at the end) and the samples follow that count. If the steps up to the end of the
warm-up run more than ``replan_margin`` faster or slower than planned, the count is fixed again, once. Both happen
during the warm-up, whose rates do not depend on the step count, so a budgeted run takes exactly the steps of the
same command with ``--trainer.max_steps`` set to its plan. The plan is saved with the checkpoints: a resumed run
finishes the plan, whatever the machine. Should the run fall behind anyway (a machine that slows down), it stops
when the budget is spent, with its final evaluation, and says so.

The budget counts from the CLI's start (parsing, preparing the data, building the model); the imports before it,
about 3 seconds, are not counted.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from src.errors import UserError

SETTLE = 3  # first steps not timed: allocation, kernel selection and caches make them slower
PROVISIONAL = 10**9  # the step count until the plan: only the warm-up's rates are taken from it


def clock() -> float:
    return time.monotonic()  # tests fake it to plan against a known throughput


class TimeBudget(L.Callback):
    def __init__(self, evaluations: int | None = None, replan_margin: float = 0.05, enabled: bool = True) -> None:
        """Under --trainer.max_time, plan the run's step count to fill the budget (docs/training.md).

        Args:
            evaluations: validations across a budgeted run, the last at its end; by default as many as the config
                has (trainer.max_steps // trainer.val_check_interval).
            replan_margin: re-plan once, at the end of the warm-up, when the steps so far ran faster or slower than
                planned by more than this fraction.
            enabled: set false to have --trainer.max_time cut the run off when the time is up, as Lightning does.
        """
        if evaluations is not None and evaluations < 1:
            raise UserError(f"--budget.evaluations must be 1 or more, got {evaluations}")
        if not 0 < replan_margin < 1:
            raise UserError(f"--budget.replan_margin must be in (0, 1), got {replan_margin}")
        self.evaluations, self.replan_margin, self.enabled = evaluations, replan_margin, enabled
        self.seconds: float | None = None  # the budget; set by the CLI from --trainer.max_time
        self.cap: int | None = None  # a --trainer.max_steps flag beside the budget: the plan takes no more steps
        self.config_steps = self.config_interval = 0  # the config's max_steps and val_check_interval
        self.sample_every = 0  # the config's sample.every_n_steps
        self.started = clock()  # the budget's start: the CLI sets it when it starts
        self.steps: int | None = None  # the plan
        self.rate = 0.0  # the planned seconds per step
        self.replanned = False
        self._timed: tuple[float, int] | None = None  # (time, step) when timing started
        self._spent = 0.0  # seconds of the budget spent before this process (a resumed run)

    @property
    def active(self) -> bool:
        return self.enabled and self.seconds is not None

    def elapsed(self) -> float:
        return self._spent + clock() - self.started

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        if self.steps is not None:  # resumed: the plan (and its schedule) is the checkpoint's
            self._apply(trainer, pl_module)
        elif trainer.global_step >= self.plan_step(pl_module):
            raise UserError(
                f"--trainer.max_time: this run is at step {trainer.global_step}, past the warm-up in which a budget "
                f"is planned, and was started without one: resume it without --trainer.max_time, or start a new "
                f"run with --run_name NAME"
            )

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.active and self._timed is None and trainer.global_step >= self._first_timed(pl_module):
            self._timed = (clock(), trainer.global_step)

    def _first_timed(self, pl_module: L.LightningModule) -> int:
        return min(SETTLE, max(self.plan_step(pl_module) - 1, 0))

    def plan_step(self, pl_module: L.LightningModule) -> int:
        return max(min(pl_module.hparams.warmup_steps, 30), 1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self.active:
            return
        step = trainer.global_step
        if self.steps is None and step >= self.plan_step(pl_module):
            self._plan(trainer, pl_module)
        elif self.steps is not None and not self.replanned and step == max(pl_module.hparams.warmup_steps, 1):
            self.replanned = True
            rate = self._measured_rate(trainer)
            if abs(rate - self.rate) > self.replan_margin * self.rate:
                self._plan(trainer, pl_module, again=True)
        elif self.steps is not None and step < self.steps and self.elapsed() > self.seconds:
            trainer.should_stop = True  # the safety net: the schedule is cut, the final evaluation still runs
            say(f"chargpt: the {clock_text(self.seconds)} budget is spent at step {step} of {self.steps} planned")

    def _measured_rate(self, trainer: L.Trainer) -> float:
        start, first = self._timed
        return (clock() - start) / max(trainer.global_step - first, 1)

    def _plan(self, trainer: L.Trainer, pl_module: L.LightningModule, again: bool = False) -> None:
        step, rate = trainer.global_step, self._measured_rate(trainer)
        evaluations = self._evaluations()
        samples = self.config_steps // self.sample_every if self.sample_every else 0
        # what the rest of the run costs besides its training steps, from the timing of a validation batch
        evaluation = self._evaluation_seconds(trainer, pl_module)
        overhead = evaluations * evaluation + samples * evaluation / 2 + 2.0  # and the final save and summary
        steps = step + int((self.seconds - self.elapsed() - overhead) / rate)
        if self.cap is not None:
            steps = min(steps, self.cap)
        steps -= steps % evaluations  # so that the last evaluation falls on the last step
        if trainer.world_size > 1:  # every rank takes rank 0's plan
            steps, rate, overhead = trainer.strategy.broadcast((steps, rate, overhead), src=0)
        minimum = (max(pl_module.hparams.warmup_steps, step) // evaluations + 1) * evaluations
        if steps < minimum:
            need = self.elapsed() + overhead + (minimum - step) * rate
            raise UserError(
                f"--trainer.max_time {clock_text(self.seconds)} fits ~{max(steps, step)} steps at "
                f"{rate * 1e3:.0f} ms a step, but the warm-up and one evaluation need {minimum}: give at least "
                f"{clock_text(math.ceil(need * 1.1))}"
            )
        self.steps, self.rate = steps, rate
        self._apply(trainer, pl_module)
        pl_module.reschedule()  # still in the warm-up, whose rates do not depend on the step count
        data = trainer.datamodule.hparams
        tokens = data.batch_size * data.block_size * trainer.world_size * trainer.accumulate_grad_batches
        how = "re-planned at the end of the warm-up" if again else "budget"
        say(
            f"chargpt: {clock_text(self.seconds)} {how}: {steps:,} steps at {tokens / rate:,.0f} tokens/s; repeat "
            f"exactly with --trainer.max_steps {steps} --trainer.val_check_interval {steps // evaluations}"
        )
        for callback in trainer.callbacks:  # config.yaml and the HPARAMS row record the plan
            record = getattr(callback, "record_plan", None)
            if record is not None:
                record(trainer, pl_module)

    def _evaluations(self) -> int:
        return self.evaluations or max(self.config_steps // max(self.config_interval, 1), 1)

    def _evaluation_seconds(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        x, y = next(iter(trainer.datamodule.val_dataloader()))
        x, y = x.to(pl_module.device), y.to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            pl_module(x, y)  # the first pass at this shape is slower
            start = clock()
            pl_module(x, y)
            seconds = clock() - start
        pl_module.train(was_training)
        return trainer.datamodule.hparams.val_batches * seconds + 0.5  # and its checkpoint, attention maps, logs

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Make the plan the run's step count, evaluation cadence and sampling cadence."""
        from src.training.callbacks import SampleText

        steps = self.steps
        trainer.fit_loop.epoch_loop.max_steps = steps
        trainer.val_check_interval = trainer.val_check_batch = steps // self._evaluations()
        for callback in trainer.callbacks:
            if self.sample_every and isinstance(callback, SampleText):
                callback.every_n_steps = max(steps * self.sample_every // max(self.config_steps, 1), 1)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "rate": self.rate, "replanned": self.replanned, "spent": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps, self.rate = state_dict["steps"], state_dict["rate"]
        self.replanned, self._spent = state_dict["replanned"], state_dict["spent"]
        self.started = clock()


def parse_duration(value: Any) -> float:
    """Seconds of a ``--trainer.max_time`` as Lightning takes it: "DD:HH:MM:SS", a dict of timedelta's keywords
    ({"minutes": 10}), or a timedelta."""
    import datetime

    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return datetime.timedelta(**value).total_seconds()
    parts = str(value).split(":")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--trainer.max_time {value!r}: give DD:HH:MM:SS, e.g. 00:00:10:00 for ten minutes")
    days, hours, minutes, seconds = map(int, parts)
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def clock_text(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@rank_zero_only
def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
