"""lm-evaluation-harness against `src.serve`, offline: the tasks in evals/ through `local-completions` with the
server's own tokenizer endpoints, and bits per byte that agree with `python -m src.train test` on the same text.
Skipped where lm-eval (`pip install -e ".[eval]"`) is absent."""

import json
import os
import subprocess
import sys

import pytest

from src.train import main as train_main
from tests.helpers import REPO, LiveServer

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow
VAL_CHARS = 3000


@pytest.fixture
def run(tmp_path, shakespeare):
    """A few steps of a small model over tiny-shakespeare (its whole vocabulary) and the tasks' data beside it."""
    root = tmp_path
    args = [f"--data.path={shakespeare}", "--data.block_size=64", "--data.batch_size=8", "--data.val_batches=2",
            "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=32", "--trainer.max_steps=40",
            "--trainer.val_check_interval=40", "--sample.every_n_steps=0", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}", "--run_name=m"]  # fmt: skip
    train_main(["fit", *args])
    data = root / "evals" / "data"
    build = [sys.executable, str(REPO / "evals/build_data.py"), f"--corpus={shakespeare}", f"--out={data}"]
    build += ["--questions=20", f"--val_chars={VAL_CHARS}", "--longest=40"]
    subprocess.run(build, check=True, capture_output=True)
    return root, args


def lm_eval(root, url: str) -> dict:
    out = root / "results"
    command = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--include_path", str(REPO / "evals"),
               "--tasks", "shakespeare_val,shakespeare_next_line", "--output_path", str(out),
               "--model_args", f"base_url={url}/v1/completions,max_length=65,num_concurrent=2"]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "shakespeare_next_line" in done.stdout and "bits_per_byte" in done.stdout  # its table
    return json.loads(next(out.rglob("results_*.json")).read_text())["results"]


def test_lm_eval_scores_both_tasks_through_the_api_and_agrees_with_src_train_test(run, capsys):
    root, args = run
    server = LiveServer(root / "m" / "checkpoints" / "last.ckpt", "--dtype", "float32")
    try:
        results = lm_eval(root, server.url)
    finally:
        server.close()
    choice = results["shakespeare_next_line"]
    assert 0 <= choice["acc,none"] <= 1 and 0 <= choice["acc_norm,none"] <= 1
    bits_per_byte = results["shakespeare_val"]["bits_per_byte,none"]
    text = json.loads((root / "evals/data/shakespeare_val.jsonl").read_text())["text"]
    (root / "val.txt").write_text(text, encoding="utf-8")
    capsys.readouterr()
    test_args = [*args, f"--data.test_path={root / 'val.txt'}", "--data.test_stride=64", "--ckpt_path=last"]
    train_main(["test", *test_args])
    bpc = float(next(line.split()[-1] for line in capsys.readouterr().out.splitlines() if "test_bpc" in line))
    # lm-eval also scores the first character (after a newline) and reads windows one character shorter
    assert bits_per_byte == pytest.approx(bpc, rel=0.01)
