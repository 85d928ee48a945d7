"""The user's path end to end with this Python and these packages: fit the default config a few steps, stop it with
Ctrl-C and resume it, test, generate, export (safetensors and ONNX) and sample the export, serve and answer one
completions request. Each step runs as the README writes it, in its own process, in a temporary folder.

    python scripts/e2e.py                      # the corpus at data/tinyshakespeare/input.txt
    python scripts/e2e.py --corpus other.txt

One line per step (its time), exit status 1 and the step's output on the first failure. scripts/matrix.py runs it
in each of its environments.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Failed(Exception):
    pass


def python(*args: str, cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise Failed(f"exit status {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}")
    return done.stdout


def fit_args(corpus: Path, steps: int) -> list[str]:
    return [
        "-m", "src.train", "fit", f"--config={REPO / 'configs' / 'shakespeare_char.yaml'}", f"--data.path={corpus}",
        f"--trainer.max_steps={steps}", "--trainer.val_check_interval=5", "--data.val_batches=2",
        "--sample.every_n_steps=0", "--trainer.enable_progress_bar=false", "--run_name=e2e", "--ckpt_path=last",
    ]  # fmt: skip


def fit_stop_resume(corpus: Path, cwd: Path) -> str:
    """Ctrl-C once the first last.ckpt is written: exit status 130 and the checkpoint kept; the same command then
    resumes from it to the end."""
    last = cwd / "lightning_logs" / "e2e" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, *fit_args(corpus, 1000)], cwd=cwd, stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    if proc.returncode != 130 or not last.exists():
        kept = "kept" if last.exists() else "missing"
        raise Failed(f"Ctrl-C: exit status {proc.returncode}, last.ckpt {kept}:\n{out[-4000:]}")
    python(*fit_args(corpus, 20), cwd=cwd)
    return "stopped at the first checkpoint, resumed to step 20"


def test_loss(out: str) -> str:
    found = re.search(r"test_loss\W+([\d.]+)", out)
    if not found:
        raise Failed(f"test printed no test_loss:\n{out[-4000:]}")
    return f"test_loss {found.group(1)}"


def export(ckpt: Path, cwd: Path) -> str:
    python("-m", "src.export", f"--ckpt_path={ckpt}", "--out=exported", cwd=cwd)
    written = sorted(p.name for p in (cwd / "exported").iterdir())
    if "model.onnx" not in written or "model.safetensors" not in written:
        raise Failed(f"the export folder holds {written}, not model.safetensors and model.onnx")
    return ", ".join(written)


def serve_one(ckpt: Path, cwd: Path) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "src.serve", f"--ckpt_path={ckpt}", f"--port={port}"]
    server = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise Failed(f"the server never answered /health:\n{server.communicate()[0][-4000:]}") from None
                time.sleep(0.3)
        body = json.dumps({"prompt": "ROMEO:", "max_tokens": 20, "seed": 1}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                         {"Content-Type": "application/json"})  # fmt: skip
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        text = answer["choices"][0]["text"]
        if len(text) != 20:
            raise Failed(f"asked for 20 characters, got {text!r}")
        return f"one completion: {text!r}"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=REPO / "data" / "tinyshakespeare" / "input.txt")
    a = p.parse_args()
    if not a.corpus.is_file():
        sys.exit(f"e2e: no corpus at {a.corpus}: copy tiny-shakespeare there, or pass --corpus FILE")
    corpus = a.corpus.resolve()
    with tempfile.TemporaryDirectory(prefix="chargpt-e2e-") as tmp:
        cwd = Path(tmp)
        ckpt = cwd / "lightning_logs" / "e2e" / "checkpoints" / "last.ckpt"
        config = cwd / "lightning_logs" / "e2e" / "config.yaml"
        steps = {
            "fit, Ctrl-C, resume": lambda: fit_stop_resume(corpus, cwd),
            "test": lambda: test_loss(python("-m", "src.train", "test", f"--config={config}", "--ckpt_path=last",
                                             "--trainer.enable_progress_bar=false", cwd=cwd)),
            "generate": lambda: repr(python("-m", "src.generate", f"--ckpt_path={ckpt}", "--max_new_tokens=40",
                                            "--prompt=ROMEO:", cwd=cwd)[:60]),
            "export": lambda: export(ckpt, cwd),
            "generate from the export": lambda: repr(python("-m", "src.generate", "--ckpt_path=exported",
                                                            "--max_new_tokens=40", cwd=cwd)[:60]),
            "serve": lambda: serve_one(ckpt, cwd),
        }  # fmt: skip
        for name, step in steps.items():
            started = time.perf_counter()
            try:
                what = step()
            except (Failed, subprocess.TimeoutExpired) as err:
                print(f"FAIL  {name}: {err}", flush=True)
                sys.exit(1)
            print(f"ok    {name} ({time.perf_counter() - started:.1f} s): {what}", flush=True)
    print("e2e: every step passed")


if __name__ == "__main__":
    main()
