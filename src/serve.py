"""Serve a trained model: ``python -m src.serve --ckpt_path lightning_logs/<run>/checkpoints/last.ckpt``.

OpenAI's completions API (``POST /v1/completions``, streamed or not; ``GET /v1/models``), ``/health``, Prometheus
``/metrics`` and a web playground at ``/`` (docs/serving.md). This module is the command line: it loads the model, binds
the socket and runs uvicorn; ``src.serving.service`` holds the engine and its metrics, ``src.serving.serve_app`` the
routes.
"""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any

import torch

from src import run_command
from src.checkpoints.load import load_model as load_for_decoding
from src.errors import UserError
from src.generation.decoding import check_decoding_args
from src.hardware import decode_dtype, pick_device
from src.serving.service import API_KEY_ENV, Server


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
        "--workers",
        type=int,
        default=None,
        help="processes that decode on a CPU, each with its share of the slots (default: 2 where there are 2 cores "
        "or more, else 1; one process decodes with one core at a time: docs/serving.md)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for the model in each worker (default: the cores but one, shared among the workers)",
    )
    parser.add_argument(
        "--stream_interval",
        type=float,
        default=0.02,
        help="seconds between a stream's writes: the text of the tokens in between goes in one chunk (0: every token)",
    )
    parser.add_argument("--model_name", default=None, help="the model's id in the API (default: the run's name)")
    return parser


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    device = pick_device(args.device)
    model, tokenizer = load_for_decoding(args.ckpt_path, device)
    dtype = decode_dtype(args.dtype, model, device)
    return (model.to(dtype) if dtype is not None else model), tokenizer


def check_args(args: argparse.Namespace) -> None:
    check_decoding_args(cache=args.cache, flag="--")
    for flag in ("max_batch", "max_queue", "max_tokens_cap", "threads", "workers"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "max_queue" else 1):
            raise UserError(f"--{flag} must be positive, got {value}")
    if args.workers is not None and args.workers > args.max_batch:
        raise UserError(f"--workers {args.workers} is more than --max_batch {args.max_batch}: each worker needs a slot")


def place_workers(args: argparse.Namespace, device: torch.device) -> None:
    """Settle --workers and --threads: worker processes pay on a CPU with cores to spare (a GPU gets one)."""
    cores = torch.get_num_threads()
    if args.workers is None:
        args.workers = min(2, cores, args.max_batch) if device.type == "cpu" else 1
    elif args.workers > 1 and device.type != "cpu":
        raise UserError(f"--workers {args.workers} decodes on the CPU, not {device}: leave --workers at 1 there")
    if args.threads is None:
        args.threads = max(1, (cores - 1) // args.workers)


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

    from src.serving.serve_app import create_app

    check_args(args)
    model, tokenizer = load_model(args)
    place_workers(args, next(model.parameters()).device)
    torch.set_num_threads(args.threads)
    server = Server(model, tokenizer, args)
    sock = listen(args.host, args.port)
    base = f"http://{url_host(args.host)}:{sock.getsockname()[1]}"
    print(
        f"chargpt serve: model '{server.name}' ({model.num_params():,} parameters) on {next(model.parameters()).device}"
        + (f", {args.workers} worker processes of {args.threads} thread(s)" if args.workers > 1 else "")
    )
    if server.api_key:
        print("  API key     required on /v1 (Authorization: Bearer ...)")
    print(f"  playground  {base}/")
    print(f"  API         {base}/v1  (POST /v1/completions; GET /v1/models, /health, /metrics)", flush=True)
    config = uvicorn.Config(create_app(server), log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    run_command("serve", build_parser, serve, argv)


if __name__ == "__main__":
    main()
