"""One rule rebuilds a model and tokenizer from plain values: every registered model type goes through the training
module, a checkpoint and an export folder and comes back identical, so a new type cannot be half-registered."""

import pytest
import torch

from src.checkpoints.build import build, describe
from src.checkpoints.checkpoint import load_checkpoint, model_from_checkpoint, save_atomically
from src.checkpoints.pretrained import from_pretrained, save_pretrained
from src.model import MODELS, GPTConfig, model_type_of
from src.training.module import CharGPT
from tests.helpers import MODEL_OPTIONS

VOCAB = "\n !abcdefghij"
SIZES = {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0}


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_every_registered_model_type_survives_a_checkpoint_and_an_export(model_type, tmp_path):
    module = CharGPT(vocab=VOCAB, model_type=model_type, **SIZES)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    save_atomically(checkpoint, tmp_path / "m.ckpt")
    save_pretrained(module.model, module.tokenizer, tmp_path / "export")
    idx = torch.tensor([module.tokenizer.encode("a bad chef\n")])
    for model, tokenizer in (
        model_from_checkpoint(load_checkpoint(tmp_path / "m.ckpt")),
        from_pretrained(tmp_path / "export"),
    ):
        assert type(model) is type(module.model) and model.config == module.model.config
        assert tokenizer.vocab == VOCAB and tokenizer.kind == module.tokenizer.kind
        assert describe(model, tokenizer) == describe(module.model, module.tokenizer)
        assert torch.equal(model(idx)[0], module.model.eval()(idx)[0])


def test_describe_and_build_are_inverse_and_an_unregistered_type_is_refused():
    model, tokenizer = build({"model_type": "gpt", "vocab": VOCAB, **SIZES})
    assert model.config == GPTConfig(vocab_size=len(VOCAB), **SIZES)
    rebuilt, _ = build(describe(model, tokenizer))
    assert rebuilt.config == model.config and model_type_of(rebuilt) == "gpt"

    class Unregistered(type(model)):
        pass

    with pytest.raises(ValueError, match="register it there"):
        model_type_of(Unregistered(model.config))


OPTIONS = {name: {name: value} for name, value in MODEL_OPTIONS.items()}  # one config line each


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_model_option_survives_a_checkpoint_and_an_export_and_decodes_as_it_trains(option, tmp_path):
    module = CharGPT(vocab=VOCAB, **{**SIZES, "n_layer": 2}, **OPTIONS[option])
    model = module.model.eval()
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    save_atomically(checkpoint, tmp_path / "m.ckpt")
    save_pretrained(model, module.tokenizer, tmp_path / "export")
    idx = torch.tensor([module.tokenizer.encode("a bad chef\nhigh")] * 2)
    logits = model(idx)[0]
    for rebuilt, _ in (
        model_from_checkpoint(load_checkpoint(tmp_path / "m.ckpt")),
        from_pretrained(tmp_path / "export"),
    ):
        assert rebuilt.config == model.config
        assert all(getattr(rebuilt.config, k) == v for k, v in OPTIONS[option].items())
        assert torch.equal(rebuilt(idx)[0], logits)
        if option == "tie_embeddings":
            assert rebuilt.lm_head.weight is rebuilt.transformer.wte.weight
    # the KV cache, a position per row as the server batches them, gives what the whole window gives
    model.setup_cache(2)
    for t in range(idx.size(1)):
        step = model.next_logits(idx[:, t : t + 1], torch.full((2, 1), t), torch.tensor(0))
        torch.testing.assert_close(step, logits[:, t], atol=1e-5, rtol=1e-5)
    model.clear_cache()
