"""Checkpoints: written atomically, read safely (weights_only), and enough on their own to rebuild the model."""

import os
import subprocess
import sys

import pytest
import torch

from src.checkpoint import CHECKPOINT_KEY, load_checkpoint, model_from_checkpoint, save_atomically
from src.errors import UserError
from src.module import CharGPT
from tests.conftest import REPO, RunsCode, bad_checkpoints

VOCAB = "\n !abcdefghij"


def module(**kwargs) -> CharGPT:
    return CharGPT(vocab=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16, **kwargs)


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    m = module(dropout=0.0).eval()
    checkpoint = {"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}
    m.on_save_checkpoint(checkpoint)
    assert CHECKPOINT_KEY in checkpoint
    torch.save(checkpoint, tmp_path / "m.ckpt")
    model, tokenizer = model_from_checkpoint(load_checkpoint(tmp_path / "m.ckpt"))
    idx = torch.tensor([tokenizer.encode("a bad chef")])
    assert tokenizer.vocab == VOCAB
    assert torch.equal(model(idx, idx)[0], m.model(idx, idx)[0])


def test_checkpoint_that_runs_code_on_unpickling_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"chargpt": {"format": 1}, "state_dict": {}, "payload": RunsCode(str(marker))}, evil)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "src.generate", f"--ckpt_path={evil}"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    assert "refused to load" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "truncated", "foreign"])
def test_bad_checkpoints_are_refused_with_what_to_pass_instead(tmp_path, kind):
    good = tmp_path / "good.ckpt"
    m = module()
    checkpoint = {"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}
    m.on_save_checkpoint(checkpoint)
    save_atomically(checkpoint, good)
    path, message = bad_checkpoints(tmp_path, good)[kind]
    with pytest.raises(UserError, match=message):
        load_checkpoint(path)


def test_an_interrupted_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_atomically({"step": torch.tensor(1)}, path)

    def interrupted(*args):
        raise KeyboardInterrupt  # a second Ctrl-C in the middle of the rename

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_atomically({"step": torch.tensor(2)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left behind


def test_a_write_where_folders_cannot_be_synced_gives_the_same_file(tmp_path, monkeypatch):
    """Windows refuses to open a folder (os.open raises PermissionError), and some filesystems refuse to fsync one:
    the checkpoint is written all the same, byte for byte."""
    checkpoint = {"state_dict": {"w": torch.arange(10.0)}, "global_step": 3}
    save_atomically(checkpoint, tmp_path / "posix.ckpt")
    real_open = os.open

    def refuse_folders(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_folders)
    save_atomically(checkpoint, tmp_path / "windows" / "posix.ckpt")
    monkeypatch.setattr(os, "open", real_open)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(22, "Invalid argument")))
    with pytest.raises(UserError, match="could not write checkpoint"):  # the file's own fsync still counts
        save_atomically(checkpoint, tmp_path / "nosync" / "posix.ckpt")
    assert (tmp_path / "windows" / "posix.ckpt").read_bytes() == (tmp_path / "posix.ckpt").read_bytes()
