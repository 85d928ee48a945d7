"""The floors checked when the package is imported: an old PyTorch gets one line and exit status 2."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import src
from tests.helpers import REPO, tiny_args

pytestmark = pytest.mark.slow  # end to end: launches processes

FAKE_OLD_TORCH = "import torch; torch.__version__ = '2.4.1+cu121'; import runpy, sys; sys.argv = ['src.train', 'fit']; "
FAKE_OLD_TORCH += "runpy.run_module('src.train', run_name='__main__')"


def test_an_older_torch_gets_one_line_naming_the_fix():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", FAKE_OLD_TORCH], capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr == "chargpt needs torch >= 2.9, found 2.4.1+cu121: pip install -U torch\n"


def test_the_floors_agree_with_the_install_metadata_and_the_readme():
    pyproject = (REPO / "pyproject.toml").read_text()
    torch_floor = ".".join(map(str, src.TORCH_FLOOR))
    python_floor = ".".join(map(str, src.PYTHON_FLOOR))
    assert re.search(rf'"torch>={re.escape(torch_floor)}"', pyproject)
    assert f'requires-python = ">={python_floor}"' in pyproject
    readme = Path(REPO / "README.md").read_text()
    assert f"PyTorch {torch_floor} or newer" in readme and f"Python {python_floor} or newer" in readme


@pytest.mark.parametrize("after", [0.5, 1.5])
def test_ctrl_c_during_start_up_prints_one_line_and_exits_130(workdir, tiny_corpus, after):
    """0.5 s in, torch is being imported; 1.5 s in, Lightning (training starts some seconds later)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "src.train", "fit", *tiny_args(tiny_corpus)]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert err == "chargpt: stopped by Ctrl-C\n"


AFTER_IMPORTS = """
import os, signal, sys, time
import src
signal.signal(signal.SIGINT, src.stop_on_ctrl_c)  # what `python -m src.train` installs
from src.data import datamodule as data
from src.train import main

prepare = data.CharDataModule.prepare_data
def interrupted(self):  # Ctrl-C arrives while the corpus is prepared, before training's own handler
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
    prepare(self)
data.CharDataModule.prepare_data = interrupted
main(sys.argv[1:])
"""


def test_ctrl_c_after_the_imports_unwinds_to_one_line_and_exit_130(workdir, tiny_corpus):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", AFTER_IMPORTS, "fit", *tiny_args(tiny_corpus)]
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.endswith("chargpt: stopped by Ctrl-C\n") and "Traceback" not in done.stderr
    assert "Detected KeyboardInterrupt" not in done.stderr + done.stdout  # Lightning's own handling bypassed
