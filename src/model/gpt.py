"""The lecture's decoder-only transformer, in plain PyTorch: token and position embeddings, blocks of attention and
feed-forward, a final LayerNorm and an output layer.

Shapes: B batch, T time (tokens), C channels (n_embd), nh heads, hs head size (C // nh), V vocabulary size.
The architecture is the lecture's, parameter for parameter (``tests/model/test_gpt.py`` counts both lecture sizes);
what differs is speed (one fused q/k/v projection, and the kernels of ``src.model.dropout``), the attention scale
(``hs ** -0.5``; the lecture's final code uses ``C ** -0.5``), GPT-2 style init, and a KV cache.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

from src.model.base import GPTConfig, LanguageModel, gpt2_init, token_loss
from src.model.dropout import BoolMaskDropout, causal_attention
from src.model.kv_cache import KVCache


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class SquaredReLU(nn.Module):
    """relu(x) ** 2 (Primer, So et al. 2021): as cheap as ReLU, and learns more per step here (docs/experiments.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


def activation(name: str) -> nn.Module:
    """The feed-forward's non-linearity: the lecture's ReLU, or its square (``relu2``)."""
    return nn.ReLU() if name == "relu" else SquaredReLU()


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


class CausalSelfAttention(nn.Module):
    """The lecture's multi-head masked self-attention: each of ``n_head`` heads lets every position gather the
    values of the positions up to its own, weighted by how well its query matches their keys (scaled dot products,
    softmax over the past), and the heads' outputs, side by side, are projected back to ``n_embd``. The q, k, v of
    all heads come from one Linear (the lecture's per-head ``key``/``query``/``value`` layers, fused)."""

    def __init__(self, config: GPTConfig, first: bool = True) -> None:
        super().__init__()
        self.n_head, self.n_embd, self.head_size = config.n_head, config.n_embd, config.head_size
        self.scale = config.head_size**-0.5  # keeps the scores' variance near 1, so the softmax stays soft
        # the residual branch's dropout is cheap on a CPU, the attention weights' is not (src.model.dropout)
        self.dropout = config.dropout if config.attn_dropout is None else config.attn_dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)  # q, k, v of every head at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = BoolMaskDropout(config.dropout)
        self.qk_norm = config.qk_norm
        self.rotary = Rotary(config.head_size, config.block_size) if config.rope else None
        # value residuals: the first layer hands its values on, each later one takes a learned share of them
        self.value_mix = nn.Parameter(torch.tensor(0.5)) if config.value_residual and not first else None
        # attention gate: a share in (0, 1) of each head's output, per position, from what the layer reads
        self.gate = nn.Linear(config.n_embd, config.n_head, bias=False) if config.attn_gate else None
        self.kv_cache: KVCache | None = None

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor | None = None, v1: torch.Tensor | None = None):
        """q, k, v (B, nh, T, hs) of ``x`` (B, T, C) at ``positions`` (default 0..T-1), which rotary embeddings
        need; with value residuals, ``v1`` is the first layer's v, mixed into this one's."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, self.head_size).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.value_mix is not None and v1 is not None:  # None only for ``weights``, which reads no values
            v = torch.lerp(v, v1, self.value_mix.to(v.dtype))  # (1 - mix) * v + mix * v1
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
        return self._weights(q, k, torch.arange(x.size(1), device=x.device))

    def _weights(self, q: torch.Tensor, k: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale) (B, nh, Tq, Tk) for queries at ``query_pos`` ((Tq,), or (B, Tq) per row), each
        seeing the keys at positions 0..its own. Written out rather than SDPA where the weights themselves are
        wanted, or when decoding: for one query the fused kernel costs more than the arithmetic, and
        ``torch.compile`` fuses the mask and softmax."""
        visible = torch.arange(k.size(2), device=q.device) <= query_pos[..., None]  # (Tq, Tk) or (B, Tq, Tk)
        if visible.dim() == 3:
            visible = visible[:, None]  # (B, 1, Tq, Tk): the same for every head
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, Tq, Tk)
        return scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)

    def forward(
        self, x: torch.Tensor, input_pos: torch.Tensor | None = None, v1: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention's output (B, T, C) at every position of ``x`` (B, T, C), and the values (B, nh, T, hs) it
        weighed (the first layer's are the later layers' ``v1`` with value residuals); with ``input_pos`` (T,), the
        positions of ``x`` in a KV cache that holds the earlier ones (see ``GPT.setup_cache``)."""
        q, k, v = self._qkv(x, input_pos, v1)  # (B, nh, T, hs) each
        if input_pos is not None:
            k, cached_v = self._cached(input_pos, k, v)  # (B, nh, block_size, hs): stale slots are masked out
            y = self._weights(q, k, input_pos) @ cached_v
        else:
            y = causal_attention(q, k, v, self.dropout if self.training else 0.0, self.scale)
        return self._project(y, x), v  # (B, T, C), (B, nh, T, hs)

    def forward_at(
        self, x: torch.Tensor, input_pos: torch.Tensor | None, index: torch.Tensor, v1: torch.Tensor | None = None
    ) -> torch.Tensor:
        """For decoding: attention's output (B, 1, C) at position ``index`` (a 0-d tensor) of ``x`` only, every
        position of ``x`` still written to the cache (if ``input_pos`` is given) as a key and value."""
        q, k, v = self._qkv(x, input_pos, v1)  # (B, nh, T, hs) each
        if input_pos is None:
            input_pos = torch.arange(x.size(1), device=x.device)
        else:
            k, v = self._cached(input_pos, k, v)
        q, query_pos = q.index_select(2, index.view(1)), input_pos.index_select(-1, index.view(1))  # (B, nh, 1, hs)
        y = self._weights(q, k, query_pos) @ v  # (B, nh, 1, hs)
        return self._project(y, x.index_select(1, index.view(1)))  # (B, 1, C)

    def _cached(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        if self.kv_cache is None:
            raise RuntimeError("input_pos needs a KV cache: call model.setup_cache(batch_size) first")
        return self.kv_cache.update(input_pos, k, v)  # (B, nh, block_size, hs) each

    def _project(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The heads' outputs ``y`` (B, nh, T, hs) at the positions of ``x`` (B, T, C), side by side and projected."""
        B, nh, T, hs = y.shape
        y = y.transpose(1, 2)  # (B, T, nh, hs)
        if self.gate is not None:
            y = y * torch.sigmoid(self.gate(x)).unsqueeze(-1)  # (B, T, nh, 1): one share per head and position
        y = y.contiguous().view(B, T, nh * hs)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class FeedForward(nn.Module):
    """The lecture's per-position computation after attention's communication: widen to 4 * n_embd, ReLU, project
    back (each position on its own)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = BoolMaskDropout(config.dropout)
        self.activation = activation(config.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))  # (B, T, 4C) inside, (B, T, C) out


class Block(nn.Module):
    """Communication (attention) then computation (feed-forward), each as a pre-LayerNorm residual branch."""

    def __init__(self, config: GPTConfig, first: bool = True) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, first)
        self.ln_2 = make_norm(config)
        self.mlp = FeedForward(config)

    def forward(
        self, x: torch.Tensor, input_pos: torch.Tensor | None = None, v1: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output (B, T, C) and its attention's values (see ``CausalSelfAttention.forward``)."""
        attended, v = self.attn(self.ln_1(x), input_pos, v1)
        x = x + attended  # (B, T, C)
        return x + self.mlp(self.ln_2(x)), v

    def forward_at(
        self, x: torch.Tensor, input_pos: torch.Tensor | None, index: torch.Tensor, v1: torch.Tensor | None = None
    ) -> torch.Tensor:
        """For decoding: the block's output (B, 1, C) at position ``index`` only; the other positions still serve
        as keys and values, but nothing reads their outputs."""
        x = x.index_select(1, index.view(1)) + self.attn.forward_at(self.ln_1(x), input_pos, index, v1)
        return x + self.mlp(self.ln_2(x))


class GPT(LanguageModel):
    """The lecture's decoder-only transformer: token plus position embeddings, ``n_layer`` blocks of attention and
    feed-forward, a final LayerNorm and a Linear head that scores every token of the vocabulary as the next one."""

    vocab_axes = {
        "transformer.wte.weight": (0,),
        "lm_head.weight": (0,),
        "lm_head.bias": (0,),
        "mtp_head.weight": (0,),
        "mtp_head.bias": (0,),
    }

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        layers = {"wte": nn.Embedding(config.vocab_size, config.n_embd)}
        if not config.rope:  # rotary embeddings carry the positions instead
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        layers["h"] = nn.ModuleList(Block(config, first=i == 0) for i in range(config.n_layer))
        layers["ln_f"] = make_norm(config)
        self.transformer = nn.ModuleDict(layers)  # in the lecture's order: the same seed, the same initial weights
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        if config.mtp_weight:  # multi-token prediction: a second head scores the token after next, for training
            self.mtp_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        if config.unet:  # one weight per skip: the first half's outputs, the last half's inputs, mirrored
            self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2))
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        if config.init == "gpt2":
            gpt2_init(self, lambda name: name.endswith("c_proj.weight"))

    @property
    def head(self) -> nn.Module:
        return self.lm_head

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        return self.transformer.ln_f(self._blocks(self._embed(idx)))  # (B, T, C)

    def objective(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """With ``mtp_weight``, the next-token loss plus that weight times the loss of ``mtp_head`` predicting each
        position's token after next (``targets`` shifted by one) from the same features."""
        if not self.config.mtp_weight:
            return super().objective(idx, targets)
        features = self.features(idx)  # (B, T, C)
        loss = token_loss(self.logits(features), targets)
        after_next = token_loss(self.mtp_head(features[:, :-1]), targets[:, 1:])  # position t scores token t+2
        return loss, loss + self.config.mtp_weight * after_next

    def features_at(self, idx: torch.Tensor, input_pos: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        # the final block works on one position: past the window, exact decoding recomputes a whole window per
        # token, and this spares it the final block's projection and MLP at every other position
        return self.transformer.ln_f(self._blocks(self._embed(idx, input_pos), input_pos, index))  # (B, 1, C)

    def _blocks(
        self,
        x: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
        maps: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``x`` (B, T, C) through every block. With ``index``, the last block computes that position only (B, 1, C)
        (``Block.forward_at``); with ``maps``, each block's attention weights are appended to it. Besides x, two
        things pass between blocks: the U-net's skips (``config.unet``: the outputs of the first half's blocks,
        each added, weighted, to the input of its mirror in the last half) and the first layer's values
        (``config.value_residual``, mixed into every later layer's)."""
        n, half = self.config.n_layer, self.config.n_layer // 2
        skips, v1 = [], None
        for i, block in enumerate(self.transformer.h):
            if self.config.unet and i >= n - half:  # U-net in: block i takes block n-1-i's output
                x = x + self.skip_weights[i - (n - half)] * skips.pop()
            if maps is not None:
                maps.append(block.attn.weights(block.ln_1(x)))
            if index is not None and i == n - 1:
                return block.forward_at(x, input_pos, index, v1)
            x, v = block(x, input_pos, v1)
            if self.config.value_residual and i == 0:
                v1 = v
            if self.config.unet and i < half:  # U-net out: kept for block n-1-i
                skips.append(x)
        return x

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
        maps = []
        self._blocks(self._embed(idx), maps=maps)
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
