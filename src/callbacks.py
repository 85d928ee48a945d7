"""What training shows while it runs: ``SampleText`` (what the model writes, on stdout and in TensorBoard) and
``TokensPerSecond`` (training throughput)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from src.errors import UserError
from src.sampling import check_sampling_args


class SampleText(L.Callback):
    def __init__(
        self,
        every_n_steps: int = 500,
        prompt: str = "\n",
        max_new_tokens: int = 300,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 1337,
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
        """
        check_sampling_args(temperature, top_k, top_p, max_new_tokens=max_new_tokens, flag="--sample.")
        if every_n_steps < 0:
            raise UserError(f"--sample.every_n_steps must be 0 or more, got {every_n_steps}")
        self.every_n_steps, self.prompt, self.max_new_tokens = every_n_steps, prompt, max_new_tokens
        self.options = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        self.seed = seed
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


class TokensPerSecond(L.Callback):
    """Logs ``tokens_per_sec``: training tokens of all ranks per second over each logging interval, evaluation
    excluded. It reads host timestamps only: Lightning's ``ThroughputMonitor`` synchronises the GPU every step."""

    def __init__(self) -> None:
        self._window: tuple[float, int] | None = None  # (start time, tokens since)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch, *args) -> None:
        now, tokens = time.perf_counter(), batch[0].numel() * trainer.world_size
        if self._window is None:  # the first step after a start or an evaluation only opens the window
            self._window = (now, 0)
            return
        start, seen = self._window[0], self._window[1] + tokens
        self._window = (start, seen)
        if trainer.global_step % trainer.log_every_n_steps == 0:
            for logger in trainer.loggers:
                logger.log_metrics({"tokens_per_sec": seen / (now - start)}, step=trainer.global_step)
            self._window = (now, 0)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._window = None
