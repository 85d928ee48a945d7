import pytest
import torch

from src.model import GPT, GPTConfig
from src.optim import adamw, param_groups, warmup_cosine


def model() -> GPT:
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))


def test_groups_partition_the_parameters_and_decay_only_matrices():
    m = model()
    decay, no_decay = param_groups(m, weight_decay=0.1)
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters())
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    assert id(m.transformer.wte.weight) in decayed
    assert id(m.transformer.ln_f.weight) not in decayed and id(m.lm_head.bias) not in decayed


def lrs(warmup: int, total: int, lr: float = 1e-3, min_lr: float = 1e-4) -> list[float]:
    optimizer = adamw(model(), lr=lr, weight_decay=0.1, betas=(0.9, 0.99))
    scheduler = warmup_cosine(optimizer, warmup, total, min_lr)
    out = []
    for _ in range(total + 1):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_then_cosine_to_min_lr():
    curve = lrs(warmup=10, total=110)
    assert curve[0] == pytest.approx(1e-3 / 11)
    assert curve[5] == pytest.approx(1e-3 * 6 / 11)
    assert curve[10] == pytest.approx(1e-3)
    assert max(curve) == pytest.approx(1e-3)
    assert curve[60] == pytest.approx((1e-3 + 1e-4) / 2)  # half way down the cosine
    assert curve[110] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(curve[10:], curve[11:]))


def test_no_warmup_and_constant_rate():
    assert lrs(warmup=0, total=50)[0] == pytest.approx(1e-3)
    assert lrs(warmup=0, total=20, min_lr=1e-3) == [pytest.approx(1e-3)] * 21


def test_optimizer_state_dict_is_plain_data(tmp_path):
    optimizer = adamw(model(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    scheduler = warmup_cosine(optimizer, 5, 50, 1e-4)
    torch.save({"opt": optimizer.state_dict(), "sched": scheduler.state_dict()}, tmp_path / "s.pt")
    torch.load(tmp_path / "s.pt", weights_only=True)
