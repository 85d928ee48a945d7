"""CharGPT: the LightningModule around GPT or the bigram model: steps, metrics, optimizer and checkpoint contents.

Every init argument is a plain value (the vocabulary is a string), so the checkpoint's hyper-parameters rebuild the
model and tokenizer on their own and load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Literal

import lightning as L
import torch
from torchmetrics import MeanMetric

from src import __version__
from src.checkpoint import CHECKPOINT_KEY, model_from_hparams
from src.errors import UserError
from src.optim import adamw, warmup_cosine


class CharGPT(L.LightningModule):
    def __init__(
        self,
        vocab: str = "",
        model_type: Literal["gpt", "bigram"] = "gpt",
        block_size: int = 256,
        n_layer: int = 6,
        n_head: int = 6,
        n_embd: int = 384,
        dropout: float = 0.2,
        bias: bool = True,
        learning_rate: float = 1e-3,
        min_lr: float = 1e-4,
        warmup_steps: int = 100,
        lr_decay_steps: int | None = None,
        weight_decay: float = 0.1,
        beta1: float = 0.9,
        beta2: float = 0.99,
        compile: bool = False,
    ) -> None:
        """GPT (or the bigram model) trained with AdamW and warmup + cosine decay.

        Args:
            vocab: the characters of the vocabulary in id order; linked from the data module by the CLI.
            model_type: "gpt" (the lecture's transformer) or "bigram" (its baseline).
            block_size: context length; linked from --data.block_size by the CLI.
            n_layer: transformer blocks.
            n_head: attention heads per block.
            n_embd: embedding width (divisible by n_head).
            dropout: dropout probability, 0 to turn it off.
            bias: biases in Linear layers and LayerNorms.
            learning_rate: peak learning rate, reached after the warmup.
            min_lr: learning rate at the end of the cosine decay; equal to learning_rate for a constant rate.
            warmup_steps: steps of linear warmup.
            lr_decay_steps: the step at which the cosine reaches min_lr (nanoGPT's lr_decay_iters); defaults to
                trainer.max_steps.
            weight_decay: AdamW weight decay of matrices and embeddings (never of biases and norms).
            beta1: AdamW beta1.
            beta2: AdamW beta2.
            compile: compile the model in place with torch.compile.
        """
        super().__init__()
        if not vocab:
            raise UserError("model.vocab is empty: it is filled in from the data module; set a --data corpus")
        problems = [f"{k} must be positive, got {v}" for k, v in (("learning_rate", learning_rate),) if v <= 0]
        problems += [
            f"{k} must be 0 or more, got {v}"
            for k, v in (("min_lr", min_lr), ("warmup_steps", warmup_steps), ("weight_decay", weight_decay))
            if v < 0
        ]
        problems += [
            f"{k} must be in [0, 1), got {v}" for k, v in (("beta1", beta1), ("beta2", beta2)) if not 0 <= v < 1
        ]
        if problems:
            raise UserError("invalid model settings: " + "; ".join(f"--model.{p}" for p in problems))
        self.save_hyperparameters()
        self.model, self.tokenizer = model_from_hparams(self.hparams)
        self.val_loss = MeanMetric()
        self._window: tuple[float, int] | None = None  # (start time, tokens since) for the throughput log

    def configure_model(self) -> None:
        if self.hparams.compile and not getattr(self.model, "_compiled_call_impl", None):
            self.model.compile()  # in place, so state-dict keys keep their names

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model(idx, targets)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        _, loss = self.model(x, y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        _, loss = self.model(x, y)
        self.val_loss.update(loss)  # every batch has the same size, so the mean of means is the mean

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # synced across ranks
        self.val_loss.reset()
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_bpc", loss / math.log(2))
        self._window = None  # keep evaluation time out of the training throughput

    def on_train_batch_end(self, outputs: Any, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        # tokens/s over each logging interval, from host timestamps: no device sync per step
        now, tokens = time.perf_counter(), batch[0].numel() * self.trainer.world_size
        if self._window is None:
            self._window = (now, 0)
            return
        start, seen = self._window[0], self._window[1] + tokens
        self._window = (start, seen)
        if self.trainer.global_step % self.trainer.log_every_n_steps == 0:
            for logger in self.loggers:
                logger.log_metrics({"tokens_per_sec": seen / (now - start)}, step=self.trainer.global_step)
            self._window = (now, 0)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        # Lightning refuses to clip gradients under mixed precision with an optimizer that unscales them itself,
        # as the fused AdamW does: fall back to the foreach kernel there
        mixed = str(self.trainer.precision).endswith("mixed")
        fused = not (mixed and self.trainer.gradient_clip_val)
        optimizer = adamw(self.model, hp.learning_rate, hp.weight_decay, (hp.beta1, hp.beta2), fused=fused)
        total = hp.lr_decay_steps or self.trainer.max_steps
        scheduler = warmup_cosine(optimizer, hp.warmup_steps, total, hp.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def sample(self, prompt: str, max_new_tokens: int, generator: torch.Generator | None = None, **options) -> str:
        """Prompt + continuation as text; the model's train/eval mode is left as it was."""
        idx = torch.tensor([self.tokenizer.encode(prompt)], dtype=torch.long, device=self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(idx, max_new_tokens, generator=generator, **options)
        finally:
            self.model.train(was_training)
        return self.tokenizer.decode(out[0].tolist())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"format": 1, "version": __version__}
        # plain tensors and tuples only, so the checkpoint still loads with weights_only=True (numpy's state would not)
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved_vocab = checkpoint.get("hyper_parameters", {}).get("vocab", self.hparams.vocab)
        if saved_vocab != self.hparams.vocab:
            raise UserError(
                f"the checkpoint was trained on a vocabulary of {len(saved_vocab)} characters, but this corpus has "
                f"{len(self.hparams.vocab)}: pass the --data.path (or default corpus) the checkpoint was trained on"
            )
        # restoring the RNG makes a resumed run draw the same dropout masks as an uninterrupted one
        states = checkpoint.get("rng_states")
        if states is None:
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        random.setstate(states["python"])
