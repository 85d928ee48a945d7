"""Generation tokens/s against nanoGPT's own ``GPT.generate``, in one process, taking turns, medians.

python benchmarks/bench_generate.py                       # nanoGPT's CPU-recipe size, then the lecture model
python benchmarks/bench_generate.py --size lecture --repeats 3
python benchmarks/bench_generate.py --n_layer 2 --n_head 2 --n_embd 64 --block_size 32   # any other size

Both models are randomly initialised at the same size (vocabulary 65); batch 1, ``--new_tokens`` from a one-token
prompt, temperature 0.8, top_k 200. nanoGPT's side is its unmodified model.py (--nanogpt DIR: see benchmarks/nanogpt.py)
(no cache: it reruns the last block_size tokens for every token). chargpt's rows: the ``exact`` cache eager and
compiled, in float32 and, on CPUs that multiply bf16 natively, bfloat16 weights; and the approximate ``window``
cache compiled. Also printed: the first token's latency, and with ``--ckpt_path`` (a trained checkpoint) the
validation loss and greedy decoding with bf16 against float32 weights, and the CLI's whole-process time.
"""

import argparse
import functools
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import torch
from nanogpt import add_flag, missing  # sibling modules: this folder is on the path
from timing import alternating_medians
from torch.nn import functional as F
from torch.utils.data import DataLoader

from src.checkpoints.checkpoint import load_checkpoint, model_from_checkpoint
from src.data.datamodule import ScoredWindows
from src.generation.decoding import generate
from src.hardware import cpu_has_bf16
from src.model import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    "recipe": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    "lecture": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
}
SAMPLING = dict(temperature=0.8, top_k=200)


def nanogpt_model(size: dict, folder: str):
    """nanoGPT's GPT at ``size``, or None (said on stdout) when its model.py is not in ``folder``."""
    problem = missing(folder, "model.py")
    if problem:
        print(f"no nanoGPT column: {problem}")
        return None
    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(folder) / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GPT(module.GPTConfig(vocab_size=65, dropout=0.0, bias=True, **size)).eval()


def ours(model, new_tokens: int, **options) -> None:
    prompt = torch.zeros(1, 1, dtype=torch.long)
    generate(model, prompt, new_tokens, generator=torch.Generator().manual_seed(0), **SAMPLING, **options)


def theirs(model, new_tokens: int) -> None:
    with torch.no_grad():
        model.generate(torch.zeros(1, 1, dtype=torch.long), new_tokens, **SAMPLING)


def variants(bf16: bool, compile: bool) -> dict[str, dict]:
    rows = {}
    for dtype in (None, torch.bfloat16) if bf16 else (None,):
        suffix = ", bf16" if dtype else ""
        rows["exact, eager" + suffix] = {"dtype": dtype}
        if compile:
            rows["exact, compiled" + suffix] = {"compile": True, "dtype": dtype}
            rows["window, compiled" + suffix] = {"compile": True, "dtype": dtype, "cache": "window"}
    return rows


def first_token_ms(model, options: dict, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ours(model, 1, **options)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def bench(name: str, size: dict, a: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, dropout=0.0, **size)).eval()
    reference = nanogpt_model(size, a.nanogpt)
    rows = variants(a.bf16 and cpu_has_bf16(), not a.no_compile)
    started = time.perf_counter()
    for options in rows.values():
        ours(model, size["block_size"] + 2, **options)  # compile (or load from the cache) both shapes
    warmup = time.perf_counter() - started
    runs = {label: functools.partial(ours, model, a.new_tokens, **options) for label, options in rows.items()}
    if reference is not None:
        runs["nanoGPT"] = functools.partial(theirs, reference, a.new_tokens)
    rates = {label: a.new_tokens / s for label, s in alternating_medians(runs, a.repeats).items()}
    print(f"{name}: {model.num_params():,} params, {a.new_tokens} new tokens, batch 1, median of {a.repeats}")
    base = rates.get("nanoGPT")
    for label, rate in rates.items():
        ratio = f"  {rate / base:5.2f}x nanoGPT" if base and label != "nanoGPT" else ""
        latency = f"  first token {first_token_ms(model, rows[label], 3):6.1f} ms" if label in rows else ""
        print(f"  {label:24s} {rate:9,.0f} tok/s{ratio}{latency}")
    print(f"  warm-up of the {len(rows)} variants (compilation, or loading it from the cache): {warmup:.1f} s")


def cli_seconds(ckpt: str, extra: list[str]) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "src.generate", f"--ckpt_path={ckpt}", "--max_new_tokens=500", *extra]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def greedy_agreement(ckpt: str, new_tokens: int = 500) -> tuple[int, float]:
    """Greedy decoding of a trained checkpoint with bf16 weights against float32: how many tokens agree before the
    first difference, and the share of positions that agree."""
    model, _ = model_from_checkpoint(load_checkpoint(ckpt))
    prompt = torch.zeros(1, 1, dtype=torch.long)
    runs = [generate(model, prompt, new_tokens, temperature=0, dtype=dtype)[0, 1:] for dtype in (None, torch.bfloat16)]
    same = (runs[0] == runs[1]).tolist()
    return (same + [False]).index(False), sum(same) / len(same)


def val_loss(ckpt: str, corpus: str, dtype: torch.dtype) -> float:
    """The mean loss over the last 10% of ``corpus`` (the validation split) in non-overlapping windows (the
    windows ``src.train test --data.test_stride block_size`` scores), the weights in ``dtype``, the loss in float32."""
    model, tokenizer = model_from_checkpoint(load_checkpoint(ckpt))
    model = model.to(dtype).eval()
    text = Path(corpus).read_text(encoding="utf-8")
    ids = torch.tensor(tokenizer.encode(text[int(0.9 * len(text)) :]))
    T = model.config.block_size
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in DataLoader(ScoredWindows(ids, T, T), batch_size=64):
            logits = model.head(model.features(x)).float()
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += int((y != -100).sum())
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=[*SIZES, "both"], default="both")
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        p.add_argument(f"--{name}", type=int, help="a size of your own (all four)")
    p.add_argument("--new_tokens", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no_compile", action="store_true", help="eager rows only")
    p.add_argument("--no_bf16", dest="bf16", action="store_false", help="float32 rows only")
    p.add_argument("--ckpt_path", help="also: bf16 against float32 on this trained checkpoint, and the CLI's time")
    p.add_argument("--corpus", default="data/tinyshakespeare/input.txt", help="the checkpoint's corpus")
    add_flag(p)
    a = p.parse_args()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, bf16 CPU: {cpu_has_bf16()}")
    custom = {k: getattr(a, k) for k in ("n_layer", "n_head", "n_embd", "block_size")}
    if all(custom.values()):
        bench("custom", custom, a)
    else:
        for name in SIZES if a.size == "both" else [a.size]:
            bench(name, SIZES[name], a)
    if a.ckpt_path:
        losses = [val_loss(a.ckpt_path, a.corpus, dtype) for dtype in (torch.float32, torch.bfloat16)]
        print(f"validation loss with float32 weights {losses[0]:.4f}, with bf16 weights {losses[1]:.4f}")
        prefix, share = greedy_agreement(a.ckpt_path)
        print(f"greedy, 500 tokens, bf16 vs float32 weights: first {prefix} agree, {share:.1%} of positions agree")
        for extra in ([], ["--compile"]):
            times = sorted(cli_seconds(a.ckpt_path, extra) for _ in range(3))
            print(f"CLI, 500 tokens, whole process {' '.join(extra) or '(eager)'}: {times[1]:.2f} s (median of 3)")


if __name__ == "__main__":
    main()
