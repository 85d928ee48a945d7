"""lm-evaluation-harness against `src.serve`, offline: the tasks in evals/ through `local-completions` with the
server's own tokenizer endpoints, and bits per byte that agree with `python -m src.train test` on the same text.
Skipped where lm-eval (`pip install -e ".[eval]"`) is absent."""

import json
import os
import re
import subprocess
import sys

import pytest

from src.export import main as export_main
from src.train import main as train_main
from tests.helpers import REPO, SHAKESPEARE, LiveServer

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow
VAL_CHARS = 3000


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A few steps of a small model over tiny-shakespeare (its whole vocabulary) and the tasks' data beside it,
    shared by this file's tests (each scoring reads it only)."""
    if not SHAKESPEARE.exists():
        pytest.skip(f"tiny-shakespeare is not at {SHAKESPEARE} (.ci/run puts it there)")
    root, shakespeare = tmp_path_factory.mktemp("lm_eval"), SHAKESPEARE
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


@pytest.fixture(scope="module")
def through_the_server(run) -> dict:
    """lm-eval's results for both tasks through ``src.serve`` (``local-completions``)."""
    root, _ = run
    server = LiveServer(root / "m" / "checkpoints" / "last.ckpt", "--dtype", "float32")
    try:
        return lm_eval(
            root, "local-completions", f"base_url={server.url}/v1/completions,max_length=65,num_concurrent=2"
        )
    finally:
        server.close()


def lm_eval(root, model: str, model_args: str) -> dict:
    out = root / f"results-{model}"
    command = [sys.executable, "-m", "lm_eval", "--model", model, "--include_path", str(REPO / "evals"),
               "--tasks", "shakespeare_val,shakespeare_next_line", "--output_path", str(out),
               "--model_args", model_args]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "shakespeare_next_line" in done.stdout and "bits_per_byte" in done.stdout  # its table
    return json.loads(next(out.rglob("results_*.json")).read_text())["results"]


def test_lm_eval_scores_both_tasks_through_the_api_and_agrees_with_src_train_test(run, through_the_server, capsys):
    root, args = run
    results = through_the_server
    choice = results["shakespeare_next_line"]
    assert 0 <= choice["acc,none"] <= 1 and 0 <= choice["acc_norm,none"] <= 1
    bits_per_byte = results["shakespeare_val"]["bits_per_byte,none"]
    text = json.loads((root / "evals/data/shakespeare_val.jsonl").read_text())["text"]
    (root / "val.txt").write_text(text, encoding="utf-8")
    capsys.readouterr()
    test_args = [*args, f"--data.test_path={root / 'val.txt'}", "--data.test_stride=64", "--ckpt_path=last"]
    train_main(["test", *test_args])
    # Lightning's table of test metrics: plain text, or drawn with rich where it is installed (transformers pulls it in)
    bpc = float(re.search(r"test_bpc\W+([\d.]+)", capsys.readouterr().out).group(1))
    # lm-eval also scores the first character (after a newline) and reads windows one character shorter
    assert bits_per_byte == pytest.approx(bpc, rel=0.01)


def test_lm_evals_hf_backend_scores_the_exported_folder_as_the_server_does(run, through_the_server):
    """``src.export --format hf``'s folder through lm-eval's own ``hf`` backend (transformers, the default
    config's value residuals: chargpt's code in the folder), the newline as the document's prefix as the server
    tells lm-eval: the same bits per byte and the same choices as through the server."""
    pytest.importorskip("transformers", reason="the hf extra: pip install -e '.[hf]'")
    pytest.importorskip("accelerate", reason="lm-eval's hf backend: pip install -e '.[eval]'")
    root, _ = run
    folder = root / "hf"
    export_main([f"--ckpt_path={root / 'm' / 'checkpoints' / 'last.ckpt'}", f"--out={folder}", "--format=hf"])
    api = through_the_server
    hf = lm_eval(root, "hf", f"pretrained={folder},prefix_token_id=0,trust_remote_code=True")
    bits = hf["shakespeare_val"]["bits_per_byte,none"]
    assert bits == pytest.approx(api["shakespeare_val"]["bits_per_byte,none"], rel=1e-4)
    assert hf["shakespeare_next_line"]["acc,none"] == api["shakespeare_next_line"]["acc,none"]
