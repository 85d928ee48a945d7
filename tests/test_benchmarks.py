"""The benchmark scripts run from a checkout with one command and print their figures (tiny sizes here: the figures
themselves are for people to read, never asserted)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # end to end: trains, or launches processes

NANOGPT = REPO.parent / "shared/reference/nanogpt"
TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16"]


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bench_model_prints_both_models_and_the_speed_up():
    out = run("bench_model.py", *TINY, "--batch_size", "2", "--steps", "1")
    assert re.search(r"chargpt GPT: +[\d,]+ tokens/s", out)
    assert re.search(r"seed-style .*: +[\d,]+ tokens/s", out)
    assert re.search(r"speed-up: \d+\.\d\dx", out)


def test_bench_generate_prints_each_variant_against_nanogpt():
    out = run("bench_generate.py", *TINY, "--new_tokens", "20", "--repeats", "1", "--no_compile")
    assert re.search(r"custom: [\d,]+ params, 20 new tokens, batch 1, median of 1", out)
    assert re.search(r"exact, eager +[\d,]+ tok/s.*first token +[\d.]+ ms", out)
    if (NANOGPT / "model.py").exists():
        assert re.search(r"nanoGPT +[\d,]+ tok/s", out)
        assert re.search(r"exact, eager +[\d,]+ tok/s +\d+\.\d\dx nanoGPT", out)
    elsewhere = run("bench_generate.py", *TINY, "--new_tokens", "5", "--repeats", "1", "--no_compile", "--nanogpt=/no")
    assert "no nanoGPT column: nanoGPT's model.py not found in /no: fetch it with `git clone" in elsewhere


def test_bench_train_prints_fit_loop_and_the_overhead(shakespeare):
    sizes = ["--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "16", "--data.block_size", "16"]
    args = ["--steps", "2", "--warmup", "1", "--repeats", "1", "--mode", "both", *sizes, "--data.batch_size", "2"]
    out = run("bench_train.py", *args)
    assert re.search(r"Trainer\.fit +[\d,]+ tokens/s +[\d.]+ ms/step peak +[\d,]+ MiB", out)
    assert re.search(r"plain loop +[\d,]+ tokens/s", out)
    assert re.search(r"Lightning overhead: [+-]\d+\.\d%", out)


def test_bench_data_prints_the_generated_corpus_figures(shakespeare):
    out = run("bench_data.py", "--corpus_mb", "1", "--repeats", "1", "--steps", "2")
    assert re.search(r"encode \(cold cache\): [\d.]+ s, [\d,]+ MB/s, peak [\d,]+ MiB", out)
    assert re.search(r"cached start-up: [\d.]+ s", out)
    for kind in ("tiny-shakespeare", "corpus, cold cache", "corpus, warm cache"):
        assert re.search(kind + r" +[\d.]+ s \([\d.]+x\) +peak [\d,]+ MiB", out), kind


def test_bench_speedrun_says_what_to_fetch_without_nanogpt():
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_speedrun.py", "--nanogpt", "/no"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "nanoGPT's train.py, model.py" in done.stderr
    assert "git clone https://github.com/karpathy/nanoGPT" in done.stderr


@pytest.mark.skipif(not (NANOGPT / "train.py").exists(), reason="no nanoGPT here")
def test_bench_speedrun_prints_both_sides_and_the_ratio(shakespeare):
    quick = ["--nanogpt_args=--max_iters=10 --eval_interval=5"]
    quick += ["--chargpt_args=--trainer.max_steps=10 --trainer.val_check_interval=5"]
    out = run("bench_speedrun.py", "--pairs", "1", *quick)
    assert re.search(r"nanoGPT recipe +[\d.]+ s +val loss reached: [\d.]+", out)
    assert re.search(r"configs/speedrun_cpu.yaml +[\d.]+ s +val loss reached: [\d.]+", out)
    assert re.search(r"ratio chargpt/nanoGPT: \d+\.\d\d", out)


@pytest.mark.skipif(shutil.which("bash") is None, reason="the GPU check is a bash script")
def test_gpu_check_runs_to_the_end_as_a_cpu_smoke_run(shakespeare):
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--cpu-smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"7 (skipped|passed)", out)  # the gpu tests are collected: a broken import would fail here
    assert re.search(r"wall \d+:\d\d, start to finish", out)
    assert re.search(r"tokens/s [\d,]+ \(median of \d+ log lines\)", out)
    assert re.search(r"mfu [\d.]+% \(MFU peak: [\d.]+ TFLOP/s", out)
    assert re.search(r"best val loss \d\.\d{4}", out)
    assert re.search(r"eager: generated 50 tokens in [\d.]+ s \(\d+ tokens/s\) on cpu", out)
    assert out.rstrip().endswith("== gpu_check: done")


def test_bench_serve_drives_the_server_and_prints_its_table(ckpt):
    out = run("bench_serve.py", "--ckpt_path", str(ckpt), "--clients", "1", "2", "--requests", "1", "--tokens", "20",
              "--logprobs", "5")  # fmt: skip
    assert re.search(r"batched +2 +[\d,]+ +[\d,]+ +\d+ +\d+ +0 +2 ", out)  # two requests, no errors
    assert re.search(r"logprobs 5 +2 +[\d,]+ +[\d,]+ +\d+ +\d+ +0 +2 ", out)
    assert re.search(r" 2 clients: logprobs 5 cost -?\d+\.\d% of tokens/s", out)
    assert re.search(r" 2 clients: engine alone \(no HTTP\) [\d,]+ tokens/s \(\d+\.\dx one row\), the server", out)
    assert re.search(r"one-by-one +2 ", out)
    assert re.search(r" 2 clients: batched \d+\.\dx one client alone, \d+\.\dx the server with batching off", out)


def test_bench_levers_prints_a_table_row(workdir, tiny_corpus):
    out = run("bench_levers.py", "--name", "tiny", "--", f"--data.path={tiny_corpus}", "--trainer.max_steps=10",
              "--trainer.val_check_interval=5", "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16",
              "--data.block_size=16",
              "--sample.every_n_steps=0")  # fmt: skip
    assert re.search(r"^\| tiny \| `.*` \| 1337 \| 10 \| 0:\d\d \| \d\.\d{4} \| \d\.\d{4}, \d\.\d{4} \|", out, re.M)


def test_bench_spikes_replays_the_rule_over_recorded_steps(tiny_corpus):
    tiny = [f"--data.path={tiny_corpus}", "--trainer.max_steps=70", "--trainer.val_check_interval=70"]
    tiny += ["--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16", "--data.block_size=16"]
    out = run("bench_spikes.py", "--seeds", "1337", "--window", "16", "--sigma", "6", "--", *tiny)
    assert re.search(r"^seed 1337: 70 steps, best val \d\.\d{4}", out, re.M)
    cell = r"([\d, ]+|none)"
    assert re.search(rf"^\| 16 \| 6 \| 1337 \| {cell} \| {cell} \| {cell} \|$", out, re.M)


def test_bench_nodes_counts_the_exits_of_two_node_launches():
    out = run("bench_nodes.py", "--launches", "1", "--launcher", "slurm")
    assert re.search(r"^launch +1 slurm +exit \[0, 0\] +[\d.]+ s$", out, re.M)
    assert "1 launches: 1 with every rank exit 0, 0 aborted, 0 hung" in out
