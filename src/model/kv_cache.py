"""The KV cache of one attention layer: preallocated, never saved, and shared row by row with continuous batching."""

from __future__ import annotations

import torch
import torch.nn as nn


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
        else:  # rows at different positions: continuous batching (src.serving.engine)
            index = input_pos[:, None, :, None].expand_as(k)  # (B, T) -> (B, nh, T, hs)
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

    def copy_row(self, target: int, source: int) -> None:
        """Row ``source``'s keys and values into row ``target`` (the engine packs its rows when one leaves)."""
        self.k[target].copy_(self.k[source])
        self.v[target].copy_(self.v[source])
