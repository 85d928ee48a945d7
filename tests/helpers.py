"""What several test files share: tiny models, corpora and CLI arguments, a live server, a headless browser. Fixtures
are in conftest.py; test files import these, never each other."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
# every model option beyond the lecture, at a value other than its default: the tests that take each option
# through training, checkpoints, export and decoding read this, and tests/training/test_module.py checks that it
# names every GPTConfig field that is not one of the lecture's sizes
MODEL_OPTIONS = {
    "rope": True,
    "norm": "rmsnorm",
    "mlp": "relu2",
    "qk_norm": True,
    "tie_embeddings": True,
    "bias": False,
    "attn_dropout": 0.0,
    "init": "pytorch",
    "logit_softcap": 15.0,
    "unet": True,
    "value_residual": True,
    "attn_gate": True,
    "mtp_weight": 0.5,
}
LECTURE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout")
SHAKESPEARE = REPO / "data" / "tinyshakespeare" / "input.txt"


def tiny_gpt(**overrides):
    """A 2-layer, 16-wide GPT over 11 tokens with a 16-token window, in eval mode."""
    from src.model import GPT, GPTConfig

    config = {"vocab_size": 11, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.0}
    return GPT(GPTConfig(**{**config, **overrides})).eval()


TINY_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


def tiny_args(corpus: Path, max_steps: int = 20, run_name: str = "t", **extra) -> list[str]:
    args = {
        "data.path": str(corpus),
        "data.block_size": 16,
        "data.batch_size": 4,
        "data.val_batches": 2,
        "model.n_layer": 1,
        "model.n_head": 2,
        "model.n_embd": 16,
        "model.dropout": 0.1,
        "model.warmup_steps": 5,
        "trainer.max_steps": max_steps,
        "trainer.val_check_interval": 10,
        "trainer.log_every_n_steps": 5,
        "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False,
        "trainer.accelerator": "cpu",
        "trainer.devices": 1,
        "sample.every_n_steps": 10,
        "sample.max_new_tokens": 20,
        "run_name": run_name,
        **extra,
    }
    return [f"--{k}={v}" for k, v in args.items()]


def run_cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "src.train", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


class Poison(L.Callback):
    """A provoked divergence or spike: at step ``step`` (on rank ``rank``) the model's logits are multiplied by
    ``factor`` (nan: a non-finite loss; 1e3: a finite spike), once: in that step's training batch, or with
    ``validation`` in the first batch of the validation that follows it. Passed to a run with ``poison(...)``."""

    def __init__(self, step: int, factor: float, rank: int = 0, validation: bool = False) -> None:
        self.step, self.factor, self.rank, self.validation = step, factor, rank, validation
        self._hook = None

    def _start(self, trainer, pl_module, step: int) -> None:
        if step == self.step and trainer.global_rank == self.rank and self._hook is None:
            self._hook = pl_module.model.lm_head.register_forward_hook(lambda m, i, out: out * self.factor)

    def _end(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.validation:
            self._start(trainer, pl_module, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self._end()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.validation and not trainer.sanity_checking and batch_idx == 0:
            self._start(trainer, pl_module, trainer.global_step)

    def on_validation_batch_end(self, trainer, pl_module, *args) -> None:
        self._end()


def poison(step: int, factor: float, rank: int = 0, validation: bool = False) -> str:
    return with_callback("Poison", step=step, factor=factor, rank=rank, validation=validation)


class FillDisk(L.Callback):
    """After step ``step``, a ballast file at ``path`` takes every free byte of its disk."""

    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step != self.step:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT)
        try:
            for chunk in (1 << 20, 1 << 12, 1):
                while True:
                    try:
                        os.write(fd, b"\0" * chunk)
                    except OSError:
                        break
        finally:
            os.close(fd)


class StepClock(L.Callback):
    """A faked clock for the time budget (tests monkeypatch ``src.training.budget.clock`` to read ``now``): every
    training step takes ``seconds`` and nothing else takes any time; Ctrl-C after step ``interrupt_at``."""

    now = 0.0

    def __init__(self, seconds: float = 0.1, interrupt_at: int = 0) -> None:
        self.seconds, self.interrupt_at = seconds, interrupt_at

    def on_train_batch_end(self, trainer, *args) -> None:
        StepClock.now += self.seconds
        if trainer.global_step == self.interrupt_at:
            signal.raise_signal(signal.SIGINT)  # the step finishes, last.ckpt is written, fit stops


def with_callback(name: str, **init_args) -> str:
    """The flag that adds ``tests.helpers.<name>(**init_args)`` to a run's callbacks."""
    spec = {"class_path": f"tests.helpers.{name}", "init_args": init_args}
    return "--trainer.callbacks+=" + json.dumps(spec).replace("NaN", ".nan")  # YAML's NaN, which the CLI parses


class RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_checkpoints(tmp_path: Path, ckpt: Path) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 0}, foreign)
    return {
        "missing": (tmp_path / "nope.ckpt", "does not exist"),
        "directory": (tmp_path, "is a directory"),
        "text": (text, "is not a readable checkpoint"),
        "truncated": (truncated, "is not a readable checkpoint"),
        "foreign": (foreign, "is not a chargpt checkpoint"),
    }


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# every text node of the page, shadow roots (TensorBoard's Polymer dashboards) and same-origin frames included
TEXT_OF_PAGE = """(() => {
  const out = [];
  const walk = (node) => {
    if (node.shadowRoot) walk(node.shadowRoot);
    if (node.tagName === "IFRAME" && node.contentDocument) walk(node.contentDocument);
    for (const child of node.childNodes) child.nodeType === 3 ? out.push(child.textContent) : walk(child);
  };
  walk(document);
  return out.join(" ");
})()"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(args: list[str], cwd: Path, launcher: str) -> list[subprocess.Popen]:
    """``fit`` on two nodes of one process each on this machine, as torchrun or srun would start them on two
    machines; each node in a process group of its own, so that ``stop_nodes`` ends torchrun's workers too."""
    port = free_port()
    procs = []
    for node in (0, 1):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "src.train", "fit", *args, "--trainer.num_nodes=2"]
        if launcher == "torchrun":
            rendezvous = ["--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}"]
            rendezvous += ["--master_addr=127.0.0.1", f"--master_port={port}"]
            cmd = [sys.executable, "-m", "torch.distributed.run", *rendezvous, *cmd[1:]]
        else:  # the variables srun sets for task `node` of a 2-node job with one task per node
            env.update(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", SLURM_NNODES="2", SLURM_PROCID=str(node))
            env.update(SLURM_LOCALID="0", SLURM_NODEID=str(node), SLURM_JOB_ID="4242", SLURM_JOB_NAME="chargpt")
            env.update(SLURM_NODELIST="127.0.0.1", MASTER_PORT=str(port))
        procs.append(
            subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
    return procs


def wait_nodes(procs: list[subprocess.Popen], timeout: float) -> list[str | None]:
    """Each node's output, or None for a node still running after ``timeout`` seconds in all; then every process
    of every node is ended, whatever happened."""
    deadline, outputs = time.monotonic() + timeout, []
    try:
        for proc in procs:
            try:
                out = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))[0]
                outputs.append(out.decode(errors="replace"))
            except subprocess.TimeoutExpired:
                outputs.append(None)
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return outputs


def fit_on_two_nodes(args: list[str], cwd: Path, launcher: str = "torchrun") -> None:
    procs = start_nodes(args, cwd, launcher)
    outputs = wait_nodes(procs, timeout=240)
    for node, (proc, out) in enumerate(zip(procs, outputs)):
        assert out is not None, f"node {node} ({launcher}) still ran after 240 s"
        assert proc.returncode == 0, f"node {node} ({launcher}) failed:\n{out[-3000:]}"


def wait_for(url: str, seconds: float = 60) -> bytes:
    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)


class Browser:
    """Headless Chromium over the DevTools protocol: open a page, read its text."""

    def __init__(self, profile) -> None:
        import websocket  # the dev extra's websocket-client

        port = free_port()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", "--window-size=1400,1000"]
        self.proc = subprocess.Popen(
            [CHROMIUM, *flags, f"--remote-debugging-port={port}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pages = json.loads(wait_for(f"http://127.0.0.1:{port}/json/list"))
        url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        self.ws, self.calls = websocket.create_connection(url, timeout=30), 0

    def call(self, method: str, **params) -> dict:
        self.calls += 1
        self.ws.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.calls:
                return reply.get("result", {})

    def text_once_shown(self, url: str, expected: list[str], seconds: float = 60) -> str:
        """The page's text once every expected string shows (or the deadline passes)."""
        self.call("Page.navigate", url=url)
        deadline, text = time.time() + seconds, ""
        while time.time() < deadline:
            text = self.call("Runtime.evaluate", expression=TEXT_OF_PAGE, returnByValue=True)["result"].get("value", "")
            if all(s in text for s in expected):
                break
            time.sleep(0.5)
        return text

    def close(self) -> None:
        self.ws.close()
        self.proc.kill()
        self.proc.wait()


class LiveServer:
    def __init__(self, ckpt: Path, *flags: str, env: dict | None = None) -> None:
        command = [sys.executable, "-m", "src.serve", "--ckpt_path", str(ckpt), "--port", "0", *flags]
        env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        self.banner = []
        for line in self.process.stdout:
            self.banner.append(line)
            found = re.search(r"API\s+(http://127\.0\.0\.1:(\d+))/v1", line)
            if found:
                self.url, self.port = found.group(1), int(found.group(2))
                break
        else:
            raise RuntimeError(f"the server did not start: {self.banner}")

    def client(self, key: str = "none"):
        import openai  # the dev extra's; only the serving tests call this

        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def post(self, body: bytes, headers: dict | None = None, path: str = "/v1/completions") -> tuple[int, dict, object]:
        request = urllib.request.Request(self.url + path, data=body, headers=headers or {}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read()), response.headers
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), err.headers

    def metric(self, name: str) -> float:
        text = self.get("/metrics")[1]
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))

    def wait_until_idle(self, seconds: float = 20) -> float:
        deadline = time.time() + seconds
        while self.metric("chargpt_completions_active") and time.time() < deadline:
            time.sleep(0.05)
        return self.metric("chargpt_completions_active")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
