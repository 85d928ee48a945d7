"""The Hugging Face folder: transformers loads it offline and gives chargpt's log-probabilities (plain GPT-2 where the
options map, chargpt's own generated code otherwise), its fast tokenizer gives chargpt's ids, greedy decoding gives
chargpt's text, and src.generate reads the folder back."""

from __future__ import annotations

import json

import pytest
import torch

from src.checkpoints.hf import gpt2_refusal, model_sources, save_hf
from src.checkpoints.pretrained import from_pretrained
from src.data.tokenizer import ByteTokenizer, CharTokenizer
from src.generation.decoding import generate
from src.model import build_model
from tests.helpers import MODEL_OPTIONS, REPO, TINY_TEXT

transformers = pytest.importorskip("transformers", reason="the hf extra: pip install -e '.[hf]'")
VOCAB = "".join(sorted(set(TINY_TEXT)))  # 29 characters
SIZES = dict(vocab_size=len(VOCAB), block_size=32, n_layer=2, n_head=4, n_embd=32)
CASES = {  # model_type, options, whether transformers' GPT-2 holds it
    "gpt_notebook": ("gpt", {}, True),  # the lecture's GPT: ReLU, biases (the output bias folded)
    "relu2_no_bias_tied": ("gpt", {"mlp": "relu2", "bias": False, "tie_embeddings": True}, True),
    "09_layernorm": ("lecture_layernorm", {"n_embd": 32, "n_head": 4, "n_layer": 3}, False),
    "default_config": ("gpt", {"value_residual": True, "mtp_weight": 0.3, "mlp": "relu"}, False),
    "every_option": ("gpt", dict(MODEL_OPTIONS), False),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def model_of(model_type: str, options: dict):
    torch.manual_seed(0)
    model = build_model(model_type, **{**SIZES, **options, "dropout": 0.0}).eval()
    with torch.no_grad():  # weights far from their init, biases included: every mapping is exercised
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def exported(tmp_path, case: str):
    model_type, options, _ = CASES[case]
    model = model_of(model_type, options)
    folder = tmp_path / case
    save_hf(model, CharTokenizer(VOCAB), folder, "card")
    return model, folder


@pytest.mark.parametrize("case", CASES)
def test_transformers_gives_chargpts_log_probabilities(tmp_path, case):
    model, folder = exported(tmp_path, case)
    plain = CASES[case][2]
    assert (gpt2_refusal(model) is None) == plain and (folder / "modeling_chargpt.py").exists() != plain
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=not plain, local_files_only=True)
    assert type(hf).__name__ == ("GPT2LMHeadModel" if plain else "ChargptForCausalLM")
    ids = torch.tensor([CharTokenizer(VOCAB).encode(TINY_TEXT[i : i + 32]) for i in (0, 100, 200)])
    with torch.no_grad():
        ours = torch.log_softmax(model(ids)[0].float(), dim=-1)
        theirs = torch.log_softmax(hf(ids).logits.float(), dim=-1)
        back, _ = from_pretrained(folder)[0](ids)  # src.generate's reading of the folder
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.log_softmax(back, dim=-1), ours, atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", ["gpt_notebook", "default_config"])
def test_greedy_generate_and_the_pipeline_give_chargpts_text(tmp_path, case):
    model, folder = exported(tmp_path, case)
    plain, tokenizer = CASES[case][2], CharTokenizer(VOCAB)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=not plain, local_files_only=True)
    prompt = torch.tensor([tokenizer.encode("All:\n")])
    ours = generate(model, prompt, 20, temperature=0.0)
    theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False)
    assert tokenizer.decode(theirs[0].tolist()) == tokenizer.decode(ours[0].tolist())
    pipe = transformers.pipeline("text-generation", model=str(folder), trust_remote_code=not plain)
    text = pipe("All:", max_new_tokens=10, do_sample=False)[0]["generated_text"]
    assert text == tokenizer.decode(
        generate(model, torch.tensor([tokenizer.encode("All:")]), 10, temperature=0.0)[0].tolist()
    )


def test_the_fast_tokenizer_gives_chargpts_ids_and_refuses_what_chargpt_refuses(tmp_path, shakespeare):
    text = shakespeare.read_text(encoding="utf-8")
    chars = CharTokenizer("".join(sorted(set(text))))
    save_hf(model_of("bigram", {"vocab_size": chars.vocab_size}), chars, tmp_path / "c", "card")
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path / "c", local_files_only=True)
    assert fast.is_fast
    ids = fast(text)["input_ids"]
    assert ids == chars.encode(text) and fast.decode(ids) == text
    with pytest.raises(Exception):  # noqa: B017 (tokenizers' own error type): no unknown token, as in chargpt
        fast("a § b")
    save_hf(model_of("bigram", {"vocab_size": 256}), ByteTokenizer(), tmp_path / "b", "card")
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path / "b", local_files_only=True)
    sample = "Ça va? 日本語 — ok\n\ttab"
    assert (
        fast(sample)["input_ids"] == ByteTokenizer().encode(sample) and fast.decode(fast(sample)["input_ids"]) == sample
    )


def test_the_shipped_code_is_chargpts_model_source_and_the_config_names_it(tmp_path):
    _, folder = exported(tmp_path, "default_config")
    for name, text in model_sources().items():  # one definition: src/model/ itself, imports made relative
        assert (folder / name).read_text() == text
    gpt = (folder / "chargpt_gpt.py").read_text()
    source = (REPO / "src/model/gpt.py").read_text()
    assert gpt.split("\n", 1)[1].replace("from .chargpt_", "from src.model.") == source
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_chargpt.ChargptForCausalLM"
    assert config["chargpt"]["mtp_weight"] == 0.0  # the multi-token head trains only


def test_the_readmes_transformers_example_runs_on_an_exported_folder(tmp_path, monkeypatch, capsys):
    """README's three lines, as written, on an exported folder named as there (its prompt swapped for one in the tiny
    vocabulary): they print a continuation of the prompt."""
    import re

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (code,) = [block for block in re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M) if "transformers" in block]
    folder = re.search(r'model="([^"]+)"', code).group(1)
    _, exported_to = exported(tmp_path, "default_config")
    exported_to.rename(tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    exec(code.replace('"ROMEO:"', '"All:"'), {})
    printed = capsys.readouterr().out
    assert printed.startswith("All:") and len(printed) > len("All:") + 100
