"""One rule rebuilds a model and tokenizer from plain values: every registered model type goes through the training
module, a checkpoint and an export folder and comes back identical, so a new type cannot be half-registered."""

import pytest
import torch

from src.build import build, describe
from src.checkpoint import load_checkpoint, model_from_checkpoint, save_atomically
from src.model import MODELS, GPTConfig, model_type_of
from src.module import CharGPT
from src.pretrained import from_pretrained, save_pretrained

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
