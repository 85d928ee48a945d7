"""Time to nanoGPT's CPU-recipe loss: nanoGPT's own recipe against a chargpt config, side by side.

    python benchmarks/bench_speedrun.py                     # configs/speedrun_cpu.yaml, 3 alternating pairs
    python benchmarks/bench_speedrun.py --pairs 5 --config configs/shakespeare_char_quick.yaml

Both run as whole processes, start-up included, one after the other in each pair so that a slow spell of a shared
machine hits both alike; medians and their ratio are printed, with the validation loss each run ended at.
nanoGPT's side is its own unmodified train.py (``--nanogpt DIR``, see benchmarks/nanogpt.py) with the CPU recipe of
its README (4 layers, 4 heads, 128 wide, block 64, batch 12, 2,000 iterations, dropout 0, no compile, 20 evaluation
batches) on the same corpus, prepared as its data/shakespeare_char/prepare.py does (needs numpy).
"""

import argparse
import pickle
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from nanogpt import add_flag, missing  # a sibling module: this folder is on the path

REPO = Path(__file__).resolve().parents[1]
RECIPE = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64"]
RECIPE += ["--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000"]
RECIPE += ["--dropout=0.0"]
NEEDS = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py")


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout + done.stderr


def prepare_nanogpt(work: Path, nanogpt: Path, corpus: Path) -> None:
    """nanoGPT's train.py reads data/shakespeare_char/{train,val}.bin and meta.pkl from its working directory: the
    corpus's sorted characters as uint16 ids, split 90/10, as its prepare.py writes them."""
    text = corpus.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    out = work / "data" / "shakespeare_char"
    out.mkdir(parents=True, exist_ok=True)
    n = int(0.9 * len(ids))
    ids[:n].tofile(out / "train.bin")
    ids[n:].tofile(out / "val.bin")
    with open(out / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    shutil.copy(nanogpt / "configurator.py", work)  # train.py execs it from the working directory


def nanogpt_run(work: Path, nanogpt: Path, extra: list[str]) -> tuple[float, float]:
    config = str(nanogpt / "config" / "train_shakespeare_char.py")
    cmd = [sys.executable, str(nanogpt / "train.py"), config, *RECIPE, f"--out_dir={work / 'out'}", *extra]
    seconds, log = run(cmd, work)
    return seconds, float(re.findall(r"val loss ([\d.]+)", log)[-1])  # its last evaluation


def chargpt(work: Path, config: str, name: str, extra: list[str]) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "src.train", "fit", f"--config={REPO / config}", f"--run_name={name}"]
    seconds, _ = run([*cmd, f"--data.cache_dir={REPO / 'data'}", "--trainer.enable_progress_bar=false", *extra], work)
    checkpoint = torch.load(work / "lightning_logs" / name / "checkpoints" / "last.ckpt", weights_only=True)
    scores = [state["best_model_score"] for key, state in checkpoint["callbacks"].items() if "Model" in key]
    return seconds, min((s.item() for s in scores if s is not None), default=float("nan"))  # nan: never evaluated


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/speedrun_cpu.yaml", help="the chargpt side")
    p.add_argument("--pairs", type=int, default=3, help="alternating pairs of runs; medians are printed")
    p.add_argument("--nanogpt_args", default="", help="extra flags for nanoGPT's train.py, quoted (quick checks)")
    p.add_argument("--corpus", default=str(REPO / "data/tinyshakespeare/input.txt"), help="tiny-shakespeare")
    add_flag(p)
    p.add_argument("--chargpt_args", default="", help="extra chargpt flags, quoted (for quick checks)")
    a = p.parse_args()
    problem = missing(a.nanogpt, *NEEDS)
    if problem:
        raise SystemExit(f"bench_speedrun: {problem}")
    if not Path(a.corpus).is_file():
        raise SystemExit(f"bench_speedrun: no corpus at {a.corpus}: run a chargpt fit once (it downloads it)")
    nanogpt = Path(a.nanogpt).resolve()
    work = Path(tempfile.mkdtemp(prefix="chargpt-speedrun-"))
    prepare_nanogpt(work, nanogpt, Path(a.corpus))
    results: dict[str, list[tuple[float, float]]] = {"nanogpt": [], "chargpt": []}
    try:
        for i in range(a.pairs):
            results["nanogpt"].append(nanogpt_run(work, nanogpt, shlex.split(a.nanogpt_args)))
            results["chargpt"].append(chargpt(work, a.config, f"pair{i}", shlex.split(a.chargpt_args)))
            print(f"pair {i + 1}: nanoGPT {results['nanogpt'][-1][0]:.1f} s, chargpt {results['chargpt'][-1][0]:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"whole processes, median of {a.pairs} alternating pairs, {torch.get_num_threads()} threads:")
    walls = {}
    for name, runs in results.items():
        walls[name] = median([s for s, _ in runs])
        losses = ", ".join(f"{v:.4f}" for _, v in runs)
        label = "nanoGPT recipe" if name == "nanogpt" else a.config
        print(f"  {label:32s} {walls[name]:7.1f} s   val loss reached: {losses}")
    print(f"ratio chargpt/nanoGPT: {walls['chargpt'] / walls['nanogpt']:.2f}")


if __name__ == "__main__":
    main()
