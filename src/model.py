"""The lecture's decoder-only transformer (GPT) and its bigram baseline, in plain PyTorch.

Shapes: B batch, T time (tokens), C channels (n_embd), nh heads, hs head size (C // nh), V vocabulary size.
The architecture is the lecture's, parameter for parameter (209,729 at the lecture notebook's size, 10,788,929 at the
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
    # options beyond the lecture, all off by default (docs/experiments.md measures each)
    rope: bool = False  # rotary position embeddings on q and k instead of the learned position table
    norm: str = "layernorm"  # or "rmsnorm": no mean subtraction, no bias
    mlp: str = "relu"  # or "relu2": squared ReLU in the feed-forward
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before their dot products
    tie_embeddings: bool = False  # the output layer reuses the token embedding matrix
    attn_dropout: float | None = None  # dropout on the attention weights; None: the same as ``dropout``

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be a positive integer, got {getattr(self, name)!r}"
            for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1
        ]
        if not problems and self.n_embd % self.n_head:
            heads = [h for h in range(1, min(self.n_embd, 32) + 1) if self.n_embd % h == 0]
            problems.append(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                f"n_head {', '.join(map(str, heads))} fit{'' if self.n_embd <= 32 else ', among others'}"
            )
        for name in ("dropout", "attn_dropout"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name, choices in (("norm", NORMS), ("mlp", ACTIVATIONS)):
            if getattr(self, name) not in choices:
                problems.append(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.rope and not problems and self.head_size % 2:
            problems.append(f"rope needs an even head size, got n_embd / n_head = {self.head_size}")
        if problems:
            raise UserError("invalid model config: " + "; ".join(problems))

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = {"relu": F.relu, "relu2": lambda x: F.relu(x).square()}


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class Rotary(nn.Module):
    """Rotary position embeddings (RoFormer): each pair of a head's channels is rotated by an angle proportional to
    the position, so q . k depends on how far apart two positions are. The tables are rebuilt from the config,
    never saved."""

    def __init__(self, head_size: int, block_size: int, base: float = 10_000.0) -> None:
        super().__init__()
        inv_freq = base ** -(torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
        angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)  # (block_size, hs / 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x`` (B, nh, T, hs) rotated for ``positions``, (T,) or (B, T) per row."""
        cos, sin = self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype)  # (T, hs/2) or (B, T, hs/2)
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVCache(nn.Module):
    """Keys and values of one attention layer, preallocated for the whole window so that a decoding step has the
    same shapes at every position (what ``torch.compile`` and CUDA graphs need); never part of a checkpoint."""

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_size: int, dtype, device) -> None:
        super().__init__()
        shape = (batch_size, n_head, max_len, head_size)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at ``input_pos``, (T,) for every row or (B, T) per row, and return the whole
        cache, in k's dtype (autocast)."""
        if input_pos.dim() == 1:
            self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
            self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        else:  # rows at different positions: continuous batching (src.engine)
            index = input_pos[:, None, :, None].expand_as(k)
            self.k.scatter_(2, index, k.to(self.k.dtype))
            self.v.scatter_(2, index, v.to(self.v.dtype))
        return self.k.to(k.dtype), self.v.to(v.dtype)

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache over rows ``start:stop`` of this one, sharing its memory: what is written through it lands here."""
        view = KVCache.__new__(KVCache)
        nn.Module.__init__(view)
        view.register_buffer("k", self.k[start:stop], persistent=False)
        view.register_buffer("v", self.v[start:stop], persistent=False)
        return view


class CausalSelfAttention(nn.Module):
    """The lecture's multi-head masked self-attention: each of ``n_head`` heads lets every position gather the
    values of the positions up to its own, weighted by how well its query matches their keys (scaled dot products,
    softmax over the past), and the heads' outputs, side by side, are projected back to ``n_embd``. The q, k, v of
    all heads come from one Linear (the lecture's per-head ``key``/``query``/``value`` layers, fused)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_embd, self.head_size = config.n_head, config.n_embd, config.head_size
        # the residual branch's dropout is cheap on a CPU, the attention weights' is not (src.dropout)
        self.dropout = config.dropout if config.attn_dropout is None else config.attn_dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)  # q, k, v of every head at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = BoolMaskDropout(config.dropout)
        self.qk_norm = config.qk_norm
        self.rotary = Rotary(config.head_size, config.block_size) if config.rope else None
        self.kv_cache: KVCache | None = None

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor | None = None):
        """q, k, v (B, nh, T, hs) of ``x`` (B, T, C) at ``positions`` (default 0..T-1), which rotary embeddings
        need."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_size).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_size,)), F.rms_norm(k, (self.head_size,))
        if self.rotary is not None:
            positions = torch.arange(T, device=x.device) if positions is None else positions
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        return q, k, v

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights (B, nh, T, T) that ``forward`` applies to the values: each row a distribution
        over the positions up to its own (the lecture's ``wei``), without dropout."""
        q, k, _ = self._qkv(x)
        T = x.size(1)
        scores = (q @ k.transpose(-2, -1)) * self.head_size**-0.5
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        return scores.masked_fill(future, float("-inf")).softmax(dim=-1)

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Attention's output (B, T, C) at every position of ``x`` (B, T, C); with ``input_pos`` (T,), the positions
        of ``x`` in a KV cache that holds the earlier ones (see ``GPT.setup_cache``)."""
        q, k, v = self._qkv(x, input_pos)  # (B, nh, T, hs) each
        if input_pos is not None:
            k, v = self._cached(input_pos, k, v)
            y = self._masked_attention(q, k, v, input_pos)
        elif self.training and self.dropout > 0 and x.device.type == "cpu":
            # SDPA's fused CPU kernels refuse dropout; its fallback is slower and keeps far more for backward
            y = causal_attention_with_dropout(q, k, v, self.dropout, self.head_size**-0.5)
        elif x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # under bf16 autocast SDPA's CPU kernel runs its backward ~6x slower than in fp32, which cost more than
            # the bf16 matmuls gain (docs/performance.md): attention alone stays fp32
            with torch.autocast("cpu", enabled=False):
                y = self._attend(q.float(), k.float(), v.float())
        else:
            y = self._attend(q, k, v)
        return self._project(y)  # (B, T, C)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=self.head_size**-0.5)

    def forward_at(self, x: torch.Tensor, input_pos: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        """For decoding: attention's output (B, 1, C) at position ``index`` (a 0-d tensor) of ``x`` only, every
        position of ``x`` still written to the cache (if ``input_pos`` is given) as a key and value."""
        q, k, v = self._qkv(x, input_pos)  # (B, nh, T, hs) each
        if input_pos is None:
            input_pos = torch.arange(x.size(1), device=x.device)
        else:
            k, v = self._cached(input_pos, k, v)
        q, query_pos = q.index_select(2, index.view(1)), input_pos.index_select(-1, index.view(1))  # (B, nh, 1, hs)
        return self._project(self._masked_attention(q, k, v, query_pos))  # (B, 1, C)

    def _cached(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        if self.kv_cache is None:
            raise RuntimeError("input_pos needs a KV cache: call model.setup_cache(batch_size) first")
        return self.kv_cache.update(input_pos, k, v)  # (B, nh, block_size, hs) each

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        B, nh, T, hs = y.shape
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _masked_attention(self, q, k, v, query_pos: torch.Tensor) -> torch.Tensor:
        """Attention of the queries at ``query_pos`` over all of k and v (the whole cache when decoding): the
        shapes never change, and a mask lets the query at position p see the keys at 0..p (later cache slots
        hold stale or zero entries). Written out rather than SDPA: for one query the fused kernel costs more than
        the arithmetic, and ``torch.compile`` fuses the mask and softmax."""
        visible = torch.arange(k.size(2), device=q.device) <= query_pos[..., None]  # (Tq, Tk) or (B, Tq, Tk)
        if visible.dim() == 3:
            visible = visible[:, None]  # (B, 1, Tq, Tk): the same for every head
        scores = (q @ k.transpose(-2, -1)) * self.head_size**-0.5
        return scores.masked_fill(~visible, float("-inf")).softmax(dim=-1) @ v


class FeedForward(nn.Module):
    """The lecture's per-position computation after attention's communication: widen to 4 * n_embd, ReLU, project
    back (each position on its own)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = BoolMaskDropout(config.dropout)
        self.activation = ACTIVATIONS[config.mlp]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))  # (B, T, 4C) inside, (B, T, C) out


class Block(nn.Module):
    """Communication (attention) then computation (feed-forward), each as a pre-LayerNorm residual branch."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = FeedForward(config)

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), input_pos)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))

    def forward_at(self, x: torch.Tensor, input_pos: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        """For decoding: the block's output (B, 1, C) at position ``index`` only; the other positions still serve
        as keys and values, but nothing reads their outputs."""
        x = x.index_select(1, index.view(1)) + self.attn.forward_at(self.ln_1(x), input_pos, index)
        return x + self.mlp(self.ln_2(x))


class LanguageModel(nn.Module):
    """What GPT and the bigram model share: the config, the loss and the cache interface that ``src.sampling``
    decodes with."""

    config: GPTConfig
    vocab_axes: dict[str, tuple[int, ...]] = {}  # state-dict entries indexed by token id, and along which axes

    @property
    def head(self) -> nn.Module:
        """The layer that turns ``features`` into logits."""
        raise NotImplementedError

    def features(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """What ``head`` reads at each position of ``idx`` (B, T); ``input_pos`` as in ``forward``, as a tensor."""
        raise NotImplementedError

    def features_at(self, idx: torch.Tensor, input_pos: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        """For decoding: ``features`` (B, 1, C) at position ``index`` (a 0-d tensor) of ``idx`` only."""
        raise NotImplementedError

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, input_pos: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The lecture's contract: logits (B, T, V) for every position of ``idx`` (B, T), and the mean
        cross-entropy against ``targets`` (B, T) when they are given (positions marked -100 do not count).
        ``input_pos`` (with a cache from ``setup_cache``) is the position of ``idx[:, 0]``, or a tensor (T,) of the
        positions of all of ``idx``: tokens before them are read from the cache."""
        if isinstance(input_pos, int):
            end = input_pos + idx.size(1)
            if end > self.config.block_size:
                raise ValueError(f"{end} positions do not fit in block_size {self.config.block_size}")
            input_pos = torch.arange(input_pos, end, device=idx.device)
        logits = self.head(self.features(idx, input_pos))  # (B, T, V)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def next_logits(self, idx: torch.Tensor, input_pos: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        """For decoding (``src.decoding``): the logits (B, V) after position ``index`` (a 0-d tensor) of ``idx``
        (B, T) at ``input_pos`` (T,); with ``index`` a tensor, prompts of any length can be padded to one shape."""
        return self.head(self.features_at(idx, input_pos, index)[:, 0])

    def setup_cache(self, batch_size: int) -> None:
        """Allocate what cached decoding (``forward(..., input_pos=...)``) needs, in the weights' dtype; a no-op
        for stateless models."""

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


class GPT(LanguageModel):
    """The lecture's decoder-only transformer: token plus position embeddings, ``n_layer`` blocks of attention and
    feed-forward, a final LayerNorm and a Linear head that scores every token of the vocabulary as the next one."""

    vocab_axes = {"transformer.wte.weight": (0,), "lm_head.weight": (0,), "lm_head.bias": (0,)}

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        layers = {"wte": nn.Embedding(config.vocab_size, config.n_embd)}
        if not config.rope:  # rotary embeddings carry the positions instead
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        layers["h"] = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        layers["ln_f"] = make_norm(config)
        self.transformer = nn.ModuleDict(layers)  # in the lecture's order: the same seed, the same initial weights
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
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

    @property
    def head(self) -> nn.Module:
        return self.lm_head

    def features(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        x = self._embed(idx, input_pos)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, input_pos)
        return self.transformer.ln_f(x)

    def features_at(self, idx: torch.Tensor, input_pos: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        # the final block works on one position: past the window, exact decoding recomputes a whole window per
        # token, and this spares it the final block's projection and MLP at every other position
        x = self._embed(idx, input_pos)  # (B, T, C)
        *blocks, final = self.transformer.h
        for block in blocks:
            x = block(x, input_pos)
        return self.transformer.ln_f(final.forward_at(x, input_pos, index))  # (B, 1, C)

    def _embed(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        if input_pos is None:
            if idx.size(1) > self.config.block_size:
                raise ValueError(f"{idx.size(1)} positions do not fit in block_size {self.config.block_size}")
            input_pos = torch.arange(idx.size(1), device=idx.device)
        if self.config.rope:
            return self.transformer.wte(idx)  # (B, T, C); positions enter in attention
        return self.transformer.wte(idx) + self.transformer.wpe(input_pos)  # (B, T, C)

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
        c, weight = self.config, self.lm_head.weight
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(batch_size, c.n_head, c.block_size, c.head_size, weight.dtype, weight.device)

    def clear_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def kv_caches(self) -> list[KVCache]:
        return [block.attn.kv_cache for block in self.transformer.h]

    def use_kv_caches(self, caches: list[KVCache]) -> None:
        for block, cache in zip(self.transformer.h, caches, strict=True):
            block.attn.kv_cache = cache


class BigramLanguageModel(LanguageModel):
    """The lecture's baseline: each token reads the logits of the next one straight from a table."""

    vocab_axes = {"token_embedding_table.weight": (0, 1)}

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.vocab_size)

    @property
    def head(self) -> nn.Module:
        return self.token_embedding_table

    def features(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        # the table reads the token itself, so cached decoding (input_pos) needs no cache at all
        return idx

    def features_at(self, idx: torch.Tensor, input_pos: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        return idx.index_select(1, index.view(1))

    def token_embeddings(self) -> torch.Tensor:
        return self.token_embedding_table.weight


MODELS = {"gpt": GPT, "bigram": BigramLanguageModel}  # model_type -> class: the registry every path builds from


def model_type_of(model: LanguageModel) -> str:
    """The registry's name for ``model``'s class."""
    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not in src.model.MODELS: register it there to save or export it")


def build_model(model_type: str = "gpt", **values: Any) -> LanguageModel:
    """The model that plain values describe: ``model_type`` ("gpt" or "bigram") and the ``GPTConfig`` fields among
    ``values``; other keys are ignored, so a CharGPT's or a checkpoint's hyper-parameters can be passed whole."""
    if model_type not in MODELS:
        raise UserError(f"unknown model_type {model_type!r}: choose one of {sorted(MODELS)}")
    return MODELS[model_type](GPTConfig(**{f.name: values[f.name] for f in fields(GPTConfig) if f.name in values}))
