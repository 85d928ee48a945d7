"""`python -m src.generate` end to end, from a checkpoint made by a tiny fit."""

import os
import subprocess
import sys

import pytest
import torch

from src.generate import main as generate_main
from src.train import main as train_main
from tests.helpers import REPO, TINY_TEXT, bad_checkpoints, tiny_args

pytestmark = pytest.mark.slow  # end to end: trains, or launches processes


def generate(capsys, *args: str) -> tuple[str, str]:
    generate_main(list(args))
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_samples_start_with_the_prompt_and_are_reproducible(ckpt, capsys):
    args = [f"--ckpt_path={ckpt}", "--prompt=All:", "--max_new_tokens=50", "--num_samples=2", "--seed=7"]
    out, err = generate(capsys, *args)
    samples = out.rstrip("\n").split("\n---------------\n")
    assert len(samples) == 2
    assert all(s.startswith("All:") and len(s) == 54 for s in samples)
    assert "tokens/s" in err and "on cpu" in err
    again, _ = generate(capsys, *args)
    assert again == out
    other, _ = generate(capsys, *args[:-1], "--seed=8")
    assert other != out


def test_samples_are_one_batch_and_each_is_its_own_seed(ckpt, capsys):
    """--num_samples decodes together, yet sample i is what --seed (seed + i) gives alone, stop text included."""
    args = [f"--ckpt_path={ckpt}", "--prompt=All:", "--max_new_tokens=60", "--stop=\n\n"]
    out, err = generate(capsys, *args, "--num_samples=3", "--seed=7")
    alone = [generate(capsys, *args, f"--seed={7 + i}")[0].rstrip("\n") for i in range(3)]
    assert out.rstrip("\n").split("\n---------------\n") == alone


def test_no_prompt_starts_from_a_newline_and_output_file(ckpt, capsys, tmp_path):
    target = tmp_path / "samples.txt"
    out, _ = generate(capsys, f"--ckpt_path={ckpt}", "--max_new_tokens=20", f"--output={target}")
    assert out == ""
    text = target.read_text()
    assert text.startswith("\n") and len(text) == 1 + 20 + 1


def test_greedy_is_the_same_with_and_without_cache(ckpt, capsys):
    base = [f"--ckpt_path={ckpt}", "--prompt=Speak", "--max_new_tokens=40", "--temperature=0"]
    cached, _ = generate(capsys, *base, "--cache=exact")
    uncached, _ = generate(capsys, *base, "--cache=none")
    assert cached == uncached


@pytest.mark.parametrize("samples", [1, 3])  # with 3, sample 1 streams while the batch decodes
def test_output_streams_before_generation_ends(ckpt, samples):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "src.generate", f"--ckpt_path={ckpt}", "--prompt=All:", "--max_new_tokens=100000"]
    cmd.append(f"--num_samples={samples}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        first = proc.stdout.read(10)
        assert first.startswith(b"All:")
        assert proc.poll() is None  # the first characters arrived while it was still generating
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "truncated", "foreign"])
def test_bad_checkpoints_exit_2_without_traceback(ckpt, tmp_path, capsys, kind):
    path, message = bad_checkpoints(tmp_path, ckpt)[kind]
    with pytest.raises(SystemExit) as exit_info:
        generate_main([f"--ckpt_path={path}"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt=All€ speak¿"], "2 character(s) outside the vocabulary: '€' at 3, '¿' at 10"),
        (["--temperature=-1"], "temperature must be 0 (greedy) or more"),
        (["--top_k=0"], "top_k must be at least 1"),
        (["--top_p=1.5"], "top_p must be in (0, 1]"),
        (["--max_new_tokens=0"], "--max_new_tokens must be positive"),
        (["--device=tpu9"], "--device"),
    ],
)
def test_bad_values_exit_2_with_a_clear_message(ckpt, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        generate_main([f"--ckpt_path={ckpt}", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if "€" in args[0]:
        assert "Vocabulary:" in err  # shows what the model can read


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        generate_main(["--help"])
    out = capsys.readouterr().out
    for option in (
        "--ckpt_path",
        "--prompt",
        "--prompt_file",
        "--max_new_tokens",
        "--temperature",
        "--top_k",
        "--top_p",
        "--seed",
        "--num_samples",
        "--device",
        "--cache",
        "--output",
    ):
        assert option in out


def test_a_bytes_checkpoint_generates_from_a_prompt_its_corpus_never_contained(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.txt").write_text(TINY_TEXT)  # plain ASCII
    train_main(["fit", *tiny_args(tmp_path / "tiny.txt", max_steps=10, **{"data.tokenizer": "bytes"})])
    ckpt = tmp_path / "lightning_logs/t/checkpoints/last.ckpt"
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["tokenizer"] == "bytes"
    capsys.readouterr()
    prompt = "日本語 🎉 ÉTÉ:"
    out, _ = generate(capsys, f"--ckpt_path={ckpt}", f"--prompt={prompt}", "--max_new_tokens=40", "--seed=3")
    assert out.startswith(prompt)
    out, _ = generate(capsys, f"--ckpt_path={ckpt}", "--max_new_tokens=10")
    assert out.startswith("\n")  # not from id 0, a NUL byte


def test_no_prompt_starts_from_a_newline_whatever_its_id(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tabs.txt").write_text(TINY_TEXT.replace("All:", "All:\t"))  # the tab is id 0, the newline 1
    train_main(["fit", *tiny_args(tmp_path / "tabs.txt", max_steps=10)])
    ckpt = tmp_path / "lightning_logs/t/checkpoints/last.ckpt"
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["vocab"].startswith("\t\n")
    capsys.readouterr()
    out, _ = generate(capsys, f"--ckpt_path={ckpt}", "--max_new_tokens=10")
    assert out.startswith("\n")


def test_stop_ends_each_sample_where_the_text_first_appears(ckpt, capsys):
    args = [f"--ckpt_path={ckpt}", "--prompt=All:", "--max_new_tokens=80", "--seed=2"]
    new = generate(capsys, *args)[0][len("All:") :]
    assert "e" in new  # this seed's sample does hold the stop text
    assert generate(capsys, *args, "--stop=e")[0] == "All:" + new[: new.index("e")] + "\n"
    samples = generate(capsys, *args, "--stop=e", "--num_samples=3")[0].rstrip("\n").split("\n---------------\n")
    assert len(samples) == 3 and all(s.startswith("All:") and "e" not in s[4:] for s in samples)
