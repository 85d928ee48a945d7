"""What training shows on the terminal and to every logger: ``SampleText`` (what the model writes), ``Throughput``
(tokens/s, MFU, gradient norm, and plain log lines for batch jobs), ``LearningRates``, and ``FitSummary`` (the
run's result when fit ends). What only TensorBoard can show is in ``src.training.board``."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger

from src.errors import UserError
from src.generation.sampling import check_sampling_args
from src.hardware import peak_flops


class SampleText(L.Callback):
    def __init__(
        self,
        every_n_steps: int = 1200,
        prompt: str = "\n",
        max_new_tokens: int = 300,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 1337,
        enabled: bool = True,
    ) -> None:
        """Sample text every N steps and at the end of fit, on rank 0.

        Args:
            every_n_steps: sample every this many optimizer steps (and once when fit ends); 0 samples only at the end.
            prompt: the text each sample continues.
            max_new_tokens: characters to generate per sample.
            temperature: softmax temperature; 0 is greedy.
            top_k: sample among the k most likely characters only.
            top_p: sample among the most likely characters that together reach this probability.
            seed: seed of the private generator, so samples at different steps are comparable.
            enabled: set false for no samples at all.
        """
        check_sampling_args(temperature, top_k, top_p, max_new_tokens=max_new_tokens, flag="--sample.")
        if every_n_steps < 0:
            raise UserError(f"--sample.every_n_steps must be 0 or more, got {every_n_steps}")
        self.every_n_steps, self.prompt, self.max_new_tokens = every_n_steps, prompt, max_new_tokens
        self.options = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        self.seed, self.enabled = seed, enabled
        self._last_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sample(trainer, pl_module)

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_step:
            return None
        self._last_step = step
        # a private generator leaves the global RNG (and so the dropout masks of training) untouched
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        text = pl_module.sample(self.prompt, self.max_new_tokens, generator=generator, **self.options)
        print(f"\n--- sample at step {step} ---\n{text}\n---", flush=True)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # TensorBoard renders text as Markdown: a code block keeps the line breaks
                logger.experiment.add_text("sample", f"```\n{text}\n```", global_step=step)
        return text


class Throughput(L.Callback):
    """Every ``log_every_n_steps``: ``tokens_per_sec`` (all ranks, evaluation excluded), ``mfu`` (model FLOPs
    utilisation: the model's training FLOPs per second against the device's peak, stated once as the
    ``mfu_peak`` text) and ``grad_norm`` (before clipping). It reads host timestamps only: Lightning's
    ``ThroughputMonitor`` synchronises the GPU every step. Without a progress bar (a batch job, output to a file)
    it also prints one plain line per interval: step, loss, val, tokens/s and the time left. Switchable with
    ``--throughput.enabled false``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._window: tuple[float, int] | None = None  # (start time, tokens since)
        self._grad_norm: torch.Tensor | None = None
        self._peak = math.nan

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._peak, source = peak_flops(pl_module.device, str(trainer.precision))
        note = f"MFU peak: {self._peak / 1e12:.2f} TFLOP/s per device ({source})"
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("mfu_peak", note, global_step=trainer.global_step)
        if trainer.progress_bar_callback is None:
            print(f"chargpt: {note}", flush=True)

    def _logs_now(self, trainer: L.Trainer, step: int) -> bool:
        return step % trainer.log_every_n_steps == 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self._logs_now(trainer, trainer.global_step + 1):  # the step this optimizer step completes
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            self._grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch, *args) -> None:
        now, tokens = time.perf_counter(), batch[0].numel() * trainer.world_size
        if self._window is None:  # the first step after a start or an evaluation only opens the window
            self._window = (now, 0)
            return
        start, seen = self._window[0], self._window[1] + tokens
        self._window = (start, seen)
        step = trainer.global_step
        if not self._logs_now(trainer, step):
            return
        rate = seen / (now - start)
        metrics = {"tokens_per_sec": rate}
        metrics["mfu"] = rate * pl_module.model.flops_per_token() / (self._peak * trainer.world_size)
        if self._grad_norm is not None:
            metrics["grad_norm"] = self._grad_norm.item()
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if trainer.progress_bar_callback is None and trainer.is_global_zero:
            print(self._line(trainer, rate, metrics["mfu"], (now - start) / (seen / tokens)), flush=True)
        self._window = (now, 0)

    def _line(self, trainer: L.Trainer, rate: float, mfu: float, seconds_per_step: float) -> str:
        step, metrics = trainer.global_step, trainer.callback_metrics
        left = int(seconds_per_step * max(trainer.max_steps - step, 0))
        loss = f"loss {metrics['train_loss'].item():.4f}" if "train_loss" in metrics else "loss -"
        val = f"val {metrics['val_loss'].item():.4f}" if "val_loss" in metrics else "val -"
        eta = f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
        skipped = f" | skipped {metrics['skipped_steps'].item():.0f}" if "skipped_steps" in metrics else ""
        return (
            f"step {step}/{trainer.max_steps} | {loss} | {val}{skipped} | {rate:,.0f} tokens/s | mfu {mfu:.1%} | "
            f"ETA {eta}"
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._window = None


class LearningRates(LearningRateMonitor):
    """Lightning's LearningRateMonitor, idle in a run without a logger (``--trainer.logger false``) instead of
    stopping it with an error, and switchable (``--lr_monitor.enabled false``)."""

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] | None = None,
        log_momentum: bool = False,
        log_weight_decay: bool = False,
        enabled: bool = True,
    ) -> None:
        super().__init__(logging_interval, log_momentum, log_weight_decay)
        self.enabled = enabled

    def on_train_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


class FitSummary(L.Callback):
    def __init__(self, enabled: bool = True) -> None:
        """When fit ends, or stops on Ctrl-C or SIGTERM: the run's best and final val loss with their steps, its
        wall time, where its checkpoints are and the commands that resume it, sample from it and show it.

        Args:
            enabled: set false for no summary (the run still keeps its figures: ``src.training.fit`` returns them).
        """
        self.show = enabled  # not ``enabled``, which would leave the callback out of the run
        self.best: tuple[float, int] | None = None  # (val loss, step), kept across a resume
        self.final: tuple[float, int] | None = None
        self.commands: dict[str, str] = {}  # what to run next, by purpose: the CLI fills it in
        self._started = time.perf_counter()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or "val_loss" not in trainer.callback_metrics:
            return
        self.final = (trainer.callback_metrics["val_loss"].item(), trainer.global_step)
        if self.best is None or self.final[0] < self.best[0]:
            self.best = self.final

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report(trainer, f"finished at step {trainer.global_step}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        signum = getattr(exception, "signum", None)  # a TrainingInterrupted: stopped on a signal
        if signum is not None:
            self.report(trainer, f"stopped by {signal.Signals(signum).name} at step {trainer.global_step}")

    def report(self, trainer: L.Trainer, how: str) -> None:
        if self.show and trainer.is_global_zero:
            print("\n".join(self.lines(trainer, how)), flush=True)

    def lines(self, trainer: L.Trainer, how: str) -> list[str]:
        wall = int(time.perf_counter() - self._started)
        lines = [f"chargpt: fit {how} after {wall // 3600}:{wall // 60 % 60:02d}:{wall % 60:02d}"]
        for name, entry in (("best val", self.best), ("final val", self.final)):
            if entry is not None:
                lines.append(f"  {name:<10} {entry[0]:.4f} ({entry[0] / math.log(2):.4f} bpc) at step {entry[1]}")
        if self.best is None:
            lines.append("  no evaluation yet")
        for callback in trainer.callbacks:
            path = getattr(callback, "path", None) or getattr(callback, "best_model_path", None)
            if path and Path(path).is_file():
                shown = os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else path
                lines.append(f"  {'last' if Path(path).name == 'last.ckpt' else 'best':<10} {shown}")
        lines += [f"  {purpose:<10} {command}" for purpose, command in self.commands.items()]
        return lines

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "final": self.final}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.final = state_dict["best"], state_dict["final"]
