"""The lecture's ladder: every stage of configs/lecture/ trained with the lecture's recipe and with chargpt's, over
several seeds, and one table of the validation losses beside the lecture's own figures.

    python benchmarks/lecture_ladder.py                        # 9 stages x 3 seeds x 2 recipes, 2 at a time
    python benchmarks/lecture_ladder.py --recipes lecture --seeds 1337
    tensorboard --logdir lightning_logs/lecture                # every run's curves side by side

Each run is an ordinary ``python -m src.train fit --config configs/lecture/NN.yaml``, made by ``src.training.fit.fit``
in one of ``--jobs`` worker processes (one thread each), in ``lightning_logs/lecture/<recipe>/<stage>/seed<k>``,
its output in ``ladder.log`` there. A worker makes many fits, so Lightning's ~4 s import is paid once per worker,
not once per run. A run that is already there is resumed, so a finished ladder prints again at once. The scaled-up
last stage, configs/gpt_lecture.yaml, is a GPU run and is not in the ladder. Flags after ``--`` go to every run
(e.g. ``-- --trainer.max_steps 20``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # src, here and in the workers (spawn hands them this path)
LECTURE = REPO / "configs" / "lecture"


def stages() -> list[tuple[str, str, float | None]]:
    """(file, what the stage adds, the lecture's val loss or None) of every config in configs/lecture/, in order,
    from each file's header: "# The lecture, step NN: WHAT ... (N parameters). The lecture: ~2.4." """
    found = []
    for path in sorted(LECTURE.glob("*.yaml")):
        header = " ".join(line[2:] for line in path.read_text().splitlines() if line.startswith("# "))
        what = re.split(r": | \(\d[\d,]*( parameters)?\)", header.split(": ", 1)[1])[0].removeprefix("+ ")
        figure = re.search(r"The lecture: ~?(\d\.\d+)", header)
        found.append((path.stem, what[0].upper() + what[1:], float(figure.group(1)) if figure else None))
    return found


RECIPES = {
    "lecture": [],  # the configs as they are: constant rate, PyTorch's init, AdamW's defaults
    "chargpt": [  # GPT-2 init, warmup into cosine decay to a tenth, chargpt's AdamW settings and clipping
        "--model.init=gpt2", "--model.warmup_steps=100", "--model.weight_decay=0.1", "--model.beta2=0.99",
        "--trainer.gradient_clip_val=1.0",  # and --model.min_lr at a tenth of the stage's rate (run)
    ],
}  # fmt: skip


def run(stage: str, recipe: str, seed: int, root: Path, extra: list[str], maps: bool = True) -> dict:
    """One fit in this worker process; its output goes to ladder.log in the run's folder."""
    from src.training.fit import fit  # imported once per worker

    config = LECTURE / f"{stage}.yaml"
    # val loss every 1,000 steps rather than the lecture's 500 (the same final figure; the curve has half the points),
    # attention maps at the end of the first seed's runs only: together ~60 s of the ladder's 11 minutes
    maps_flags = ["--attention_maps.every_n_steps=5000"] if maps else ["--attention_maps.enabled=false"]
    flags = ["--trainer.val_check_interval=1000", *RECIPES[recipe], *maps_flags]
    if recipe == "chargpt":
        flags.append(f"--model.min_lr={learning_rate(config) / 10}")
    name = f"lecture/{recipe}/{stage}/seed{seed}"
    args = [f"--config={config}", f"--run_name={name}", f"--seed_everything={seed}", f"--data.seed={seed}"]
    args += [f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false", *flags, *extra]
    log = root / name / "ladder.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet(log):
            result = fit([*args, "--ckpt_path=last"])
    except Exception as err:  # a worker's exception reaches the parent without the run's output: add its end
        raise RuntimeError(f"{name} failed ({err!r}); the end of {log}:\n{log.read_text()[-3000:]}") from None
    return {"val": result.final_val, "params": result.params, "wall": result.wall}


class quiet:
    """Points this process's stdout and stderr (file descriptors 1 and 2, which Lightning's log handlers and
    C++ warnings write to as well as ``print``) at ``path`` for the duration."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        sys.stdout.flush(), sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        self.file = open(self.path, "w")
        os.dup2(self.file.fileno(), 1), os.dup2(self.file.fileno(), 2)

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush(), sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        self.file.close()


def one_thread() -> None:
    torch.set_num_threads(1)  # two single-threaded fits beat one on two threads at this size (docs/lecture.md)


def learning_rate(config: Path) -> float:
    import yaml

    return float(yaml.safe_load(config.read_text())["model"]["learning_rate"])


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ± {(max(values) - min(values)) / 2:.4f}"


def main() -> None:
    argv = sys.argv[1:]
    ladder = stages()
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--stages", nargs="+", choices=[s for s, _, _ in ladder], default=[s for s, _, _ in ladder])
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--root", default="lightning_logs", help="--trainer.default_root_dir of every run")
    a = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    root = Path(a.root)
    # the longest stages first, so that the two workers finish together
    jobs = [(s, r, seed) for s, _, _ in reversed(ladder) if s in a.stages for r in a.recipes for seed in a.seeds]
    started = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")  # the same on Linux, macOS and Windows; no forked torch state
    with ProcessPoolExecutor(a.jobs, mp_context=spawn, initializer=one_thread) as pool:
        futures = {job: pool.submit(run, *job, root, extra, job[2] == a.seeds[0]) for job in jobs}
        results = {job: future.result() for job, future in futures.items()}
    header = "| stage | what it adds | parameters | lecture |"
    header += "".join(f" {r} recipe: val (mean ± half range) | wall (s) |" for r in a.recipes)
    print(header)
    print("|" + " --- |" * (4 + 2 * len(a.recipes)))
    for stage, adds, lecture in ladder:
        if stage not in a.stages:
            continue
        first = results[(stage, a.recipes[0], a.seeds[0])]
        row = f"| {stage} | {adds} | {first['params']:,} | {lecture if lecture else '-'} |"
        for recipe in a.recipes:
            runs = [results[(stage, recipe, seed)] for seed in a.seeds]
            row += f" {spread([r['val'] for r in runs])} | {statistics.fmean(r['wall'] for r in runs):.0f} |"
        print(row)
    seeds = ", ".join(map(str, a.seeds))
    print(f"{len(jobs)} runs (seeds {seeds}), {a.jobs} at a time: {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
