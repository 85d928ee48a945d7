"""Training for a time budget: the steps it planned, its wall time against the budget, and its validation loss.

python benchmarks/bench_budget.py                                   # 5 and 10 minutes, seeds 1337, 1 and 2
python benchmarks/bench_budget.py --minutes 10 --seeds 1337 -- --trainer.precision 32-true

Each run is ``python -m src.train fit --config CONFIG --trainer.max_time 00:00:MM:00`` (benchmarks/bench_levers.py's
``run``, one at a time: a run plans its steps from the speed it measures, so anything running beside it takes
steps away). Printed per run: the budget, the seed, the steps it planned, its wall time start to finish (the
Python imports, which the budget does not count, included) and how far that is from the budget, the validation
loss at each evaluation and the best.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_levers import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/shakespeare_char.yaml")
    parser.add_argument("--minutes", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parser.add_argument("--keep", action="store_true", help="keep the runs' folders (lightning_logs/lever-budget*)")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="after --: flags for src.train fit")
    args = parser.parse_args()
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    print("| budget | flags | seed | steps | wall | off by | best val | val at each evaluation |")
    for minutes in args.minutes:
        for seed in args.seeds:
            budget = ["--trainer.max_time", f"00:00:{minutes:02d}:00"]
            r = run(args.config, [*budget, *flags], seed, f"budget{minutes}", keep=args.keep)
            off = r["wall"] / (minutes * 60) - 1
            wall = f"{int(r['wall']) // 60}:{int(r['wall']) % 60:02d}"
            curve = ", ".join(f"{v:.4f}" for v in r["val"])
            print(
                f"| {minutes}:00 | `{' '.join(flags)}` | {seed} | {r['steps']:,} | {wall} | {off:+.1%} | "
                f"{min(r['val'], default=float('nan')):.4f} | {curve} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
