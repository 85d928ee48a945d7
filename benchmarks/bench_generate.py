"""Generation tokens/s with and without the KV cache, from the lecture-size model (random weights).

python benchmarks/bench_generate.py
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from src.model import GPT, GPTConfig  # noqa: E402


def rate(model, new_tokens: int, cache: str, device: str, repeats: int = 3) -> float:
    """Median tokens/s over ``repeats`` runs (timings on a shared machine vary by 10-20%)."""
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    rates = []
    for _ in range(repeats):
        generator = torch.Generator(device=device).manual_seed(0)
        start = time.perf_counter()
        model.generate(prompt, new_tokens, generator=generator, cache=cache)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(new_tokens / (time.perf_counter() - start))
    return sorted(rates)[repeats // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--new_tokens", type=int, default=500)
    a = p.parse_args()
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0)
    model = GPT(config).to(a.device).eval()
    rate(model, 20, "exact", a.device, repeats=1)  # warm up
    inside = config.block_size - 1  # a one-token prompt plus this many new tokens fills the window exactly
    print(
        f"lecture model ({model.num_params():,} params) on {a.device}, {torch.get_num_threads()} threads, "
        "median of 3 runs"
    )
    rows = [(f"{inside} new tokens (inside the window)", inside), (f"{a.new_tokens} new tokens", a.new_tokens)]
    for label, n in rows:
        figures = {cache: rate(model, n, cache, a.device) for cache in ("exact", "window", "none")}
        print(
            f"{label}: cached exact {figures['exact']:,.0f} tok/s, cached window {figures['window']:,.0f} tok/s, "
            f"uncached {figures['none']:,.0f} tok/s; exact/uncached {figures['exact'] / figures['none']:.1f}x, "
            f"window/uncached {figures['window'] / figures['none']:.1f}x"
        )


if __name__ == "__main__":
    main()
