"""The model as a service: ``src.serving.engine``'s batch, the requests in flight and the metrics, between the engine's
thread and the HTTP event loop (``src.serving.serve_app``). The engine's thread runs the model, the event loop only
moves text, and each round's text crosses between them in one call, so a busy server wakes the loop once per step, not
per token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import deque
from pathlib import Path

from src.data.tokenizer import Tokenizer, check_ids, prompt_ids
from src.errors import UserError
from src.serving import completions as api
from src.serving.completions import RequestError
from src.serving.engine import Completion, Engine, Event, QueueFull, Request, Sampling
from src.serving.scoring import Score
from src.serving.workers import EngineLost, EnginePool

MAX_BODY = 1 << 20  # bytes: a prompt longer than the context window is cropped (or, to be scored, refused) anyway
API_KEY_ENV = "CHARGPT_API_KEY"
PLAYGROUND = Path(__file__).with_name("playground.html")


def model_name(ckpt_path: str) -> str:
    """The run's folder for ``lightning_logs/<run>/checkpoints/x.ckpt``, the folder's name for an export."""
    path = Path(ckpt_path).resolve()
    if path.is_dir():
        return path.name
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem


class Job:
    """One request's completions, and the text the engine sends them, waiting for the HTTP side."""

    def __init__(
        self, completions: list[Completion], prompt_tokens: int, echoes: list[str], tokenizer: Tokenizer
    ) -> None:
        self.completions, self.prompt_tokens, self.echoes = completions, prompt_tokens, echoes
        self.queue: asyncio.Queue[tuple[int, str, str | None, list[Score]]] = asyncio.Queue()
        self.submitted, self.first_token = time.perf_counter(), None
        self.open = len(completions)
        self.logprobs = [api.Logprobs(tokenizer) if c.request.logprobs is not None else None for c in completions]

    def scored(self, index: int, text: str, scores: list[Score], finished: bool) -> dict | None:
        """The logprobs entries of choice ``index`` that ``text`` completes; None when it asked for none."""
        builder = self.logprobs[index]
        return None if builder is None else builder.add(text, scores, finished)


class Server:
    """The engine and what the HTTP side needs to reach it: the event loop, metrics, settings."""

    def __init__(self, model, tokenizer, args: argparse.Namespace) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.model, self.tokenizer, self.args = model, tokenizer, args
        self.name = args.model_name or model_name(args.ckpt_path)
        self.api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
        options = (model, tokenizer, self.deliver, args.max_batch, args.max_queue, args.cache)
        if args.workers == 1:
            self.engine = Engine(*options)
        else:  # a worker sends its text once per --stream_interval, sooner for a first token or a finish
            self.engine = EnginePool(*options, args.workers, args.threads, args.stream_interval)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.recent: deque[tuple[float, int]] = deque()  # (time, tokens) of the last rounds, for tokens/s
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # resident memory, CPU seconds (where the OS reports them)
        for i, pid in enumerate(getattr(self.engine, "pids", [])):  # the same for each worker process
            ProcessCollector(namespace=f"chargpt_worker{i}", pid=lambda pid=pid: pid, registry=registry)
        self.requests = Counter("chargpt_requests", "completion requests answered, by HTTP status", ["status"],
                                registry=registry)  # fmt: skip
        self.tokens = Counter("chargpt_tokens_generated", "tokens generated", registry=registry)
        self.ttft = Histogram(
            "chargpt_time_to_first_token_seconds",
            "from a request's arrival to its first token",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        Gauge("chargpt_completions_active", "completions being decoded (a request with n=2 is two)",
              registry=registry).set_function(lambda: self.engine.counts()[0])  # fmt: skip
        Gauge("chargpt_completions_queued", "completions waiting for a slot", registry=registry).set_function(
            lambda: self.engine.counts()[1]
        )
        Gauge("chargpt_tokens_per_second", "tokens generated per second over the last 10 s", registry=registry
              ).set_function(self.tokens_per_second)  # fmt: skip

    def deliver(self, events: list[Event]) -> None:
        """From the engine's thread: hand a round's text to the event loop in one call."""
        if events and self.loop is not None:
            self.loop.call_soon_threadsafe(self._dispatch, events)

    def _dispatch(self, events: list[Event]) -> None:
        now = time.perf_counter()
        self.recent.append((now, len(events)))
        self.tokens.inc(len(events))
        for completion, text, finish_reason, scores in events:
            job, index = completion.tag
            if job.first_token is None:
                job.first_token = now
                self.ttft.observe(now - job.submitted)
            job.queue.put_nowait((index, text, finish_reason, scores))

    def tokens_per_second(self) -> float:
        now = time.perf_counter()
        while self.recent and self.recent[0][0] < now - 10:
            self.recent.popleft()
        return sum(n for _, n in self.recent) / 10

    def submit(self, request, max_tokens_cap: int) -> Job:
        """Check ``request`` (a ``CompletionRequest``) and queue its completions."""
        api.check(request, max_tokens_cap)
        prompts, ids, echoes = api.prompts(request), [], []
        scoring = request.echo and request.logprobs is not None
        window = self.model.config.block_size  # a longer prompt is cropped to its last window, as generate does
        several = isinstance(request.prompt, list) and not isinstance(request.prompt[0], int)  # a list of prompts
        for i, prompt in enumerate(prompts):
            where = f"prompt[{i}]" if several else "prompt"
            ids.append(self.prompt_ids(prompt, where, scoring))
            echoes.append(prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt))
            if scoring and len(ids[-1]) > window:
                raise RequestError(
                    400,
                    f"{where} has {len(ids[-1])} tokens: scoring a prompt (echo with logprobs) takes at most the "
                    f"model's context of {window} tokens; split longer texts into windows (lm-eval: "
                    f"max_length={window + 1})",
                    where,
                )
        sampling = Sampling(float(request.temperature), request.top_k, request.top_p)
        count = len(prompts) * request.n
        completions = [
            Completion(
                Request(
                    tuple(ids[j // request.n][-window:]),
                    request.max_tokens,
                    seed,
                    sampling,
                    tuple(api.stops(request)),
                    logprobs=request.logprobs,
                    score_prompt=scoring,
                )
            )
            for j, seed in enumerate(api.seeds(request, count))
        ]
        echoes = [echoes[j // request.n] for j in range(count)]
        job = Job(completions, sum(map(len, ids)) * request.n, echoes, self.tokenizer)
        for j, completion in enumerate(completions):
            completion.tag = (job, j)
        if count > self.engine.max_batch + self.engine.max_queue:
            raise RequestError(400, f"{count} completions exceed what this server holds at once", "n")
        try:
            self.engine.submit(completions)
        except QueueFull:
            raise RequestError(503, "the server is busy: try again shortly", None, "server_error") from None
        except EngineLost:
            message = "the server's worker processes have exited: restart the server"
            raise RequestError(503, message, None, "server_error") from None
        return job

    def prompt_ids(self, prompt: str | list[int], where: str, scoring: bool) -> list[int]:
        """A prompt's token ids: a text encoded (an empty text, when generating, starts from a newline, as
        ``src.generate`` does), or ids checked against the vocabulary."""
        if isinstance(prompt, list) and not prompt:
            raise RequestError(400, f"{where} is an empty list of token ids: give one token at least", where)
        if scoring and prompt == "":
            raise RequestError(400, f"{where} is empty: an empty prompt has nothing to score", where)
        try:
            if isinstance(prompt, list):
                return check_ids(prompt, self.tokenizer.vocab_size)
            return prompt_ids(self.tokenizer, prompt)
        except UserError as err:
            raise RequestError(400, f"{where} has {err}", where) from None

    def cancel(self, job: Job) -> None:
        for completion in job.completions:
            if completion.finish_reason is None:
                self.engine.cancel(completion)
