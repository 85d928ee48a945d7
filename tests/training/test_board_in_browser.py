"""A person's view of TensorBoard: headless Chromium opens the pages of a small run and reads what they render.

Skipped where Chromium is not installed (`.ci/run` installs it from Debian's packages). Everything stays on
127.0.0.1: TensorBoard and Chromium's DevTools port are local, and nothing else is reached.
"""

import subprocess
import sys

import pytest

from src.train import main
from tests.helpers import CHROMIUM, Browser, free_port, tiny_args, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]


@pytest.fixture
def board(workdir, tiny_corpus):
    args = {"model.n_layer": 2, "trainer.val_check_interval": 10, "sample.every_n_steps": 20}
    main(["fit", *tiny_args(tiny_corpus, max_steps=30, run_name="demo", **args)])
    port = free_port()
    tensorboard = [sys.executable, "-m", "tensorboard.main", "--logdir", "lightning_logs", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*tensorboard, "--port", str(port)], cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/data/runs")
        browser = Browser(workdir / "chromium-profile")
        try:
            yield browser, f"http://127.0.0.1:{port}"
        finally:
            browser.close()
    finally:
        proc.kill()
        proc.wait()


def test_tensorboard_pages_render_the_runs_curves_images_and_hparams(board):
    browser, url = board
    curves = ["train_loss", "val_loss", "val_bpc", "best_val_loss", "final_val_loss", "tokens_per_sec", "mfu"]
    curves += ["grad_norm", "lr-MuonAdamW/muon", "lr-MuonAdamW/decay", "lr-MuonAdamW/no_decay"]  # the default: Muon
    text = browser.text_once_shown(f"{url}/#scalars&tagFilter=.*", curves)  # every card, no group folded
    for tag in curves:
        assert tag in text, tag
    assert "epoch" not in text.split()
    images = ["attention/layer_0", "attention/layer_1"]
    text = browser.text_once_shown(f"{url}/#images", images)
    for tag in images:
        assert tag in text, tag
    table = ["model/n_embd", "data/block_size", "run_name", "best_val_loss", "final_val_loss", "tokens_per_sec"]
    text = browser.text_once_shown(f"{url}/#hparams", table)
    for column in table:
        assert column in text, column
    assert "demo" in text  # the run's row
