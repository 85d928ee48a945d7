"""CharGPT: the LightningModule around GPT or the bigram model: steps, loss, optimizer and checkpoint contents.

Every init argument is a plain value (the vocabulary is a string), so the checkpoint's hyper-parameters rebuild the
model and tokenizer on their own and load with ``torch.load(weights_only=True)``. Without a vocabulary the network
is built in ``setup``, from the data module's prepared corpus.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any, Literal

import lightning as L
import torch
from torch.nn import functional as F
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric, SumMetric

from src.checkpoints.build import build
from src.checkpoints.checkpoint import init_from_checkpoint, mark
from src.data.tokenizer import Tokenizer, prompt_ids
from src.errors import UserError
from src.generation.decoding import generate
from src.model import LanguageModel
from src.model.base import ACTIVATIONS, INITS, NORMS, GPTConfig
from src.model.registry import ModelType
from src.training.divergence import diverged
from src.training.optim import LR_SCALES, MuonAdamW, adamw, hidden_matrices, warmup_decay


class CharGPT(L.LightningModule):
    def __init__(
        self,
        vocab: str | None = None,
        tokenizer: Literal["chars", "bytes"] = "chars",
        model_type: ModelType = "gpt",
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 6,
        n_embd: int = 192,
        dropout: float = 0.0,
        bias: bool = True,
        rope: bool = False,
        norm: Literal[NORMS] = "layernorm",
        mlp: Literal[ACTIVATIONS] = "relu",
        qk_norm: bool = False,
        tie_embeddings: bool = False,
        attn_dropout: float | None = None,
        init: Literal[INITS] = "gpt2",
        logit_softcap: float | None = None,
        unet: bool = False,
        value_residual: bool = True,
        attn_gate: bool = False,
        mtp_weight: float = 0.3,
        learning_rate: float = 3e-3,
        min_lr: float = 1e-4,
        warmup_steps: int = 100,
        lr_decay_steps: int | None = None,
        lr_schedule: Literal["cosine", "linear", "wsd"] = "cosine",
        cooldown_fraction: float = 0.4,
        lr_scales: dict[str, float] | None = None,
        weight_decay: float = 1.0,
        cautious_weight_decay: bool = False,
        beta1: float = 0.9,
        beta2: float = 0.99,
        optimizer: Literal["adamw", "muon"] = "muon",
        muon_momentum_warmup: int = 0,
        compile: bool = False,
        init_from: str | None = None,
    ) -> None:
        """A model of ``model_type`` trained with Muon (or AdamW) and warmup + cosine decay. The defaults are the
        default config's (configs/shakespeare_char.yaml explains each); the lecture's own models are configs too.

        Args:
            vocab: the characters of the vocabulary in id order; by default the data module's, once it is set up.
            tokenizer: "chars" or "bytes"; linked from --data.tokenizer by the CLI.
            model_type: "gpt" (the lecture's transformer), "bigram" (its baseline), or one of the lecture's stages
                between them, in its order: lecture_embed, lecture_head, lecture_heads, lecture_ffwd,
                lecture_blocks, lecture_residual, lecture_residual_4x, lecture_layernorm (docs/lecture.md).
            block_size: context length; linked from --data.block_size by the CLI.
            n_layer: transformer blocks.
            n_head: attention heads per block.
            n_embd: embedding width (divisible by n_head).
            dropout: dropout probability, 0 to turn it off.
            bias: biases in Linear layers and LayerNorms.
            rope: rotary position embeddings in attention instead of the learned position table (not the lecture's).
            norm: "layernorm" (the lecture's) or "rmsnorm".
            mlp: the feed-forward's activation: "relu" (the lecture's) or "relu2" (squared ReLU).
            qk_norm: RMS-normalise each head's queries and keys (not the lecture's).
            tie_embeddings: the output layer shares the token embedding matrix (not the lecture's).
            attn_dropout: dropout on the attention weights alone; by default the same as dropout (the lecture's).
            init: "gpt2" (GPT-2's, via nanoGPT) or "pytorch" (PyTorch's default, the lecture's).
            logit_softcap: squash the logits into (-cap, cap) with cap * tanh(logits / cap); null for none (the
                lecture's).
            unet: U-net skips: the first half's block outputs also feed the last half's inputs, mirrored, each with
                a learned weight (modded-nanogpt; not the lecture's).
            value_residual: each attention layer after the first mixes the first layer's values into its own, by a
                learned share (ResFormer, as in modded-nanogpt; not the lecture's).
            attn_gate: scale each head's output by a sigmoid gate computed from the layer's input, per position
                (gated attention, as in modded-nanogpt and Qwen; not the lecture's).
            mtp_weight: multi-token prediction: a second output layer predicts the token after next, and its loss,
                times this weight, joins the training loss (the logged train_loss and val_loss stay the next
                token's); 0 builds no such layer (not the lecture's).
            learning_rate: peak learning rate, reached after the warmup.
            min_lr: learning rate at the end of the decay; equal to learning_rate for a constant rate.
            warmup_steps: steps of linear warmup.
            lr_decay_steps: the step at which the decay reaches min_lr (nanoGPT's lr_decay_iters); defaults to
                trainer.max_steps.
            lr_schedule: the decay's shape after the warmup: "cosine" (nanoGPT's), "linear" (a straight line to
                min_lr) or "wsd" (warmup-stable-decay: the peak rate, then a straight line to min_lr over the last
                cooldown_fraction of the steps).
            cooldown_fraction: the share of the steps that "wsd" decays over.
            lr_scales: learning rates per kind of parameter, as multiples of the schedule's: any of "embedding",
                "head" (the output layer), "matrices" (the blocks' weights: Muon's, with optimizer muon) and
                "scalars" (biases, norm gains and other 1-D weights), e.g. {embedding: 10}; null: one rate for all.
            weight_decay: AdamW weight decay of matrices and embeddings (never of biases and norms).
            cautious_weight_decay: with optimizer muon, decay the blocks' weights only where the update moves them
                towards zero too (cautious weight decay, Chen et al. 2025); AdamW's parameters decay as usual.
            beta1: AdamW beta1.
            beta2: AdamW beta2.
            optimizer: "adamw", or "muon": Muon for the blocks' weight matrices, AdamW for embeddings, the output
                layer, norms and biases, one learning rate and schedule for both.
            muon_momentum_warmup: steps over which Muon's momentum rises from 0.85 to 0.95 (modded-nanogpt's
                warm-up); 0 keeps it at 0.95 throughout.
            compile: compile the model in place with torch.compile.
            init_from: a checkpoint whose weights a new fit starts from (fine-tuning): the same architecture, any
                corpus; optimizer, schedule and step count start afresh.
        """
        super().__init__()
        self.save_hyperparameters()
        problems = self.problems(dict(self.hparams))
        if problems:
            raise UserError("invalid model settings: " + "; ".join(f"--model.{p}" for p in problems))
        self.model: LanguageModel | None = None
        self.tokenizer: Tokenizer | None = None
        self.val_loss = MeanMetric(nan_strategy=math.nan)  # a NaN batch makes the mean NaN instead of vanishing
        self.test_nll, self.test_chars = SumMetric(), SumMetric()
        self._compiled = False
        if vocab is not None:
            self.build_network(vocab)

    @staticmethod
    def problems(settings: dict) -> list[str]:
        """What is wrong with these settings (``__init__``'s arguments), each named with its value: the
        optimisation's and, through ``GPTConfig``, the architecture's, so that the CLI can report every problem
        before the data is prepared."""
        s, problems = settings, []
        if s["vocab"] == "":
            problems.append("vocab is empty: leave it unset to take the data module's, or give its characters")
        if s["learning_rate"] <= 0:
            problems.append(f"learning_rate must be positive, got {s['learning_rate']}")
        problems += [
            f"{k} must be 0 or more, got {s[k]}"
            for k in ("min_lr", "warmup_steps", "weight_decay", "muon_momentum_warmup")
            if s[k] < 0
        ]
        problems += [f"{k} must be in [0, 1), got {s[k]}" for k in ("beta1", "beta2") if not 0 <= s[k] < 1]
        if not 0 < s["cooldown_fraction"] <= 1:
            problems.append(f"cooldown_fraction must be in (0, 1], got {s['cooldown_fraction']}")
        scales = s["lr_scales"] or {}
        problems += [f"lr_scales has {k!r}: use {', '.join(LR_SCALES)}" for k in scales if k not in LR_SCALES]
        problems += [f"lr_scales.{k} must be positive, got {v}" for k, v in scales.items() if not v > 0]
        vocab_size = len(s["vocab"]) if s["vocab"] else 1  # the corpus's is not known yet: any positive size
        return problems + GPTConfig.problems({**s, "vocab_size": vocab_size})

    def build_network(self, vocab: str) -> None:
        """Build the network and tokenizer for ``vocab``, which the checkpoint's hyper-parameters then record."""
        self.hparams.vocab = vocab
        self.model, self.tokenizer = build(self.hparams)

    def setup(self, stage: str) -> None:
        self._build_for_data(stage)

    def _build_for_data(self, stage: str) -> None:
        # after the data module's prepare_data and setup: its vocabulary is known
        data = self.trainer.datamodule
        if self.model is None:
            self.build_network(data.vocab)
            if self.hparams.init_from and stage == "fit" and self.trainer.ckpt_path is None:  # not when resuming
                done = init_from_checkpoint(self.model, self.tokenizer, self.hparams.init_from)
                if self.trainer.is_global_zero:
                    print(f"chargpt: {done}", file=sys.stderr, flush=True)
        elif data is not None:  # e.g. the CLI built the module from a checkpoint's hyper-parameters
            self._check_vocab(self.hparams.vocab, data.vocab)

    @staticmethod
    def _check_vocab(trained: str, corpus: str) -> None:
        if trained != corpus:
            raise UserError(
                f"the checkpoint was trained on a vocabulary of {len(trained)} characters, but this corpus has "
                f"{len(corpus)}: pass the --data.path (or default corpus) the checkpoint was trained on"
            )

    def configure_model(self) -> None:
        if self.model is None and self.trainer.datamodule is not None:
            # a callback may need the network before setup: weight averaging copies it in its own setup
            self._build_for_data(self.trainer.state.fn)
        if self.hparams.compile and not self._compiled:
            self.model.compile()  # in place, so state-dict keys keep their names
            self._compiled = True

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model(idx, targets)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        warmup = self.hparams.muon_momentum_warmup
        optimizer = self.optimizers().optimizer if warmup else None
        if isinstance(optimizer, MuonAdamW):
            optimizer.warm_up_momentum(self.global_step, warmup)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, objective = self.model.objective(x, y)  # the same, unless the model adds an auxiliary loss
        self.step_loss = objective.detach()  # what the divergence guard checks before the optimizer step
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            # only on the steps the logger writes (what Lightning would drop anyway): self.log costs a noticeable
            # share of a small model's CPU step (docs/performance.md, Lightning overhead)
            self.log("train_loss", loss, prog_bar=True)
        return objective

    def on_validation_start(self) -> None:
        self._float32_metrics()

    def on_test_start(self) -> None:
        self._float32_metrics()

    def _float32_metrics(self) -> None:
        # precision="bf16-true" converts the whole module, metric states included: a sum of thousands of losses
        # in bf16 loses whole units of the mean
        for metric in (self.val_loss, self.test_nll, self.test_chars):
            metric.set_dtype(torch.float32)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        _, loss = self.model(x, y)
        self.val_loss.update(loss)  # every batch has the same size, so the mean of means is the mean

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # synced across ranks
        self.val_loss.reset()
        if self.trainer.state.fn == "fit" and not torch.isfinite(loss):  # before any checkpoint is written for it
            raise diverged(self.trainer, self, self.global_step, "validation loss", loss.item())
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_bpc", loss / math.log(2))

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch  # y is -100 where a window does not score (see CharDataModule.test_dataloader)
        logits, _ = self.model(x)
        nll = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1), reduction="sum")
        self.test_nll.update(nll)
        self.test_chars.update((y != -100).sum())

    def on_test_epoch_end(self) -> None:
        nll, chars = self.test_nll.compute(), self.test_chars.compute()  # synced across ranks
        self.test_nll.reset()
        self.test_chars.reset()
        loss = nll / chars
        self.log_dict({"test_loss": loss, "test_bpc": loss / math.log(2), "test_chars": chars.float()})

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        # Lightning refuses to clip gradients under mixed precision with an optimizer that unscales them itself,
        # as the fused AdamW does: fall back to the foreach kernel there
        mixed = str(self.trainer.precision).endswith("mixed")
        fused = not (mixed and self.trainer.gradient_clip_val)
        betas, scales = (hp.beta1, hp.beta2), hp.lr_scales
        if hp.optimizer == "muon" and hidden_matrices(self.model):
            cautious = hp.cautious_weight_decay
            optimizer = MuonAdamW(self.model, hp.learning_rate, hp.weight_decay, betas, fused, scales, cautious)
        else:
            if hp.optimizer == "muon" and self.trainer.is_global_zero:
                print(
                    f"chargpt: --model.optimizer muon: the {hp.model_type} model has no hidden weight matrices for "
                    f"Muon, so AdamW trains all of it",
                    file=sys.stderr,
                    flush=True,
                )
            optimizer = adamw(self.model, hp.learning_rate, hp.weight_decay, betas, fused, scales)
        scheduler = self.build_schedule(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def reschedule(self) -> None:
        """Replace the run's schedule with one built for the trainer's step count now, at the height the optimizer's
        groups hold (``initial_lr``), moved on to the current step: what a plan (``TimeBudget``) or a rollback
        (``DivergenceGuard``) changes mid-run. Built anew and stepped as often, it takes the steps an unchanged one
        would have."""
        optimizer = self.trainer.optimizers[0]
        scale = optimizer.param_groups[0]["initial_lr"] / self.hparams.learning_rate
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        scheduler = self.build_schedule(optimizer, scale)
        with warnings.catch_warnings():  # stepping a schedule with no optimizer step between is what we mean
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(self.global_step):
                scheduler.step()
        self.trainer.lr_scheduler_configs[0].scheduler = scheduler

    def build_schedule(self, optimizer: torch.optim.Optimizer, scale: float = 1.0) -> LRScheduler:
        """The learning-rate schedule of ``optimizer``, whose groups' rate is the peak; ``min_lr`` times ``scale``
        (what a divergence's rollback lowers the whole schedule by)."""
        hp = self.hparams
        total = hp.lr_decay_steps or self.trainer.max_steps
        min_lr = hp.min_lr * scale
        return warmup_decay(optimizer, hp.warmup_steps, total, min_lr, hp.lr_schedule, hp.cooldown_fraction)

    def sample(self, prompt: str, max_new_tokens: int, generator: torch.Generator | None = None, **options) -> str:
        """Prompt + continuation as text; the model's train/eval mode is left as it was."""
        idx = torch.tensor([prompt_ids(self.tokenizer, prompt)], dtype=torch.long, device=self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            out = generate(self.model, idx, max_new_tokens, generator=generator, **options)
        finally:
            self.model.train(was_training)
        return self.tokenizer.decode(out[0].tolist())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        mark(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_vocab(checkpoint.get("hyper_parameters", {}).get("vocab", self.hparams.vocab), self.hparams.vocab)
