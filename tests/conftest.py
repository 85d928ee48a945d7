"""Shared fixtures: a tiny corpus, the real corpus when present, and hygiene that keeps tests independent."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "data" / "tinyshakespeare" / "input.txt"


def tiny_gpt(**overrides):
    """A 2-layer, 16-wide GPT over 11 tokens with a 16-token window, in eval mode."""
    from src.model import GPT, GPTConfig

    config = {"vocab_size": 11, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.0}
    return GPT(GPTConfig(**{**config, **overrides})).eval()


TINY_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


@pytest.fixture(autouse=True)
def _hygiene():
    torch.manual_seed(0)
    random.seed(0)
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def shakespeare() -> Path:
    if not SHAKESPEARE.exists():
        pytest.skip(f"tiny-shakespeare is not at {SHAKESPEARE} (.ci/run puts it there)")
    return SHAKESPEARE


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


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


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fit")
    (root / "tiny.txt").write_text(TINY_TEXT)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        from src.train import main as train_main

        train_main(
            [
                "fit",
                "--data.path=tiny.txt",
                "--data.block_size=16",
                "--data.batch_size=4",
                "--data.val_batches=2",
                "--model.n_layer=1",
                "--model.n_head=2",
                "--model.n_embd=16",
                "--trainer.max_steps=30",
                "--trainer.val_check_interval=15",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
                "--sample.every_n_steps=0",
                "--run_name=g",
            ]
        )
    finally:
        os.chdir(cwd)
    return root / "lightning_logs/g/checkpoints/last.ckpt"  # trained on TINY_TEXT
