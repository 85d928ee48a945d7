"""The export folder and model.onnx: written from a checkpoint, reloaded to the same logits and text."""

import json
import sys

import pytest
import torch

from src.checkpoints.checkpoint import load_checkpoint, model_from_checkpoint
from src.checkpoints.pretrained import from_pretrained
from src.export import AllLogits
from src.export import main as export_main
from src.generate import main as generate_main

pytestmark = pytest.mark.slow  # end to end: trains, or launches processes


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


def test_export_hf_without_the_extra_says_which_to_install(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if the hf extra were not installed
    with pytest.raises(SystemExit) as exit_info:
        export_main([f"--ckpt_path={ckpt}", f"--out={tmp_path / 'hf'}", "--format=hf"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and not (tmp_path / "hf").exists()
    last = err.strip().splitlines()[-1]
    assert last == 'chargpt export: error: --format hf needs the tokenizers package: pip install -e ".[hf]"'


def test_export_hf_writes_the_hubs_layout_that_src_generate_reads(ckpt, tmp_path, capsys):
    pytest.importorskip("tokenizers", reason="the hf extra: pip install -e '.[hf]'")
    out = tmp_path / "hf"
    export_main([f"--ckpt_path={ckpt}", f"--out={out}", "--format=hf"])
    assert "its own modeling code (GPT-2 has no value_residual=True)" in capsys.readouterr().err  # the default's
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"} <= names
    assert {"modeling_chargpt.py", "configuration_chargpt.py", "chargpt_gpt.py"} <= names
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "trust_remote_code=True" in card and "Validation loss:" in card
    args = ["--prompt=All:", "--max_new_tokens=60", "--temperature=0"]
    assert sample(capsys, f"--ckpt_path={ckpt}", *args) == sample(capsys, f"--ckpt_path={out}", *args)
