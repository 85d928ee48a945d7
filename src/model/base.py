"""What every model type shares: ``GPTConfig`` (sizes and options, validated when built) and ``LanguageModel`` (the
loss, and the decoding interface that ``src.generation`` and ``src.serving`` use).

Shapes: B batch, T time (tokens), C channels (n_embd), nh heads, hs head size (C // nh), V vocabulary size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from types import SimpleNamespace

import torch
import torch.nn as nn
from torch.nn import functional as F

from src.errors import UserError
from src.model.kv_cache import KVCache

NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("relu", "relu2")
INITS = ("gpt2", "pytorch")


@dataclass
class GPTConfig:
    # data
    vocab_size: int = 65
    block_size: int = 256  # the context length: the most tokens the model can attend to
    # shape
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    # regularisation and details
    dropout: float = 0.2  # on attention weights, after the attention projection and after the feed-forward
    bias: bool = True  # biases in Linear layers and LayerNorms (q/k/v have none either way, as in the lecture)
    # options beyond the lecture, all off by default (docs/experiments.md measures each)
    rope: bool = False  # rotary position embeddings on q and k instead of the learned position table
    norm: str = "layernorm"  # or "rmsnorm": no mean subtraction, no bias
    mlp: str = "relu"  # or "relu2": squared ReLU in the feed-forward
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before their dot products
    tie_embeddings: bool = False  # the output layer reuses the token embedding matrix
    attn_dropout: float | None = None  # dropout on the attention weights; None: the same as ``dropout``
    init: str = "gpt2"  # or "pytorch": PyTorch's default init, the lecture's (configs/lecture/)
    logit_softcap: float | None = None  # logits squashed into (-cap, cap) by cap * tanh(logits / cap) (modded-nanogpt)
    unet: bool = False  # U-net skips: block i's output also feeds block n-1-i's input, with a learned weight each
    value_residual: bool = False  # each later layer mixes the first layer's values into its own (ResFormer)
    attn_gate: bool = False  # each head's output scaled by a sigmoid gate computed from the layer's input
    mtp_weight: float = 0.0  # weight of an auxiliary loss on the token after next, from a head of its own; 0: none

    def __post_init__(self) -> None:
        problems = self.problems(vars(self))
        if problems:
            raise UserError("invalid model config: " + "; ".join(problems))

    @classmethod
    def problems(cls, values: dict) -> list[str]:
        """What is wrong with a config of these values (the defaults for the fields they lack; other keys ignored),
        each problem named with its field and value; the CLI reports them with every other setting's at once."""
        defaults = {f.name: f.default for f in fields(cls)}
        c = SimpleNamespace(**(defaults | {k: v for k, v in values.items() if k in defaults}))
        problems = [
            f"{name} must be a positive integer, got {getattr(c, name)!r}"
            for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
            if not isinstance(getattr(c, name), int) or getattr(c, name) < 1
        ]
        if not problems and c.n_embd % c.n_head:
            heads = [h for h in range(1, min(c.n_embd, 32) + 1) if c.n_embd % h == 0]
            problems.append(
                f"n_embd ({c.n_embd}) must be divisible by n_head ({c.n_head}): "
                f"n_head {', '.join(map(str, heads))} fit{'' if c.n_embd <= 32 else ', among others'}"
            )
        for name in ("dropout", "attn_dropout"):
            if getattr(c, name) is not None and not 0 <= getattr(c, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(c, name)!r}")
        for name, choices in (("norm", NORMS), ("mlp", ACTIVATIONS), ("init", INITS)):
            if getattr(c, name) not in choices:
                problems.append(f"{name} must be one of {', '.join(choices)}, got {getattr(c, name)!r}")
        if c.logit_softcap is not None and not c.logit_softcap > 0:
            problems.append(f"logit_softcap must be positive (or null for none), got {c.logit_softcap!r}")
        if not c.mtp_weight >= 0:
            problems.append(f"mtp_weight must be 0 (no auxiliary head) or more, got {c.mtp_weight!r}")
        if c.unet and not problems and c.n_layer < 2:
            problems.append(f"unet skips join the first half of the blocks to the last: n_layer must be 2 or more, "
                            f"got {c.n_layer}")  # fmt: skip
        if c.rope and not problems and (c.n_embd // c.n_head) % 2:
            problems.append(f"rope needs an even head size, got n_embd / n_head = {c.n_embd // c.n_head}")
        return problems

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


class LanguageModel(nn.Module):
    """What GPT and the bigram model share: the config, the loss and the cache interface that
    ``src.generation.decoding`` decodes with."""

    config: GPTConfig
    vocab_axes: dict[str, tuple[int, ...]] = {}  # state-dict entries indexed by token id, and along which axes
    has_cache = True  # decodes a token at a time from a cache (or needs none); False: re-reads the window each time

    @property
    def head(self) -> nn.Module:
        """The layer that turns ``features`` into logits."""
        raise NotImplementedError

    def features(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """What ``head`` reads at each position of ``idx`` (B, T); with ``input_pos`` (T,) the positions of ``idx``
        in the cache from ``setup_cache``, which holds the tokens before them."""
        raise NotImplementedError

    def features_at(self, idx: torch.Tensor, input_pos: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        """For decoding: ``features`` (B, 1, C) at position ``index`` (a 0-d tensor) of ``idx`` only."""
        raise NotImplementedError

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The lecture's contract: logits (B, T, V) for every position of ``idx`` (B, T), and the mean
        cross-entropy against ``targets`` (B, T) when they are given (positions marked -100 do not count)."""
        logits = self.logits(self.features(idx))  # (B, T, V)
        return logits, None if targets is None else token_loss(logits, targets)

    def objective(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For training: the loss ``forward`` reports, and what the optimizer minimises (the same, unless the
        model adds an auxiliary loss)."""
        _, loss = self(idx, targets)
        return loss, loss

    def next_logits(self, idx: torch.Tensor, input_pos: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        """For decoding (``src.generation.decoding``): the logits (B, V) after position ``index`` (a 0-d tensor) of
        ``idx`` (B, T) at ``input_pos`` (T,), or (B, T) with a position per row; with ``index`` a tensor, prompts
        of any length can be padded to one shape."""
        return self.logits(self.features_at(idx, input_pos, index)[:, 0])

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``head``'s scores, soft-capped when the config asks: every path from features to logits comes here."""
        logits = self.head(features)
        cap = self.config.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

    def setup_cache(self, batch_size: int) -> None:
        """Allocate what cached decoding (``input_pos``) needs, in the weights' dtype; a no-op for stateless
        models."""

    def clear_cache(self) -> None:
        """Drop the cache allocated by ``setup_cache``."""

    def kv_caches(self) -> list[KVCache]:
        """The cache of each layer (none for stateless models)."""
        return []

    def use_kv_caches(self, caches: list[KVCache]) -> None:
        """Decode with these caches (e.g. ``KVCache.rows`` views of ``kv_caches()``), one per layer."""

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward and backward): 6 per parameter, as in the PaLM paper's estimate."""
        return 6 * self.num_params()

    def token_embeddings(self) -> torch.Tensor:
        """(V, d): the learned vector of each token."""
        raise NotImplementedError


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy of ``logits`` (B, T, V) against ``targets`` (B, T), over every position (B*T rows);
    targets of -100 do not count."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def gpt2_init(model: nn.Module, is_residual_projection) -> None:
    """GPT-2's init (via nanoGPT): N(0, 0.02) weights, zero biases, and the projections that write into the
    residual stream (``is_residual_projection(name)``) scaled down by sqrt(2 * n_layer), so the stream's variance
    does not grow with depth. PyTorch's default (uniform, fan-in scaled) init is what made the lecture's deeper
    models converge slowly (docs/lecture.md measures both)."""
    model.apply(_gpt2_init_module)  # children first, as nanoGPT: the same seed gives the same weights
    for name, p in model.named_parameters():
        if is_residual_projection(name):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * model.config.n_layer))


def _gpt2_init_module(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
