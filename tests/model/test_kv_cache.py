"""Cached decoding (``next_logits`` with ``input_pos``) gives the logits of the uncached forward, and the cache never
reaches a checkpoint."""

import pytest
import torch

from src.model import BigramLanguageModel, GPTConfig
from src.model.kv_cache import KVCache
from tests.helpers import tiny_gpt


def test_a_decode_step_sees_every_cached_key():
    """SDPA's is_causal aligns top-left: one query over a longer cache would see only the first key."""
    model = tiny_gpt()
    idx = torch.randint(0, 11, (2, 12))
    model.setup_cache(2)
    model.next_logits(idx[:, :11], torch.arange(11), torch.tensor(10))
    step = model.next_logits(idx[:, 11:], torch.tensor([11]), torch.tensor(0))
    model.clear_cache()
    assert torch.allclose(step, model(idx)[0][:, -1], atol=1e-5)


def test_a_chunk_after_a_cached_prefix_reads_the_prefix():
    model = tiny_gpt()
    idx = torch.randint(0, 11, (2, 14))
    full = model(idx)[0]
    for index in (0, 4, 8):
        model.setup_cache(2)
        model.next_logits(idx[:, :5], torch.arange(5), torch.tensor(4))
        chunk = model.next_logits(idx[:, 5:], torch.arange(5, 14), torch.tensor(index))
        model.clear_cache()
        assert torch.allclose(chunk, full[:, 5 + index], atol=1e-5)


@pytest.mark.parametrize("model", [tiny_gpt(), BigramLanguageModel(GPTConfig(vocab_size=11, block_size=16))])
def test_next_logits_at_any_position_of_a_padded_window(model):
    """The final block computes only the position asked for; the cache must still hold every position's keys and
    values, since the steps after a window read them."""
    seq = torch.randint(0, 11, (2, 16))
    full = model.eval()(seq)[0]
    positions = torch.arange(16)
    for last in (3, 15):
        model.setup_cache(2)
        padded = torch.cat([seq[:, : last + 1], torch.zeros(2, 15 - last, dtype=torch.long)], dim=1)
        window = model.next_logits(padded, positions, torch.tensor(last))
        steps = [
            model.next_logits(seq[:, t : t + 1], positions[t : t + 1], torch.tensor(0)) for t in range(last + 1, 16)
        ]
        model.clear_cache()
        assert torch.allclose(window, full[:, last], atol=1e-5)
        for t, logits in zip(range(last + 1, 16), steps):
            assert torch.allclose(logits, full[:, t], atol=1e-5)
    assert torch.allclose(model.next_logits(seq, None, torch.tensor(9)), full[:, 9], atol=1e-5)  # no cache


def test_rows_at_their_own_positions_read_their_own_cache_rows():
    """Continuous batching: each row of a step sits at its own position (input_pos (B, 1))."""
    model = tiny_gpt()
    a, b = torch.randint(0, 11, (1, 9)), torch.randint(0, 11, (1, 5))
    model.setup_cache(2)
    caches = model.kv_caches()
    for row, seq in enumerate((a, b)):
        model.use_kv_caches([c.rows(row, row + 1) for c in caches])
        model.next_logits(seq[:, :-1], torch.arange(seq.size(1) - 1), torch.tensor(seq.size(1) - 2))
    model.use_kv_caches(caches)
    tokens = torch.tensor([[a[0, -1]], [b[0, -1]]])
    step = model.next_logits(tokens, torch.tensor([[8], [4]]), torch.tensor(0))
    model.clear_cache()
    assert torch.allclose(step[0], model(a)[0][0, -1], atol=1e-5)
    assert torch.allclose(step[1], model(b)[0][0, -1], atol=1e-5)


def test_copy_row_moves_a_rows_keys_and_values():
    cache = KVCache(3, 2, 4, 8, torch.float32, "cpu")
    cache.k[2], cache.v[2] = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    cache.copy_row(0, 2)
    assert torch.equal(cache.k[0], cache.k[2]) and torch.equal(cache.v[0], cache.v[2])
    assert not cache.k[1].any()


def test_cached_decoding_without_a_cache_says_what_to_call():
    with pytest.raises(RuntimeError, match="setup_cache"):
        tiny_gpt().next_logits(torch.zeros(1, 1, dtype=torch.long), torch.tensor([3]), torch.tensor(0))


def test_cache_and_compile_never_reach_the_state_dict():
    model = tiny_gpt()
    keys = set(model.state_dict())
    model.setup_cache(2)
    model.next_logits(torch.zeros(2, 3, dtype=torch.long), torch.arange(3), torch.tensor(2))
    assert set(model.state_dict()) == keys
    model.clear_cache()
    model.compile()  # in place: no _orig_mod. prefix (nanoGPT#325)
    assert set(model.state_dict()) == keys
