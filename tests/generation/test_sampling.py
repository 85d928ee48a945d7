import math

import pytest
import torch

from src.generation.sampling import check_sampling_args, sample_next, top_k_filter, top_p_filter


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits[0])).flatten().tolist())


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    assert kept(top_k_filter(logits, 2)) == {1, 3}
    assert kept(top_k_filter(logits, 99)) == {0, 1, 2, 3, 4}  # clamped to the vocabulary
    ties = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert len(kept(top_k_filter(ties, 2))) == 2  # ties do not let extra tokens through


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    assert kept(top_p_filter(logits, 0.5)) == {0}
    assert kept(top_p_filter(logits, 0.7)) == {0, 2}
    assert kept(top_p_filter(logits, 0.9)) == {0, 2, 3}
    assert kept(top_p_filter(logits, 1.0)) == {0, 1, 2, 3}
    assert kept(top_p_filter(logits, 0.01)) == {0}  # always at least the most likely token


def test_filtered_tokens_are_never_drawn():
    logits = torch.tensor([[0.0, 0.0, 10.0, 0.0, 9.5]]).repeat(500, 1)
    draws = sample_next(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(draws.flatten().tolist()) == {2, 4}


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 2.0, 1.9], [3.0, -1.0, 0.0]])
    assert sample_next(logits, temperature=0).flatten().tolist() == [1, 0]


def test_low_temperature_sharpens():
    logits = torch.tensor([[1.0, 1.5]]).repeat(2000, 1)
    cold = sample_next(logits, temperature=0.1, generator=torch.Generator().manual_seed(0))
    warm = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert cold.float().mean() > 0.98
    assert abs(warm.float().mean().item() - 1 / (1 + math.exp(-0.5))) < 0.05


def test_same_generator_seed_same_sample_and_global_rng_untouched():
    logits = torch.randn(4, 30)
    state = torch.get_rng_state()
    a = sample_next(logits, top_p=0.9, generator=torch.Generator().manual_seed(5))
    b = sample_next(logits, top_p=0.9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.5}, "temperature must be 0 \\(greedy\\) or more, got -0.5"),
        ({"top_k": 0}, "top_k must be at least 1, got 0"),
        ({"top_p": 0.0}, "top_p must be in \\(0, 1\\], got 0.0"),
        ({"top_p": 1.5}, "top_p must be in \\(0, 1\\], got 1.5"),
    ],
)
def test_invalid_sampling_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_sampling_args(**kwargs)
