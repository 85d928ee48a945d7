"""The lecture's decoder-only transformer (GPT) and its bigram baseline, in plain PyTorch.

Shapes: B batch, T time (tokens), C channels (n_embd), nh heads, hs head size (C // nh), V vocabulary size.
The architecture is the lecture's, parameter for parameter (209,729 at the seed notebook's size, 10,788,929 at the
final lecture size); what differs is speed (one fused q/k/v projection, ``scaled_dot_product_attention``, and on
CPUs the dropout of ``src.dropout``), the attention scale (``hs ** -0.5``; the lecture's final code uses
``C ** -0.5``), GPT-2 style init, and a KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from src.dropout import BoolMaskDropout, causal_attention_with_dropout
from src.errors import UserError


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

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be a positive integer, got {getattr(self, name)!r}"
            for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1
        ]
        if not problems and self.n_embd % self.n_head:
            problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if problems:
            raise UserError("invalid model config: " + "; ".join(problems))

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


class KVCache(nn.Module):
    """Keys and values of the tokens seen so far, for one attention layer; never part of a checkpoint."""

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_size: int) -> None:
        super().__init__()
        self.shape = (batch_size, n_head, max_len, head_size)
        self.register_buffer("k", None, persistent=False)
        self.register_buffer("v", None, persistent=False)

    def update(self, input_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at positions input_pos.. and return all keys and values up to them."""
        if self.k is None or self.k.dtype != k.dtype or self.k.device != k.device:
            # allocated on first use so the dtype follows autocast
            self.k = torch.zeros(self.shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(self.shape, dtype=v.dtype, device=v.device)
        end = input_pos + k.size(2)
        self.k[:, :, input_pos:end] = k
        self.v[:, :, input_pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_embd, self.head_size = config.n_head, config.n_embd, config.head_size
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)  # q, k, v of every head at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = BoolMaskDropout(config.dropout)
        self.kv_cache: KVCache | None = None

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        return tuple(t.view(B, T, self.n_head, self.head_size).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights (B, nh, T, T) that ``forward`` applies to the values: each row a distribution
        over the positions up to its own (the lecture's ``wei``), without dropout."""
        q, k, _ = self._qkv(x)
        T = x.size(1)
        scores = (q @ k.transpose(-2, -1)) * self.head_size**-0.5
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        return scores.masked_fill(future, float("-inf")).softmax(dim=-1)

    def forward(self, x: torch.Tensor, input_pos: int | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self._qkv(x)
        mask, causal = None, True
        if input_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("input_pos needs a KV cache: call model.setup_cache(batch_size) first")
            k, v = self.kv_cache.update(input_pos, k, v)
            # is_causal aligns its mask top-left, so queries after a cached prefix need their own mask:
            # query i (absolute position input_pos + i) sees keys 0..input_pos + i
            if input_pos > 0:
                causal = False
                if T > 1:
                    mask = torch.ones(T, input_pos + T, dtype=torch.bool, device=x.device).tril(diagonal=input_pos)
        if self.training and self.dropout > 0 and x.device.type == "cpu" and input_pos is None:
            # SDPA's fused CPU kernels refuse dropout; its fallback is slower and keeps far more for backward
            y = causal_attention_with_dropout(q, k, v, self.dropout, self.head_size**-0.5)
        else:
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal, scale=self.head_size**-0.5
            )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class FeedForward(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = BoolMaskDropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.relu(self.c_fc(x))))


class Block(nn.Module):
    """Communication (attention) then computation (feed-forward), each as a pre-LayerNorm residual branch."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = FeedForward(config)

    def forward(self, x: torch.Tensor, input_pos: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), input_pos)
        return x + self.mlp(self.ln_2(x))


class LanguageModel(nn.Module):
    """What GPT and the bigram model share: the config, the loss and the cache interface that ``src.sampling``
    decodes with."""

    config: GPTConfig
    vocab_axes: dict[str, tuple[int, ...]] = {}  # state-dict entries indexed by token id, and along which axes

    def _logits_and_loss(
        self, x: torch.Tensor, head: nn.Module, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if targets is None:
            # sampling needs only the next-token distribution: skip the head on every other position
            return head(x[:, -1:]), None
        logits = head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def setup_cache(self, batch_size: int) -> None:
        """Allocate what cached decoding (``forward(..., input_pos=...)``) needs; a no-op for stateless models."""

    def clear_cache(self) -> None:
        """Drop the cache allocated by ``setup_cache``."""

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward and backward): 6 per parameter, as in the PaLM paper's estimate."""
        return 6 * self.num_params()

    def token_embeddings(self) -> torch.Tensor:
        """(V, d): the learned vector of each token."""
        raise NotImplementedError


class GPT(LanguageModel):
    vocab_axes = {"transformer.wte.weight": (0,), "lm_head.weight": (0,), "lm_head.bias": (0,)}

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        # GPT-2 init (via nanoGPT): N(0, 0.02) weights, zero biases, and residual projections scaled down by
        # sqrt(2 * n_layer) so the residual stream's variance does not grow with depth. PyTorch's default
        # (uniform, fan-in scaled) init is what made the lecture's deeper models converge slowly.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, input_pos: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) and the mean cross-entropy when ``targets`` are given; otherwise the logits of the
        last position only (B, 1, V). ``input_pos`` (with a cache from ``setup_cache``) is the position of
        ``idx[:, 0]``: the tokens before it are read from the cache."""
        B, T = idx.shape
        start = input_pos or 0
        if start + T > self.config.block_size:
            raise ValueError(f"{start + T} positions do not fit in block_size {self.config.block_size}")
        x = self._embed(idx, start)
        for block in self.transformer.h:
            x = block(x, input_pos)
        return self._logits_and_loss(self.transformer.ln_f(x), self.lm_head, targets)

    def _embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        pos = torch.arange(start, start + idx.size(1), device=idx.device)
        return self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's attention weights (B, nh, T, T) for ``idx`` (B, T), computed as ``forward`` does."""
        x, maps = self._embed(idx), []
        for block in self.transformer.h:
            maps.append(block.attn.weights(block.ln_1(x)))
            x = block(x)
        return maps

    def flops_per_token(self) -> int:
        # nanoGPT's estimate: 6 per parameter, plus attention's q k^T and weights @ v over the whole window
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size

    def token_embeddings(self) -> torch.Tensor:
        return self.transformer.wte.weight

    def setup_cache(self, batch_size: int) -> None:
        c = self.config
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(batch_size, c.n_head, c.block_size, c.head_size)

    def clear_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None


class BigramLanguageModel(LanguageModel):
    """The lecture's baseline: each token reads the logits of the next one straight from a table."""

    vocab_axes = {"token_embedding_table.weight": (0, 1)}

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.vocab_size)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, input_pos: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # a bigram looks at one token, so cached decoding (input_pos) needs no cache at all
        return self._logits_and_loss(idx, self.token_embedding_table, targets)

    def token_embeddings(self) -> torch.Tensor:
        return self.token_embedding_table.weight


MODELS = {"gpt": GPT, "bigram": BigramLanguageModel}


def build_model(model_type: str = "gpt", **values: Any) -> LanguageModel:
    """The model that plain values describe: ``model_type`` ("gpt" or "bigram") and the ``GPTConfig`` fields among
    ``values``; other keys are ignored, so a CharGPT's or a checkpoint's hyper-parameters can be passed whole."""
    if model_type not in MODELS:
        raise UserError(f"unknown model_type {model_type!r}: choose one of {sorted(MODELS)}")
    return MODELS[model_type](GPTConfig(**{f.name: values[f.name] for f in fields(GPTConfig) if f.name in values}))
