"""Forward + backward tokens/s of chargpt's GPT against the seeds' style of the same model, on this device.

python benchmarks/bench_model.py                 # the lecture's 10.8M model, batch 8 x block 256
python benchmarks/bench_model.py --n_layer 4 --n_head 4 --n_embd 128 --block_size 64 --batch_size 12
"""

import argparse

import torch
from reference import SeedGPT  # a sibling module: this folder is on the path
from timing import alternating_medians  # a sibling module: this folder is on the path

from src.model import GPT, GPTConfig


def train_step(model, batch) -> None:
    x, y = batch
    _, loss = model(x, y)
    loss.backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (
        ("n_layer", 6),
        ("n_head", 6),
        ("n_embd", 384),
        ("block_size", 256),
        ("batch_size", 8),
        ("steps", 9),
    ):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--dropout", type=float, default=0.2, help="0.2 is the lecture's; 0 lets SDPA use its fused kernel")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    torch.manual_seed(0)
    size = dict(vocab_size=65, block_size=a.block_size, n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd)
    ours = GPT(GPTConfig(**size, dropout=a.dropout)).to(a.device)
    seed = SeedGPT(**size, dropout=a.dropout).to(a.device)
    assert ours.num_params() == sum(p.numel() for p in seed.parameters())
    batch = tuple(torch.randint(0, 65, (a.batch_size, a.block_size), device=a.device) for _ in range(2))
    print(
        f"{a.n_layer}L/{a.n_head}H/{a.n_embd}, block {a.block_size}, batch {a.batch_size}, {ours.num_params():,} "
        f"params, dropout {a.dropout}, {a.device}, {torch.get_num_threads()} threads; forward+backward, "
        f"median of {a.steps} steps"
    )
    runs = {"ours": lambda: train_step(ours, batch), "seed": lambda: train_step(seed, batch)}
    fast, slow = (batch[0].numel() / s for s in alternating_medians(runs, a.steps, warmup=2).values())
    print(f"chargpt GPT:                     {fast:10,.0f} tokens/s")
    print(f"seed-style (Head modules, tril): {slow:10,.0f} tokens/s")
    print(f"speed-up: {fast / slow:.2f}x")


if __name__ == "__main__":
    main()
