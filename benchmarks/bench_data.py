"""Data figures on this device.

    python benchmarks/bench_data.py                   # batches/s of the training stream (64 x 256 of
                                                      # tiny-shakespeare), against a lecture-model step
    python benchmarks/bench_data.py --corpus_mb 110   # a generated 110 MB corpus: encode MB/s, cached start-up,
                                                      # and a 20-step fit against the same fit on tiny-shakespeare

The generated corpus is tiny-shakespeare repeated, with 60 characters drawn from 6,000 CJK ideographs dropped into
each copy: a large vocabulary of mostly rare characters, as real text brings. Fits run as whole processes,
alternating (tiny-shakespeare, cold cache, warm cache), and medians are printed with peak memory (max RSS).
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from src.data.datamodule import BlockStream, CharDataModule
from src.model import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE_CACHE = REPO / "data"  # where CharDataModule keeps tiny-shakespeare by default


def stream_and_step() -> None:
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


def generate_corpus(path: Path, megabytes: float) -> None:
    base = (SHAKESPEARE_CACHE / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    rng, rare = random.Random(0), [chr(0x4E00 + i) for i in range(6000)]
    with open(path, "w", encoding="utf-8") as out:
        while out.tell() < megabytes * 1e6:
            cuts = sorted(rng.sample(range(len(base)), 60))
            pieces = [base[a:b] + rng.choice(rare) for a, b in zip([0, *cuts], cuts)]
            out.write("".join(pieces) + base[cuts[-1] :])


def timed(cmd: list[str], cwd: Path) -> dict:
    """Run a whole process; its wall time, peak memory (max RSS, MiB) and last stdout line."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"{' '.join(cmd)} failed with status {status}")
    lines = out.strip().splitlines()
    return {"wall": time.perf_counter() - start, "peak_mib": usage.ru_maxrss / 1024, "out": lines[-1] if lines else ""}


def load_in_child(corpus: Path, cache: Path) -> dict:
    code = (
        "import json, time; from src.data.corpus import corpus_files; from src.data.token_cache import load_tokens; "
        f"t = time.perf_counter(); n = len(load_tokens(corpus_files({str(corpus)!r}), 'chars', {str(cache)!r}).ids); "
        "print(json.dumps({'seconds': time.perf_counter() - t, 'tokens': n}))"
    )
    result = timed([sys.executable, "-c", code], REPO)
    return {**json.loads(result["out"]), "peak_mib": result["peak_mib"]}


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def corpus_figures(megabytes: float, steps: int, repeats: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="chargpt-bench-data-"))
    try:
        corpus, cache = work / "corpus.txt", work / "cache"
        generate_corpus(corpus, megabytes)
        size = corpus.stat().st_size
        cold = load_in_child(corpus, cache)
        warm = load_in_child(corpus, cache)
        print(f"corpus: {size / 1e6:,.1f} MB generated, {cold['tokens']:,} tokens")
        rate = size / 1e6 / cold["seconds"]
        print(f"encode (cold cache): {cold['seconds']:.2f} s, {rate:,.0f} MB/s, peak {cold['peak_mib']:,.0f} MiB")
        print(f"cached start-up: {warm['seconds']:.3f} s, peak {warm['peak_mib']:,.0f} MiB")
        fit = [sys.executable, "-m", "src.train", "fit", f"--config={REPO / 'configs/shakespeare_char_quick.yaml'}"]
        fit += [f"--trainer.max_steps={steps}", "--trainer.enable_progress_bar=false"]
        runs: dict[str, list[dict]] = {"tiny-shakespeare": [], "corpus, cold cache": [], "corpus, warm cache": []}
        for i in range(repeats):  # alternating, so a slow spell of a shared machine hits every kind alike
            shutil.rmtree(cache, ignore_errors=True)
            shakes = [f"--data.cache_dir={SHAKESPEARE_CACHE}"]
            big = [f"--data.path={corpus}", f"--data.cache_dir={cache}"]
            for kind, (name, extra) in enumerate(zip(runs, (shakes, big, big))):
                runs[name].append(timed([*fit, *extra, f"--run_name=round{i}-kind{kind}"], work))
        base = median([r["wall"] for r in runs["tiny-shakespeare"]])
        print(f"{steps}-step fit of configs/shakespeare_char_quick.yaml, whole process, median of {repeats}:")
        for name, results in runs.items():
            wall, peak = median([r["wall"] for r in results]), max(r["peak_mib"] for r in results)
            print(f"  {name:20s} {wall:6.2f} s ({wall / base:.2f}x)  peak {peak:,.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus_mb", type=float, help="measure a generated corpus of this size instead")
    p.add_argument("--steps", type=int, default=20, help="training steps of each fit")
    p.add_argument("--repeats", type=int, default=3, help="fits of each kind, alternating; medians are printed")
    a = p.parse_args()
    if a.corpus_mb:
        corpus_figures(a.corpus_mb, a.steps, a.repeats)
    else:
        stream_and_step()


if __name__ == "__main__":
    main()
