"""LastCheckpoint: ``last.ckpt`` is always the newest training state, and Ctrl-C or SIGTERM stop training cleanly.

``last.ckpt`` is rewritten at every validation (whatever the val loss), after the step that closes each
``every_n_minutes`` of training, when fit ends, and when SIGINT (Ctrl-C) or SIGTERM (what SLURM, Kubernetes and spot
instances send before they stop a job) arrives: the current step finishes, ``last.ckpt`` is written for it and fit ends
with ``TrainingInterrupted``, which the CLI turns into exit status 130 or 143. A second signal stops at once; every
write is atomic (``src.checkpoints.checkpoint.save_atomically``), so the previous ``last.ckpt`` survives that, a crash
or ``kill -9``.

Lightning's ``ModelCheckpoint`` cannot be configured to do this: its ``save_last`` only follows a top-k save, its
step, time and epoch triggers exclude one another, and its SIGTERM handling ends fit with exit status 0.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from time import monotonic
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from src.checkpoints.checkpoint import first_nonfinite, save_atomically
from src.errors import UserError
from src.training.divergence import Diverged

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Fit stopped on a signal; ``step`` is the step saved in ``path``, or None when a second signal cut the save."""

    def __init__(self, signum: int, step: int | None, path: Path | None) -> None:
        self.signum, self.step, self.path = signum, step, path
        name = signal.Signals(signum).name
        saved = f"saved {path} at step {step}" if step is not None else "stopped before saving"
        super().__init__(f"{name}: {saved}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what shells and schedulers expect: 130 for SIGINT, 143 for SIGTERM


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO writing through ``save_atomically``. Lightning's own writes to the system temp
    folder and moves the file over (a copy, not a rename, across filesystems), and it ignores a failed move when an
    older file is in the way, so a read-only folder would silently keep a stale ``last.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        save_atomically(checkpoint, path)


class Trainer(L.Trainer):
    """Lightning's Trainer, with checkpoint writes that fail on every rank at once, and never of non-finite
    weights. Only rank 0 writes; the others wait for it in a barrier. Were rank 0 alone to raise, the others would
    hang there, then die with a gloo traceback: here rank 0 meets them in the barrier, the failure reaches every
    rank by broadcast, and every rank raises the same ``UserError`` (one message, exit status 2)."""

    def save_checkpoint(self, filepath, weights_only: bool = False, storage_options: Any | None = None) -> None:
        # the weights are the same on every rank: each refuses alone, and the file on disk stays the last good one
        bad = first_nonfinite(self.lightning_module.state_dict())
        if bad is not None:
            raise Diverged(self.global_step, f"weight {bad}", None)
        failure = None
        try:
            super().save_checkpoint(filepath, weights_only=weights_only, storage_options=storage_options)
        except UserError as err:  # only the writing rank gets here, before the barrier the others wait in
            failure = str(err)
            if self.world_size > 1:
                self.strategy.barrier("Trainer.save_checkpoint")
        if self.world_size > 1:
            failure = self.strategy.broadcast(failure, src=0)
        if failure is not None:
            raise UserError(failure)


class LastCheckpoint(Checkpoint):
    def __init__(self, dirpath: str | None = None, every_n_minutes: float | None = 10.0) -> None:
        """Keep last.ckpt the newest training state, and stop cleanly on Ctrl-C or SIGTERM.

        Args:
            dirpath: the folder of last.ckpt; by default the run's checkpoints/ folder.
            every_n_minutes: also write last.ckpt after the step that closes each such interval of training, so a
                kill -9 loses at most that much; 0 writes after every step, null only at validations, the end of
                fit and on a signal.
        """
        if every_n_minutes is not None and every_n_minutes < 0:
            raise UserError(f"--last_checkpoint.every_n_minutes must be 0 or more (or null), got {every_n_minutes}")
        self.dirpath, self.every_n_minutes = dirpath, every_n_minutes
        self._signal: int | None = None
        self._saved_step, self._saved_at = -1, 0.0
        self.saved: tuple[int, float | None] | None = None  # (step, its val loss if known) of the last.ckpt on disk

    @property
    def path(self) -> Path:
        return Path(self.dirpath or "checkpoints") / "last.ckpt"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # leave a user's own plugin alone
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._signal = None
        self._saved_step, self._saved_at = trainer.global_step, monotonic()  # a resumed step is on disk
        self.saved = (trainer.global_step, None) if self.path.is_file() else None
        # Lightning registered its handlers just before this hook and restores the ones it found when fit ends
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None:  # a second signal: stop now; the previous last.ckpt stays whole
            raise TrainingInterrupted(signum, None, None)
        self._signal = signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        signum = self._signal or 0
        due = self.every_n_minutes is not None and monotonic() - self._saved_at >= 60 * self.every_n_minutes
        if trainer.world_size > 1:  # every rank takes the same decision, whichever rank got the signal
            flags = torch.tensor([signum, due], dtype=torch.int32, device=pl_module.device)
            signum, due = trainer.strategy.reduce(flags, reduce_op="max").tolist()
        if signum or due:
            self.save(trainer)
        if signum:
            raise TrainingInterrupted(signum, trainer.global_step, self.path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.save(trainer, again=True)  # after the validation, so the best-checkpoint state in it is current
            val = trainer.callback_metrics.get("val_loss")
            self.saved = (trainer.global_step, None if val is None else val.item())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)  # a fit that ends between two validations keeps its last steps

    def save(self, trainer: L.Trainer, again: bool = False) -> None:
        if trainer.global_step == self._saved_step and not again:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step, self._saved_at = trainer.global_step, monotonic()
        self.saved = (trainer.global_step, None)
