import pytest
import torch
from torch.nn import functional as F

import src.model.dropout
from src.model import GPT, GPTConfig
from src.model.dropout import BoolMaskDropout, causal_attention_with_dropout


def qkv(B=2, nh=3, T=7, hs=4, dtype=torch.float64):
    return tuple(torch.randn(B, nh, T, hs, dtype=dtype, requires_grad=True) for _ in range(3))


def weights_through(p: float, T: int = 64, rows: int = 32):
    """The dropped-out attention weights themselves: with v the identity, attention returns them."""
    q, k = (torch.randn(1, rows, T, T) for _ in range(2))
    v = torch.eye(T).expand(1, rows, T, T)
    probs = torch.softmax((q @ k.transpose(-2, -1) / 8).masked_fill(torch.eye(T).cumsum(0) == 0, -torch.inf), -1)
    return causal_attention_with_dropout(q, k, v, p, 1 / 8), probs


@pytest.mark.parametrize("rows_per_chunk", [1, 4, 8])  # 6 rows: chunks that do and do not divide them
def test_attention_gradients_are_exact(monkeypatch, rows_per_chunk):
    monkeypatch.setattr(src.model.dropout, "ROWS_PER_CHUNK", rows_per_chunk)

    def attend(q, k, v):
        torch.manual_seed(1)  # the same mask for every call gradcheck makes
        return causal_attention_with_dropout(q, k, v, 0.3, 0.5)

    assert torch.autograd.gradcheck(attend, qkv())


def test_attention_without_dropping_is_sdpa():
    q, k, v = qkv()
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5)
    torch.testing.assert_close(causal_attention_with_dropout(q, k, v, 0.0, 0.5), expected)


def test_attention_drops_a_fraction_p_of_the_weights_and_rescales_the_rest():
    att, probs = weights_through(0.25)
    past = torch.ones_like(probs, dtype=torch.bool).tril()
    kept = att != 0
    assert not kept[~past].any()  # never attends to the future
    assert abs(1 - kept[past].float().mean().item() - 0.25) < 0.01  # 66,560 weights: 5 sigma is 0.008
    torch.testing.assert_close(att[kept], probs[kept] / 0.75)


def test_attention_under_bf16_autocast_keeps_the_input_dtype():
    q, k, v = qkv(dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = causal_attention_with_dropout(q, k, v, 0.2, 0.5)
    y.float().sum().backward()
    assert y.dtype == q.grad.dtype == torch.bfloat16
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_dropout_module_on_cpu():
    drop = BoolMaskDropout(0.25).train()
    x = torch.randn(200, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.25) < 0.01
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept / 0.75)
    assert torch.equal(drop.eval()(x), x)


def test_training_keeps_no_float_attention_matrix_for_backward():
    """The memory saving: no saved tensor of (B, nh, T, T) floats, only a bool mask."""
    config = GPTConfig(vocab_size=11, block_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.2)
    model = GPT(config).train()
    idx = torch.randint(0, 11, (3, 32))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        model(idx, idx)
    square = [t for t in saved if t.shape[-2:] == (32, 32) and t.numel() >= 3 * 2 * 32 * 32]
    assert square and all(t.dtype == torch.bool for t in square)


def test_training_with_dropout_is_reproducible_from_the_seed():
    config = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.3)
    model = GPT(config).train()
    idx = torch.randint(0, 11, (2, 16))
    losses = []
    for _ in range(2):
        torch.manual_seed(5)
        losses.append(model(idx, idx)[1])
    assert torch.equal(*losses)
    torch.manual_seed(6)
    assert not torch.equal(model(idx, idx)[1], losses[0])
