import torch

from src.training.module import CharGPT
from src.training.rng import RNGState


def test_rng_state_is_saved_and_restored():
    m = CharGPT(vocab="\n abc", block_size=8, n_layer=1, n_head=2, n_embd=8)
    rng = RNGState()
    checkpoint = {}
    rng.on_save_checkpoint(None, m, checkpoint)
    expected = torch.rand(3)
    rng.on_load_checkpoint(None, m, checkpoint)
    assert torch.equal(torch.rand(3), expected)
