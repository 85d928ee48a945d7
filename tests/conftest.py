"""Shared fixtures: a tiny corpus, the real corpus when present, and hygiene that keeps tests independent."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from tests.helpers import SHAKESPEARE, TINY_TEXT


@pytest.fixture(autouse=True)
def _hygiene():
    torch.manual_seed(0)
    random.seed(0)
    dtype, threads, matmul = torch.get_default_dtype(), torch.get_num_threads(), torch.get_float32_matmul_precision()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(matmul)  # src.train.main sets it; compiled graphs are keyed by it
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
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)
        if "ckpt" in getattr(item, "fixturenames", ()):  # it needs a trained checkpoint: the session trains one
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


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
