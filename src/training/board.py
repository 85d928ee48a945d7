"""What only TensorBoard shows: the HPARAMS table that compares runs, attention maps, and the token embeddings in the
projector; and the TensorBoard logger itself, without Lightning's ``epoch`` card (a flat line at 0: the training
stream has no epochs). What every logger and the terminal show is in ``src.training.callbacks``.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

from src.errors import UserError
from src.training.budget import PROVISIONAL, TimeBudget, clock_text

HP_METRICS = ("best_val_loss", "final_val_loss", "tokens_per_sec")
# what tells runs apart; where the corpus is cached, or how many workers load it, does not
DATA_HPARAMS = ("path", "tokenizer", "block_size", "batch_size", "train_fraction", "seed", "val_batches")


class TensorBoard(TensorBoardLogger):
    """Lightning's TensorBoardLogger, less the ``epoch`` scalar that Lightning adds to every log call."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        metrics = {name: value for name, value in metrics.items() if name != "epoch"}
        if metrics:
            super().log_metrics(metrics, step)


def tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def run_hparams(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """The settings that tell runs apart, as plain values: the model's, the data's, precision and steps."""
    model = {k: v for k, v in pl_module.hparams.items() if k != "vocab" and not k.startswith("_")}
    model["vocab_size"] = len(pl_module.hparams.vocab)
    data = dict(trainer.datamodule.hparams) if trainer.datamodule is not None else {}
    data = {k: v for k, v in data.items() if k in DATA_HPARAMS}
    values = {**{f"model/{k}": v for k, v in model.items()}, **{f"data/{k}": v for k, v in data.items()}}
    values |= {"trainer/precision": str(trainer.precision), "trainer/max_steps": trainer.max_steps}
    for callback in trainer.callbacks:
        if isinstance(callback, TimeBudget) and callback.active:
            values["trainer/max_time"] = clock_text(callback.seconds)
    values["run_name"] = tensorboards(trainer)[0].name if tensorboards(trainer) else ""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}


class RunSummary(L.Callback):
    def __init__(self, enabled: bool = True) -> None:
        """The run's hyper-parameters in TensorBoard's HPARAMS tab, with ``best_val_loss``, ``final_val_loss`` and
        ``tokens_per_sec`` as its metrics (TensorBoard reads each metric's latest value from its scalar curve).

        Args:
            enabled: set false to leave the HPARAMS view and the best/final val loss curves out.
        """
        self.enabled, self.best = enabled, math.inf

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.max_steps != PROVISIONAL:  # else once a time budget has planned the steps
            self.record_plan(trainer, pl_module)

    def record_plan(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        experiment, session_start, session_end = hparams(run_hparams(trainer, pl_module), dict.fromkeys(HP_METRICS, 0))
        for logger in tensorboards(trainer):
            # into the run's own event file: add_hparams would start a separate run in a sub-folder, and
            # TensorBoardLogger.log_hyperparams(params, metrics) would also log each metric as a false 0 at step 0
            writer = logger.experiment._get_file_writer()
            for summary in (experiment, session_start, session_end):
                writer.add_summary(summary)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or "val_loss" not in trainer.callback_metrics:
            return
        final = trainer.callback_metrics["val_loss"].item()
        self.best = min(self.best, final)
        for logger in tensorboards(trainer):
            logger.log_metrics({"best_val_loss": self.best, "final_val_loss": final}, step=trainer.global_step)

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.best = state_dict["best"]


def token_label(token: str, tokenizer: str) -> str:
    """A readable name for a token: whitespace and control characters by name, bytes above 0x7f in hex."""
    if tokenizer == "bytes" and ord(token) > 0x7F:
        return f"0x{ord(token):02x}"
    names = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "space"}
    if token in names:
        return names[token]
    return f"U+{ord(token):04X}" if unicodedata.category(token).startswith(("C", "Z")) else token


class AttentionMaps(L.Callback):
    def __init__(self, enabled: bool = True, prompt_chars: int = 48, every_n_steps: int | None = None) -> None:
        """At each validation, every head's attention weights over a fixed prompt from the validation text: one image
        per layer (``attention/layer_N``), the heads as a grid, the prompt's characters along both axes.

        Args:
            enabled: set false to skip the images.
            prompt_chars: how many characters of the validation text the maps show (at most block_size).
            every_n_steps: draw only at the validations whose step is a multiple of this (null: at every one).
        """
        if every_n_steps is not None and every_n_steps < 1:
            raise UserError(f"--attention_maps.every_n_steps must be 1 or more, or null: {every_n_steps}")
        self.enabled, self.prompt_chars, self.every_n_steps = enabled, prompt_chars, every_n_steps

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        if not tensorboards(trainer) or (self.every_n_steps and trainer.global_step % self.every_n_steps):
            return
        model = pl_module.model
        if not hasattr(model, "attention_maps"):  # the bigram baseline has no attention
            return
        n = min(self.prompt_chars, model.config.block_size)
        idx = trainer.datamodule.val_data[:n].long().unsqueeze(0).to(pl_module.device)
        labels = [token_label(t, pl_module.hparams.tokenizer) for t in pl_module.tokenizer.vocab]
        ticks = [labels[i] for i in idx[0].tolist()]
        was_training = model.training
        model.eval()
        try:
            maps = model.attention_maps(idx)
        finally:
            model.train(was_training)
        from src.training.heatmaps import heads_image  # Pillow, imported only by a run that draws

        for layer, weights in enumerate(maps):
            image = heads_image(weights[0].cpu(), ticks, f"layer {layer}, step {trainer.global_step}")
            for logger in tensorboards(trainer):
                logger.experiment.add_image(f"attention/layer_{layer}", image, trainer.global_step, dataformats="HWC")


class Embeddings(L.Callback):
    def __init__(self, enabled: bool = True) -> None:
        """The token embedding table in TensorBoard's projector at the end of fit, each row named by its token.

        Args:
            enabled: set false to skip the projector.
        """
        self.enabled = enabled

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        labels = [token_label(t, pl_module.hparams.tokenizer) for t in pl_module.tokenizer.vocab]
        vectors = pl_module.model.token_embeddings().detach().float().cpu()
        for logger in tensorboards(trainer):
            logger.experiment.add_embedding(
                vectors, metadata=labels, tag="token_embedding", global_step=trainer.global_step
            )
