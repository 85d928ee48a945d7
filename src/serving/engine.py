"""Continuous batching: the completions of many requests decoded together, one batched model step at a time, a
completion joining or leaving between steps (llama.cpp's server calls them slots). ``src.serve`` puts HTTP in
front of it.

Each completion decodes exactly as ``src.generation.decoding.generate_tokens`` would decode it alone, with its own
generator and sampling options: it joins with a prefill of its row of the shared KV cache (``KVCache.rows``, with the
calls ``Decoder.prefill`` makes for ``generate``), refills its row the same way when the window is full (the ``cache``
mode's rule), and otherwise takes one token in the batched step, where each row attends at its own position. The
completions that prefill in a round with the same number of tokens do it together, in adjacent rows (a batch of them
refills its windows in one call, ~25% less than one call each). Rows are kept packed (a leaving row's slot takes the
last row's cache), so a step costs what the completions being served need, not ``max_batch``. A row that prefilled
in this round still rides in the batched step as padding: what it writes there sits at its next position, which its
next step overwrites before reading.

A completion that asks for ``logprobs`` gets a ``Score`` per token (``src.serving.scoring``); with ``score_prompt``,
its prompt's too, in one forward pass per round; ``max_tokens`` 0 then scores without generating.

The engine runs in a thread of its own, so the model never blocks the server's event loop; ``submit`` and
``cancel`` may be called from any thread, and ``sink`` receives each round's text from the engine's thread.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from src.data.tokenizer import Tokenizer
from src.errors import UserError
from src.generation.decoding import CACHE_MODES, prefill, refill_length
from src.generation.sampling import draw, exponential_noise
from src.generation.stop import StopAtText
from src.model import LanguageModel
from src.serving.scoring import Score, score_prompts, score_tokens


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None


@dataclass(frozen=True)
class Request:
    """What one completion asks for: plain values, which cross to a worker process whole."""

    ids: tuple[int, ...]  # the prompt's ids, already cropped to the window
    max_tokens: int
    seed: int
    sampling: Sampling = Sampling()
    stops: tuple[str, ...] = ()
    logprobs: int | None = None  # alternatives to score per token (0 to 5); None: no scores
    score_prompt: bool = False  # score the prompt's tokens too (the prompt must fit the window)


@dataclass(eq=False)
class Completion:
    """One request being decoded and the engine's progress on it."""

    request: Request
    tag: object = None  # the caller's (the server keeps its request and choice index here)
    ids: list[int] = field(init=False)  # the prompt and the tokens so far, the last window of them
    produced: int = 0
    finish_reason: str | None = None
    cancelled: bool = False
    cached: int = 0  # tokens of ids held in its cache row; 0 until it joins
    slot: int = -1

    def __post_init__(self) -> None:
        self.ids = list(self.request.ids)


class QueueFull(Exception):
    """More completions are waiting than the engine was told to hold."""


class Pieces:
    """A text sink for ``StopAtText`` that hands over what was written since the last ``take``."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def flush(self) -> None:
        pass

    def take(self) -> str:
        text, self.parts = "".join(self.parts), []
        return text


# (completion, new text, finish reason once it is done, the scores of its new tokens: [] without logprobs)
Event = tuple[Completion, str, str | None, list[Score]]


def check_servable(model: LanguageModel) -> None:
    if not model.has_cache:
        raise UserError(
            f"{type(model).__name__} has no KV cache, which continuous batching needs: sample it with "
            "python -m src.generate (the lecture's staged models are for learning, not serving)"
        )


class Engine:
    """Decodes up to ``max_batch`` completions at once; up to ``max_queue`` more wait their turn."""

    def __init__(
        self,
        model: LanguageModel,
        tokenizer: Tokenizer,
        sink: Callable[[list[Event]], None],
        max_batch: int = 8,
        max_queue: int = 64,
        cache: str = "window",
    ) -> None:
        if cache not in ("exact", "window"):
            raise ValueError(f"the engine decodes with a cache: exact or window, got {cache!r} (of {CACHE_MODES})")
        check_servable(model)
        self.model, self.tokenizer, self.sink = model.eval(), tokenizer, sink
        self.max_batch, self.max_queue, self.cache = max_batch, max_queue, cache
        self.window = model.config.block_size
        self.device = next(model.parameters()).device
        self.model.setup_cache(max_batch)
        self.caches = model.kv_caches()
        self.positions = torch.arange(self.window, device=self.device)
        self.views: dict[tuple[int, int], list] = {}  # KVCache.rows views, made once each
        self.using = (0, max_batch)
        self.active: list[Completion] = []
        self.waiting: collections.deque[Completion] = collections.deque()
        self.state: dict[Completion, _State] = {}
        self.changed = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="chargpt-engine", daemon=True)

    def start(self) -> Engine:
        self.thread.start()
        return self

    def close(self) -> None:
        with self.changed:
            self.closing = True
            self.changed.notify()
        self.thread.join()

    def submit(self, completions: list[Completion]) -> None:
        """Queue these completions (all or none: ``QueueFull`` when the queue cannot take them all)."""
        with self.changed:
            if len(self.waiting) + len(completions) > self.max_queue + max(self.max_batch - len(self.active), 0):
                raise QueueFull
            self.waiting.extend(completions)
            self.changed.notify()

    def cancel(self, completion: Completion) -> None:
        """Stop decoding ``completion``: a waiting one leaves the queue now, an active one frees its slot at the
        next step (no event is sent for it)."""
        with self.changed:
            completion.cancelled = True
            if completion in self.waiting:
                self.waiting.remove(completion)
            self.changed.notify()

    def counts(self) -> tuple[int, int]:
        """(completions being decoded, completions waiting)."""
        with self.changed:
            return len(self.active), len(self.waiting)

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.changed:
                    while not self.closing and not self.waiting and not self.active:
                        self.changed.wait()
                    if self.closing:
                        return
                    for completion in [c for c in self.active if c.cancelled]:
                        self._free(completion)
                    while self.waiting and len(self.active) < self.max_batch:
                        self._join(self.waiting.popleft())
                if self.active:
                    self._round()

    def _round(self) -> None:
        events: list[Event] = []
        try:
            joining = [c for c in self.active if c.request.score_prompt and c.produced == c.cached == 0]
            if joining:
                asked = [c.request.logprobs or 0 for c in joining]
                scores = score_prompts(self.model, self.tokenizer, [c.request.ids for c in joining], asked)
                for completion, scored in zip(joining, scores):
                    self.state[completion].scores = scored
            fresh, stepping = [], []
            for completion in self.active:
                if completion.request.max_tokens == 0:  # scoring only: the prompt's scores are all it gets
                    completion.finish_reason = "length"
                    events.append((completion, "", "length", self.state[completion].scores))
                elif completion.cached in (0, self.window):  # joining, or its window is full
                    fresh.append(completion)
                else:
                    stepping.append(completion)
            for members, decode in ((fresh, self._prefill), (stepping, self._step)):
                if members:
                    tokens, logits = decode(members)
                    scores = score_tokens([c.request.logprobs for c in members], tokens, logits)
                    for completion, token, scored in zip(members, tokens, scores):
                        self._take(completion, token, scored, events)
        except Exception as err:  # a failing step must not leave the other requests hanging
            failed = f"{type(err).__name__}: {err}"
            events += [(c, failed, "error", []) for c in self.active if c.finish_reason is None]
            for completion in self.active:
                completion.finish_reason = completion.finish_reason or "error"
        with self.changed:
            for completion in [c for c in self.active if c.finish_reason is not None or c.cancelled]:
                self._free(completion)
        self.sink([e for e in events if not e[0].cancelled])

    def _join(self, completion: Completion) -> None:
        completion.slot, completion.cached = len(self.active), 0
        self.active.append(completion)
        generator = torch.Generator(device=self.device).manual_seed(completion.request.seed)
        self.state[completion] = _State(generator, self.tokenizer.stream_decoder(), list(completion.request.stops))

    def _free(self, completion: Completion) -> None:
        """Pack the rows: the last row moves into the freed slot, its cache with it."""
        last = self.active.pop()
        if last is not completion:
            for cache in self.caches:
                cache.copy_row(completion.slot, last.slot)
            self.active[completion.slot], last.slot = last, completion.slot
        del self.state[completion]

    def _rows(self, start: int, stop: int) -> None:
        if self.using == (start, stop):
            return
        if (start, stop) not in self.views:
            self.views[start, stop] = [cache.rows(start, stop) for cache in self.caches]
        self.model.use_kv_caches(self.views[start, stop])
        self.using = (start, stop)

    def _prefill(self, fresh: list[Completion]) -> tuple[list[int], torch.Tensor]:
        """The next token of each completion that joins or whose window is full (``cache`` says what it keeps), and
        the logits (len(fresh), V) it was drawn from; ``fresh`` is put in the order of its new slots. Their cache
        rows are about to be refilled from position 0, so they move to the last slots, those with the same number of
        tokens side by side, and each such group fills its rows in one call (as ``Decoder.prefill`` fills one)."""
        ids = {c: c.ids[-refill_length(self.window, self.cache, c.cached) :] for c in fresh}
        with self.changed:
            self._gather(fresh, key=lambda c: len(ids[c]))
        fresh.sort(key=lambda c: c.slot)  # and so by length
        logits = []
        for length, group in itertools.groupby(fresh, key=lambda c: len(ids[c])):
            group = list(group)
            self._rows(group[0].slot, group[-1].slot + 1)
            logits.append(self._fill(torch.tensor([ids[c] for c in group], device=self.device)))
            for completion in group:
                completion.cached = length
        logits = torch.cat(logits)
        return self._draw(fresh, logits), logits

    def _gather(self, fresh: list[Completion], key: Callable) -> None:
        """Give ``fresh`` the last slots, sorted by ``key``: a row that stays moves its cache into the slot of a
        fresh one (whose cache is stale), and the fresh ones trade slots freely."""
        n, taken = len(self.active), set(fresh)
        outside = [c for c in fresh if c.slot < n - len(fresh)]
        inside = [c for c in self.active[n - len(fresh) :] if c not in taken]
        for leaving, staying in zip(outside, inside):
            for cache in self.caches:
                cache.copy_row(leaving.slot, staying.slot)
            staying.slot = leaving.slot
        for slot, completion in enumerate(sorted(fresh, key=key), start=n - len(fresh)):
            completion.slot = slot
        self.active.sort(key=lambda c: c.slot)

    def _fill(self, batch: torch.Tensor) -> torch.Tensor:
        """The logits (B, V) after ``batch`` (B, T), its tokens cached from position 0 in the rows in use: a short
        prompt a token at a time, a longer one in one call, as ``Decoder.prefill`` does."""
        T, first = batch.size(1), torch.tensor(0, device=self.device)

        def one(position: int, last: bool) -> torch.Tensor:
            return self.model.next_logits(
                batch[:, position : position + 1], self.positions[position : position + 1], first
            )

        def whole() -> torch.Tensor:
            return self.model.next_logits(batch, self.positions[:T], torch.tensor(T - 1, device=self.device))

        return prefill(T, self.window, one, whole)

    def _draw(self, members: list[Completion], logits: torch.Tensor) -> list[int]:
        """A token for each of ``members`` from its row of ``logits``, with its generator and sampling options
        (members with the same options share one draw)."""
        groups: dict[Sampling, list[int]] = collections.defaultdict(list)
        for i, completion in enumerate(members):
            groups[completion.request.sampling].append(i)
        drawn = [0] * len(members)
        for sampling, rows in groups.items():
            noise = None
            if sampling.temperature != 0:
                generators = [self.state[members[i]].generator for i in rows]
                noise = exponential_noise(len(rows), logits.size(-1), generators, self.device)
            index = torch.tensor(rows, device=self.device)
            picked = draw(logits.index_select(0, index), noise, sampling.temperature, sampling.top_k, sampling.top_p)
            for i, token in zip(rows, picked[:, 0].tolist()):
                drawn[i] = token
        return drawn

    def _step(self, stepping: list[Completion]) -> tuple[list[int], torch.Tensor]:
        """One token for each of ``stepping``, and the logits (len(stepping), V) they were drawn from; every active
        row rides along (see the module docstring)."""
        n = len(self.active)
        tokens = torch.tensor([[c.ids[-1]] for c in self.active], device=self.device)
        positions = torch.tensor([[min(c.cached, self.window - 1)] for c in self.active], device=self.device)
        self._rows(0, n)
        logits = self.model.next_logits(tokens, positions, torch.tensor(0, device=self.device))  # (n, V)
        for completion in stepping:
            completion.cached += 1
        logits = logits.index_select(0, torch.tensor([c.slot for c in stepping], device=self.device))
        return self._draw(stepping, logits), logits

    def _take(self, completion: Completion, token: int, scored: tuple | None, events: list[Event]) -> None:
        completion.ids = completion.ids[-self.window :] + [token]
        completion.produced += 1
        state = self.state[completion]
        text = state.decode([token])
        stopped = state.text.write(text)
        if not stopped and completion.produced >= completion.request.max_tokens:
            tail = state.decode([], final=True)
            text += tail
            state.text.write(tail)
            state.text.close()
            completion.finish_reason = "length"
        elif stopped:
            completion.finish_reason = "stop"
        new_scores, state.scores = state.scores, []  # the prompt's, in the first event
        if scored is not None:
            new_scores.append(Score(token, *scored, text))
        events.append((completion, state.pieces.take(), completion.finish_reason, new_scores))


class _State:
    """What decoding one completion needs besides its ids and options: its generator, and the text so far
    (multi-byte characters and stop texts are held back until they are whole)."""

    def __init__(self, generator: torch.Generator, decode: Callable, stops: list[str]) -> None:
        self.generator, self.decode = generator, decode
        self.pieces = Pieces()
        self.text = StopAtText(self.pieces, stops)
        self.scores: list[Score] = []  # the prompt's, until the first event takes them
