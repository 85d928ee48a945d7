import copy

import pytest
import torch
from torch import nn

from src.model import GPT, GPTConfig
from src.training.optim import Muon, MuonAdamW, adamw, decay, param_groups, warmup_decay


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


def lrs(warmup: int, total: int, lr: float = 1e-3, min_lr: float = 1e-4, shape: str = "cosine") -> list[float]:
    optimizer = adamw(model(), lr=lr, weight_decay=0.1, betas=(0.9, 0.99))
    scheduler = warmup_decay(optimizer, warmup, total, min_lr, shape)
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


def test_warmup_then_a_straight_line_to_min_lr_and_to_zero():
    curve = lrs(warmup=10, total=110, shape="linear")
    assert curve[10] == pytest.approx(1e-3)
    assert curve[35] == pytest.approx(1e-3 - 0.25 * (1e-3 - 1e-4))  # a quarter of the way down, not a cosine's
    assert curve[110] == pytest.approx(1e-4)
    assert lrs(warmup=10, total=110, min_lr=0.0, shape="linear")[110] == pytest.approx(0.0, abs=1e-12)


def test_warmup_stable_decay_holds_the_peak_then_falls_in_a_line_over_the_cooldown():
    curve = lrs(warmup=10, total=110, shape="wsd")  # cooldown 0.4 of 110 steps: the last 44
    assert curve[10] == curve[66] == pytest.approx(1e-3)
    assert curve[88] == pytest.approx(1e-3 - 0.5 * (1e-3 - 1e-4))
    assert curve[110] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(curve[10:], curve[11:]))


def test_an_unknown_decay_shape_is_refused():
    with pytest.raises(ValueError, match="'cosine', 'linear' or 'wsd'"):
        lrs(warmup=10, total=110, shape="step")


def test_no_warmup_and_constant_rate():
    assert lrs(warmup=0, total=50)[0] == pytest.approx(1e-3)
    assert lrs(warmup=0, total=20, min_lr=1e-3) == [pytest.approx(1e-3)] * 21


def test_optimizer_state_dict_is_plain_data(tmp_path):
    optimizer = adamw(model(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    scheduler = warmup_decay(optimizer, 5, 50, 1e-4)
    torch.save({"opt": optimizer.state_dict(), "sched": scheduler.state_dict()}, tmp_path / "s.pt")
    torch.load(tmp_path / "s.pt", weights_only=True)


def test_muon_takes_the_hidden_matrices_and_adamw_every_other_parameter():
    m = model()
    optimizer = MuonAdamW(m, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), fused=True)
    muon = [p for g in optimizer.muon.param_groups for p in g["params"]]
    other = [p for g in optimizer.adamw.param_groups for p in g["params"]]
    assert sorted(map(id, muon + other)) == sorted(id(p) for p in m.parameters())  # each exactly once
    assert all(p.dim() == 2 for p in muon) and len(muon) == 4 * 2  # c_attn, c_proj, c_fc, c_proj per block
    embeddings = {id(m.transformer.wte.weight), id(m.transformer.wpe.weight), id(m.lm_head.weight)}
    assert embeddings <= set(map(id, other))
    assert [g["name"] for g in optimizer.param_groups] == ["muon", "decay", "no_decay"]
    scheduler = warmup_decay(optimizer, 5, 50, 1e-4)  # one schedule for both
    for _ in range(50):
        optimizer.step()
        scheduler.step()
    assert all(g["lr"] == pytest.approx(1e-4) for g in optimizer.param_groups)


def test_muon_state_round_trips_as_plain_data(tmp_path):
    m = model()
    optimizer = MuonAdamW(m, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), fused=True)
    m(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))[1].backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "s.pt")
    again = MuonAdamW(m, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), fused=True)
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert again.muon.state_dict()["state"].keys() == optimizer.muon.state_dict()["state"].keys()
    again.param_groups[0]["lr"] = 0.5  # what a scheduler does after a resume reaches the optimizer that steps
    assert again.muon.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("nesterov", [True, False])
def test_batched_muon_takes_torchs_steps_and_shares_its_state(nesterov):
    torch.manual_seed(0)
    shapes = [(24, 8), (8, 8), (8, 24), (24, 8), (8, 8), (8, 24), (16, 8)]  # repeated and lone shapes, tall and wide
    ours = [nn.Parameter(torch.randn(*s) * 0.1) for s in shapes]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    options = dict(lr=0.02, weight_decay=0.5, nesterov=nesterov, adjust_lr_fn="match_rms_adamw")
    a, b = Muon(ours, **options), torch.optim.Muon(theirs, **options)
    for step in range(4):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        if step == 2:  # a resume from the other's checkpoint
            a.load_state_dict(copy.deepcopy(b.state_dict()))
        a.step()
        b.step()
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    assert a.state_dict()["state"].keys() == b.state_dict()["state"].keys()


def first_step(m: GPT, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """How far one step moves each parameter at most, by name."""
    torch.manual_seed(0)  # the same dropout masks for every model
    before = {name: p.detach().clone() for name, p in m.named_parameters()}
    m(torch.arange(8).view(1, 8) % 11, torch.arange(1, 9).view(1, 8) % 11)[1].backward()
    optimizer.step()
    return {name: (p - before[name]).abs().max().item() for name, p in m.named_parameters()}


def test_learning_rates_per_kind_of_parameter_scale_each_groups_step_and_leave_the_schedule():
    m = model()
    groups = param_groups(m, 0.1, {"embedding": 10.0})
    assert [g["name"] for g in groups] == ["embedding", "head", "matrices", "scalars"]
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in m.parameters())
    assert {id(p) for p in groups[0]["params"]} == {id(m.transformer.wte.weight), id(m.transformer.wpe.weight)}
    assert [id(p) for p in groups[1]["params"]] == [id(m.lm_head.weight)]
    assert [g["lr_scale"] for g in groups] == [10.0, 1.0, 1.0, 1.0] and groups[3]["weight_decay"] == 0.0
    scales = {"embedding": 10.0, "head": 0.5}
    optimizer = adamw(m, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.99), lr_scales=scales)
    moved = first_step(m, optimizer)  # Adam's first step moves each entry with a gradient by its learning rate
    assert moved["transformer.wpe.weight"] == pytest.approx(1e-2, rel=1e-3)
    assert moved["lm_head.weight"] == pytest.approx(5e-4, rel=1e-3)
    assert moved["transformer.h.0.mlp.c_fc.weight"] == pytest.approx(1e-3, rel=1e-3)
    assert all(g["lr"] == 1e-3 for g in optimizer.param_groups)  # the schedule's rate, as logged


def test_muons_rate_scales_too():
    torch.manual_seed(0)
    a, b = model(), model()
    b.load_state_dict(a.state_dict())
    scaled = MuonAdamW(a, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), fused=True, lr_scales={"matrices": 2.0})
    doubled = MuonAdamW(b, lr=2e-3, weight_decay=0.1, betas=(0.9, 0.99), fused=True)
    first_step(a, scaled), first_step(b, doubled)
    matrix = "transformer.h.1.attn.c_attn.weight"
    torch.testing.assert_close(a.get_parameter(matrix), b.get_parameter(matrix))
    assert not torch.equal(a.transformer.wte.weight, b.transformer.wte.weight)  # AdamW's kept the schedule's rate


def test_cautious_weight_decay_spares_the_entries_the_update_pushes_away_from_zero():
    p = nn.Parameter(torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
    update = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]]])  # stacked as Muon's (N, A, B); subtracted from p
    with torch.no_grad():
        decay([p], update, 0.1, cautious=True)
        assert torch.equal(p, torch.tensor([[0.9, -1.0], [1.0, -0.9]]))
        decay([p], update, 0.5, cautious=False)
        assert torch.equal(p, torch.tensor([[0.45, -0.5], [0.5, -0.45]]))
