"""A person's view of TensorBoard: headless Chromium opens the pages of a small run and reads what they render.

Skipped where Chromium is not installed (`.ci/run` installs it from Debian's packages). Everything stays on
127.0.0.1: TensorBoard and Chromium's DevTools port are local, and nothing else is reached.
"""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from src.train import main
from tests.conftest import tiny_args

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]

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
