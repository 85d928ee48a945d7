"""The lecture's ladder: every stage of configs/lecture/ trained with the lecture's recipe and with chargpt's, over
several seeds, and one table of the validation losses beside the lecture's own figures.

    python benchmarks/lecture_ladder.py                        # 9 stages x 3 seeds x 2 recipes, 2 at a time
    python benchmarks/lecture_ladder.py --recipes lecture --seeds 1337
    tensorboard --logdir lightning_logs/lecture                # every run's curves side by side

Each run is an ordinary ``python -m src.train fit --config configs/lecture/NN.yaml`` in its own process (one
thread each, ``--jobs`` at once), in ``lightning_logs/lecture/<recipe>/<stage>/seed<k>``; a run that is already
there is resumed, so a finished ladder prints again at once. The scaled-up last stage, configs/gpt_lecture.yaml,
is a GPU run and is not in the ladder. Flags after ``--`` go to every run (e.g. ``-- --trainer.max_steps 20``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# file, what the stage adds, the lecture's val loss (None where it reports none)
STAGES = [
    ("01_bigram", "the bigram: a table of next-character logits", 2.49),
    ("02_embed", "token and position embeddings, an output layer", None),
    ("03_one_head", "one self-attention head (size 32)", 2.4),
    ("04_four_heads", "four heads of 8 in parallel", 2.28),
    ("05_feed_forward", "a feed-forward layer after attention", 2.24),
    ("06_blocks", "three blocks, no residual connections", None),
    ("07_residual", "residual connections and projections", None),
    ("08_residual_4x", "the feed-forward 4x wide inside", 2.09),
    ("09_layernorm", "LayerNorm before each sub-layer and the head", 2.06),
]
RECIPES = {
    "lecture": [],  # the configs as they are: constant rate, PyTorch's init, AdamW's defaults
    "chargpt": [  # GPT-2 init, warmup into cosine decay to a tenth, chargpt's AdamW settings and clipping
        "--model.init=gpt2", "--model.warmup_steps=100", "--model.weight_decay=0.1", "--model.beta2=0.99",
        "--trainer.gradient_clip_val=1.0",  # and --model.min_lr at a tenth of the stage's rate (run)
    ],
}  # fmt: skip


def run(stage: str, recipe: str, seed: int, root: Path, extra: list[str], maps: bool = True) -> dict:
    config = REPO / "configs" / "lecture" / f"{stage}.yaml"
    flags = list(RECIPES[recipe]) + ([] if maps else ["--attention_maps.enabled=false"])
    if recipe == "chargpt":
        flags.append(f"--model.min_lr={learning_rate(config) / 10}")
    name = f"lecture/{recipe}/{stage}/seed{seed}"
    cmd = [sys.executable, "-m", "src.train", "fit", f"--config={config}", f"--run_name={name}"]
    cmd += [f"--seed_everything={seed}", f"--data.seed={seed}", f"--trainer.default_root_dir={root}"]
    cmd += ["--trainer.enable_progress_bar=false", *flags, *extra, "--ckpt_path=last"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=Path.cwd(), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    ckpt = torch.load(root / name / "checkpoints" / "last.ckpt", weights_only=True)
    final = ckpt["callbacks"]["FitSummary"]["final"]
    params = sum(v.numel() for k, v in ckpt["state_dict"].items() if k.startswith("model."))
    return {"val": final[0], "params": params, "wall": time.perf_counter() - started}


def learning_rate(config: Path) -> float:
    import yaml

    return float(yaml.safe_load(config.read_text())["model"]["learning_rate"])


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ± {(max(values) - min(values)) / 2:.4f}"


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--stages", nargs="+", choices=[s for s, _, _ in STAGES], default=[s for s, _, _ in STAGES])
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--root", default="lightning_logs", help="--trainer.default_root_dir of every run")
    a = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    root = Path(a.root)
    jobs = [(s, r, seed) for s, _, _ in STAGES if s in a.stages for r in a.recipes for seed in a.seeds]
    started = time.perf_counter()
    with ThreadPoolExecutor(a.jobs) as pool:
        # attention maps for each stage's first seed only: drawing them costs a block stage ~10 s a run
        results = dict(zip(jobs, pool.map(lambda job: run(*job, root, extra, job[2] == a.seeds[0]), jobs)))
    header = "| stage | what it adds | parameters | lecture |"
    header += "".join(f" {r} recipe: val (mean ± half range) | wall (s) |" for r in a.recipes)
    print(header)
    print("|" + " --- |" * (4 + 2 * len(a.recipes)))
    for stage, adds, lecture in STAGES:
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
