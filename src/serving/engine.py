"""Continuous batching: the completions of many requests decoded together, one batched model step at a time, a
completion joining or leaving between steps (llama.cpp's server calls them slots). ``src.serve`` puts HTTP in
front of it.

Each completion decodes exactly as ``src.generation.decoding.generate_tokens`` would decode it alone, with its own
generator and sampling options: it joins with a prefill of its own row of the shared KV cache (``KVCache.rows``, through
``Decoder.prefill``, the same call ``generate`` makes), refills its row the same way when the window is full (the
``cache`` mode's rule), and otherwise takes one token in the batched step, where each row attends at its own position.
Rows are kept packed (a leaving row's slot takes the last row's cache), so a step costs what the completions being
served need, not ``max_batch``. A row that prefilled in this round still rides in the batched step as padding: what it
writes there sits at its next position, which its next step overwrites before reading.

The engine runs in a thread of its own, so the model never blocks the server's event loop; ``submit`` and
``cancel`` may be called from any thread, and ``sink`` receives each round's text from the engine's thread.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from src.data.tokenizer import Tokenizer
from src.errors import UserError
from src.generation.decoding import CACHE_MODES, Decoder
from src.generation.sampling import draw, exponential_noise
from src.generation.stop import StopAtText
from src.model import LanguageModel


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None


@dataclass(eq=False)
class Completion:
    """One text being decoded: its prompt ids (already cropped to the window), options and progress."""

    ids: list[int]
    max_tokens: int
    seed: int
    sampling: Sampling = Sampling()
    stops: list[str] = field(default_factory=list)
    tag: object = None  # the caller's (the server keeps its request and choice index here)
    produced: int = 0
    finish_reason: str | None = None
    cancelled: bool = False
    cached: int = 0  # tokens of ids held in its cache row; 0 until it joins
    slot: int = -1


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


Event = tuple[Completion, str, str | None]  # (completion, new text, finish reason once it is done)


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
        if not model.has_cache:
            raise UserError(
                f"{type(model).__name__} has no KV cache, which continuous batching needs: sample it with "
                "python -m src.generate (the lecture's staged models are for learning, not serving)"
            )
        self.model, self.tokenizer, self.sink = model.eval(), tokenizer, sink
        self.max_batch, self.max_queue, self.cache = max_batch, max_queue, cache
        self.window = model.config.block_size
        self.device = next(model.parameters()).device
        self.model.setup_cache(max_batch)
        self.caches = model.kv_caches()
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
            stepping = []
            for completion in self.active:
                if completion.cached in (0, self.window):  # joining, or its window is full
                    self._take(completion, self._prefill(completion), events)
                else:
                    stepping.append(completion)
            if stepping:
                for completion, token in zip(stepping, self._step(stepping)):
                    self._take(completion, token, events)
        except Exception as err:  # a failing step must not leave the other requests hanging
            events += [(c, f"{type(err).__name__}: {err}", "error") for c in self.active if c.finish_reason is None]
            for completion in self.active:
                completion.finish_reason = completion.finish_reason or "error"
        with self.changed:
            for completion in [c for c in self.active if c.finish_reason is not None or c.cancelled]:
                self._free(completion)
        self.sink([e for e in events if not e[0].cancelled])

    def _join(self, completion: Completion) -> None:
        completion.slot, completion.cached = len(self.active), 0
        self.active.append(completion)
        s = completion.sampling
        generator = torch.Generator(device=self.device).manual_seed(completion.seed)
        decoder = Decoder(self.model, 1, s.temperature, s.top_k, s.top_p)
        self.state[completion] = _State(decoder, [generator], self.tokenizer.stream_decoder(), completion.stops)

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

    def _prefill(self, completion: Completion) -> int:
        """The next token of a completion that joins, or whose window is full (then ``cache`` says what it keeps)."""
        ids = completion.ids
        if completion.cached and self.cache == "window":
            ids = ids[-(self.window // 2 or 1) :]
        else:
            ids = ids[-self.window :]
        self._rows(completion.slot, completion.slot + 1)
        state = self.state[completion]
        token = state.decoder.prefill(torch.tensor([ids], device=self.device), state.generators)
        completion.cached = len(ids)
        return token.item()

    def _step(self, stepping: list[Completion]) -> list[int]:
        """One token for each of ``stepping``; every active row rides along (see the module docstring)."""
        n = len(self.active)
        tokens = torch.tensor([[c.ids[-1]] for c in self.active], device=self.device)
        positions = torch.tensor([[min(c.cached, self.window - 1)] for c in self.active], device=self.device)
        self._rows(0, n)
        logits = self.model.next_logits(tokens, positions, torch.tensor(0, device=self.device))  # (n, V)
        drawn: dict[int, int] = {}
        groups: dict[Sampling, list[Completion]] = collections.defaultdict(list)
        for completion in stepping:
            groups[completion.sampling].append(completion)
        for sampling, members in groups.items():
            rows = torch.tensor([c.slot for c in members], device=self.device)
            noise = None
            if sampling.temperature != 0:
                generators = [self.state[c].generators[0] for c in members]
                noise = exponential_noise(len(members), logits.size(-1), generators, self.device)
            picked = draw(logits.index_select(0, rows), noise, sampling.temperature, sampling.top_k, sampling.top_p)
            drawn.update(zip((c.slot for c in members), picked[:, 0].tolist()))
        for completion in stepping:
            completion.cached += 1
        return [drawn[c.slot] for c in stepping]

    def _take(self, completion: Completion, token: int, events: list[Event]) -> None:
        completion.ids = completion.ids[-self.window :] + [token]
        completion.produced += 1
        state = self.state[completion]
        stopped = state.text.write(state.decode([token]))
        if not stopped and completion.produced >= completion.max_tokens:
            state.text.write(state.decode([], final=True))
            state.text.close()
            completion.finish_reason = "length"
        elif stopped:
            completion.finish_reason = "stop"
        events.append((completion, state.pieces.take(), completion.finish_reason))


class _State:
    """What decoding one completion needs besides its ids: its decoder (its sampling options), its generator, and
    the text so far (multi-byte characters and stop texts are held back until they are whole)."""

    def __init__(self, decoder: Decoder, generators: list[torch.Generator], decode: Callable, stops: list[str]) -> None:
        self.decoder, self.generators, self.decode = decoder, generators, decode
        self.pieces = Pieces()
        self.text = StopAtText(self.pieces, stops)
