"""The lecture's bigram baseline: the logits of the next token are the table's row of the current one."""

import torch
from torch.nn import functional as F

from src.model import BigramLanguageModel, GPTConfig


def test_the_logits_are_the_tables_rows_and_the_loss_their_cross_entropy():
    model = BigramLanguageModel(GPTConfig(vocab_size=11, block_size=8))
    idx, targets = torch.randint(0, 11, (2, 8)), torch.randint(0, 11, (2, 8))
    logits, loss = model(idx, targets)
    table = model.token_embedding_table.weight
    assert torch.equal(logits, table[idx])  # (B, T, V): row idx[b, t] of the table
    assert torch.allclose(loss, F.cross_entropy(table[idx.view(-1)], targets.view(-1)))
    assert model.num_params() == 11 * 11


def test_decoding_reads_the_row_of_the_token_asked_for():
    model = BigramLanguageModel(GPTConfig(vocab_size=11, block_size=8))
    idx = torch.tensor([[3, 7, 1]])
    assert torch.equal(model.next_logits(idx, None, torch.tensor(1)), model.token_embedding_table.weight[[7]])
