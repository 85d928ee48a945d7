"""The token loop behind ``generate``, the training callback and the CLI, built for speed in the spirit of
gpt-fast: a preallocated KV cache and two fixed shapes, optionally compiled.

Every compiled model call has one of two shapes: one token per sample at position p (a decoding step), or a whole
window of ``block_size`` tokens (prompts are padded to it: causal attention never lets a real position see the
padding, and the step at a padded slot overwrites it before reading it); eager calls skip the padding. Attention
reads the whole cache under a position mask (``src.model.KVCache``), so ``torch.compile`` builds each shape once.
The draw happens inside the step (``src.generation.sampling.draw``), from noise drawn outside it with the caller's
generators: the same tokens as ``torch.multinomial`` with that generator, compiled or not.

Cache modes, for text longer than the context window (``block_size``):
- ``exact`` (default): the prompt fills the KV cache once, then each step feeds one token. Once the text outgrows
  the window, every position shifts, so each step recomputes the last ``block_size`` tokens, exactly like the
  lecture's ``idx[:, -block_size:]``.
- ``window``: when the cache is full, refill it with the last ``block_size // 2`` tokens and go on one token at a
  time. Much faster beyond the window, but the model then sees between half and all of the window.
- ``none``: no cache; every step recomputes the last ``block_size`` tokens (the lecture's loop, for reference).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch

from src.generation.sampling import check_sampling_args, draw, exponential_noise, sample_next
from src.model import LanguageModel

Generators = torch.Generator | list[torch.Generator] | None
CACHE_MODES = ("exact", "window", "none")  # see the module docstring


def check_decoding_args(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cache: str = "exact",
    max_new_tokens: int = 1,
    flag: str = "",
) -> None:
    """Refuse bad sampling options and cache modes, all of them in one message (``flag`` as in
    ``src.generation.sampling.check_sampling_args``)."""
    bad_cache = (
        [f"{flag}cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}"] if cache not in CACHE_MODES else []
    )
    check_sampling_args(temperature, top_k, top_p, max_new_tokens, flag, also=bad_cache)


def next_token(
    model: LanguageModel,
    idx: torch.Tensor,
    input_pos: torch.Tensor,
    index: torch.Tensor,
    noise: torch.Tensor | None,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The token (B, 1) after position ``index`` of ``idx`` (B, T) at ``input_pos`` (T,), and the logits (B, V) it
    was drawn from: the step that is compiled."""
    logits = model.next_logits(idx, input_pos, index)
    return draw(logits, noise, temperature, top_k, top_p), logits


def short_prompt(block_size: int) -> int:
    """The longest prompt that fills the cache a token at a time: a few steps cost less than the padded window
    (docs/performance.md, first token)."""
    return max(1, block_size // 32)


def prefill(length: int, block_size: int, one: Callable[[int, bool], Any], whole: Callable[[], Any]) -> Any:
    """Caches a prompt of ``length`` tokens from position 0 and returns what the call at its last position returns:
    a short prompt (``short_prompt``) one token per call, ``one(position, last)``, a longer one in one call,
    ``whole()``. ``Decoder.prefill`` and the server's engine both fill their caches by this rule."""
    if length > short_prompt(block_size):
        return whole()
    for position in range(length):
        out = one(position, position == length - 1)
    return out


def refill_length(block_size: int, cache: str, cached: int) -> int:
    """How many of the last tokens fill the cache from position 0: the whole window (at the start, and in ``exact``
    mode), or half of it once the window is full in ``window`` mode (see the module docstring)."""
    return (block_size // 2 or 1) if cache == "window" and cached else block_size


@functools.cache
def compiled_next_token() -> Any:
    """``next_token`` compiled once per process (each shape, dtype and set of sampling options is a graph of its
    own). Its shapes are fixed, so nothing is left dynamic. Inductor's on-disk cache spares a second process the
    code generation, not the tracing (docs/performance.md, Decoding speed)."""
    return torch.compile(next_token, fullgraph=True, dynamic=False)


class Decoder:
    """Draws the next token of B samples from ``model`` (in ``dtype``, a copy when that differs) with a static
    cache: ``prefill`` for up to ``block_size`` tokens from position 0, ``step`` for one more token each. After
    either, ``logits`` (B, V) are the ones the token was drawn from (the server's logprobs)."""

    def __init__(
        self,
        model: LanguageModel,
        batch_size: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        compile: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        weight = next(model.parameters())
        self.model = copy.deepcopy(model).to(dtype) if dtype not in (None, weight.dtype) else model
        self.device, self.batch_size = weight.device, batch_size
        self.block_size, self.vocab_size = model.config.block_size, model.config.vocab_size
        self.options = (temperature, top_k, top_p)
        self.compiled = compile
        self.forward = compiled_next_token() if compile else next_token
        self.positions = torch.arange(self.block_size, device=self.device)
        # inputs are copied into these, so every call sees the same shapes and strides (no recompiling)
        self.padded = torch.zeros(batch_size, self.block_size, dtype=torch.long, device=self.device)
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.no_noise = torch.ones(batch_size, self.vocab_size, device=self.device)  # for steps whose draw is unused

    def __enter__(self) -> Decoder:
        self.training = self.model.training
        self.model.eval()  # no dropout: sampling never draws from the global RNG
        self.model.setup_cache(self.batch_size)
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.clear_cache()
        self.model.train(self.training)

    def prefill(self, idx: torch.Tensor, generator: Generators) -> torch.Tensor:
        """The token after ``idx`` (B, T <= block_size), its first token at position 0; caches all of it."""

        def one(position: int, last: bool) -> torch.Tensor:  # only the last position's draw is used
            return self.step(idx[:, position : position + 1], position, generator, draws=last)

        return prefill(idx.size(1), self.block_size, one, lambda: self._whole(idx, generator))

    def _whole(self, idx: torch.Tensor, generator: Generators) -> torch.Tensor:
        index = torch.tensor(idx.size(1) - 1, device=self.device)
        if not self.compiled:  # eager: the padding would only cost time (a refill of half a window, twice over)
            return self._call(idx, self.positions[: idx.size(1)], index, generator)
        self.padded[:, : idx.size(1)] = idx
        return self._call(self.padded, self.positions, index, generator)

    def step(self, token: torch.Tensor, position: int, generator: Generators, draws: bool = True) -> torch.Tensor:
        """The token after ``token`` (B, 1) at ``position``, the cache holding every earlier position; with
        ``draws=False`` only the cache matters, and the generators are left alone."""
        input_pos = torch.tensor([position], device=self.device)
        self.token.copy_(token)
        return self._call(self.token, input_pos, torch.tensor(0, device=self.device), generator, draws)

    def _call(self, idx, input_pos, index, generator: Generators, draws: bool = True) -> torch.Tensor:
        noise = None if self.options[0] == 0 else self.no_noise  # greedy takes none
        if noise is not None and draws:
            noise = exponential_noise(self.batch_size, self.vocab_size, generator, self.device)
        token, self.logits = self.forward(self.model, idx, input_pos, index, noise, *self.options)
        return token


@torch.inference_mode()
def generate_tokens(
    model: LanguageModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: Generators = None,
    cache: str = "exact",
    compile: bool = False,
    dtype: torch.dtype | None = None,
) -> Iterator[torch.Tensor]:
    """Yield ``max_new_tokens`` tokens (B, 1) that continue the prompt ``idx`` (B, T), one at a time.

    The prompt needs a token at least (``src.data.tokenizer.prompt_ids`` starts an empty text from a newline, the
    lecture's rule); a prompt longer than the context window is cropped to its last
    ``block_size`` tokens. See the module docstring for ``cache``. ``generator`` is one for the batch or one per
    sample (then each sample is what it would be alone with its generator). ``compile`` and ``dtype`` (e.g.
    ``torch.bfloat16`` weights) apply to the cached modes.
    """
    check_decoding_args(temperature, top_k, top_p, cache, max_new_tokens)
    if idx.size(1) == 0:
        raise ValueError(
            "an empty prompt: give one token at least (src.data.tokenizer.prompt_ids turns '' into a newline)"
        )
    window = model.config.block_size
    seq = idx[:, -window:]
    if cache == "none" or not model.has_cache:  # the lecture's staged models re-read the window (no KV cache)
        yield from _uncached(model, seq, max_new_tokens, (temperature, top_k, top_p), generator)
        return
    with Decoder(model, seq.size(0), temperature, top_k, top_p, compile, dtype) as decoder:
        cached = 0  # tokens of seq held in the cache; 0 means fill it from position 0
        for _ in range(max_new_tokens):
            if 0 < cached < window:
                token = decoder.step(seq[:, -1:], cached, generator)
                cached += 1
            else:
                refill = seq[:, -refill_length(window, cache, cached) :]
                token = decoder.prefill(refill, generator)
                cached = refill.size(1)
            seq = torch.cat([seq[:, -window:], token], dim=1)
            yield token


def _uncached(model, seq: torch.Tensor, max_new_tokens: int, options: tuple, generator: Generators):
    training, window = model.training, model.config.block_size
    model.eval()
    try:
        for _ in range(max_new_tokens):
            # model.forward, not model(...): a model compiled in place would recompile for every length
            logits, _ = model.forward(seq)
            token = sample_next(logits[:, -1], *options, generator)
            seq = torch.cat([seq, token], dim=1)[:, -window:]
            yield token
    finally:
        model.train(training)


def generate(model: LanguageModel, idx: torch.Tensor, max_new_tokens: int, **options: Any) -> torch.Tensor:
    """The prompt ``idx`` (B, T) followed by ``max_new_tokens`` sampled tokens: what ``generate_tokens`` yields
    with the same ``options``, collected."""
    return torch.cat([idx, *generate_tokens(model, idx, max_new_tokens, **options)], dim=1)
