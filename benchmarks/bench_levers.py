"""One training run per lever, timed start to finish, as a row of docs/experiments.md's lever table.

python benchmarks/bench_levers.py --name baseline
python benchmarks/bench_levers.py --name rope --seeds 1337 1 2 -- --model.rope true
python benchmarks/bench_levers.py --name short --config configs/speedrun_cpu.yaml -- --trainer.max_steps 400

Each run is ``python -m src.train fit --config CONFIG [flags after --] --seed_everything SEED`` in a process of its
own, under a fresh run name (its folder is deleted afterwards unless ``--keep``). Printed per run: wall time of the
whole command, steps, the validation loss at each evaluation and the best, the median training tokens/s from
TensorBoard, the time and step at which val first reached ``--target`` (1.48, the lecture's figure; to the evaluation
that logged it), the last logged train loss, and the peak resident memory of that run alone (Unix). Runs on one
machine are deterministic for a seed; run one at a time.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]


def run_measured(command: list[str]) -> tuple[int, str, float]:
    """Run ``command`` from the checkout: its exit status, its stderr, and the peak resident memory in MB of its
    process alone (``wait4``'s own usage of that child; Unix only: elsewhere nan)."""
    if not hasattr(os, "wait4"):
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        return done.returncode, done.stderr, float("nan")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        # ru_maxrss is in KiB on Linux, in bytes on macOS
        peak = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
        return proc.returncode, err.read(), peak


def run(config: str, flags: list[str], seed: int, name: str, keep: bool) -> dict:
    run_name = f"lever-{name}-s{seed}"
    folder = REPO / "lightning_logs" / run_name
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "-m", "src.train", "fit", "--config", config, *flags]
    command += ["--seed_everything", str(seed), "--run_name", run_name, "--trainer.enable_progress_bar", "false"]
    started, started_epoch = time.perf_counter(), time.time()
    returncode, stderr, peak = run_measured(command)
    wall = time.perf_counter() - started
    if returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    # seconds from the command's start to each evaluation's log (the events' own clock)
    val_seconds = [e.wall_time - started_epoch for e in events.Scalars("val_loss")] if "val_loss" in scalars else []
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    val = scalars.get("val_loss", [])
    return {
        "wall": wall,
        "steps": max((step + 1 for step, _ in val), default=0),  # logged at the 0-based index of the step before
        "steps_at": [step + 1 for step, _ in val],
        "val": [value for _, value in val],
        "val_seconds": val_seconds,
        "tokens_per_sec": statistics.median(v for _, v in scalars.get("tokens_per_sec", [(0, 0)])),
        "train_loss": scalars.get("train_loss", [(0, float("nan"))])[-1][1],
        "peak_mb": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the lever's name in the table")
    parser.add_argument("--config", default="configs/shakespeare_char.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337], help="one run per seed, one after another")
    parser.add_argument("--keep", action="store_true", help="keep the runs' folders in lightning_logs/")
    parser.add_argument("--target", type=float, default=1.48, help="report when val first reaches this loss")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="after --: flags for src.train fit")
    args = parser.parse_args()
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    columns = ["lever", "flags", "seed", "steps", "wall", "best val", "val at each evaluation", "tokens/s"]
    columns.append(f"to {args.target}")
    print("| " + " | ".join([*columns, "last train loss", "peak MB"]) + " |")
    for seed in args.seeds:
        r = run(args.config, flags, seed, args.name, args.keep)
        minutes, seconds = divmod(round(r["wall"]), 60)
        curve = ", ".join(f"{v:.4f}" for v in r["val"])
        reached = [(s, t) for s, v, t in zip(r["steps_at"], r["val"], r["val_seconds"]) if v <= args.target]
        to_target = f"{reached[0][1] // 60:.0f}:{reached[0][1] % 60:02.0f} (step {reached[0][0]:,})" if reached else "-"
        print(
            f"| {args.name} | `{' '.join(flags)}` | {seed} | {r['steps']:,} | {minutes}:{seconds:02d} | "
            f"{min(r['val'], default=float('nan')):.4f} | {curve} | {r['tokens_per_sec']:,.0f} | {to_target} | "
            f"{r['train_loss']:.4f} | {r['peak_mb']:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
