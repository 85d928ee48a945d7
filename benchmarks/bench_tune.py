"""A study against the default config, at the same time budget on this machine: does tuning find a better model?

python benchmarks/bench_tune.py                                   # 20 trials of 2 minutes on a corpus of Python code
python benchmarks/bench_tune.py --corpus data/tinyshakespeare/input.txt --minutes 5

The corpus is a text file, by default one that is not tiny-shakespeare: the running Python's own standard library
sources (``*.py`` in sorted order, the first ``--megabytes``), written to ``lightning_logs/bench_tune/``. First the
default config trains on it for the budget (``python -m src.train fit --data.path CORPUS --trainer.max_time ...``,
benchmarks/bench_levers.py's ``run``), then ``python -m src.tune`` runs ``--trials`` trials of the default space with
the same budget (its lines and table as it prints them). Printed at the end: the default's best val and the
study's, side by side. Run it alone: a budget plans its steps from the speed it measures.
"""

import argparse
import subprocess
import sys
import sysconfig
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_levers import run  # noqa: E402


def python_sources(out: Path, megabytes: float) -> Path:
    """The standard library's ``*.py`` files, in sorted order, up to ``megabytes`` of UTF-8 text."""
    out.parent.mkdir(parents=True, exist_ok=True)
    limit, parts, size = int(megabytes * 2**20), [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "site-packages" in path.parts or size >= limit:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        size += len(text.encode("utf-8"))
    out.write_text("".join(parts)[:limit], encoding="utf-8", errors="ignore")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", help="a text file (default: the standard library's sources, generated)")
    parser.add_argument("--megabytes", type=float, default=2.0, help="the generated corpus's size")
    parser.add_argument("--config", default="configs/shakespeare_char.yaml")
    parser.add_argument("--minutes", type=float, default=2.0, help="the budget of the default run and every trial")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1337, help="the training seed, the same for every run")
    args = parser.parse_args()
    corpus = Path(args.corpus) if args.corpus else python_sources(REPO / "lightning_logs/bench_tune/corpus.txt",
                                                                    args.megabytes)  # fmt: skip
    seconds = round(args.minutes * 60)
    budget = ["--trainer.max_time", f"00:00:{seconds // 60:02d}:{seconds % 60:02d}"]
    data = ["--data.path", str(corpus.resolve())]
    print(f"corpus: {corpus} ({corpus.stat().st_size:,} bytes); budget {budget[1]}", flush=True)

    default = run(args.config, [*data, *budget], args.seed, "tune-default", keep=False)
    print(f"default config: {default['steps']:,} steps, best val {min(default['val']):.4f}", flush=True)

    study = f"bench-{corpus.stem}-{args.minutes:g}m"
    (REPO / "lightning_logs" / "tune").mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{REPO / 'lightning_logs' / 'tune' / study}.db"
    command = [sys.executable, "-m", "src.tune", "--config", args.config, "--trials", str(args.trials), "--study",
               study, "--storage", storage, *data, *budget, "--seed_everything", str(args.seed)]  # fmt: skip
    code = subprocess.run(command, cwd=REPO).returncode
    if code:  # stopped (Ctrl-C: 130) or failed; src.tune has printed its table and the command that continues
        sys.exit(code)
    best = optuna.load_study(study_name=study, storage=storage).best_trial
    print("| run | best val | values |\n| --- | --- | --- |")
    print(f"| default config | {min(default['val']):.4f} | |")
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    print(f"| study's best (trial {best.number} of {args.trials}) | {best.value:.4f} | {values} |")


if __name__ == "__main__":
    main()
