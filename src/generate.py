"""Sample text from a checkpoint: ``python -m src.generate --ckpt_path lightning_logs/<run>/checkpoints/last.ckpt``.

The model and tokenizer come from the checkpoint alone (loaded with ``weights_only=True``). Text streams to stdout
as it is produced, each sample starting with its prompt; a summary goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path
from typing import TextIO

import torch

from src import run_command
from src.checkpoints.load import load_model
from src.data.tokenizer import prompt_ids
from src.errors import UserError
from src.generation.decoding import CACHE_MODES, check_decoding_args, generate_tokens
from src.generation.stop import StopAtText
from src.hardware import decode_dtype, pick_device

SEPARATOR = "\n---------------\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src.generate",
        description="Sample text from a chargpt checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--ckpt_path", required=True, help="a .ckpt written by `python -m src.train fit`, or a folder from src.export"
    )
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help="text the samples continue; empty starts from a newline")
    prompt.add_argument("--prompt_file", help="read the prompt from this UTF-8 file instead")
    parser.add_argument("--max_new_tokens", type=int, default=500, help="characters to generate per sample")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy decoding")
    parser.add_argument("--top_k", type=int, default=None, help="sample among the k most likely characters only")
    parser.add_argument(
        "--top_p",
        type=float,
        default=None,
        help="nucleus sampling: keep the most likely characters that together reach this probability",
    )
    parser.add_argument("--seed", type=int, default=1337, help="seed of the sampler (same seed, same text)")
    parser.add_argument("--num_samples", type=int, default=1, help="how many samples to draw")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument(
        "--cache",
        choices=CACHE_MODES,
        default="exact",
        help="KV cache mode: exact (same text as "
        "no cache), window (faster beyond the context window, approximate) or none",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the decoding step with torch.compile: pays for long samples only (see docs/performance.md)",
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="weights for decoding: auto takes bfloat16 where it is faster (see docs/performance.md)",
    )
    parser.add_argument("--output", help="write the samples to this file instead of stdout")
    parser.add_argument("--stop", help="end each sample where this text first appears in it (the text is left out)")
    return parser


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt_file is None:
        return args.prompt
    try:
        return Path(args.prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read --prompt_file {args.prompt_file}: {err}") from None


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad values before the checkpoint is read."""
    check_decoding_args(args.temperature, args.top_k, args.top_p, args.cache, args.max_new_tokens, flag="--")
    if args.num_samples < 1:
        raise UserError(f"--num_samples must be positive, got {args.num_samples}")


def generate(args: argparse.Namespace) -> None:
    check_args(args)
    device = pick_device(args.device)
    model, tokenizer = load_model(args.ckpt_path, device)
    try:
        ids = prompt_ids(tokenizer, read_prompt(args))
    except UserError as err:
        raise UserError(f"the prompt has {err}") from None
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    with open(args.output, "w", encoding="utf-8") if args.output else contextlib.nullcontext(sys.stdout) as out:
        stream(model, tokenizer, idx, args, device, out)


def stream(model, tokenizer, idx: torch.Tensor, args: argparse.Namespace, device: torch.device, out: TextIO) -> None:
    """Decode all samples as one batch; sample 1 streams to ``out`` as it comes, the others follow in order.
    Sample i draws from its own generator, seeded ``seed + i``: it is the text ``--seed seed+i`` gives alone."""
    n = args.num_samples
    generators = [torch.Generator(device=device).manual_seed(args.seed + i) for i in range(n)]
    options = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "cache": args.cache}
    options.update(compile=args.compile, dtype=decode_dtype(args.dtype, model, device))
    outs = [out] + [io.StringIO() for _ in range(n - 1)]
    decoders = [tokenizer.stream_decoder() for _ in range(n)]  # bytes of one character may come in several tokens
    prompt = idx[0].tolist()
    for o, decode in zip(outs, decoders):
        o.write(decode(prompt))
    out.flush()
    texts = [StopAtText(o, args.stop) for o in outs]
    running = set(range(n))
    started, produced = time.perf_counter(), 0
    tokens = generate_tokens(model, idx.expand(n, -1), args.max_new_tokens, generator=generators, **options)
    for token in tokens:
        produced += len(running)
        running -= {i for i in running if texts[i].write(decoders[i]([token[i].item()]))}
        if not running:
            break
    for i in running:
        texts[i].write(decoders[i]([], final=True))
    for text in texts:
        text.close()
    for o in outs[1:]:
        out.write(SEPARATOR + o.getvalue())
    out.write("\n")
    out.flush()
    seconds = time.perf_counter() - started
    print(
        f"generated {produced} tokens in {seconds:.2f} s ({produced / seconds:.0f} tokens/s) on {device}",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    run_command("generate", build_parser, generate, argv)


if __name__ == "__main__":
    main()
