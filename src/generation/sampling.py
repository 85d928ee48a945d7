"""Sampling: argument checks, and how the next token is drawn from logits (``src.generation.decoding`` runs the token
loop).

Filters apply in this order: top-k (clamped to the vocabulary), then temperature, then top-p (which always keeps
the most likely token). ``temperature == 0`` is greedy decoding. Draws use a caller-supplied ``torch.Generator``,
so sampling never moves the global RNG that training depends on.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from src.errors import UserError


def check_sampling_args(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    max_new_tokens: int = 1,
    flag: str = "",
    also: list[str] | None = None,
) -> None:
    """Refuse bad sampling options, all of them in one message with the caller's own problems (``also``); ``flag``
    prefixes each name as the caller's option (``--`` for the generate CLI, ``--sample.`` for the callback)."""
    problems = list(also or [])
    if max_new_tokens < 1:
        problems.append(f"{flag}max_new_tokens must be positive, got {max_new_tokens}")
    if temperature < 0:
        problems.append(f"{flag}temperature must be 0 (greedy) or more, got {temperature}")
    if top_k is not None and top_k < 1:
        problems.append(f"{flag}top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        problems.append(f"{flag}top_p must be in (0, 1], got {top_p}")
    if problems:
        raise UserError("invalid sampling options: " + "; ".join(problems))


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits per row (ties broken by index), the rest -inf."""
    values, indices = torch.topk(logits, min(k, logits.size(-1)), dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (at least one), the rest -inf."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = F.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def exponential_noise(
    batch_size: int, vocab_size: int, generator: torch.Generator | list[torch.Generator] | None, device
) -> torch.Tensor:
    """Exp(1) draws (B, V) for ``draw``: from one generator for the whole batch, or one generator per row, so
    that a row of a batch draws what it would draw alone."""
    noise = torch.empty(batch_size, vocab_size, device=device)
    if isinstance(generator, (list, tuple)):
        for row, g in zip(noise, generator, strict=True):
            row.exponential_(generator=g)
        return noise
    return noise.exponential_(generator=generator)


def draw(
    logits: torch.Tensor,
    noise: torch.Tensor | None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` (B, V), as (B, 1); ``noise`` from ``exponential_noise`` (None when
    greedy). ``argmax(probs / noise)`` is how ``torch.multinomial`` draws one sample, so this draws the tokens that
    ``torch.multinomial(probs, 1, generator=g)`` would, but with the randomness an input: a compiled step can
    take it, and the generator stays outside the graph."""
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    return (F.softmax(logits, dim=-1) / noise).argmax(dim=-1, keepdim=True)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` (B, V), as (B, 1): ``draw`` with fresh noise."""
    noise = None if temperature == 0 else exponential_noise(*logits.shape, generator, logits.device)
    return draw(logits, noise, temperature, top_k, top_p)
