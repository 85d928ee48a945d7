"""Time to nanoGPT's CPU-recipe loss: nanoGPT's own recipe against a chargpt config, side by side.

    python benchmarks/bench_speedrun.py                     # configs/speedrun_cpu.yaml, 3 alternating pairs
    python benchmarks/bench_speedrun.py --pairs 5 --config configs/shakespeare_char_quick.yaml

Both run as whole processes, start-up included, one after the other in each pair so that a slow spell of a shared
machine hits both alike; medians and their ratio are printed, with the validation loss each run ended at.
nanoGPT's side is ../shared/reference/nanogpt/run_recipe.sh (its unmodified train.py; needs numpy).
"""

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO.parent / "shared" / "reference" / "nanogpt" / "run_recipe.sh"


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout + done.stderr


def nanogpt(work: Path, extra: list[str]) -> tuple[float, float]:
    seconds, log = run(["bash", str(RECIPE), *extra], work)
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
    p.add_argument("--nanogpt_args", default="", help="extra flags for run_recipe.sh, quoted (for quick checks)")
    p.add_argument("--chargpt_args", default="", help="extra chargpt flags, quoted (for quick checks)")
    a = p.parse_args()
    if not RECIPE.exists():
        raise SystemExit(f"nanoGPT's recipe is not at {RECIPE}")
    work = Path(tempfile.mkdtemp(prefix="chargpt-speedrun-"))
    results: dict[str, list[tuple[float, float]]] = {"nanogpt": [], "chargpt": []}
    try:
        for i in range(a.pairs):
            results["nanogpt"].append(nanogpt(work, shlex.split(a.nanogpt_args)))
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
