from types import SimpleNamespace

import torch

from src.training.callbacks import SampleText
from src.training.module import CharGPT

VOCAB = "\n abcdefghij"


def module() -> CharGPT:
    return CharGPT(vocab=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.5)


def fake_trainer(step: int = 5, rank_zero: bool = True) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, is_global_zero=rank_zero, loggers=[])


def test_sampling_leaves_training_state_untouched(capsys):
    pl_module = module().train()
    x = torch.randint(0, len(VOCAB), (2, 16))
    _, loss = pl_module(x, x)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}  # not mtp_head's
    rng = torch.get_rng_state()
    text = SampleText(prompt="ab", max_new_tokens=30).sample(fake_trainer(), pl_module)
    assert text.startswith("ab") and len(text) == 32
    assert pl_module.training and pl_module.model.training
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(p.grad, grads[n]) if n in grads else p.grad is None for n, p in pl_module.named_parameters())
    assert "--- sample at step 5 ---" in capsys.readouterr().out


def test_fixed_seed_gives_comparable_samples_and_only_rank_zero_samples():
    pl_module = module()
    callback = SampleText(max_new_tokens=20, seed=3)
    first = callback.sample(fake_trainer(step=1), pl_module)
    second = callback.sample(fake_trainer(step=2), pl_module)
    assert first == second  # same weights, same seed
    assert callback.sample(fake_trainer(step=3, rank_zero=False), pl_module) is None
    assert callback.sample(fake_trainer(step=2), pl_module) is None  # a step is sampled once
