"""Export a checkpoint for use outside this repository: ``python -m src.export --ckpt_path CKPT --out DIR``.

DIR gets ``model.safetensors`` and ``config.json`` (``src.checkpoints.pretrained``; ``src.generate --ckpt_path DIR``
reads them) and ``model.onnx``: the uncached forward, ``idx`` (batch, time) int64 -> ``logits`` (batch, time, vocab),
with dynamic batch and time (up to block_size), for ONNX Runtime and friends.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from src import run_command
from src.checkpoints.checkpoint import load_checkpoint, model_from_checkpoint
from src.checkpoints.hf import gpt2_refusal, model_card, save_hf
from src.checkpoints.pretrained import save_pretrained
from src.errors import UserError
from src.model import LanguageModel


class AllLogits(nn.Module):
    """The model's logits at every position: what ONNX users score or sample from."""

    def __init__(self, model: LanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(idx)
        return logits


def export_onnx(model: LanguageModel, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise UserError("model.onnx needs the onnx and onnxscript packages: pip install onnx onnxscript") from None
    wrapper = AllLogits(model).eval()
    idx = torch.zeros(2, min(8, model.config.block_size), dtype=torch.long)
    batch = torch.export.Dim("batch")
    # DYNAMIC, not a named Dim: torch 2.9's export refines time to >= 2 for some options (rotary embeddings and
    # the rest), which a named Dim refuses as a constraint violation; the graph still runs at every length
    time = torch.export.Dim.DYNAMIC(max=model.config.block_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (idx,),
            dynamic_shapes=({0: batch, 1: time},),
            input_names=["idx"],
            output_names=["logits"],
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt written by `python -m src.train fit`")
    parser.add_argument("--out", required=True, help="the folder to write (created if missing)")
    parser.add_argument(
        "--format",
        choices=("chargpt", "hf"),
        default="chargpt",
        help="chargpt: its own folder (and model.onnx); hf: a folder transformers loads (docs/sampling.md)",
    )
    parser.add_argument(
        "--onnx", action=argparse.BooleanOptionalAction, default=True, help="also write model.onnx (chargpt format)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    run_command("export", build_parser, export, argv)


def export(args: argparse.Namespace) -> None:
    ckpt = load_checkpoint(args.ckpt_path)
    model, tokenizer = model_from_checkpoint(ckpt)
    out = Path(args.out)
    if args.format == "hf":
        export_hf(model, tokenizer, ckpt, out)
        return
    save_pretrained(model, tokenizer, out)
    written = ["model.safetensors", "config.json"]
    if args.onnx:
        export_onnx(model, out / "model.onnx")
        written.append("model.onnx")
    print(f"wrote {', '.join(written)} to {out}", file=sys.stderr)


def export_hf(model: LanguageModel, tokenizer, ckpt: dict, out: Path) -> None:
    try:
        import tokenizers  # noqa: F401  (the tokenizer's JSON)
    except ImportError:
        raise UserError('--format hf needs the tokenizers package: pip install -e ".[hf]"') from None
    name = out.resolve().name
    refusal = gpt2_refusal(model)  # why GPT-2 cannot hold it, or None: the card and the folder follow it
    save_hf(model, tokenizer, out, model_card(model, tokenizer, ckpt, refusal is None, name))
    kind = "a plain GPT2LMHeadModel" if refusal is None else f"its own modeling code ({refusal})"
    print(f"wrote {out}: {kind}, tokenizer.json, README.md", file=sys.stderr)


if __name__ == "__main__":
    main()
