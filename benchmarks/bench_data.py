"""Batches/s of the training stream (batch 64 x block 256 of tiny-shakespeare), and its cost against a training
step of the lecture model (10.8M params) on this device.

    python benchmarks/bench_data.py
"""

import time

import torch

from src.data import BlockStream, CharDataModule
from src.model import GPT, GPTConfig


def main() -> None:
    dm = CharDataModule(block_size=256, batch_size=64)
    dm.prepare_data()
    dm.setup("fit")
    stream = iter(BlockStream(dm.train_data, 256, 64, seed=1337, rank=0))
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        next(stream)
    per_batch = (time.perf_counter() - start) / n
    print(f"data: {1 / per_batch:,.0f} batches/s, {per_batch * 1e6:,.0f} us per batch of 64 x 256")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = GPT(GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    times = []
    for _ in range(3):
        x, y = (t.to(device) for t in next(stream))
        start = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step = sorted(times)[1]
    print(
        f"lecture model training step on {device}: {step * 1e3:,.0f} ms; drawing its batch costs "
        f"{100 * per_batch / step:.3f}% of it"
    )


if __name__ == "__main__":
    main()
