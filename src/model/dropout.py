"""The attention kernel each case takes, and dropout for training on CPUs, where PyTorch's own costs the most:
``bernoulli_`` draws slower than ``rand``, ``F.dropout`` keeps a float mask for backward, and SDPA's fused CPU kernels
refuse attention dropout, so its fallback keeps several float (B, nh, T, T) tensors per layer.

Here masks are drawn with ``rand`` and kept as bool; attention keeps q, k, v and its mask and recomputes the weights
in backward, as flash attention does, a few sequences at a time so the (T, T) tiles stay in cache: faster and far
smaller than PyTorch's path (figures in docs/performance.md). On GPUs, PyTorch's kernels are used.
"""

import torch
import torch.nn as nn
from torch.nn import functional as F


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """Causal attention of q, k, v (B, nh, T, hs) with dropout ``p`` on the weights (0 outside training): the kernel
    that is fastest for the case.

    - CPU with dropout: ``causal_attention_with_dropout`` (SDPA's fused CPU kernels refuse dropout, and its
      fallback is slower and keeps far more for backward);
    - CPU under autocast: SDPA in float32 (its bf16 CPU backward costs more than the bf16 matmuls save:
      docs/performance.md);
    - anywhere else: SDPA as it is.
    """
    if q.device.type == "cpu" and p > 0:
        return causal_attention_with_dropout(q, k, v, p, scale)
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=scale)


class BoolMaskDropout(nn.Dropout):
    """``nn.Dropout`` that, on CPU, draws its mask with ``rand`` and keeps it as bool (1 byte per element, not 4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand(x.shape, device=x.device) >= self.p  # float32 even under autocast: p is not quantised
        return torch.where(keep, x, 0.0).mul_(1 / (1 - self.p))


ROWS_PER_CHUNK = 8  # (batch x head) rows of (T, T) weights per tile: 8 x 256 x 256 floats = 2 MiB


def _widen(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _future(q: torch.Tensor) -> torch.Tensor:
    """(T, T), True where a key lies after its query: what the causal mask hides."""
    T = q.size(-2)
    return torch.ones(T, T, dtype=torch.bool, device=q.device).triu_(1)


def _weights(q: torch.Tensor, k: torch.Tensor, scale: float, future: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale) with ``future`` hidden, in float32 or better: (n, T, T)."""
    scores = _widen(torch.matmul(q, k.transpose(-2, -1))).mul_(scale)
    return scores.masked_fill_(future, float("-inf")).softmax(dim=-1)


class _CausalAttentionWithDropout(torch.autograd.Function):
    @staticmethod
    @torch.autocast("cpu", enabled=False)  # dtypes are handled here: matmuls in q's dtype, softmax in float32
    def forward(ctx, q, k, v, p: float, scale: float):
        B, nh, T, hs = q.shape
        q3, k3, v3 = (t.reshape(B * nh, T, hs) for t in (q, k, v))  # (B*nh, T, hs): one row per head
        keep = torch.empty(B * nh, T, T, dtype=torch.bool, device=q.device)
        y, future = torch.empty_like(v3), _future(q3)
        for i in range(0, B * nh, ROWS_PER_CHUNK):
            rows = slice(i, i + ROWS_PER_CHUNK)
            torch.ge(torch.rand(keep[rows].shape, device=q.device), p, out=keep[rows])  # in float32, as above
            att = _weights(q3[rows], k3[rows], scale, future).mul_(keep[rows]).mul_(1 / (1 - p))
            torch.matmul(att.to(v3.dtype), v3[rows], out=y[rows])
        ctx.save_for_backward(q3, k3, v3, keep)
        ctx.p, ctx.scale, ctx.shape = p, scale, q.shape
        return y.view(B, nh, T, hs)  # (B*nh, T, hs) -> (B, nh, T, hs)

    @staticmethod
    def backward(ctx, dy):
        q3, k3, v3, keep = ctx.saved_tensors
        dy3 = dy.reshape(v3.shape).to(v3.dtype)  # (B, nh, T, hs) -> (B*nh, T, hs)
        dq, dk, dv = torch.empty_like(q3), torch.empty_like(k3), torch.empty_like(v3)
        s, future = 1 / (1 - ctx.p), _future(q3)
        for i in range(0, q3.size(0), ROWS_PER_CHUNK):
            rows = slice(i, i + ROWS_PER_CHUNK)
            probs = _weights(q3[rows], k3[rows], ctx.scale, future)  # P
            mask = keep[rows]
            att = (probs * mask).mul_(s)  # A = P * M * s, what multiplied v
            torch.matmul(att.to(v3.dtype).transpose(-2, -1), dy3[rows], out=dv[rows])
            datt = _widen(torch.matmul(dy3[rows], v3[rows].transpose(-2, -1)))
            dprobs = datt.mul_(mask).mul_(s)
            # softmax backward: dS = P * (dP - rowsum(dP * P))
            dscores = probs.mul_(dprobs - (dprobs * probs).sum(-1, keepdim=True)).mul_(ctx.scale).to(q3.dtype)
            torch.matmul(dscores, k3[rows], out=dq[rows])
            torch.matmul(dscores.transpose(-2, -1), q3[rows], out=dk[rows])
        shape = ctx.shape
        return dq.view(shape), dk.view(shape), dv.view(shape), None, None  # (B, nh, T, hs) each


def causal_attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, scale: float):
    """What ``F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=scale)`` computes.

    Args:
        q, k, v: (B, nh, T, hs), the same T for all three.
        p: dropout probability on the attention weights, in [0, 1).
        scale: multiplies q k^T before the softmax.
    """
    return _CausalAttentionWithDropout.apply(q, k, v, p, scale)
