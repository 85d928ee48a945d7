"""What a user does with a trained model: export and reload it, run it in ONNX, fine-tune it, stop samples."""

import json

import pytest
import torch

from src.checkpoint import init_from_checkpoint, load_checkpoint, model_from_checkpoint
from src.export import AllLogits
from src.export import main as export_main
from src.generate import main as generate_main
from src.model import build_model
from src.pretrained import from_pretrained
from src.tokenizer import CharTokenizer
from src.train import main as train_main
from tests.conftest import TINY_TEXT, tiny_args


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    export_main([f"--ckpt_path={ckpt}", f"--out={out}"])
    return out


def sample(capsys, *args: str) -> str:
    capsys.readouterr()  # not what fixtures printed while they trained
    generate_main(list(args))
    return capsys.readouterr().out


def test_export_reloads_to_identical_logits_and_text(ckpt, exported, capsys):
    assert sorted(p.name for p in exported.iterdir()) == ["config.json", "model.onnx", "model.safetensors"]
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "gpt" and config["tokenizer"] == "chars" and config["n_embd"] == 16
    original, tokenizer = model_from_checkpoint(load_checkpoint(ckpt))
    reloaded, reloaded_tokenizer = from_pretrained(exported)
    assert reloaded_tokenizer.vocab == tokenizer.vocab
    idx = torch.tensor([tokenizer.encode("All: speak.")])
    assert torch.equal(AllLogits(original)(idx), AllLogits(reloaded)(idx))
    args = ["--prompt=All:", "--max_new_tokens=60", "--seed=5", "--num_samples=2"]
    assert sample(capsys, f"--ckpt_path={ckpt}", *args) == sample(capsys, f"--ckpt_path={exported}", *args)


def test_onnx_logits_match_pytorch(ckpt, exported):
    ort = pytest.importorskip("onnxruntime")
    model, tokenizer = model_from_checkpoint(load_checkpoint(ckpt))
    session = ort.InferenceSession(str(exported / "model.onnx"))
    for shape in ((1, 5), (3, 16)):  # dynamic batch and length, up to the 16-token window
        idx = torch.randint(0, tokenizer.vocab_size, shape)
        (logits,) = session.run(None, {"idx": idx.numpy()})
        assert torch.allclose(torch.from_numpy(logits), AllLogits(model)(idx), atol=1e-4)


def test_stop_ends_each_sample_where_the_text_first_appears(ckpt, capsys):
    args = [f"--ckpt_path={ckpt}", "--prompt=All:", "--max_new_tokens=80", "--seed=2"]
    new = sample(capsys, *args)[len("All:") :]
    assert "e" in new  # this seed's sample does hold the stop text
    assert sample(capsys, *args, "--stop=e") == "All:" + new[: new.index("e")] + "\n"
    samples = sample(capsys, *args, "--stop=e", "--num_samples=3").rstrip("\n").split("\n---------------\n")
    assert len(samples) == 3 and all(s.startswith("All:") and "e" not in s[4:] for s in samples)


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
    assert sample(capsys, f"--ckpt_path={tuned}", "--prompt=ZOUNDS", "--max_new_tokens=20").startswith("ZOUNDS")


def test_init_from_another_architecture_is_refused(ckpt, workdir, tiny_corpus, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["fit", *tiny_args(tiny_corpus, **{"model.n_embd": 32}), f"--model.init_from={ckpt}"])
    assert exit_info.value.code == 2
    assert "is another architecture (n_embd 16 vs 32)" in capsys.readouterr().err
