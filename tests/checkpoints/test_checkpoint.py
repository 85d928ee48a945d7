"""Checkpoints: written atomically, read safely (weights_only), and enough on their own to rebuild the model."""

import os
import subprocess
import sys

import pytest
import torch

from src.checkpoints.checkpoint import (
    CHECKPOINT_KEY,
    init_from_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_atomically,
)
from src.data.tokenizer import CharTokenizer
from src.errors import UserError
from src.generate import main as generate_main
from src.model import build_model
from src.train import main as train_main
from src.training.module import CharGPT
from tests.helpers import REPO, TINY_TEXT, RunsCode, bad_checkpoints, tiny_args

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


@pytest.mark.slow
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


def test_init_from_carries_shared_characters_over_and_initialises_new_ones(ckpt):
    source, source_tokenizer = model_from_checkpoint(load_checkpoint(ckpt))
    vocab = "".join(sorted(set(source_tokenizer.vocab) - {"z"} | {"Z", "X"}))
    tokenizer = CharTokenizer(vocab)
    hp = load_checkpoint(ckpt)["hyper_parameters"]
    model = build_model(**hp, vocab_size=tokenizer.vocab_size)
    fresh = model.transformer.wte.weight.detach().clone()
    message = init_from_checkpoint(model, tokenizer, ckpt)
    shared = [t for t in vocab if t in source_tokenizer.vocab]
    assert f"{len(shared)} of this vocabulary's {len(vocab)} tokens carried over" in message
    for token in vocab:
        new, row = tokenizer.stoi[token], model.transformer.wte.weight[tokenizer.stoi[token]]
        if token in source_tokenizer.stoi:
            assert torch.equal(row, source.transformer.wte.weight[source_tokenizer.stoi[token]])
            assert torch.equal(model.lm_head.bias[new], source.lm_head.bias[source_tokenizer.stoi[token]])
        else:
            assert torch.equal(row, fresh[new])  # a new character keeps its initialisation
    assert torch.equal(model.transformer.h[0].attn.c_attn.weight, source.transformer.h[0].attn.c_attn.weight)


def test_fine_tuning_on_another_corpus_trains_and_generates(ckpt, workdir, capsys):
    other = workdir / "other.txt"
    other.write_text(TINY_TEXT.upper() + "Zounds! Quoth Xavier.\n" * 20)  # many new characters, some shared
    args = tiny_args(other, max_steps=10, run_name="tuned", **{"model.dropout": 0.0})
    train_main(["fit", *args, f"--model.init_from={ckpt}"])
    assert "initialised from" in capsys.readouterr().err
    tuned = workdir / "lightning_logs/tuned/checkpoints/last.ckpt"
    assert load_checkpoint(tuned)["global_step"] == 10  # a new run: steps from 0
    capsys.readouterr()
    generate_main([f"--ckpt_path={tuned}", "--prompt=ZOUNDS", "--max_new_tokens=20"])
    assert capsys.readouterr().out.startswith("ZOUNDS")


def test_init_from_another_architecture_is_refused(ckpt, workdir, tiny_corpus, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["fit", *tiny_args(tiny_corpus, **{"model.n_embd": 32}), f"--model.init_from={ckpt}"])
    assert exit_info.value.code == 2
    assert "is another architecture (n_embd 16 vs 32)" in capsys.readouterr().err


def nan_copy(ckpt, folder) -> tuple:
    """A copy of ``ckpt`` beside a readable best-*.ckpt, with one weight of one tensor set to NaN."""
    state = torch.load(ckpt, weights_only=True)
    name = next(k for k in state["state_dict"] if k.endswith("c_attn.weight"))
    folder.mkdir()
    torch.save(state, folder / "best-step=15-val_loss=2.0000.ckpt")
    state["state_dict"][name][0, 0] = float("nan")
    torch.save(state, folder / "last.ckpt")
    return folder / "last.ckpt", name


@pytest.mark.parametrize("reader", ["generate", "serve", "export", "export_folder", "init_from", "validate", "test"])
def test_every_reader_refuses_a_checkpoint_with_a_nan_weight(ckpt, workdir, tiny_corpus, capsys, reader):
    from src.export import main as export_main
    from src.serve import main as serve_main

    bad, name = nan_copy(ckpt, workdir / "diverged")
    if reader == "export_folder":  # an export made before readers refused: generate refuses the folder too
        state = torch.load(bad, weights_only=True)
        model, tokenizer = model_from_checkpoint(load_checkpoint(ckpt))
        model.load_state_dict({k[len("model.") :]: v for k, v in state["state_dict"].items()})
        from src.checkpoints.pretrained import save_pretrained

        save_pretrained(model, tokenizer, workdir / "exported")
        bad, name = workdir / "exported" / "model.safetensors", name[len("model.") :]
    runs = {
        "generate": lambda: generate_main(["--ckpt_path", str(bad), "--max_new_tokens", "5"]),
        "serve": lambda: serve_main(["--ckpt_path", str(bad), "--port", "0"]),
        "export": lambda: export_main(["--ckpt_path", str(bad), "--out", str(workdir / "out"), "--no-onnx"]),
        "export_folder": lambda: generate_main(["--ckpt_path", str(bad.parent), "--max_new_tokens", "5"]),
        "init_from": lambda: train_main(["fit", *tiny_args(tiny_corpus), f"--model.init_from={bad}"]),
        "validate": lambda: train_main(["validate", *tiny_args(tiny_corpus), f"--ckpt_path={bad}"]),
        "test": lambda: train_main(["test", *tiny_args(tiny_corpus), f"--ckpt_path={bad}"]),
    }
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        runs[reader]()
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and not (workdir / "out").exists()
    line = err.splitlines()[-1]  # one line, after the corpus's "encoded" line where the run prepares data
    assert f"{bad} has non-finite weights (first: {name})" in line
    if reader != "export_folder":
        assert "best-step=15-val_loss=2.0000.ckpt" in line  # the way out
