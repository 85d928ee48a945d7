"""DivergenceGuard: a run whose loss or gradient norm stops being finite stops at once and keeps its last good state;
on request, loss spikes are skipped and a divergence is rolled back instead of stopping the run.

Every step, after the backward and before the optimizer step, the guard reads the step's loss and global gradient
norm (averaged over the ranks in one all-reduce, so every rank takes the same decision). A non-finite value means
the step is never applied: its gradients are dropped, and fit stops with ``Diverged``, which the CLI turns into exit
status 3 and a message with the way back. ``last.ckpt`` then still holds the last checkpointed state, since nothing
non-finite is ever saved (``src.training.last_checkpoint.Trainer``). With ``skip_spikes``, a step whose loss or
gradient norm lies more than ``sigma`` standard deviations above the mean of the last ``window`` steps is not
applied either (OLMo-core's rule); with ``recover``, a divergence rolls the weights and optimizer back to the last
good state (the last validation, or the start), lowers the learning rate by ``lr_factor`` and trains on from the
next batch, up to ``recover`` times.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
from collections import deque
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from src.errors import UserError

EXIT_DIVERGED = 3  # beside 2 (bad input), 130 and 143 (Ctrl-C, SIGTERM): docs/training.md


class Diverged(Exception):
    """Training produced a non-finite value; nothing from that step was applied or saved. ``causes`` are the run's
    likely causes, ``last_good`` what its last checkpoint holds, ``rates`` its (learning_rate, min_lr), if any."""

    def __init__(self, step: int, what: str, value: float | None, causes=(), last_good=None, rates=None) -> None:
        self.step, self.what, self.value = step, what, value
        self.causes, self.last_good, self.rates = list(causes), last_good, rates
        shown = "not finite" if value is None else f"{value:g}"
        super().__init__(f"training diverged at step {step}: the {what} is {shown}")

    def report(self, resume) -> str:
        """The message for the terminal; ``resume(change)`` is the command that resumes the run with the flags in
        ``change`` set to new values."""
        lines = [f"chargpt: {self}. Nothing from that step was applied to the weights or written to a checkpoint."]
        if self.last_good is not None:
            lines.append(f"  last good state: {self.last_good}")
        else:
            lines.append("  no checkpoint yet: the command below starts the run again")
        lines.append("  likely causes:")
        lines += [f"    - {cause}" for cause in self.causes]
        lines.append("  to find the operation that first makes a NaN: --trainer.detect_anomaly true (slow)")
        if self.rates is not None:
            lr, min_lr = (f"{rate * 0.5:.3g}" for rate in self.rates)
            command = resume({"--model.learning_rate": lr, "--model.min_lr": min_lr})
            how = "go on from it" if self.last_good is not None else "start again"
            lines.append(f"  {how} at half the learning rate: {command}")
        return "\n".join(lines)


def diverged(trainer: L.Trainer, pl_module: L.LightningModule, step: int, what: str, value: float) -> Diverged:
    """The ``Diverged`` to raise for this run, with its likely causes and its last good checkpoint."""
    hp = pl_module.hparams
    last_good = None
    for callback in trainer.callbacks:  # LastCheckpoint: what the run can resume from
        saved = getattr(callback, "saved", None)
        if saved is not None:
            val = f", val {saved[1]:.4f}" if saved[1] is not None else ""
            last_good = f"{callback.path} (step {saved[0]}{val})"
    return Diverged(step, what, value, likely_causes(trainer, pl_module), last_good, (hp.learning_rate, hp.min_lr))


class DivergenceGuard(L.Callback):
    def __init__(
        self,
        enabled: bool = True,
        skip_spikes: bool = False,
        window: int = 256,
        sigma: float = 6.0,
        recover: int = 0,
        lr_factor: float = 0.5,
    ) -> None:
        """Stop a run whose loss or gradient norm is not finite, before that step touches the weights.

        Args:
            enabled: check every step (one host sync and, with several ranks, one all-reduce of two numbers); false
                turns the guard off (a NaN validation still stops the run, and no checkpoint is ever non-finite).
            skip_spikes: also skip (not apply) a step whose loss or gradient norm is more than sigma standard
                deviations above the mean of the last window steps; counted as skipped_steps.
            window: steps the spike rule looks back over; it acts once half of them are seen (OLMo-core's 128
                skipped healthy steps of the default config on its gradient norm: docs/training.md).
            sigma: how many standard deviations above the window's mean make a spike.
            recover: on a divergence, roll back to the last good state (the last validation's, or the start's),
                multiply the learning rate by lr_factor and go on, up to this many times; 0 stops at once.
            lr_factor: what each rollback multiplies the learning rate (the whole schedule) by.
        """
        problems = [f"window must be 2 or more, got {window}"] if window < 2 else []
        problems += [f"sigma must be positive, got {sigma}"] if not sigma > 0 else []
        problems += [f"recover must be 0 or more, got {recover}"] if recover < 0 else []
        problems += [f"lr_factor must be in (0, 1), got {lr_factor}"] if not 0 < lr_factor < 1 else []
        if problems:
            raise UserError("invalid divergence settings: " + "; ".join(f"--divergence.{p}" for p in problems))
        self.enabled, self.skip_spikes, self.sigma = enabled, skip_spikes, sigma
        self.recover, self.lr_factor = recover, lr_factor
        self.history: deque[tuple[float, float]] = deque(maxlen=window)  # (loss, grad norm) of the last steps
        self.skipped = 0  # steps the spike rule did not apply
        self.rollbacks = 0
        self.scale = 1.0  # the learning rate's multiplier after rollbacks
        self.schedule: list[float] | None = None  # (learning_rate, min_lr) the schedule in use was built with
        self._good: dict[str, Any] | None = None  # the state a rollback returns to

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        hp = pl_module.hparams
        wanted = [hp.learning_rate * self.scale, hp.min_lr * self.scale]
        if self.schedule is not None and self.schedule != wanted:  # resumed with other rates than it was saved with
            self._reschedule(trainer, pl_module)
            say(
                f"chargpt: the learning rate is {wanted[0]:g} from step {trainer.global_step} on (it was "
                f"{self.schedule[0]:g}): the schedule goes on at the new height"
            )
        self.schedule = wanted
        self._keep_good_state(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the module has already stopped the run if the validation loss was not finite
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._keep_good_state(trainer, pl_module)

    def _keep_good_state(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.recover and self.rollbacks < self.recover:  # a copy only when a rollback may use it
            optimizer = trainer.optimizers[0]
            self._good = {
                "step": trainer.global_step,
                "model": copy.deepcopy(pl_module.state_dict()),
                "optimizer": copy.deepcopy(optimizer.state_dict()),
            }

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self.enabled:
            return
        # in the optimizer's own order, as Lightning's clipping sums them: the same norm to the last bit
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=pl_module.device)
        values = torch.stack([pl_module.step_loss.float(), norm.float()])
        if trainer.world_size > 1:  # one rank's NaN makes the mean NaN on every rank
            values = trainer.strategy.reduce(values, reduce_op="mean")
        loss, norm = values.tolist()  # the one host sync of the check
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if not math.isfinite(loss) or (not math.isfinite(norm) and scaler is None):  # fp16's scaler skips those
            pl_module.zero_grad(set_to_none=True)  # the optimizer steps over parameters without gradients
            what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", norm)
            self._diverged(trainer, pl_module, what, value)
        elif not math.isfinite(norm):
            return
        elif self.skip_spikes and self._spike(loss, norm):
            pl_module.zero_grad(set_to_none=True)
            self.skipped += 1
            self.history.append((loss, norm))
            say(f"chargpt: step {trainer.global_step + 1} skipped: loss {loss:.4g}, gradient norm {norm:.4g} spike")
        else:
            self.history.append((loss, norm))
        if self.skip_spikes and (trainer.global_step + 1) % trainer.log_every_n_steps == 0:
            pl_module.log("skipped_steps", float(self.skipped), prog_bar=True)

    def _spike(self, loss: float, norm: float) -> bool:
        if len(self.history) < self.history.maxlen // 2:
            return False
        for seen, now in zip(zip(*self.history), (loss, norm)):
            mean, std = statistics.fmean(seen), statistics.stdev(seen)
            if now > mean + self.sigma * std:
                return True
        return False

    def _diverged(self, trainer: L.Trainer, pl_module: L.LightningModule, what: str, value: float) -> None:
        step = trainer.global_step + 1  # the step that would have been taken
        if self._good is None or self.rollbacks >= self.recover:
            raise diverged(trainer, pl_module, step, what, value)
        self.rollbacks += 1
        self.scale *= self.lr_factor
        pl_module.load_state_dict(self._good["model"])
        trainer.optimizers[0].load_state_dict(copy.deepcopy(self._good["optimizer"]))
        self._reschedule(trainer, pl_module)
        self.schedule = [pl_module.hparams.learning_rate * self.scale, pl_module.hparams.min_lr * self.scale]
        self.history.clear()  # the steps that led here say nothing of the run from the rolled-back state
        for logger in trainer.loggers:
            logger.log_metrics({"rollbacks": float(self.rollbacks)}, step=trainer.global_step)
        say(
            f"chargpt: step {step}: the {what} is {value}; rollback {self.rollbacks} of {self.recover} to the "
            f"weights of step {self._good['step']}, learning rate x{self.scale:g} "
            f"({self.schedule[0]:g} at its peak), training on from the next batch"
        )

    def _reschedule(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The module's schedule at ``scale`` times its rates, moved on to the current step."""
        for group in trainer.optimizers[0].param_groups:
            group["initial_lr"] = pl_module.hparams.learning_rate * self.scale
        pl_module.reschedule()

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [list(entry) for entry in self.history],
            "skipped": self.skipped,
            "rollbacks": self.rollbacks,
            "scale": self.scale,
            "schedule": self.schedule,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history.clear()
        self.history.extend(tuple(entry) for entry in state_dict["history"])
        self.skipped, self.rollbacks = state_dict["skipped"], state_dict["rollbacks"]
        self.scale, self.schedule = state_dict["scale"], state_dict["schedule"]


def likely_causes(trainer: L.Trainer, pl_module: L.LightningModule) -> list[str]:
    """What usually makes this run's loss blow up, from its settings, most likely first."""
    hp = pl_module.hparams
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    causes = [f"the learning rate: {lr:.3g} at this step, {hp.learning_rate:g} at its peak (--model.learning_rate)"]
    precision = str(trainer.precision)
    if precision.startswith("16"):
        causes.append(f"precision {precision}: fp16 overflows easily; bf16-mixed or 32-true has more range")
    elif precision.startswith("bf16"):
        causes.append(f"precision {precision}: if a lower rate does not help, try --trainer.precision 32-true")
    clip = trainer.gradient_clip_val
    if clip:
        causes.append(f"gradients are clipped at norm {clip:g} (--trainer.gradient_clip_val)")
    else:
        causes.append("gradient clipping is off: --trainer.gradient_clip_val 1.0 bounds each step")
    return causes


@rank_zero_only
def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
