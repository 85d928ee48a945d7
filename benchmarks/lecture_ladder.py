"""The lecture's ladder: every stage of configs/lecture/ trained with the lecture's recipe and with chargpt's, over
several seeds, and one table of the validation losses beside the lecture's own figures.

    python benchmarks/lecture_ladder.py                        # 9 stages x 3 seeds x 2 recipes, 2 at a time
    python benchmarks/lecture_ladder.py --recipes lecture --seeds 1337
    tensorboard --logdir lightning_logs/lecture                # every run's curves side by side

The ladder is an Optuna study (src.tuning's trial runner, a grid sampler over stage x recipe x seed) in
``lightning_logs/lecture/ladder.db``, run by ``--jobs`` worker processes (one thread each) that take the next grid
point until none is left; each trial is an ordinary ``fit`` of ``configs/lecture/NN.yaml`` in
``lightning_logs/lecture/<recipe>/<stage>/seed<k>``, its output in ``fit.log`` there. A worker makes many fits, so
Lightning's ~4 s import is paid once per worker. Run again, a finished ladder prints at once; an interrupted one
goes on where it stopped, and ``--storage`` (a database URL) lets workers on several machines share it. The
scaled-up last stage, configs/gpt_lecture.yaml, is a GPU run and is not in the ladder. Flags after ``--`` go to
every run (e.g. ``-- --trainer.max_steps 20``).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import re
import statistics
import sys
import time
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


def args_of(stage: str, recipe: str, seed: int, root: Path, extra: list[str], maps: bool) -> tuple[str, list[str]]:
    """The run's name and fit's arguments for one grid point."""
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
    return name, [*args, "--ckpt_path=last"]  # a run that is there already is resumed: at once when it is finished


def work(grid: dict, root: Path, storage: str, extra: list[str], first_seed: int) -> None:
    """A worker process: the next grid point not taken yet, until the grid is done."""
    import optuna

    from src.tuning.study import rdb_storage
    from src.tuning.trial import fit_trial

    torch.set_num_threads(1)  # two single-threaded fits beat one on two threads at this size (docs/lecture.md)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler = optuna.samplers.GridSampler(grid)
    study = optuna.load_study(study_name="ladder", storage=rdb_storage(storage), sampler=sampler)

    def objective(trial) -> float:
        stage, recipe, seed = (trial.suggest_categorical(k, grid[k]) for k in ("stage", "recipe", "seed"))
        name, args = args_of(stage, recipe, seed, root, extra, maps=seed == first_seed)
        return fit_trial(trial, args, root / name, prune=False).final_val

    while not sampler.is_exhausted(study):
        study.optimize(objective, n_trials=1)


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
    p.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    p.add_argument("--root", default="lightning_logs", help="--trainer.default_root_dir of every run")
    p.add_argument("--storage", help="the study's database URL (default: <root>/lecture/ladder.db)")
    a = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    root = Path(a.root)
    storage = a.storage or f"sqlite:///{root / 'lecture' / 'ladder.db'}"
    # the longest stages first, so that the workers finish together (the grid is taken in its order)
    grid = {"stage": [s for s, _, _ in reversed(ladder) if s in a.stages], "recipe": a.recipes, "seed": a.seeds}
    started = time.perf_counter()
    study = open_ladder(storage, root)
    spawn = multiprocessing.get_context("spawn")  # the same on Linux, macOS and Windows; no forked torch state
    workers = [spawn.Process(target=work, args=(grid, root, storage, extra, a.seeds[0])) for _ in range(a.jobs)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results = first_results(study, grid)
    missing = [key for key in itertools.product(grid["stage"], a.recipes, a.seeds) if key not in results]
    if missing:
        failed = [t for t in study.trials if t.state.name == "FAIL" or "reason" in t.user_attrs]
        detail = "; ".join(f"{t.params}: {t.user_attrs.get('reason', t.state.name)}" for t in failed[-3:])
        raise SystemExit(f"{len(missing)} runs did not finish (first {missing[0]}); {detail}; see their fit.log")
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
    seeds, count = ", ".join(map(str, a.seeds)), len(grid["stage"]) * len(a.recipes) * len(a.seeds)
    print(f"{count} runs (seeds {seeds}), {a.jobs} at a time: {time.perf_counter() - started:.0f} s in all")


def open_ladder(storage: str, root: Path):
    import optuna

    from src.tuning.study import rdb_storage

    (root / "lecture").mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(study_name="ladder", storage=rdb_storage(storage), load_if_exists=True)


def first_results(study, grid: dict) -> dict:
    """(stage, recipe, seed) -> the first complete trial's final val, parameters and wall time (a grid point run
    again, by a rerun of the ladder, resumes its finished run: its wall is not the run's)."""
    results = {}
    for t in sorted(study.trials, key=lambda t: t.number):
        key = tuple(t.params.get(k) for k in ("stage", "recipe", "seed"))
        if t.state.name == "COMPLETE" and key not in results and all(v in grid[k] for k, v in zip(grid, key)):
            results[key] = {"val": t.value, "params": t.user_attrs["params"], "wall": t.user_attrs["wall"]}
    return results


if __name__ == "__main__":
    main()
