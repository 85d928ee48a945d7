"""The models the lecture builds on its way to the GPT, stage by stage, written as its notebook writes them: a ``Head``
of self-attention, several of them side by side in ``MultiHeadAttention``, the ``FeedForward`` as it grows, and
``Block``s with and without residual connections and LayerNorm. Plain PyTorch (PyTorch's default init in the
lecture's configs), kept apart from ``src.model.gpt``, whose speed work (a fused q/k/v, SDPA, a KV cache) would hide
the steps. Read it beside ``shared/seeds/003_*`` (docs/lecture.md links each stage to its cells).

Each stage is a model type of its own (``src.model.registry``), so it trains, resumes, tests, exports and samples
like any model. It has no KV cache: ``src.generate`` decodes it the lecture's way, re-reading the last
``block_size`` tokens for every new one.

Shapes: B batch, T time, C channels (n_embd), hs head size, V vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from src.model.base import GPTConfig, LanguageModel, gpt2_init


class Head(nn.Module):
    """One head of self-attention: each position's query scores the keys of the positions up to its own, and the
    softmax of those scores weighs their values (the lecture's ``wei``)."""

    def __init__(self, n_embd: int, head_size: int, block_size: int, dropout: float) -> None:
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, T): each row a distribution over the positions up to its own."""
        B, T, C = x.shape
        k, q = self.key(x), self.query(x)  # (B, T, hs) each
        wei = q @ k.transpose(-2, -1) * C**-0.5  # (B, T, T); the lecture scales by the channels, C
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        return F.softmax(wei, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.weights(x)) @ self.value(x)  # (B, T, T) @ (B, T, hs) -> (B, T, hs)


class MultiHeadAttention(nn.Module):
    """Several heads in parallel, their outputs side by side; with ``proj``, a Linear back into the residual
    stream (added with the residual connections)."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float, proj: bool) -> None:
        super().__init__()
        head_size = n_embd // n_head
        self.heads = nn.ModuleList(Head(n_embd, head_size, block_size, dropout) for _ in range(n_head))
        self.proj = nn.Linear(n_embd, n_embd) if proj else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([h(x) for h in self.heads], dim=-1)  # (B, T, n_head * hs) = (B, T, C)
        return out if self.proj is None else self.dropout(self.proj(out))


class FeedForward(nn.Module):
    """Computation on each position on its own: Linear and ReLU at first; with the residual connections, a
    projection back as well; then ``widen`` times as wide inside (4 in the paper and the lecture)."""

    def __init__(self, n_embd: int, widen: int, proj: bool, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(n_embd, widen * n_embd), nn.ReLU()]
        if proj:
            layers += [nn.Linear(widen * n_embd, n_embd), nn.Dropout(dropout)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Communication (attention) then computation (feed-forward); with ``residual`` each is a branch added to the
    stream, and with ``layernorm`` each branch reads a normalised copy of it (pre-norm, as the lecture does)."""

    def __init__(self, config: GPTConfig, stage: Stage) -> None:
        super().__init__()
        c = config
        self.sa = MultiHeadAttention(c.n_embd, c.n_head, c.block_size, c.dropout, proj=stage.residual)
        self.ffwd = FeedForward(c.n_embd, stage.widen, proj=stage.residual, dropout=c.dropout)
        self.residual = stage.residual
        self.ln1 = nn.LayerNorm(c.n_embd) if stage.layernorm else nn.Identity()
        self.ln2 = nn.LayerNorm(c.n_embd) if stage.layernorm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.residual:
            return self.ffwd(self.sa(x))
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


@dataclass(frozen=True)
class Stage:
    """What a stage of the lecture has: attention, a feed-forward layer, blocks, residuals (with the feed-forward
    ``widen`` times as wide inside), LayerNorm."""

    heads: bool = False
    ffwd: bool = False
    blocks: bool = False
    residual: bool = False
    widen: int = 1
    layernorm: bool = False


class LectureModel(LanguageModel):
    """Token and position embeddings, what the stage adds in between, and the output layer (``lm_head``)."""

    stage = Stage()
    vocab_axes = {"token_embedding_table.weight": (0,), "lm_head.weight": (0,), "lm_head.bias": (0,)}
    has_cache = False

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config, c, s = config, config, self.stage
        self.token_embedding_table = nn.Embedding(c.vocab_size, c.n_embd)
        self.position_embedding_table = nn.Embedding(c.block_size, c.n_embd)
        if s.blocks:
            self.blocks = nn.Sequential(*(Block(c, s) for _ in range(c.n_layer)))
        elif s.heads:  # one layer of attention (and feed-forward), before the lecture stacks them into blocks
            self.sa_heads = MultiHeadAttention(c.n_embd, c.n_head, c.block_size, c.dropout, proj=False)
            self.ffwd = FeedForward(c.n_embd, 1, proj=False, dropout=c.dropout) if s.ffwd else None
        self.ln_f = nn.LayerNorm(c.n_embd) if s.layernorm else None
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size)
        if c.init == "gpt2":  # chargpt's recipe; the lecture's configs keep PyTorch's default (init: pytorch)
            gpt2_init(self, lambda name: name.endswith(("sa.proj.weight", "ffwd.net.2.weight")))

    @property
    def head(self) -> nn.Module:
        return self.lm_head

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"{T} positions do not fit in block_size {self.config.block_size}")
        x = self._embed(idx)  # (B, T, C)
        if self.stage.blocks:
            x = self.blocks(x)
        elif self.stage.heads:
            x = self.sa_heads(x)
            x = x if self.ffwd is None else self.ffwd(x)
        return x if self.ln_f is None else self.ln_f(x)

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        tok_emb = self.token_embedding_table(idx)  # (B, T, C)
        pos_emb = self.position_embedding_table(torch.arange(idx.size(1), device=idx.device))  # (T, C)
        return tok_emb + pos_emb  # (B, T, C): the positions broadcast over the batch

    def features_at(self, idx: torch.Tensor, input_pos: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        if input_pos is not None:
            raise RuntimeError(f"{type(self).__name__} has no KV cache: decode it with cache='none'")
        return self.features(idx).index_select(1, index.view(1))  # (B, 1, C)

    def token_embeddings(self) -> torch.Tensor:
        return self.token_embedding_table.weight

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Every attention layer's weights (B, nh, T, T) for ``idx`` (B, T); none before the stage has heads."""
        x = self._embed(idx)  # (B, T, C)
        layers = list(self.blocks) if self.stage.blocks else []
        if not layers:
            attention = getattr(self, "sa_heads", None)
            return [] if attention is None else [torch.stack([h.weights(x) for h in attention.heads], dim=1)]
        maps = []
        for block in layers:
            maps.append(torch.stack([h.weights(block.ln1(x)) for h in block.sa.heads], dim=1))
            x = block(x)
        return maps


# the lecture's stages in its order (the bigram, its first, is src.model.bigram; its last, the scaled-up GPT,
# src.model.gpt), each a class that says what it adds


class EmbeddingModel(LectureModel):
    """Step 02: token and position embeddings and an output layer; nothing reads across positions yet."""

    stage = Stage()


class OneHeadModel(LectureModel):
    """Step 03: + one head of self-attention (``n_head: 1``)."""

    stage = Stage(heads=True)


class MultiHeadModel(LectureModel):
    """Step 04: several heads side by side (``n_head: 4``, each a quarter as wide)."""

    stage = Stage(heads=True)


class FeedForwardModel(LectureModel):
    """Step 05: + a feed-forward layer (Linear, ReLU) after attention."""

    stage = Stage(heads=True, ffwd=True)


class BlocksModel(LectureModel):
    """Step 06: attention and feed-forward stacked in ``n_layer`` blocks, without residual connections."""

    stage = Stage(heads=True, ffwd=True, blocks=True)


class ResidualModel(LectureModel):
    """Step 07: + residual connections, each sub-layer projected back into the stream."""

    stage = Stage(heads=True, ffwd=True, blocks=True, residual=True)


class WideResidualModel(LectureModel):
    """Step 08: the feed-forward 4x as wide inside."""

    stage = Stage(heads=True, ffwd=True, blocks=True, residual=True, widen=4)


class LayerNormModel(LectureModel):
    """Step 09: + LayerNorm before each sub-layer and before the output layer."""

    stage = Stage(heads=True, ffwd=True, blocks=True, residual=True, widen=4, layernorm=True)


STAGES = {  # model_type -> class
    "lecture_embed": EmbeddingModel,
    "lecture_head": OneHeadModel,
    "lecture_heads": MultiHeadModel,
    "lecture_ffwd": FeedForwardModel,
    "lecture_blocks": BlocksModel,
    "lecture_residual": ResidualModel,
    "lecture_residual_4x": WideResidualModel,
    "lecture_layernorm": LayerNormModel,
}
