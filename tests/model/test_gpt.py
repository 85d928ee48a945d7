import math

import torch
from torch.nn import functional as F

from src.model import GPT, BigramLanguageModel, GPTConfig
from tests.helpers import tiny_gpt


def all_logits(model, idx):
    return model(idx)[0]


def test_parameter_counts_match_the_lecture():
    notebook = GPTConfig(vocab_size=65, block_size=32, n_layer=4, n_head=4, n_embd=64, dropout=0.0)
    lecture = GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2)
    assert GPT(notebook).num_params() == 209_729
    assert GPT(lecture).num_params() == 10_788_929
    assert BigramLanguageModel(notebook).num_params() == 65 * 65


def test_causality():
    model = tiny_gpt()
    idx = torch.randint(0, 11, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 11
    a, b = all_logits(model, idx), all_logits(model, changed)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-6)
    assert not torch.allclose(a[:, 9], b[:, 9])


def seed_style_attention(attn, x):
    """The lecture's Head/MultiHeadAttention: per-head q, k, v, tril mask, softmax, weighted sum, projection."""
    B, T, C = x.shape
    wq, wk, wv = attn.c_attn.weight.split(C, dim=0)
    tril = torch.tril(torch.ones(T, T))
    heads = []
    for h in range(attn.n_head):
        rows = slice(h * attn.head_size, (h + 1) * attn.head_size)
        q, k, v = x @ wq[rows].T, x @ wk[rows].T, x @ wv[rows].T
        wei = q @ k.transpose(-2, -1) * attn.head_size**-0.5
        wei = wei.masked_fill(tril == 0, float("-inf"))
        heads.append(F.softmax(wei, dim=-1) @ v)
    return attn.c_proj(torch.cat(heads, dim=-1))


def test_fused_attention_equals_the_seeds_per_head_attention():
    attn = tiny_gpt(n_embd=32, n_head=4).transformer.h[0].attn
    x = torch.randn(3, 16, 32)
    y, _ = attn(x)  # the output and the values it weighed
    assert torch.allclose(y, seed_style_attention(attn, x), atol=1e-5)


def test_attention_stays_float32_under_cpu_bf16_autocast(monkeypatch):
    """bf16-mixed on a CPU: the Linear layers run in bf16, but SDPA gets float32 q, k, v (its bf16 CPU backward is
    several times slower), and the block still matches the seed-style attention and trains."""
    attn = tiny_gpt(n_embd=32, n_head=4).transformer.h[0].attn.train()
    seen = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", lambda q, k, v, **kw: seen.append(q.dtype) or sdpa(q, k, v, **kw)
    )
    x = torch.randn(3, 16, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = attn(x)
    assert seen == [torch.float32]
    assert y.dtype == torch.bfloat16  # c_proj still ran in bf16
    assert torch.allclose(y.float(), seed_style_attention(attn, x).detach(), atol=0.05)
    y.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert attn.c_attn.weight.grad is not None


def test_loss_at_initialisation_is_close_to_uniform():
    model = GPT(GPTConfig(vocab_size=65, block_size=32, n_layer=4, n_head=4, n_embd=64))
    idx = torch.randint(0, 65, (8, 32))
    _, loss = model(idx, torch.randint(0, 65, (8, 32)))
    assert abs(loss.item() - math.log(65)) < 0.05


def test_the_model_can_learn_a_tiny_text():
    text = torch.tensor([i % 11 for i in range(200)])
    model = tiny_gpt(dropout=0.1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        starts = torch.randint(0, len(text) - 17, (8, 1)) + torch.arange(17)
        chunk = text[starts]
        _, loss = model(chunk[:, :-1], chunk[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_forward_gives_every_positions_logits_with_or_without_targets():
    """The lecture's contract: logits (B, T, V) for every position; the loss only when targets are given."""
    model = tiny_gpt()
    idx = torch.randint(0, 11, (2, 7))
    logits, loss = model(idx)
    assert logits.shape == (2, 7, 11) and loss is None
    with_targets, loss = model(idx, idx)
    assert torch.equal(with_targets, logits) and loss.ndim == 0


def test_attention_maps_are_the_models_weights_rows_of_distributions_over_the_past():
    model = tiny_gpt(n_layer=2, n_head=2)
    idx = torch.randint(0, 11, (1, 12))
    maps = model.attention_maps(idx)
    assert len(maps) == 2 and maps[0].shape == (1, 2, 12, 12)
    for weights in maps:
        assert torch.allclose(weights.sum(-1), torch.ones(1, 2, 12))
        assert torch.all(weights.triu(1) == 0)
    attn, x = model.transformer.h[0].attn, model.transformer.h[0].ln_1(model._embed(idx))
    _, _, v = attn._qkv(x)
    by_hand = attn.c_proj((maps[0] @ v).transpose(1, 2).reshape(1, 12, -1))
    assert torch.allclose(by_hand, attn(x)[0], atol=1e-6)  # what forward applies to the values


def test_attn_dropout_zero_keeps_the_attention_weights_whole_while_the_residual_drops():
    from src.model.gpt import CausalSelfAttention

    config = GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.5, attn_dropout=0.0)
    attention = CausalSelfAttention(config)
    x = torch.randn(2, 16, 16)
    residual = attention.resid_dropout
    attention.resid_dropout = torch.nn.Identity()
    torch.testing.assert_close(attention.train()(x)[0], attention.eval()(x)[0])  # no dropout on the weights
    attention.resid_dropout = residual
    assert not torch.equal(attention.train()(x)[0], attention.eval()(x)[0])  # the residual branch still drops
    both = CausalSelfAttention(GPTConfig(**{**config.__dict__, "attn_dropout": None}))
    assert both.dropout == 0.5  # unset: the lecture's one dropout everywhere


def test_multi_token_prediction_adds_the_token_after_next_to_the_objective_only():
    idx, targets = torch.randint(0, 11, (2, 16)), torch.randint(0, 11, (2, 16))
    plain = tiny_gpt()
    loss, objective = plain.objective(idx, targets)
    assert not hasattr(plain, "mtp_head") and objective is loss
    model = tiny_gpt(mtp_weight=0.5)
    loss, objective = model.objective(idx, targets)
    assert torch.equal(loss, model(idx, targets)[1])  # what train_loss and val_loss report: the next token's
    after_next = model.mtp_head(model.features(idx))[:, :-1]  # position t scores token t + 2, which is targets[t + 1]
    aux = F.cross_entropy(after_next.reshape(-1, 11), targets[:, 1:].reshape(-1))
    torch.testing.assert_close(objective, loss + 0.5 * aux)
    objective.backward()
    assert model.mtp_head.weight.grad.abs().sum() > 0


def test_the_attention_gate_scales_each_heads_output():
    model = tiny_gpt(attn_gate=True)
    attn, x = model.transformer.h[0].attn, torch.rand(2, 16, 16) + 0.1  # positive: a negative weight shuts the gate
    with torch.no_grad():
        attn.gate.weight.zero_()  # sigmoid(0): every head at half its output
        half = attn(x)[0]
        attn.gate.weight.fill_(-1e4)  # every gate shut: only the projection's bias is left
        shut = attn(x)[0]
        attn.gate = None
        whole = attn(x)[0]
    bias = attn.c_proj.bias
    torch.testing.assert_close(half - bias, 0.5 * (whole - bias))
    torch.testing.assert_close(shut, bias.expand_as(shut))
