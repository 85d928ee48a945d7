from types import SimpleNamespace

import pytest
import torch

from src.checkpoint import CHECKPOINT_KEY, load_checkpoint, model_from_checkpoint
from src.errors import UserError
from src.module import CharGPT

VOCAB = "\n !abcdefghij"
PLAIN = (str, int, float, bool, type(None))


def module(**kwargs) -> CharGPT:
    return CharGPT(vocab=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16, **kwargs)


def attach_trainer(m: CharGPT, precision: str = "32-true", clip: float | None = 1.0, max_steps: int = 100):
    m._trainer = SimpleNamespace(precision=precision, gradient_clip_val=clip, max_steps=max_steps)


def test_hyperparameters_are_plain_values():
    hparams = dict(module().hparams)
    assert hparams["vocab"] == VOCAB
    assert all(isinstance(v, PLAIN) for v in hparams.values()), hparams


@pytest.mark.parametrize(
    "precision, clip, fused", [("32-true", 1.0, True), ("bf16-mixed", 1.0, None), ("bf16-mixed", None, True)]
)
def test_optimizer_and_schedule(precision, clip, fused):
    m = module(warmup_steps=10, learning_rate=1e-3, min_lr=1e-4)
    attach_trainer(m, precision, clip)
    config = m.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert optimizer.defaults["fused"] is fused
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert config["lr_scheduler"]["interval"] == "step"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 11)
    for _ in range(100):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_bad_settings_name_the_option():
    with pytest.raises(UserError, match="--model.learning_rate must be positive, got 0.*--model.beta2"):
        module(learning_rate=0, beta2=1.0)
    with pytest.raises(UserError, match="model.vocab is empty"):
        CharGPT(vocab="")


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


def test_rng_state_is_saved_and_restored():
    m = module()
    checkpoint = {}
    m.on_save_checkpoint(checkpoint)
    expected = torch.rand(3)
    m.on_load_checkpoint(checkpoint)
    assert torch.equal(torch.rand(3), expected)
