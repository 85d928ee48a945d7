"""Sampling: argument checks, logit filters and the one token loop behind ``generate``, the callback and the CLI.
The model only returns logits; generation imports the model, never the reverse.

Filters apply in this order: top-k (clamped to the vocabulary), then temperature, then top-p (which always keeps
the most likely token). ``temperature == 0`` is greedy decoding. Draws use a caller-supplied ``torch.Generator``,
so sampling never moves the global RNG that training depends on.

Cache modes, for text longer than the context window (``block_size``):
- ``exact`` (default): the prompt fills the KV cache once, then each step feeds one token. Once the text outgrows
  the window, every position shifts, so each step recomputes the last ``block_size`` tokens, exactly like the
  lecture's ``idx[:, -block_size:]``.
- ``window``: when the cache is full, refill it with the last ``block_size // 2`` tokens and go on one token at a
  time. Much faster beyond the window, but the model then sees between half and all of the window.
- ``none``: no cache; every step recomputes the last ``block_size`` tokens (the lecture's loop, for reference).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.nn import functional as F

from src.errors import UserError
from src.model import LanguageModel

CACHE_MODES = ("exact", "window", "none")
START_TOKEN = 0  # what an empty prompt starts from: the newline in tiny-shakespeare, as in the lecture


def check_sampling_args(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cache: str = "exact",
    max_new_tokens: int = 1,
    flag: str = "",
) -> None:
    """Refuse bad sampling options, all of them in one message; ``flag`` prefixes each name as the caller's option
    (``--`` for the generate CLI, ``--sample.`` for the training callback)."""
    problems = []
    if max_new_tokens < 1:
        problems.append(f"{flag}max_new_tokens must be positive, got {max_new_tokens}")
    if temperature < 0:
        problems.append(f"{flag}temperature must be 0 (greedy) or more, got {temperature}")
    if top_k is not None and top_k < 1:
        problems.append(f"{flag}top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        problems.append(f"{flag}top_p must be in (0, 1], got {top_p}")
    if cache not in CACHE_MODES:
        problems.append(f"{flag}cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
    if problems:
        raise UserError("invalid sampling options: " + "; ".join(problems))


def with_start_token(idx: torch.Tensor) -> torch.Tensor:
    """The prompt (B, T), or ``START_TOKEN`` (B, 1) when it is empty."""
    return idx if idx.size(1) else torch.full((idx.size(0), 1), START_TOKEN, dtype=torch.long, device=idx.device)


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


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` (B, V), as (B, 1)."""
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)


@torch.inference_mode()
def generate_tokens(
    model: LanguageModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    cache: str = "exact",
) -> Iterator[torch.Tensor]:
    """Yield ``max_new_tokens`` tokens (B, 1) that continue the prompt ``idx`` (B, T), one at a time.

    An empty prompt starts from ``START_TOKEN``; a prompt longer than the context window is cropped to its last
    ``block_size`` tokens. See the module docstring for ``cache``.
    """
    check_sampling_args(temperature, top_k, top_p, cache, max_new_tokens)
    window = model.config.block_size
    seq = with_start_token(idx)[:, -window:]
    cached = 0  # tokens of seq held in the cache; 0 means refill it
    # eager forward even when the model was compiled in place: decoding shapes change every step
    forward = model.forward
    if cache != "none":
        model.setup_cache(seq.size(0))
    try:
        for _ in range(max_new_tokens):
            if cache == "none":
                logits, _ = forward(seq[:, -window:])
            elif 0 < cached < window:
                logits, _ = forward(seq[:, -1:], input_pos=cached)
                cached += 1
            else:
                refill = seq[:, -(window // 2 or 1) :] if cache == "window" and cached else seq[:, -window:]
                logits, _ = forward(refill, input_pos=0)
                cached = refill.size(1)
            token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
            seq = torch.cat([seq[:, -window:], token], dim=1)
            yield token
    finally:
        model.clear_cache()


def generate(model: LanguageModel, idx: torch.Tensor, max_new_tokens: int, **options: Any) -> torch.Tensor:
    """The prompt ``idx`` (B, T) (``START_TOKEN`` if empty) followed by ``max_new_tokens`` sampled tokens: what
    ``generate_tokens`` yields with the same ``options``, collected."""
    return torch.cat([with_start_token(idx), *generate_tokens(model, idx, max_new_tokens, **options)], dim=1)
