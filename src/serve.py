"""Serve a trained model: ``python -m src.serve --ckpt_path lightning_logs/<run>/checkpoints/last.ckpt``.

OpenAI's completions API (``POST /v1/completions``, streamed or not; ``GET /v1/models``), ``/health``, Prometheus
``/metrics`` and a web playground at ``/``, on FastAPI and uvicorn. Requests decode together in ``src.engine``'s
batch (continuous batching): the engine's thread runs the model, the event loop only moves text, and each round's
text crosses between them in one call, so a busy server wakes the loop once per step, not once per token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch

from src import entry_point
from src.checkpoint import load_checkpoint, model_from_checkpoint
from src.completions import RequestError
from src.decoding import check_decoding_args
from src.engine import Completion, Engine, Event, QueueFull, Sampling
from src.errors import UserError
from src.hardware import decode_dtype, pick_device
from src.pretrained import from_pretrained, is_pretrained
from src.tokenizer import prompt_ids

MAX_BODY = 1 << 20  # bytes: a prompt longer than the context window is cropped anyway
API_KEY_ENV = "CHARGPT_API_KEY"
PLAYGROUND = Path(__file__).with_name("playground.html")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src.serve",
        description="Serve a chargpt model: OpenAI's completions API, /health, /metrics and a web playground.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--ckpt_path", required=True, help="a .ckpt from `python -m src.train fit`, or an export folder"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 opens it to the network")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    parser.add_argument(
        "--api_key", default=None, help=f"require 'Authorization: Bearer KEY' on /v1 (or set {API_KEY_ENV})"
    )
    parser.add_argument("--max_batch", type=int, default=16, help="completions decoded at once (slots)")
    parser.add_argument("--max_queue", type=int, default=64, help="completions that may wait for a slot; past it: 503")
    parser.add_argument("--max_tokens_cap", type=int, default=4096, help="the most max_tokens a request may ask for")
    parser.add_argument(
        "--cache",
        choices=("window", "exact"),
        default="window",
        help="KV cache mode (as in src.generate): window shifts the context when it fills, exact recomputes the "
        "whole window for every token past block_size",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto", help="weights for decoding")
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, torch.get_num_threads() - 1),
        help="CPU threads for the model; the rest serve HTTP (on 2 cores one thread decodes faster: docs/serving.md)",
    )
    parser.add_argument(
        "--stream_interval",
        type=float,
        default=0.02,
        help="seconds between a stream's writes: the text of the tokens in between goes in one chunk (0: every token)",
    )
    parser.add_argument("--model_name", default=None, help="the model's id in the API (default: the run's name)")
    return parser


def model_name(ckpt_path: str) -> str:
    """The run's folder for ``lightning_logs/<run>/checkpoints/x.ckpt``, the folder's name for an export."""
    path = Path(ckpt_path).resolve()
    if path.is_dir():
        return path.name
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem


class Job:
    """One request's completions, and the text the engine sends them, waiting for the HTTP side."""

    def __init__(self, completions: list[Completion], prompt_tokens: int, stream: bool) -> None:
        self.completions, self.prompt_tokens, self.stream = completions, prompt_tokens, stream
        self.queue: asyncio.Queue[tuple[int, str, str | None]] = asyncio.Queue()
        self.submitted, self.first_token = time.perf_counter(), None
        self.open = len(completions)


class Server:
    """The engine and what the HTTP side needs to reach it: the event loop, metrics, settings."""

    def __init__(self, model, tokenizer, args: argparse.Namespace) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.model, self.tokenizer, self.args = model, tokenizer, args
        self.name = args.model_name or model_name(args.ckpt_path)
        self.api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
        self.engine = Engine(model, tokenizer, self.deliver, args.max_batch, args.max_queue, args.cache)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.recent: deque[tuple[float, int]] = deque()  # (time, tokens) of the last rounds, for tokens/s
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # resident memory, CPU seconds (where the OS reports them)
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
        for completion, text, finish_reason in events:
            job, index = completion.tag
            if job.first_token is None:
                job.first_token = now
                self.ttft.observe(now - job.submitted)
            job.queue.put_nowait((index, text, finish_reason))

    def tokens_per_second(self) -> float:
        now = time.perf_counter()
        while self.recent and self.recent[0][0] < now - 10:
            self.recent.popleft()
        return sum(n for _, n in self.recent) / 10

    def submit(self, request, max_tokens_cap: int) -> Job:
        """Check ``request`` (a ``CompletionRequest``) and queue its completions."""
        from src import completions as api

        api.check(request, max_tokens_cap)
        texts, ids = api.prompts(request), []
        for i, text in enumerate(texts):
            try:
                ids.append(prompt_ids(self.tokenizer, text)[-self.model.config.block_size :])
            except UserError as err:
                where = "prompt" if isinstance(request.prompt, str) else f"prompt[{i}]"
                raise RequestError(400, f"{where} has {err}", where) from None
        sampling = Sampling(float(request.temperature), request.top_k, request.top_p)
        count = len(texts) * request.n
        completions = [
            Completion(list(ids[j // request.n]), request.max_tokens, seed, sampling, api.stops(request))
            for j, seed in enumerate(api.seeds(request, count))
        ]
        prompt_tokens = sum(len(prompt_ids(self.tokenizer, t)) for t in texts) * request.n
        job = Job(completions, prompt_tokens, request.stream)
        for j, completion in enumerate(completions):
            completion.tag = (job, j)
        if count > self.engine.max_batch + self.engine.max_queue:
            raise RequestError(400, f"{count} completions exceed what this server holds at once", "n")
        try:
            self.engine.submit(completions)
        except QueueFull:
            raise RequestError(503, "the server is busy: try again shortly", None, "server_error") from None
        return job

    def cancel(self, job: Job) -> None:
        for completion in job.completions:
            if completion.finish_reason is None:
                self.engine.cancel(completion)


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    device = pick_device(args.device)
    if is_pretrained(args.ckpt_path):
        model, tokenizer = from_pretrained(args.ckpt_path, device)
    else:
        model, tokenizer = model_from_checkpoint(load_checkpoint(args.ckpt_path, map_location=device))
    dtype = decode_dtype(args.dtype, model, device)
    return (model.to(dtype) if dtype is not None else model), tokenizer


def check_args(args: argparse.Namespace) -> None:
    check_decoding_args(cache=args.cache, flag="--")
    for flag in ("max_batch", "max_queue", "max_tokens_cap", "threads"):
        if getattr(args, flag) < (0 if flag == "max_queue" else 1):
            raise UserError(f"--{flag} must be positive, got {getattr(args, flag)}")


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is a clear error (and port 0 a known one)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        if os.name != "nt":  # a restart may bind at once; on Windows the option would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as err:
        raise UserError(
            f"cannot listen on {host}:{port} ({err.strerror or err}): pick another --port or --host"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from src.serve_app import create_app

    check_args(args)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args)
    server = Server(model, tokenizer, args)
    sock = listen(args.host, args.port)
    base = f"http://{url_host(args.host)}:{sock.getsockname()[1]}"
    print(
        f"chargpt serve: model '{server.name}' ({model.num_params():,} parameters) on {next(model.parameters()).device}"
    )
    if server.api_key:
        print("  API key     required on /v1 (Authorization: Bearer ...)")
    print(f"  playground  {base}/")
    print(f"  API         {base}/v1  (POST /v1/completions; GET /v1/models, /health, /metrics)", flush=True)
    config = uvicorn.Config(create_app(server), log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    with entry_point():
        args = build_parser().parse_args(argv)
        try:
            serve(args)
        except UserError as err:
            print(f"chargpt serve: error: {err}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()
