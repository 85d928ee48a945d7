"""Generation tokens/s with and without the KV cache, from the lecture-size model (random weights).

python benchmarks/bench_generate.py
python benchmarks/bench_generate.py --n_layer 4 --n_head 4 --n_embd 128 --block_size 64   # another size
"""

import argparse
import functools

import torch
from timing import alternating_medians  # a sibling module: this folder is on the path

from src.model import GPT, GPTConfig
from src.sampling import generate as sample

CACHES = ("exact", "window", "none")


def generate(model, new_tokens: int, cache: str, device: str) -> None:
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    sample(model, prompt, new_tokens, generator=torch.Generator(device=device).manual_seed(0), cache=cache)


def rates(model, new_tokens: int, device: str, repeats: int) -> dict[str, float]:
    """Median tokens/s of each cache mode, the modes taking turns."""
    runs = {cache: functools.partial(generate, model, new_tokens, cache, device) for cache in CACHES}
    return {cache: new_tokens / s for cache, s in alternating_medians(runs, repeats).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    for name, default in (("n_layer", 6), ("n_head", 6), ("n_embd", 384), ("block_size", 256), ("new_tokens", 500)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    size = dict(block_size=a.block_size, n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd)
    config = GPTConfig(vocab_size=65, **size, dropout=0.0)
    model = GPT(config).to(a.device).eval()
    generate(model, 20, "exact", a.device)  # warm up
    inside = config.block_size - 1  # a one-token prompt plus this many new tokens fills the window exactly
    print(
        f"{a.n_layer}L/{a.n_head}H/{a.n_embd}, block {a.block_size} ({model.num_params():,} params) on {a.device}, "
        f"{torch.get_num_threads()} threads, median of {a.repeats} runs"
    )
    rows = [(f"{inside} new tokens (inside the window)", inside), (f"{a.new_tokens} new tokens", a.new_tokens)]
    for label, n in rows:
        figures = rates(model, n, a.device, a.repeats)
        print(
            f"{label}: cached exact {figures['exact']:,.0f} tok/s, cached window {figures['window']:,.0f} tok/s, "
            f"uncached {figures['none']:,.0f} tok/s; exact/uncached {figures['exact'] / figures['none']:.1f}x, "
            f"window/uncached {figures['window'] / figures['none']:.1f}x"
        )


if __name__ == "__main__":
    main()
